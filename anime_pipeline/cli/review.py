"""``anime-pipeline review status|approve|reject EP_KEY ...``: shot review from the command
line, on the same history (the ledger's database) and artifacts the pipeline writes."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from anime_pipeline.cli.ledger import _common, _table, open_ledger
from anime_pipeline.domain.episode import EpisodeValidationError, PackageParts
from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.review import ProcessResult, decide, episode_review, process
from anime_pipeline.review.machine import ReviewTransitionError
from anime_pipeline.review.store import ReviewStore
from anime_pipeline.settings import PipelineConfig
from anime_pipeline.storage import LocalStore

if TYPE_CHECKING:
    from anime_pipeline.cli.render import RenderReport

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _open(args: argparse.Namespace) -> tuple[LocalStore, ReviewStore, Any]:
    config = PipelineConfig.from_env(home=getattr(args, "home", None))
    store = LocalStore(config.artifacts)
    bundle = catalog.load_registered(store, args.episode_key)
    return store, ReviewStore(open_ledger(args).url), bundle


def _reviewer(args: argparse.Namespace) -> str:
    if args.reviewer:
        return str(args.reviewer)
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def cmd_status(args: argparse.Namespace) -> int:
    store, reviews, bundle = _open(args)
    review = episode_review(store, reviews, bundle)
    if args.json:
        print(review.model_dump_json(indent=2))
        return EXIT_OK
    rows = [[s.shot_id, s.state.value if s.state else "no clip", s.clip_status or "-",
             (s.clip_sha256 or "-")[:12], s.reviewer or "-", (s.reason or "")[:60]]
            for s in review.shots]
    print(_table(["shot", "state", "clip", "version", "reviewer", "reason"], rows))
    states = {s.state.value for s in review.shots if s.state}
    print(", ".join(f"{sum(1 for s in review.shots if s.state and s.state.value == st)} {st}"
                    for st in sorted(states)) or "no clips yet")
    return EXIT_OK


def cmd_decide(args: argparse.Namespace) -> int:
    decision = "approved" if args.review_command == "approve" else "rejected"
    store, reviews, bundle = _open(args)
    try:
        event = decide(store, reviews, bundle, args.shot, decision,  # type: ignore[arg-type]
                       reviewer=_reviewer(args), reason=args.reason)
    except (ReviewTransitionError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(event.model_dump(mode="json")) if args.json else
          f"{event.episode_key} {event.shot_id}: {event.state} (version "
          f"{event.version.sha256[:12]}) by {event.reviewer}"
          + (f": {event.reason}" if event.reason else ""))
    return EXIT_OK


def _print_pass(result: ProcessResult) -> None:
    print(f"{result.episode_key} (review mode {result.mode}): "
          f"{len(result.sent_to_review)} new version(s) sent to review")
    for shot in result.approved_by_qc:
        print(f"  {shot}: approved by QC")
    for shot in result.qc_passed:
        print(f"  {shot}: passed QC, waiting for a human")
    for shot, why in result.qc_rejected.items():
        print(f"  {shot}: rejected by QC: {why}")
    for shot, take in result.retakes.items():
        print(f"  {shot}: rejected: regenerating as take {take}")


def cmd_process(args: argparse.Namespace) -> int:
    """The review loop in the foreground: review, QC, retakes; then the episode is rendered
    again (only the retaken shots render; the composite and package are re-cut) and the new
    versions go back to review."""
    t0 = time.perf_counter()
    store, reviews, bundle = _open(args)
    first = process(store, reviews, bundle)
    passes = [first]
    render: RenderReport | None = None
    if first.retakes and not args.no_render:
        render = _render(args, store, bundle.episode.key)
        passes.append(process(store, reviews, bundle, regenerate=False))
    seconds = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps({"passes": [p.model_dump(mode="json") for p in passes],
                          "render": render.model_dump(mode="json") if render else None,
                          "seconds": seconds}, indent=2))
        return EXIT_OK
    for p in passes:
        _print_pass(p)
    if render is not None:
        took = {c.shot_id: c.render_seconds for c in render.clips if c.shot_id in first.retakes}
        print(f"re-rendered {', '.join(f'{s} ({t:.1f} s)' for s, t in took.items())}; "
              f"composite and package re-cut: {render.composite}")
    print(f"done in {seconds:.1f} s")
    return EXIT_OK


def _render(args: argparse.Namespace, store: LocalStore, episode_key: str) -> RenderReport:
    """The episode rendered again on the instance, as ``anime-pipeline render`` does."""
    from anime_pipeline.cli.render import render_episode
    from anime_pipeline.defs.resources import LedgerResource, NotifierResource
    from anime_pipeline.instance import open_instance
    from anime_pipeline.settings import instance_home

    config = PipelineConfig.from_env(home=getattr(args, "home", None))
    folder = catalog.entry(store, episode_key).episode_dir
    with open_instance(instance_home()) as instance:
        return render_episode(folder, config=config, instance=instance,
                              instance_home=str(instance_home()), storage=store,
                              notifier=NotifierResource.from_environ(os.environ),
                              ledger=LedgerResource(url=open_ledger(args).url))


def cmd_mode(args: argparse.Namespace) -> int:
    reviews = ReviewStore(open_ledger(args).url)
    if args.mode:
        reviews.set_review_mode(args.tenant, args.project, args.mode)
    print(f"{args.tenant}/{args.project}: review mode "
          f"{reviews.review_mode(args.tenant, args.project)}")
    return EXIT_OK


def cmd_package(args: argparse.Namespace) -> int:
    """A project's package parts: print them, or change some (``clips=off keyframes=on``)."""
    reviews = ReviewStore(open_ledger(args).url)
    current = reviews.package_parts(args.tenant, args.project)
    if args.reset:
        reviews.set_package_parts(args.tenant, args.project, None)
        current = None
    elif args.parts:
        values = (current or PackageParts()).model_dump()
        for item in args.parts:
            name, _, state = item.partition("=")
            if name not in values or state not in ("on", "off"):
                print(f"error: {item!r}: PART=on|off, PART one of {', '.join(values)}",
                      file=sys.stderr)
                return EXIT_USAGE
            values[name] = state == "on"
        current = PackageParts.model_validate(values)
        reviews.set_package_parts(args.tenant, args.project, current)
    shown = current or PackageParts()
    print(f"{args.tenant}/{args.project} package" + ("" if current else " (the defaults)") +
          ": " + ", ".join(f"{k}={'on' if v else 'off'}" for k, v in shown.model_dump().items()))
    return EXIT_OK


