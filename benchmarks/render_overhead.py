"""Render overhead: the standard Dagster path vs the same ffmpeg commands run bare.

Renders an N-shot episode (default 60 shots of 3 s at 1280x720@24) through the standard
path (`render_clips` job on a real instance, the partition range of one episode in one
run), then runs the very same ffmpeg command lines bare at the same concurrency, and
prints the ratio. Run by hand:

    python benchmarks/render_overhead.py [--shots 60] [--concurrency 4]

Never part of the test suite: timings on shared machines are noisy.
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


def bare_commands(folder: Path, plan: dict, out_dir: Path) -> list[list[str]]:
    """The exact ffmpeg command lines the backends issue for each shot of the plan."""
    from anime_pipeline.backends import _delivery, _generation
    from anime_pipeline.domain.episode import load_episode
    from anime_pipeline.domain.rendering import RenderSpec, ShotJob
    from anime_pipeline.media import render as media
    from anime_pipeline.media.ffmpeg import ffmpeg_binary

    bundle = load_episode(folder)
    cmds = []
    for entry in plan["shots"]:
        shot = bundle.episode.shot(entry["shot_id"])
        spec = RenderSpec(entry["backend_preference"][0], float(entry["target_fps"]),
                          entry["target_resolution"])
        job = ShotJob(shot, bundle.root, bundle.episode.format, spec,
                      thumbnail=out_dir / f"{shot.id}.jpg")
        out = out_dir / f"{shot.id}.mp4"
        if spec.backend == "source_clip" and shot.source:
            args = media.source_clip_args(
                str(bundle.root / shot.source.uri), out, in_ms=shot.source.in_ms,
                duration_ms=shot.duration_ms, gen=_generation(job),
                delivery=_delivery(job.delivery), thumbnail=job.thumbnail)
        else:
            args = media.animatic_args(
                bundle.root / shot.keyframe, out, duration_ms=shot.duration_ms,
                move=shot.camera.move.value, strength=shot.camera.strength,
                gen=_generation(job), delivery=_delivery(job.delivery), thumbnail=job.thumbnail)
        cmds.append([ffmpeg_binary(), "-hide_banner", "-nostdin", "-y", *args])
    return cmds


def run_bare(cmds: list[list[str]], concurrency: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for proc in pool.map(lambda c: subprocess.run(c, capture_output=True), cmds):
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

    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        os.environ["ANIME_PIPELINE_STORAGE"] = str(tmpd / "artifacts")
        os.environ["ANIME_PIPELINE_RENDER_CONCURRENCY"] = str(args.concurrency)
        import dagster as dg

        from anime_pipeline import steps
        from anime_pipeline.definitions import defs
        from anime_pipeline.defs.partitions import clip_range_tags, register_partitions
        from anime_pipeline.defs.resources import storage_from_env
        from anime_pipeline.sample import write_sample_episode
        from anime_pipeline.storage import EpisodeKeys, get_json

        folder = write_sample_episode(tmpd / "episode", n_shots=args.shots, shot_ms=args.shot_ms)
        store = storage_from_env().store()
        bundle = steps.register_episode(store, folder)
        key = bundle.episode.key
        shot_ids = [s.id for s in bundle.episode.shots]
        definitions = defs()
        quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
        from dagster._core.instance.ref import InstanceRef

        (tmpd / "dagster").mkdir()
        (tmpd / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["ANIME_PIPELINE_HOME"] = str(tmpd / "home")
        from anime_pipeline.defs.runtime import current_policy

        # The clips step renders min(requested, policy) at once; the bare side must match.
        concurrency = min(args.concurrency, current_policy().render_concurrency)
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmpd / "dagster"))) as instance:
            register_partitions(instance, key, shot_ids)
            r = definitions.resolve_job_def("plan_episode").execute_in_process(
                instance=instance, partition_key=key, run_config=quiet)
            assert r.success
            plan = get_json(store, EpisodeKeys(key).compute_plan)
            bare_dir = tmpd / "bare"
            bare_dir.mkdir()
            cmds = bare_commands(folder, plan, bare_dir)

            bare_1 = run_bare(cmds, concurrency)
            t0 = time.perf_counter()
            r = definitions.resolve_job_def("render_clips").execute_in_process(
                instance=instance, tags=clip_range_tags(key, shot_ids), run_config=quiet)
            dagster_s = time.perf_counter() - t0
            assert r.success
            bare_2 = run_bare(cmds, concurrency)

        bare = (bare_1 + bare_2) / 2
        total_ms = args.shots * args.shot_ms
        print(f"{args.shots} shots, {total_ms / 1000:.0f} s of video, "
              f"{bundle.episode.format.width}x{bundle.episode.format.height}"
              f"@{bundle.episode.format.fps:g}, concurrency {concurrency} "
              f"(asked {args.concurrency}, capped by the runtime policy), "
              f"{os.cpu_count()} CPUs")
        print(f"bare ffmpeg:            {bare_1:.1f} s, {bare_2:.1f} s (mean {bare:.1f} s)")
        print(f"standard path (Dagster): {dagster_s:.1f} s "
              "(one run, in-process executor, incl. run start and per-clip records)")
        print(f"ratio: {dagster_s / bare:.2f}x  (target <= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
