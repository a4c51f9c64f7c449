"""`anime-pipeline`: validate, render and demo from the command line.

`render` runs the same Dagster jobs as the UI, on the same local instance (`dagster.yaml`
in the current folder, or `$DAGSTER_HOME`), so its runs show up in `dagster dev`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from anime_pipeline.domain.episode import EpisodeValidationError, load_episode

PROGRESS_LOGGER = "anime_pipeline.progress"


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
        return 1
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
    return 0


def get_instance() -> Any:
    """The local instance `dagster dev` uses: $DAGSTER_HOME, else ./dagster.yaml's storage."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    home = Path(".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config_dir = str(Path.cwd()) if Path("dagster.yaml").exists() else str(home)
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), config_dir=config_dir))


class _Progress(logging.Handler):
    def __init__(self, quiet: bool) -> None:
        super().__init__(logging.INFO)
        self.quiet = quiet

    def emit(self, record: logging.LogRecord) -> None:
        if not self.quiet:
            print(f"  {record.getMessage()}", file=sys.stderr, flush=True)


def root_cause(error: Any) -> str:
    """The user's own error message under Dagster's wrapping of it."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return str(error.message).strip()


def failure_reason(result: Any) -> str:
    for event in result.all_events:
        if event.is_step_failure or event.is_run_failure:
            err = getattr(event.event_specific_data, "error", None)
            return f"{event.step_key or 'run'}: {root_cause(err) if err else event.message}"
    return "run failed"


def render_episode(folder: str | Path, *, quiet: bool = False, instance: Any = None
                   ) -> dict[str, Any]:
    """Register the episode and materialize its whole graph; return the artifacts' paths."""
    warnings.filterwarnings("ignore")

    from anime_pipeline import steps
    from anime_pipeline.definitions import defs
    from anime_pipeline.defs.partitions import clip_range_tags, register_partitions
    from anime_pipeline.defs.resources import storage_from_env
    from anime_pipeline.storage import EpisodeKeys, get_json

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    store = storage_from_env().store()
    bundle = steps.register_episode(store, folder)
    ep = bundle.episode
    instance = instance or get_instance()
    register_partitions(instance, ep.key, [s.id for s in ep.shots])
    if instance.event_log_storage.supports_global_concurrency_limits:
        if instance.event_log_storage.get_concurrency_info("gpu").slot_count == 0:
            from anime_pipeline.runtime.nvml import query

            # One slot per GPU found (one on a CPU-only machine, so GPU-bound steps serialise).
            instance.event_log_storage.set_concurrency_slots("gpu", max(1, len(query().gpus)))
    definitions = defs()
    quiet_logs = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    handler = _Progress(quiet)
    progress = logging.getLogger(PROGRESS_LOGGER)
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    run_ids: dict[str, str] = {}
    try:
        stages: list[tuple[str, str, dict[str, Any]]] = [
            ("plan_episode", "planning", {"partition_key": ep.key}),
            ("render_clips", f"rendering {len(ep.shots)} shots",
             {"tags": clip_range_tags(ep.key, [s.id for s in ep.shots])}),
            ("deliver_episode", "compositing and packaging", {"partition_key": ep.key}),
        ]
        for job_name, label, kwargs in stages:
            say(f"{ep.key}: {label}...")
            job = definitions.resolve_job_def(job_name)
            result = job.execute_in_process(instance=instance, run_config=quiet_logs,
                                            raise_on_error=False, **kwargs)
            run_ids[job_name] = result.run_id
            if not result.success:
                raise RuntimeError(f"{job_name} failed (run {result.run_id}): "
                                   f"{failure_reason(result)}")
    finally:
        progress.removeHandler(handler)
    keys = EpisodeKeys(ep.key)
    plan = get_json(store, keys.compute_plan)
    degraded, placeholders = [], []
    for s in ep.shots:
        rec = get_json(store, keys.clip_record(s.id))["result"]
        if rec.get("placeholder"):
            placeholders.append(s.id)
        elif rec.get("degraded"):
            degraded.append(s.id)
    return {
        "episode_key": ep.key,
        "composite": store.uri(keys.composite),
        "package": store.uri(keys.package),
        "subtitles": [store.uri(keys.subtitles_srt), store.uri(keys.subtitles_ass)],
        "shots": len(ep.shots),
        "duration_s": ep.duration_ms / 1000,
        "plan_status": plan["status"],
        "degraded_shots": degraded,
        "placeholder_shots": placeholders,
        "run_ids": run_ids,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _apply_render_options(args: argparse.Namespace) -> None:
    if getattr(args, "concurrency", None):
        os.environ["ANIME_PIPELINE_RENDER_CONCURRENCY"] = str(args.concurrency)
    if getattr(args, "burn_subtitles", False):
        os.environ["ANIME_PIPELINE_BURN_SUBTITLES"] = "1"


def _report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
        return
    print(f"composite: {result['composite']}")
    print(f"package:   {result['package']}")
    if result["placeholder_shots"]:
        print(f"placeholder shots: {', '.join(result['placeholder_shots'])}")
    if result["degraded_shots"]:
        print(f"degraded shots: {', '.join(result['degraded_shots'])}")
    print(f"{result['shots']} shots, {result['duration_s']:.1f} s, done in "
          f"{result['seconds']:.1f} s")


def cmd_render(args: argparse.Namespace) -> int:
    _apply_render_options(args)
    try:
        result = render_episode(args.episode_dir, quiet=args.json or args.quiet)
    except EpisodeValidationError as e:
        _print_problems(e)
        return 1
    except Exception as e:  # the reason, not a traceback
        print(f"render failed: {e}", file=sys.stderr)
        return 1
    _report(result, args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from anime_pipeline.sample import write_sample_episode

    dest = Path(args.dest).resolve()
    if not (dest / "episode.yaml").exists():
        print(f"writing the sample episode to {dest}", file=sys.stderr)
        write_sample_episode(dest)
    args.episode_dir = str(dest)
    return cmd_render(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anime-pipeline", description=__doc__.splitlines()[0])
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
            p.add_argument("--dest", default=".anime_pipeline/sample/ep01",
                           help="where to write the sample episode")
            p.set_defaults(func=cmd_demo)
        p.add_argument("--json", action="store_true",
                       help="print the composite and package paths as one JSON object")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.add_argument("--concurrency", type=int, help="shots rendered at once (default 4)")
        p.add_argument("--burn-subtitles", action="store_true",
                       help="also draw the subtitles into the video")
    try:
        from anime_pipeline.runtime.cli import add_subcommands
    except ImportError:  # the runtime CLI is optional only while it is being built
        pass
    else:
        add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
