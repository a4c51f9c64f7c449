"""Audio analysis benchmark: the ``audio_event_manifest``'s decode + analysis against the
decode alone, at two mix lengths, with each one's peak memory.

For each length (default 6 and 24 minutes) a mix like the sample episode's (48 kHz 16-bit
stereo WAV, 120 BPM, the sample's twelve sections over and over; made by
``anime_pipeline.sample.synthesize_mix`` a minute at a time) is written once to a cache
folder (``--cache``, default ``<tmp>/anime_pipeline_bench_audio``). Then, each in a fresh
subprocess, ``--repeat`` times and interleaved:

* ``decode``: the floor, the same ffmpeg command (``audio_io.decode_args``) with its
  stdout drained through the same pipe reader (``ffmpeg.stream_stdout``), nothing done
  with the bytes;
* ``analysis``: what the asset runs, ``pipeline.planning.analyze_audio_file`` (ffmpeg
  decoding in pieces, the streaming analysis working beside it);
* ``side-by-side``: the decode (drained as above) and the analysis of the same samples
  decoded beforehand (``domain.audio.analyze``), run at the same time but not coupled: the
  best the pipeline can do on this machine at that moment. Near ``decode`` when a second
  core is free; near decode + analysis when the machine is busy;
* ``reference`` (with ``--reference``): the analysis as it was before it streamed (the
  whole mix decoded into one array, then analysed; ``anime_pipeline_tests/domain/
  audio_reference.py``).

Reported per length: the median and the best wall time and × real time of each, the ratio
to the decode (the target: analysis >= 500x real time while the decode alone runs at
625-716x),
the CPU time of the Python process and of its ffmpeg child, and the Python process's peak
RSS (``VmHWM``) and how far above its RSS before the call that peak is. Memory is flat when
that does not grow from the short mix to the long one. The timed span starts at the call
(imports excluded) and ends with the result.

Run by hand (the machine is noisy: ratios are measured in the same run)::

    PYTHONPATH=. .venv/bin/python benchmarks/audio.py                  # 6 and 24 minutes
    PYTHONPATH=. .venv/bin/python benchmarks/audio.py --minutes 2 4 --repeat 3 --reference
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RATE = 22050  # the pipeline's analysis rate (pipeline.planning.AUDIO_SAMPLE_RATE)


def write_mix(path: Path, minutes: int) -> Path:
    """A ``minutes``-long 48 kHz stereo WAV, one synthesised minute at a time (temp + rename)."""
    import numpy as np

    from anime_pipeline.sample import SAMPLE_RATE, sample_shots, synthesize_mix

    timeline = [(s["type"], int(s["duration_ms"])) for s in sample_shots(12)]  # 60 s
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        for minute in range(minutes):
            mix = synthesize_mix(timeline, seed=minute, tail_ms=0)
            w.writeframes(np.clip(np.round(mix * 32767.0), -32768, 32767).astype("<i2").tobytes())
    tmp.replace(path)
    return path


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc/self/status, in MiB.

    Not ``ru_maxrss``: Linux carries that over an exec from the process that forked, so a
    child of a big parent would report the parent's size (and ffmpeg's would be ours).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return float("nan")


def child(kind: str, path: str) -> dict[str, Any]:
    """One measurement in this (fresh) process; imports and ffmpeg's version probe first."""
    import numpy as np  # noqa: F401

    from anime_pipeline.media.audio_io import decode_args
    from anime_pipeline.media.ffmpeg import ffmpeg_binary, stream_stdout, timeout_for
    from anime_pipeline.pipeline.planning import analyze_audio_file
    from anime_pipeline_tests.domain import audio_reference as ref

    ffmpeg_binary()  # runs `ffmpeg -version` once, outside the timed span
    timeout = timeout_for(3600.0)
    samples = ref.decode_audio(path, RATE, timeout=timeout) if kind == "side-by-side" else None
    result: dict[str, Any] = {"base_rss_mb": _status_mb("VmRSS")}
    before = resource.getrusage(resource.RUSAGE_SELF)
    kids_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    if kind == "decode":
        total = 0
        for piece in stream_stdout(decode_args(Path(path), RATE), timeout=timeout):
            total += len(piece)
        result["samples"] = total // 4
    elif kind == "side-by-side":
        import threading

        from anime_pipeline.domain.audio import analyze

        def drain() -> None:
            for _ in stream_stdout(decode_args(Path(path), RATE), timeout=timeout):
                pass

        decoder = threading.Thread(target=drain)
        decoder.start()
        a = analyze(samples, RATE)
        decoder.join()
        result.update(samples=a.n_samples, tempo=a.tempo_bpm, onsets=int(a.onset_times.size),
                      beats=int(a.beat_times.size))
    elif kind == "analysis":
        a = analyze_audio_file(path, timeout=timeout)
        result.update(samples=a.n_samples, tempo=a.tempo_bpm, onsets=int(a.onset_times.size),
                      beats=int(a.beat_times.size))
    elif kind == "reference":
        a = ref.analyze(ref.decode_audio(path, RATE, timeout=timeout), RATE)
        result.update(samples=a.n_samples, tempo=a.tempo_bpm, onsets=int(a.onset_times.size),
                      beats=int(a.beat_times.size))
    else:
        raise SystemExit(f"unknown child {kind!r}")
    result["wall_s"] = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(cpu_s=me.ru_utime + me.ru_stime - before.ru_utime - before.ru_stime,
                  ffmpeg_cpu_s=kids.ru_utime + kids.ru_stime - kids_before.ru_utime
                  - kids_before.ru_stime, rss_mb=_status_mb("VmHWM"))
    return result


