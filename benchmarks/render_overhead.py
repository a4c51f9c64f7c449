"""Render overhead: the standard Dagster path vs the same ffmpeg commands run bare.

Renders an N-shot episode (default 60 shots of 3 s at 1280x720@24) through the standard
path — the ``render_clips`` job on a real SQLite instance, the episode's partition range in
one run, every clip verified by decoding and recorded — then runs the very same ffmpeg render
command lines bare at the same concurrency (before and after, to average out drift), and
prints the ratio. Run by hand, never in the test suite (timings on shared machines are noisy):

    .venv/bin/python benchmarks/render_overhead.py [--shots 60] [--shot-ms 3000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


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


def run_bare(cmds: list[list[str]], concurrency: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for proc in pool.map(lambda c: subprocess.run(c, capture_output=True, timeout=600),
                             cmds):
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr.decode()[-500:])
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shots", type=int, default=60)
    parser.add_argument("--shot-ms", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from anime_pipeline.cli.render import SILENT_LOGS
    from anime_pipeline.definitions import defs
    from anime_pipeline.defs.partitions import clip_range_tags, register_partitions
    from anime_pipeline.defs.resources import RuntimePolicyResource, pipeline_resources
    from anime_pipeline.instance import open_instance
    from anime_pipeline.pipeline import catalog
    from anime_pipeline.pipeline.planning import read_compute_plan
    from anime_pipeline.sample import write_sample_episode
    from anime_pipeline.settings import PipelineConfig
    from anime_pipeline.storage import LocalStore

    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        config = PipelineConfig(home=tmpd / "home", storage_root=tmpd / "artifacts")
        folder = write_sample_episode(tmpd / "episode", n_shots=args.shots,
                                      shot_ms=args.shot_ms)
        store = LocalStore(config.artifacts)
        bundle = catalog.register(store, folder)
        key = bundle.episode.key
        shot_ids = [s.id for s in bundle.episode.shots]
        definitions = defs()
        resources = pipeline_resources(config, concurrency=args.concurrency)
        # The clips step renders min(requested, policy) at once; the bare side must match.
        policy = RuntimePolicyResource(state_dir=str(config.home)).policy()
        concurrency = min(args.concurrency, policy.render_concurrency)
        with open_instance(tmpd / "dagster") as instance:
            register_partitions(instance, key, shot_ids)
            r = definitions.resolve_job_def("plan_episode").execute_in_process(
                instance=instance, partition_key=key, run_config=SILENT_LOGS,
                resources=resources)
            assert r.success
            plan = read_compute_plan(store, key)
            bare_dir = tmpd / "bare"
            bare_dir.mkdir()
            cmds = bare_commands(bundle, plan, bare_dir)

            bare_1 = run_bare(cmds, concurrency)
            t0 = time.perf_counter()
            r = definitions.resolve_job_def("render_clips").execute_in_process(
                instance=instance, tags=clip_range_tags(key, shot_ids), run_config=SILENT_LOGS,
                resources=resources)
            dagster_s = time.perf_counter() - t0
            assert r.success
            bare_2 = run_bare(cmds, concurrency)

        bare = (bare_1 + bare_2) / 2
        total_ms = args.shots * args.shot_ms
        fmt = bundle.episode.format
        print(f"{args.shots} shots, {total_ms / 1000:.0f} s of video, "
              f"{fmt.width}x{fmt.height}@{fmt.fps:g}, concurrency {concurrency} "
              f"(asked {args.concurrency}, capped by the runtime policy), "
              f"{os.cpu_count()} CPUs")
        print(f"bare ffmpeg:             {bare_1:.1f} s, {bare_2:.1f} s (mean {bare:.1f} s)")
        print(f"standard path (Dagster): {dagster_s:.1f} s "
              "(one run, in-process executor: run start, decode-verified clips, records)")
        print(f"ratio: {dagster_s / bare:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
