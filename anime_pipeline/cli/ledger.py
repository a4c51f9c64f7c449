"""``anime-pipeline usage`` and ``anime-pipeline budget set|show|rm``: the usage ledger from the
command line. The ledger is ``--ledger-url``, else ``$ANIME_PIPELINE_LEDGER_URL``, else SQLite
under the pipeline home — the same database the clips step writes."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from typing import Any

from anime_pipeline.ledger import LEDGER_URL_ENV, Ledger, ProjectBudget, UsageFilter, default_url
from anime_pipeline.ledger.records import UNITS
from anime_pipeline.settings import PipelineConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def open_ledger(args: argparse.Namespace) -> Ledger:
    if getattr(args, "ledger_url", None):
        return Ledger(args.ledger_url)
    if os.environ.get(LEDGER_URL_ENV):
        return Ledger(os.environ[LEDGER_URL_ENV])
    home = PipelineConfig.from_env(home=getattr(args, "home", None)).home
    return Ledger(default_url(home))


def parse_when(text: str, field: str) -> dt.datetime:
    """An ISO date or date-time; without a zone it is UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{field}: {text!r} is not an ISO date or date-time (e.g. 2026-12-01 or "
            "2026-12-01T18:00:00Z)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                             strict=True)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_usage(args: argparse.Namespace) -> int:
    try:
        since = parse_when(args.since, "--since") if args.since else None
        until = parse_when(args.until, "--until") if args.until else None
    except argparse.ArgumentTypeError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    f = UsageFilter(tenant=args.tenant, project=args.project, user=args.user, since=since,
                    until=until)
    rows = open_ledger(args).summary(f, by=args.by)
    if args.json:
        print(json.dumps({"by": args.by, "filter": f.model_dump(mode="json", exclude_none=True),
                          "rows": [r.model_dump(mode="json") for r in rows]}, indent=2))
        return EXIT_OK
    if not rows:
        print("no usage recorded for this selection")
        return EXIT_OK
    units = [u for u in UNITS if any(u in r.amounts for r in rows)]
    head = [args.by, "calls"] + [("gpu_min" if u == "gpu_sec" else u) for u in units] + ["cost"]
    body = []
    for r in rows:
        cells = [r.group, str(r.calls)]
        for u in units:
            v = r.amounts.get(u, 0.0)
            cells.append(f"{v / 60:.2f}" if u == "gpu_sec" else f"{v:g}")
        cells.append(f"{r.cost:.4f} {r.currency}")
        body.append(cells)
    total_cost = sum(r.cost for r in rows)
    print(_table(head, body))
    currencies = sorted({r.currency for r in rows})
    print(f"total: {sum(r.calls for r in rows)} calls, "
          f"{sum(r.amounts.get('gpu_sec', 0.0) for r in rows) / 60:.2f} GPU minutes, "
          f"{total_cost:.4f} {'/'.join(currencies)}")
    return EXIT_OK


def _status_obj(ledger: Ledger, budget: ProjectBudget) -> dict[str, Any]:
    s = ledger.status(budget)
    return {**budget.model_dump(mode="json"), "period_label": s.period_label,
            "spent_gpu_minutes": round(s.spent_gpu_sec / 60, 3),
            "remaining_gpu_minutes": round(s.remaining_gpu_sec / 60, 3),
            "used_fraction": round(s.used_fraction, 4), "exceeded": s.exceeded}


def cmd_budget_set(args: argparse.Namespace) -> int:
    try:
        budget = ProjectBudget(tenant=args.tenant, project=args.project,
                               gpu_minutes=args.gpu_minutes, period=args.period,
                               on_exceed=args.on_exceed)
    except ValueError as e:
        print(f"error: budget: {e.errors()[0]['msg'] if hasattr(e, 'errors') else e}",
              file=sys.stderr)
        return EXIT_USAGE
    ledger = open_ledger(args)
    ledger.set_budget(budget)
    s = _status_obj(ledger, budget)
    print(f"budget {budget.tenant}/{budget.project}: {budget.gpu_minutes:g} GPU minutes per "
          f"{budget.period}, on exceed {budget.on_exceed}; {s['period_label']}: "
          f"{s['spent_gpu_minutes']:g} spent, {s['remaining_gpu_minutes']:g} left")
    return EXIT_OK


def cmd_budget_show(args: argparse.Namespace) -> int:
    ledger = open_ledger(args)
    budgets = [b for b in ledger.all_budgets(args.tenant)
               if args.project is None or b.project == args.project]
    objs = [_status_obj(ledger, b) for b in budgets]
    if args.json:
        print(json.dumps(objs, indent=2))
        return EXIT_OK
    if not objs:
        print("no budgets set (anime-pipeline budget set --tenant T --project P "
              "--gpu-minutes N)")
        return EXIT_OK
    rows = [[f"{o['tenant']}/{o['project']}", o["period_label"], f"{o['gpu_minutes']:g}",
             f"{o['spent_gpu_minutes']:.2f}", f"{o['remaining_gpu_minutes']:.2f}",
             f"{o['used_fraction']:.0%}", o["on_exceed"]] for o in objs]
    print(_table(["project", "period", "gpu_min", "spent", "left", "used", "on_exceed"], rows))
    return EXIT_OK


def cmd_budget_rm(args: argparse.Namespace) -> int:
    if open_ledger(args).remove_budget(args.tenant, args.project):
        print(f"budget of {args.tenant}/{args.project} removed")
        return EXIT_OK
    print(f"error: {args.tenant}/{args.project} has no budget", file=sys.stderr)
    return EXIT_FAILED


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ledger-url", help=f"SQLAlchemy URL (default ${LEDGER_URL_ENV}, else "
                                        "SQLite under the pipeline home)")
    p.add_argument("--home", help="pipeline home")


def add_subcommands(sub: Any) -> None:
    p = sub.add_parser("usage", help="what was spent: the usage ledger, grouped")
    p.add_argument("--tenant")
    p.add_argument("--project")
    p.add_argument("--user")
    p.add_argument("--since", help="ISO date or date-time (UTC unless it says)")
    p.add_argument("--until", help="ISO date or date-time, exclusive")
    p.add_argument("--by", choices=["day", "episode", "provider", "user", "project"],
                   default="provider")
    p.add_argument("--json", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_usage)

    b = sub.add_parser("budget", help="project GPU budgets: set, show, rm")
    bsub = b.add_subparsers(dest="budget_command", required=True, metavar="ACTION")
    s = bsub.add_parser("set", help="set (or replace) a project's budget")
    s.add_argument("--tenant", required=True)
    s.add_argument("--project", required=True)
    s.add_argument("--gpu-minutes", type=float, required=True)
    s.add_argument("--period", choices=["day", "week", "month", "total"], default="month")
    s.add_argument("--on-exceed", choices=["alert", "degrade", "refuse"], default="alert")
    _common(s)
    s.set_defaults(func=cmd_budget_set)
    w = bsub.add_parser("show", help="budgets, spent and left this period")
    w.add_argument("--tenant")
    w.add_argument("--project")
    w.add_argument("--json", action="store_true")
    _common(w)
    w.set_defaults(func=cmd_budget_show)
    r = bsub.add_parser("rm", help="remove a project's budget")
    r.add_argument("--tenant", required=True)
    r.add_argument("--project", required=True)
    _common(r)
    r.set_defaults(func=cmd_budget_rm)
