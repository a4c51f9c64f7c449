"""``anime-pipeline schedule add|list|rm|enable|disable``: schedules as data (fired by the
``schedules_sensor`` under the daemon)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from pydantic import ValidationError

from anime_pipeline.cli.ledger import _common, _table, open_ledger
from anime_pipeline.timetable import ACTIONS, Schedule, ScheduleStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _store(args: argparse.Namespace) -> ScheduleStore:
    return ScheduleStore(open_ledger(args).url)


def cmd_add(args: argparse.Namespace) -> int:
    try:
        schedule = Schedule(cron=args.cron, timezone=args.timezone, target=args.target,
                            action=args.action, enabled=not args.disabled)
    except ValidationError as e:
        for err in e.errors(include_url=False):
            field = ".".join(str(p) for p in err["loc"])
            print(f"error: schedule {field}: {err['msg'].removeprefix('Value error, ')}",
                  file=sys.stderr)
        return EXIT_USAGE
    _store(args).add(schedule)
    now = dt.datetime.now(dt.UTC)
    print(f"schedule {schedule.id}: {schedule.action} {schedule.target} at '{schedule.cron}' "
          f"{schedule.timezone}; next {schedule.next_tick(now).isoformat()}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    items = _store(args).all()
    if args.json:
        print(json.dumps([{**s.model_dump(mode="json"),
                           "next_tick": s.next_tick(now).isoformat()} for s in items], indent=2))
        return EXIT_OK
    if not items:
        print("no schedules (anime-pipeline schedule add --cron '0 2 * * *' --target T/P "
              "--action render)")
        return EXIT_OK
    rows = [[s.id, s.action, s.target, s.cron, s.timezone, "on" if s.enabled else "off",
             s.next_tick(now).strftime("%Y-%m-%d %H:%M UTC"),
             s.last_fired_tick.strftime("%Y-%m-%d %H:%M UTC") if s.last_fired_tick else "-"]
            for s in items]
    print(_table(["id", "action", "target", "cron", "timezone", "", "next", "last fired"],
                 rows))
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    if _store(args).remove(args.id):
        print(f"schedule {args.id} removed")
        return EXIT_OK
    print(f"error: no schedule {args.id!r}", file=sys.stderr)
    return EXIT_FAILED


def cmd_enable(args: argparse.Namespace) -> int:
    try:
        s = _store(args).update(args.id, enabled=args.schedule_command == "enable")
    except LookupError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return EXIT_FAILED
    print(f"schedule {s.id}: {'on' if s.enabled else 'off'}")
    return EXIT_OK


def add_subcommands(sub: Any) -> None:
    p = sub.add_parser("schedule", help="schedules as data: add, list, rm, enable, disable")
    ssub = p.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    a = ssub.add_parser("add", help="add a schedule")
    a.add_argument("--cron", required=True, help="5 fields, e.g. '0 2 * * *'")
    a.add_argument("--timezone", default="UTC", help="IANA zone (default UTC)")
    a.add_argument("--target", required=True,
                   help="tenant/project/episode, or tenant/project for all its episodes")
    a.add_argument("--action", required=True, choices=ACTIONS)
    a.add_argument("--disabled", action="store_true", help="add it switched off")
    _common(a)
    a.set_defaults(func=cmd_add)
    ls = ssub.add_parser("list", help="every schedule, its next tick and its last fired one")
    ls.add_argument("--json", action="store_true")
    _common(ls)
    ls.set_defaults(func=cmd_list)
    for name, fn, helptext in (("rm", cmd_rm, "remove a schedule"),
                               ("enable", cmd_enable, "switch a schedule on"),
                               ("disable", cmd_enable, "switch a schedule off")):
        x = ssub.add_parser(name, help=helptext)
        x.add_argument("id")
        _common(x)
        x.set_defaults(func=fn)
