"""``anime-pipeline``: validate, render and demo from the command line, plus the runtime
commands (``profile``, ``runtime ...``) and the ledger's (``usage``, ``budget ...``).

``render`` runs the same Dagster jobs as the UI on the same instance — ``$DAGSTER_HOME``, else
the project's ``.dagster`` folder — wherever it is started, and prints which one.

Exit codes: 0 delivered; 1 refused or failed (one line per problem, no stack trace); 2 bad
usage; 3 delivered with placeholder slates for some shots (``--json`` lists them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from anime_pipeline.cli.render import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PLACEHOLDERS,
    EXIT_USAGE,
    RenderFailed,
    RenderReport,
    render_episode,
    stderr_say,
)
from anime_pipeline.domain.episode import EpisodeValidationError, load_episode
from anime_pipeline.settings import PipelineConfig, instance_home


def _print_problems(err: EpisodeValidationError) -> None:
    print(f"episode {err.folder} refused ({len(err.problems)} problem(s)):", file=sys.stderr)
    for p in err.problems:
        print(str(p), file=sys.stderr)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        bundle = load_episode(args.episode_dir)
    except EpisodeValidationError as e:
        if args.json:
            print(json.dumps({"ok": False, "problems": [p.__dict__ for p in e.problems]},
                             ensure_ascii=False))
        else:
            _print_problems(e)
        return EXIT_FAILED
    ep = bundle.episode
    if args.json:
        print(json.dumps({"ok": True, "episode_key": ep.key, "shots": len(ep.shots),
                          "duration_ms": ep.duration_ms,
                          "warnings": [str(w) for w in bundle.warnings]}, ensure_ascii=False))
    else:
        for w in bundle.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"OK {ep.key}: {len(ep.shots)} shots, {ep.duration_ms / 1000:.1f} s, "
              f"{ep.format.width}x{ep.format.height}@{ep.format.fps:g}")
    return EXIT_OK


def _config(args: argparse.Namespace) -> PipelineConfig:
    base = PipelineConfig.from_env()
    if getattr(args, "home", None):
        return PipelineConfig(home=Path(args.home).absolute(), storage_root=base.storage_root,
                              inbox=base.inbox)
    return base


def _report(result: RenderReport, as_json: bool) -> None:
    if as_json:
        print(result.model_dump_json())
        return
    print(f"composite: {result.composite}")
    print(f"package:   {result.package}")
    if result.placeholder_shots:
        print(f"DELIVERED WITH PLACEHOLDERS for {len(result.placeholder_shots)} shot(s): "
              f"{', '.join(result.placeholder_shots)}")
    if result.degraded_shots:
        print(f"degraded shots: {', '.join(result.degraded_shots)}")
    print(f"{result.shots} shots, {result.duration_s:.1f} s, done in {result.seconds:.1f} s")


def cmd_render(args: argparse.Namespace) -> int:
    from anime_pipeline.defs.resources import LedgerResource, NotifierResource
    from anime_pipeline.instance import open_instance
    from anime_pipeline.media.ffmpeg import ffmpeg_binary, ffmpeg_source

    warnings.filterwarnings("ignore", module="dagster")
    quiet = args.json or args.quiet
    say = None if quiet else stderr_say
    config = _config(args)
    home = instance_home()
    if say:
        say(f"instance: {home}  (the same one `dagster dev` opens from the project folder)")
        say(f"pipeline home: {config.home}")
    try:
        load_episode(args.episode_dir)  # refuse before touching the instance
        if say:
            say(f"ffmpeg: {ffmpeg_binary()} ({ffmpeg_source()})")
        with open_instance(home) as instance:
            result = render_episode(args.episode_dir, config=config, instance=instance,
                                    instance_home=str(home), concurrency=args.concurrency,
                                    burn_subtitles=args.burn_subtitles, say=say,
                                    allow_rebalance=args.allow_rebalance,
                                    notifier=NotifierResource.from_environ(os.environ),
                                    ledger=LedgerResource.from_environ(os.environ, config.home))
    except EpisodeValidationError as e:
        _print_problems(e)
        return EXIT_FAILED
    except RenderFailed as e:
        print(f"render failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # the reason, not a traceback
        print(f"render failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED
    _report(result, args.json)
    return EXIT_PLACEHOLDERS if result.delivered_with_placeholders else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from anime_pipeline.sample import write_sample_episode

    dest = Path(args.dest).absolute() if args.dest else _config(args).samples / "ep01"
    if not (dest / "episode.yaml").exists():
        print(f"writing the sample episode to {dest}", file=sys.stderr)
        write_sample_episode(dest)
    args.episode_dir = str(dest)
    return cmd_render(args)


def cmd_concurrency(args: argparse.Namespace) -> int:
    from anime_pipeline.pipeline.scheduling import MAX_CONCURRENCY, settings_path, write_concurrency

    config = _config(args)
    if args.value is None:
        path = settings_path(config.home)
        current = json.loads(path.read_text("utf-8")).get("concurrency") if path.is_file() \
            else None
        print(f"concurrency: {current if current else 'the render_settings resource (4)'}"
              f" (1..{MAX_CONCURRENCY}; {path})")
        return EXIT_OK
    try:
        path = write_concurrency(config.home, args.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"concurrency {args.value}: running clips steps pick it up within seconds ({path})")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anime-pipeline",
                                     description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check an episode folder against the contract")
    p.add_argument("episode_dir")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_validate)

    for name, helptext in (("render", "render an episode folder end to end"),
                           ("demo", "write the bundled sample episode and render it")):
        p = sub.add_parser(name, help=helptext)
        if name == "render":
            p.add_argument("episode_dir")
            p.set_defaults(func=cmd_render)
        else:
            p.add_argument("--dest", help="where to write the sample episode "
                                          "(default <pipeline home>/sample/ep01)")
            p.set_defaults(func=cmd_demo)
        p.add_argument("--json", action="store_true",
                       help="print the result as one JSON object")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.add_argument("--concurrency", type=int,
                       help="shots rendered at once (default 4, capped by the runtime policy)")
        p.add_argument("--burn-subtitles", action="store_true",
                       help="also draw the subtitles into the video")
        p.add_argument("--allow-rebalance", action="store_true",
                       help="render even when the plan says rebalance_required (it does not "
                            "fit the episode's budget or deadline)")
        p.add_argument("--home", help="pipeline home (default $ANIME_PIPELINE_HOME, else the "
                                      "project's .anime_pipeline)")
    p = sub.add_parser("concurrency", help="shots rendered at once, live (1..6): on farms "
                                           "all of them, on this machine as the policy allows")
    p.add_argument("value", type=int, nargs="?", help="the new setting; none: print it")
    p.add_argument("--home", help="pipeline home")
    p.set_defaults(func=cmd_concurrency)
    from anime_pipeline.cli import desk, ledger, review, schedule
    from anime_pipeline.ops import cli as ops_cli
    from anime_pipeline.runtime.cli import add_subcommands

    ledger.add_subcommands(sub)
    review.add_subcommands(sub)
    schedule.add_subcommands(sub)
    desk.add_subcommands(sub)
    add_subcommands(sub)
    ops_cli.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0) if e.code in (0, None) else EXIT_USAGE
    return int(args.func(args))