def run_child(kind: str, path: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], env=env,
                         capture_output=True, text=True, timeout=3600, check=True)
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=int, nargs="+", default=[6, 24])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--reference", action="store_true",
                    help="also time the analysis as it was before it streamed")
    ap.add_argument("--cache", type=Path,
                    default=Path(tempfile.gettempdir()) / "anime_pipeline_bench_audio")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    args.cache.mkdir(parents=True, exist_ok=True)
    kinds = ["decode", "side-by-side", "analysis"] + (["reference"] if args.reference else [])
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    rows = []
    for minutes in args.minutes:
        path = args.cache / f"mix_{minutes}min_48k_stereo.wav"
        if not path.exists():
            t = time.perf_counter()
            write_mix(path, minutes)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) "
                  f"in {time.perf_counter() - t:.1f} s")
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for _ in range(args.repeat):
            for kind in kinds:
                runs[kind].append(run_child(kind, path))
        seconds = minutes * 60.0
        med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
        best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
        for kind, results in runs.items():
            last = results[-1]
            extra = (f" tempo {last['tempo']:.2f}, {last['onsets']} onsets, {last['beats']} beats"
                     if last.get("tempo") is not None else "")
            rows.append((minutes, kind, med[kind], seconds / med[kind], med[kind] / med["decode"],
                         best[kind], seconds / best[kind], best[kind] / best["decode"],
                         statistics.median(r["cpu_s"] for r in results),
                         statistics.median(r["ffmpeg_cpu_s"] for r in results),
                         max(r["rss_mb"] for r in results),
                         max(r["rss_mb"] - r["base_rss_mb"] for r in results), extra))
    print(f"{'':17} {'median':-^24} {'best':-^25}")
    print(f"{'min':>4} {'what':<12} {'wall s':>7} {'x real':>7} {'/decode':>8} "
          f"{'wall s':>8} {'x real':>7} {'/decode':>8} {'py cpu':>7} {'ff cpu':>7} "
          f"{'peak MB':>8} {'+MB':>6}")
    for (m, kind, wall, xrt, ratio, bwall, bxrt, bratio, cpu, ffcpu, rss, grow,
         extra) in rows:
        print(f"{m:>4} {kind:<12} {wall:>7.2f} {xrt:>7.0f} {ratio:>8.2f} {bwall:>8.2f} "
              f"{bxrt:>7.0f} {bratio:>8.2f} {cpu:>7.2f} {ffcpu:>7.2f} {rss:>8.0f} {grow:>6.0f}"
              f"{extra}")
    print(f"{args.repeat} runs each, interleaved; best: the fastest run of each (the one the "
          "rest of the machine disturbed least); py cpu: the Python process in the timed span "
          "(all threads), ff cpu: its ffmpeg child (medians, s); peak MB: the Python process's "
          "peak RSS (VmHWM), +MB: that peak above its RSS when the timed span began (imports "
          "done)")


if __name__ == "__main__":
    main()
