"""Delivery: the composite as a stream copy, one shot changed, nothing changed.

Writes an N-shot episode with the project's sample writer (default 60 shots of 3 s: a
3-minute episode at 1280x720@24), plans it and renders its clips through the pipeline layer
(``pipeline.planning``, ``pipeline.clips``: the same use cases the Dagster assets call,
without a Dagster run around them), delivers it once (that first delivery encodes the mix:
reported, it happens once per episode), then measures, each against a floor measured in
the same run and interleaved with it (the machine is noisy; medians of ``--repeat``):

(a) **composite**: ``write_composite(force=True)`` -- the whole use case: clip files checked
    against their records, the stream copy of the clips and of the encoded mix with the
    subtitles, the verification, the contact sheet, the records -- against a bare
    ``ffmpeg -f concat -safe 0 -i list -c copy out.mp4`` of the same clips (target <= 1.5x).
    Also shown: ``compose`` alone (the mux and its verification) and a bare copy of the
    clips *and* the mix (the same streams as the composite, no subtitles, no checks).
(b) **one shot changed**: the middle shot gets a new keyframe, its clip is rendered again
    (``render_episode_clips``: the other shots are found current and reused) and a new
    composite and ZIP are made; against that shot's render + the bare copy, and the target:
    no more than that shot + 3 s.
(c) **nothing changed**: ``write_composite`` + ``write_package``, both found current (about 0).

Run by hand, never in the test suite::

    PYTHONPATH=. .venv/bin/python benchmarks/delivery.py [--shots 60] [--shot-ms 3000]
        [--repeat 5] [--work DIR]   # DIR: keep the rendered episode for the next run
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shots", type=int, default=60)
    parser.add_argument("--shot-ms", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the episode and its clips here (reused when present)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from anime_pipeline.domain.contracts import ResourceState
    from anime_pipeline.domain.records import PolicyRecord
    from anime_pipeline.media import composite as comp
    from anime_pipeline.media.ffmpeg import ffmpeg_binary, timeout_for
    from anime_pipeline.media.render import Delivery
    from anime_pipeline.media.synth import draw_keyframe
    from anime_pipeline.pipeline import catalog, delivery, planning
    from anime_pipeline.pipeline.clips import (
        RenderEnvironment,
        local_backends,
        render_episode_clips,
    )
    from anime_pipeline.sample import write_sample_episode
    from anime_pipeline.storage import EpisodeKeys, LocalStore

    policy = PolicyRecord(name="BENCH/local", profile_class="LOCAL_CPU_ONLY",
                          encoder="libx264", render_concurrency=2)
    env = RenderEnvironment(concurrency=2, local_concurrency=2, encoder="libx264",
                            policy=policy)
    tmp = tempfile.TemporaryDirectory() if args.work is None else None
    root = Path(tmp.name) if tmp else args.work
    root.mkdir(parents=True, exist_ok=True)
    store = LocalStore(root / "artifacts")
    folder = root / "episode"
    fresh = not (folder / "episode.yaml").is_file()
    if fresh:
        write_sample_episode(folder, n_shots=args.shots, shot_ms=args.shot_ms)
    bundle = catalog.register(store, folder)
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    shot_ids = [s.id for s in ep.shots]
    planning.write_shot_plan(store, bundle)
    planning.write_audio_manifest(store, bundle)
    plan = planning.write_compute_plan(store, bundle, resources=ResourceState(), history=None,
                                       policy=policy)

    def render(ids: list[str]) -> None:
        with store.scratch() as work:
            render_episode_clips(store, bundle, plan, ids, backends=local_backends(), env=env,
                                 work_dir=work)

    t_render = _timed(lambda: render(shot_ids))
    print(f"{len(shot_ids)} shots, {ep.duration_ms / 1000:.0f} s at {ep.format.width}x"
          f"{ep.format.height}@{ep.format.fps:g}, {os.cpu_count()} CPUs; clips rendered "
          f"{'now' if fresh else '(or found current)'} in {t_render:.1f} s")

    lineage = {"run_id": "bench", "partition": ep.key}

    def deliver(force: bool = False) -> tuple[delivery.CompositeOutcome, delivery.PackageOutcome]:
        with store.scratch() as work:
            c = delivery.write_composite(store, bundle, work_dir=work, force=force)
            p = delivery.write_package(store, bundle, work_dir=work, lineage=lineage)
        return c, p

    t0 = time.perf_counter()
    first, _ = deliver(force=True)
    first_s = time.perf_counter() - t0
    mix = store.path(keys.mix)
    print(f"first delivery {first_s:.2f} s (mix {'reused' if first.mix_reused else 'encoded'}:"
          f" once per episode; composite {first.record.size_bytes / 1e6:.1f} MB, verified by "
          f"{first.record.verified_by})")

    bare_dir = root / "bare"
    bare_dir.mkdir(exist_ok=True)
    listing = bare_dir / "list.txt"
    listing.write_text("".join(f"file '{store.path(keys.clip(s))}'\n" for s in shot_ids))
    ffmpeg = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]

    def bare_copy() -> None:
        subprocess.run([*ffmpeg, "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                        str(bare_dir / "copy.mp4")], check=True, timeout=600)

    def bare_copy_with_mix() -> None:
        subprocess.run([*ffmpeg, "-f", "concat", "-safe", "0", "-i", str(listing), "-i",
                        str(mix), "-map", "0:v", "-map", "1:a", "-c", "copy",
                        str(bare_dir / "copy_mix.mp4")], check=True, timeout=600)

    clip_paths = [store.path(keys.clip(s)) for s in shot_ids]
    fmt = Delivery(ep.format.width, ep.format.height, ep.format.fps)
    srt = store.path(keys.subtitles_srt)

    def compose_only() -> None:
        out = bare_dir / "compose.mp4"
        comp.compose(clip_paths, mix, out, work_dir=bare_dir / "work", duration_ms=ep.duration_ms,
                     delivery=fmt, srt=srt, subtitle_language=first.record.subtitle_language,
                     title=ep.title, timeout=timeout_for(ep.duration_ms / 1000),
                     audio_encoded=True, clips_verified=True)

    # (a) ---------------------------------------------------------------- the composite
    runs: dict[str, list[float]] = {"bare": [], "bare+mix": [], "compose": [], "composite": []}
    for _ in range(args.repeat):
        runs["bare"].append(_timed(bare_copy))
        runs["composite"].append(_timed(lambda: deliver_composite(store, bundle, delivery)))
        runs["compose"].append(_timed(compose_only))
        runs["bare+mix"].append(_timed(bare_copy_with_mix))
    bare, bare_min = _median(runs["bare"]), min(runs["bare"])

    def row(label: str, key: str, note: str = "") -> None:
        med, low = _median(runs[key]), min(runs[key])
        print(f"  {label:38s} {med:6.2f} s ({med / bare:.2f}x)   min {low:5.2f} s "
              f"({low / bare_min:.2f}x){note}")

    print("\n(a) composite of the clips (mix already encoded): median, and min, of "
          f"{args.repeat} (ratios: to the floor's median, its min)")
    print(f"  {'bare concat copy of the clips (floor)':38s} {bare:6.2f} s            min "
          f"{bare_min:5.2f} s")
    row("bare concat copy, clips + mix", "bare+mix")
    row("compose (mux + verification)", "compose")
    row("write_composite (the whole use case)", "composite", "   target <= 1.50x")

    # (b) ---------------------------------------------------------------- one shot changed
    half = len(ep.shots) // 2
    middle = next(s for s in [*ep.shots[half:], *ep.shots[:half]] if s.keyframe)
    keyframe = bundle.path(middle.keyframe)  # type: ignore[arg-type]
    shot_s, delivery_s, floor_bare, zip_rebuilt = [], [], [], []
    for i in range(args.repeat):
        draw_keyframe(keyframe, shot_id=middle.id, shot_type=middle.type.value, index=i,
                      seed=1000 + i, width=ep.format.width, height=ep.format.height)
        floor_bare.append(_timed(bare_copy))
        shot_s.append(_timed(lambda: render([middle.id])))
        t0 = time.perf_counter()
        c, p = deliver()
        delivery_s.append(time.perf_counter() - t0)
        assert not c.reused and not p.reused, "a changed shot must re-cut and re-package"
        zip_rebuilt.append(p.record.build_seconds)
    shot, dlv, copy_b = _median(shot_s), _median(delivery_s), _median(floor_bare)
    print(f"\n(b) one shot changed ({middle.id}: new keyframe) -> new composite and ZIP "
          f"(median of {args.repeat}, min)")
    print(f"  that shot's render (pipeline):        {shot:6.2f} s   min {min(shot_s):5.2f} s")
    print(f"  bare concat copy:                     {copy_b:6.2f} s   min {min(floor_bare):5.2f} s")
    print(f"  new composite + ZIP:                  {dlv:6.2f} s   min {min(delivery_s):5.2f} s"
          f"  (ZIP rebuilt in {_median(zip_rebuilt):.2f} s, "
          f"{store.size(keys.package) / 1e6:.1f} MB)")
    print(f"  total {shot + dlv:.2f} s vs shot + copy {shot + copy_b:.2f} s: "
          f"{(shot + dlv) / (shot + copy_b):.2f}x; shot + {dlv:.2f} s (target: shot + 3 s)")

    # (c) ---------------------------------------------------------------- nothing changed
    idle = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        c, p = deliver()
        idle.append(time.perf_counter() - t0)
        assert c.reused and p.reused, "an unchanged episode must be reused"
    print("\n(c) nothing changed: composite + package, both reused")
    print(f"  {_median(idle) * 1000:.0f} ms  ({_median(idle) / bare:.2f}x the bare copy)   "
          f"min {min(idle) * 1000:.0f} ms")
    if tmp:
        tmp.cleanup()
    return 0


def deliver_composite(store: Any, bundle: Any, delivery: Any) -> None:
    with store.scratch() as work:
        delivery.write_composite(store, bundle, work_dir=work, force=True)


if __name__ == "__main__":
    sys.exit(main())