def _guard(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except (OSError, ValueError, LookupError, RuntimeError, EpisodeValidationError,
                SQLAlchemyError) as e:
            print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}",
                  file=sys.stderr)
            return EXIT_FAILED

    return run


def add_subcommands(sub: Any) -> None:
    r = sub.add_parser("review", help="shot review: status, approve, reject")
    rsub = r.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    s = rsub.add_parser("status", help="every shot's review state")
    s.add_argument("episode_key", help="tenant/project/episode")
    s.add_argument("--json", action="store_true")
    _common(s)
    s.set_defaults(func=_guard(cmd_status))
    for name, helptext in (("approve", "approve the shot's current clip"),
                           ("reject", "reject the shot's current clip (a reason is needed)")):
        d = rsub.add_parser(name, help=helptext)
        d.add_argument("episode_key", help="tenant/project/episode")
        d.add_argument("shot")
        d.add_argument("--reason", required=name == "reject")
        d.add_argument("--reviewer", help="who decides (default: the login name)")
        d.add_argument("--json", action="store_true")
        _common(d)
        d.set_defaults(func=_guard(cmd_decide))
    p = rsub.add_parser("process", help="one pass of the review loop: new versions to "
                                        "review, then the automated reviewer (by mode)")
    p.add_argument("episode_key", help="tenant/project/episode")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-render", action="store_true",
                   help="only review, QC and retakes: leave the render to the next run")
    _common(p)
    p.set_defaults(func=_guard(cmd_process))
    m = rsub.add_parser("mode", help="a project's review mode: human, ai or human+ai")
    m.add_argument("--tenant", required=True)
    m.add_argument("--project", required=True)
    m.add_argument("mode", nargs="?", choices=["human", "ai", "human+ai"],
                   help="the new mode; none: print it")
    _common(m)
    m.set_defaults(func=_guard(cmd_mode))
    k = rsub.add_parser("package", help="a project's delivery ZIP parts (an episode's "
                                        "creative_control.yaml package: wins)")
    k.add_argument("--tenant", required=True)
    k.add_argument("--project", required=True)
    k.add_argument("parts", nargs="*", metavar="PART=on|off",
                   help="keyframes, clips, composite, preview_composite, subtitles, "
                        "manifests, review_report")
    k.add_argument("--reset", action="store_true", help="back to the defaults")
    _common(k)
    k.set_defaults(func=_guard(cmd_package))
