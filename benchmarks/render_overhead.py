"""Render overhead: the Dagster path against its floor, measured in the same run.

Every mode sets up a fresh episode (the sample generator), a pipeline home and a SQLite
instance configured by the project's own ``dagster.yaml`` (so the run log holds what a real
``anime-pipeline render`` writes: managed progress loggers included). Run by hand, never in
the test suite (timings on shared machines are noisy); small sizes first::

    .venv/bin/python benchmarks/render_overhead.py whole --preset 60x3s      # 60 x 3 s, 720p
    .venv/bin/python benchmarks/render_overhead.py whole --preset 500x1s     # 500 x 1 s, 360p
    .venv/bin/python benchmarks/render_overhead.py whole --preset 2000x1s    # 2,000 x 1 s, 360p
    .venv/bin/python benchmarks/render_overhead.py rerender --preset 500x1s
    .venv/bin/python benchmarks/render_overhead.py events --partitions 60,500,2000
    .venv/bin/python benchmarks/render_overhead.py whole --shots 12 --shot-ms 1000 --size 640x360

``whole``: the ``render_clips`` job over the episode's partition range (one run, the in-process
executor: run start, decode-verified clips, records, one materialization and one check per
shot) against the very same ffmpeg render command lines run bare at the same concurrency,
before and after (averaged, to even out drift); prints the ratio.

``rerender``: ``render_episode`` (the CLI's three runs: plan, clips, delivery) on the fresh
episode, then again with nothing changed; prints both, stage by stage (the floor of the second
is about 0: nothing needs doing), how much ``.dagster`` grew for each and what was written
(event rows by type, bytes), then the ``render_clips`` job launched over the whole range with
every clip current (what the UI's "Materialize" does) and its growth.

``events``: the per-shot events of the clips step alone (the real materialization with its
preview and the real check evaluation, as ``clips`` yields them for a rendered shot) from a
stand-in asset over 60, 500 and 2,000 partitions, on the same SQLite instance: milliseconds
per shot at each size and their ratio to the smallest size (linear: about 1.0). The same for
``context.add_asset_metadata(partition_key=...)``, Dagster's other way, which rebuilds the
run's partition range on every call (``--add-metadata``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {  # name: (shots, ms per shot, width, height)
    "60x3s": (60, 3000, 1280, 720),
    "500x1s": (500, 1000, 640, 360),
    "2000x1s": (2000, 1000, 640, 360),
}


# --------------------------------------------------------------------------- set-up


@dataclass
class Env:
    tmp: Path
    config: Any  # PipelineConfig
    folder: Path
    store: Any  # LocalStore
    bundle: Any  # EpisodeBundle
    instance_home: Path

    @property
    def key(self) -> str:
        return str(self.bundle.episode.key)

    @property
    def shot_ids(self) -> list[str]:
        return [s.id for s in self.bundle.episode.shots]


@contextmanager
def environment(shots: int, shot_ms: int, width: int, height: int) -> Iterator[Env]:
    from anime_pipeline.pipeline import catalog
    from anime_pipeline.sample import write_sample_episode
    from anime_pipeline.settings import PipelineConfig
    from anime_pipeline.storage import LocalStore

    with tempfile.TemporaryDirectory(prefix="render_overhead.") as tmp:
        tmpd = Path(tmp)
        home = tmpd / "dagster"
        home.mkdir()
        # The project's instance configuration, as `anime-pipeline render` opens it.
        shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
        config = PipelineConfig(home=tmpd / "home", storage_root=tmpd / "artifacts")
        folder = write_sample_episode(tmpd / "episode", n_shots=shots, shot_ms=shot_ms,
                                      width=width, height=height)
        store = LocalStore(config.artifacts)
        bundle = catalog.register(store, folder)
        yield Env(tmpd, config, folder, store, bundle, home)


def describe(env: Env, concurrency: int | None = None) -> str:
    fmt = env.bundle.episode.format
    total = env.bundle.episode.duration_ms / 1000
    where = f", concurrency {concurrency}" if concurrency else ""
    return (f"{len(env.shot_ids)} shots, {total:.0f} s of video, {fmt.width}x{fmt.height}@"
            f"{fmt.fps:g}{where}, {os.cpu_count()} CPUs")


def bare_commands(bundle, plan, out_dir: Path) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """The exact ffmpeg command lines the backends issue for each shot of the plan."""
    from anime_pipeline.backends import animatic_args, source_clip_args
    from anime_pipeline.domain.rendering import RenderSpec, ShotJob
    from anime_pipeline.media.ffmpeg import ffmpeg_binary

    cmds = []
    for entry in plan.shots:
        shot = bundle.episode.shot(entry.shot_id)
        spec = RenderSpec(entry.backend_preference[0], float(entry.target_fps),
                          entry.target_resolution)
        job = ShotJob(shot, bundle.root, bundle.episode.format, spec,
                      thumbnail=out_dir / f"{shot.id}.jpg")
        out = out_dir / f"{shot.id}.mp4"
        args = (source_clip_args(job, out) if spec.backend == "source_clip"
                else animatic_args(job, out))
        cmds.append([ffmpeg_binary(), "-hide_banner", "-nostdin", "-y", *args])
    return cmds


@dataclass
class Cpu:
    """CPU seconds: this process (Python, Dagster, SQLite) and its children (ffmpeg)."""

    own: float = 0.0
    children: float = 0.0

    @classmethod
    def now(cls) -> Cpu:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), \
            resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.own - other.own, self.children - other.children)

    def __str__(self) -> str:
        return f"CPU {self.own:.1f} s in this process, {self.children:.1f} s in ffmpeg"


def run_bare(cmds: list[list[str]], concurrency: int) -> tuple[float, Cpu]:
    c0, t0 = Cpu.now(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for proc in pool.map(lambda c: subprocess.run(c, capture_output=True, timeout=600),
                             cmds):
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.decode()[-500:])
    return time.perf_counter() - t0, Cpu.now() - c0


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def event_rows(instance_home: Path, run_ids: list[str],
               since_id: int = 0) -> dict[str, tuple[int, int]]:
    """(rows, bytes) per event type (and asset) that ``run_ids`` wrote: their run shards and
    the index shard (asset events are stored twice on SQLite: in the run's shard and in the
    index), with the events of no run (``report_runless_asset_event``) after ``since_id``."""
    runs = instance_home / "history" / "runs"
    out: dict[str, list[int]] = {}
    for name in [*run_ids, "index"]:
        db = runs / f"{name}.db"
        if not db.is_file():
            continue
        where, params = "", []
        if name == "index":
            where = (f" WHERE run_id IN ({','.join('?' * len(run_ids))}) OR "
                     "(run_id = '' AND id > ?)")
            params = [*run_ids, since_id]
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT coalesce(dagster_event_type, 'log message') || coalesce(' ' || "
                "asset_key, ''), count(*), "
                f"sum(length(event)) FROM event_logs{where} GROUP BY 1", params).fetchall()
        for kind, count, size in rows:
            seen = out.setdefault(f"{kind}{' (index)' if name == 'index' else ''}", [0, 0])
            seen[0] += count
            seen[1] += size or 0
    return {k: (v[0], v[1]) for k, v in sorted(out.items(), key=lambda kv: -kv[1][1])}


def _last_index_id(instance_home: Path) -> int:
    with sqlite3.connect(instance_home / "history" / "runs" / "index.db") as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM event_logs").fetchone()[0])


def print_rows(rows: dict[str, tuple[int, int]], indent: str = "    ") -> None:
    for kind, (count, size) in rows.items():
        print(f"{indent}{kind:<64} {count:>6} rows {size / 1e6:>8.3f} MB")


# --------------------------------------------------------------------------- whole


def mode_whole(args: argparse.Namespace) -> None:
    from anime_pipeline.cli.render import SILENT_LOGS
    from anime_pipeline.definitions import defs
    from anime_pipeline.defs.partitions import clip_range_tags, register_partitions
    from anime_pipeline.defs.resources import RuntimePolicyResource, pipeline_resources
    from anime_pipeline.instance import open_instance
    from anime_pipeline.pipeline.planning import read_compute_plan

    with environment(args.shots, args.shot_ms, args.width, args.height) as env:
        definitions = defs()
        resources = pipeline_resources(env.config, concurrency=args.concurrency)
        # The clips step renders min(requested, policy) at once; the bare side must match.
        policy = RuntimePolicyResource(state_dir=str(env.config.home)).policy()
        concurrency = min(args.concurrency, policy.render_concurrency)
        with open_instance(env.instance_home) as instance:
            register_partitions(instance, env.key, env.shot_ids)
            r = definitions.resolve_job_def("plan_episode").execute_in_process(
                instance=instance, partition_key=env.key, run_config=SILENT_LOGS,
                resources=resources)
            assert r.success
            plan = read_compute_plan(env.store, env.key)
            bare_dir = env.tmp / "bare"
            bare_dir.mkdir()
            cmds = bare_commands(env.bundle, plan, bare_dir)

            bare_1, bare_cpu = run_bare(cmds, concurrency)
            before = folder_bytes(env.instance_home)
            c0, t0 = Cpu.now(), time.perf_counter()
            r = definitions.resolve_job_def("render_clips").execute_in_process(
                instance=instance, tags=clip_range_tags(env.key, env.shot_ids),
                run_config=SILENT_LOGS, resources=resources)
            dagster_s, dagster_cpu = time.perf_counter() - t0, Cpu.now() - c0
            assert r.success
            grew = folder_bytes(env.instance_home) - before
            rows = event_rows(env.instance_home, [r.run_id])
            bare_2, _ = run_bare(cmds, concurrency)

        bare = (bare_1 + bare_2) / 2
        print(f"whole: {describe(env, concurrency)} (asked {args.concurrency}, capped by the "
              "runtime policy)")
        print(f"  bare ffmpeg:             {bare_1:.1f} s, {bare_2:.1f} s (mean {bare:.1f} s); "
              f"{bare_cpu}")
        print(f"  standard path (Dagster): {dagster_s:.1f} s (render_clips: one run, in-process "
              f"executor, decode-verified clips, records, events); {dagster_cpu}")
        print(f"  ratio: {dagster_s / bare:.3f}x   (overhead {dagster_s - bare:+.1f} s, "
              f"{(dagster_s - bare) / len(env.shot_ids) * 1000:+.0f} ms per shot)")
        print(f"  .dagster grew {grew / 1e6:.2f} MB; events of the run:")
        print_rows(rows)


# --------------------------------------------------------------------------- rerender


def _timed_render(env: Env, instance: Any, concurrency: int) -> tuple[float, list[str], Any]:
    from anime_pipeline.cli.render import render_episode

    marks: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    report = render_episode(env.folder, config=env.config, instance=instance,
                            concurrency=concurrency,
                            say=lambda m: marks.append((time.perf_counter(), m)))
    total = time.perf_counter() - t0
    stages = [(t, m.rsplit(": ", 1)[-1].rstrip(".")) for t, m in marks
              if m.startswith(env.key + ": ") and m.endswith("...")]
    ends = [t for t, _ in stages[1:]] + [t0 + total]
    parts = [f"{name} {end - start:.2f} s" for (start, name), end in zip(stages, ends,
                                                                          strict=True)]
    return total, [f"register {stages[0][0] - t0:.2f} s" if stages else "", *parts], report


def mode_rerender(args: argparse.Namespace) -> None:
    from anime_pipeline.cli.render import SILENT_LOGS
    from anime_pipeline.definitions import defs
    from anime_pipeline.defs.partitions import clip_range_tags
    from anime_pipeline.defs.resources import pipeline_resources
    from anime_pipeline.instance import open_instance

    with environment(args.shots, args.shot_ms, args.width, args.height) as env, \
            open_instance(env.instance_home) as instance:
        s0 = folder_bytes(env.instance_home)
        fresh, fresh_stages, first = _timed_render(env, instance, args.concurrency)
        s1 = folder_bytes(env.instance_home)
        last_id = _last_index_id(env.instance_home)
        again, again_stages, second = _timed_render(env, instance, args.concurrency)
        s2 = folder_bytes(env.instance_home)
        rows = event_rows(env.instance_home, list(second.run_ids.values()), last_id)
        # The UI's way: the clips job over the whole range, every clip current.
        resources = pipeline_resources(env.config, concurrency=args.concurrency)
        t0 = time.perf_counter()
        r = defs().resolve_job_def("render_clips").execute_in_process(
            instance=instance, tags=clip_range_tags(env.key, env.shot_ids),
            run_config=SILENT_LOGS, resources=resources)
        ui_s = time.perf_counter() - t0
        assert r.success
        s3 = folder_bytes(env.instance_home)
        ui_rows = event_rows(env.instance_home, [r.run_id])

    n = len(env.shot_ids)
    print(f"rerender: {describe(env, args.concurrency)}")
    print(f"  first render:  {fresh:.2f} s ({', '.join(fresh_stages)}); .dagster "
          f"+{(s1 - s0) / 1e6:.2f} MB; runs {sorted(first.run_ids)}")
    print(f"  nothing changed: {again:.2f} s ({', '.join(again_stages)}); floor ~0 (nothing "
          f"to do), target < 5 s; {again / fresh:.3f}x the first render")
    print(f"    runs {sorted(second.run_ids)}; clip_stats {second.clip_stats.get('cached')} "
          f"cached, {second.clip_stats.get('clips')} rendered")
    print(f"    .dagster grew {(s2 - s1) / 1e6:.3f} MB ({(s2 - s1) / n / 1e3:.2f} kB per "
          "shot); what was written:")
    print_rows(rows, "      ")
    print(f"  render_clips over all {n} current shots (the UI's Materialize): {ui_s:.2f} s; "
          f".dagster grew {(s3 - s2) / 1e6:.3f} MB:")
    print_rows(ui_rows, "      ")


# --------------------------------------------------------------------------- events


def _events_job(way: str, jpeg: bytes) -> Callable[[Any, list[str]], float]:
    """A stand-in for the clips step: the asset spec, partitions, check and backfill policy
    of ``clips``, yielding per shot what ``clips`` yields for a rendered shot."""
    import dagster as dg

    from anime_pipeline.defs import checks
    from anime_pipeline.defs.clips import CLIPS_KEY, clip_materialization
    from anime_pipeline.defs.partitions import clip_partitions, split_clip_key
    from anime_pipeline.domain import checks as quality
    from anime_pipeline.domain.records import ClipRecord, ClipStatus
    from anime_pipeline.pipeline.clips import ClipOutcome

    body: list[float] = []

    def record(key: str) -> ClipRecord:
        episode_key, shot_id = split_clip_key(key)
        return ClipRecord(
            episode_key=episode_key, shot_id=shot_id, status=ClipStatus.ok,
            fingerprint="0" * 64, backend="animatic", fps=12.0, resolution="360p",
            encoder="libx264", render_seconds=0.42, frames=24, width=640, height=360,
            delivery_fps=24.0, size_bytes=60_000, sha256="0" * 64,
            uri=f"/artifacts/{key}.mp4", shot_type="action", duration_ms=1000)

    @dg.multi_asset(
        name="clips", specs=[dg.AssetSpec(CLIPS_KEY, partitions_def=clip_partitions)],
        check_specs=[checks.CLIP_CHECK], partitions_def=clip_partitions, can_subset=True,
        backfill_policy=dg.BackfillPolicy.single_run())
    def stand_in(context):  # type: ignore[no-untyped-def]  # (local dg: no string annotation)
        t0 = time.perf_counter()
        for key in context.partition_keys:
            rec = record(key)
            if way == "add_asset_metadata":
                context.add_asset_metadata({"status": "ok", "shot_id": rec.shot_id},
                                           asset_key=CLIPS_KEY, partition_key=key)
                continue
            yield clip_materialization(ClipOutcome(rec, False, jpeg))
            yield checks.evaluation(quality.clip_rendered_as_planned(rec), asset="clips",
                                    partition=key, warn=True)
        body.append(time.perf_counter() - t0)
        if way == "add_asset_metadata":
            yield dg.MaterializeResult(asset_key=CLIPS_KEY)

    job = dg.Definitions(assets=[stand_in], jobs=[dg.define_asset_job("j", [stand_in])]
                         ).resolve_job_def("j")

    def run(instance: Any, keys: list[str]) -> float:
        from anime_pipeline.cli.render import SILENT_LOGS
        from anime_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG

        r = job.execute_in_process(instance=instance, run_config=SILENT_LOGS, tags={
            RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]})
        assert r.success
        return body[-1]

    return run


def mode_events(args: argparse.Namespace) -> None:
    import dagster as dg

    from anime_pipeline.defs.partitions import CLIPS
    from anime_pipeline.instance import open_instance

    sizes = [int(s) for s in args.partitions.split(",")]
    jpeg = os.urandom(args.preview_bytes)  # a preview's size is what matters here
    ways = ["yield AssetMaterialization + AssetCheckEvaluation"]
    if args.add_metadata:
        ways.append("add_asset_metadata")
    where = "an in-memory instance" if args.memory else "a SQLite instance"
    print(f"events: per shot, on {where} ({os.cpu_count()} CPUs; preview "
          f"{args.preview_bytes} bytes)")
    for way in ways:
        results: list[tuple[int, float, float]] = []
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="render_overhead.") as tmp:
                home = Path(tmp) / "dagster"
                home.mkdir()
                shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
                with (dg.DagsterInstance.ephemeral() if args.memory
                      else open_instance(home)) as instance:
                    keys = [f"studio-a/bench/ep01/S{i:04d}" for i in range(n)]
                    instance.add_dynamic_partitions(CLIPS, keys)
                    run = _events_job("add_asset_metadata" if way == "add_asset_metadata"
                                      else "yield", jpeg)
                    t0 = time.perf_counter()
                    body = run(instance, keys)
                    results.append((n, time.perf_counter() - t0, body))
        base = results[0][1] / results[0][0]
        print(f"  {way}:")
        for n, total, body in results:
            per = total / n
            print(f"    {n:>5} partitions: run {total:7.2f} s = {per * 1000:6.1f} ms per shot "
                  f"(asset body {body / n * 1000:6.1f} ms); per shot / at {results[0][0]}: "
                  f"{per / base:.2f}")


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="whole",
                        choices=["whole", "rerender", "events"])
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--shots", type=int, default=60)
    parser.add_argument("--shot-ms", type=int, default=3000)
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the episode")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--partitions", default="60,500,2000",
                        help="events: the partition counts, comma-separated")
    parser.add_argument("--preview-bytes", type=int, default=6000,
                        help="events: the preview JPEG's size in each materialization")
    parser.add_argument("--add-metadata", action="store_true",
                        help="events: also time context.add_asset_metadata(partition_key=)")
    parser.add_argument("--memory", action="store_true",
                        help="events: an in-memory instance (Dagster's own cost, no disk)")
    args = parser.parse_args()
    if args.preset:
        args.shots, args.shot_ms, w, h = PRESETS[args.preset]
        args.size = f"{w}x{h}"
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    warnings.filterwarnings("ignore")
    {"whole": mode_whole, "rerender": mode_rerender, "events": mode_events}[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
