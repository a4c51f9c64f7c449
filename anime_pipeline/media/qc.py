"""Measurable quality checks with ffmpeg's own detectors: black frames and frozen frames in a
clip (``blackdetect``, ``freezedetect``), silence in a stretch of the mix (``silencedetect``).

One decode per clip (video only) and one per stretch of the mix; each with a timeout scaled to
the media's length. The intervals are in seconds from the start of what was analysed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from anime_pipeline.media import ffmpeg as ff

BLACK_PIXEL_THRESHOLD = 0.10  # a pixel darker than 10 % is black
BLACK_MIN_S = 0.1
FREEZE_NOISE_DB = -60  # frames closer than this are "the same"
FREEZE_MIN_S = 0.5
SILENCE_NOISE_DB = -45
SILENCE_MIN_S = 0.3

_BLACK = re.compile(r"black_start:\s*([\d.]+)\s+black_end:\s*([\d.]+)")
_FREEZE = re.compile(r"lavfi\.freezedetect\.freeze_(start|end):\s*([\d.]+)")
_SILENCE = re.compile(r"silence_(start|end):\s*(-?[\d.]+)")


@dataclass(frozen=True)
class Interval:
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(frozen=True)
class VideoQc:
    black: tuple[Interval, ...]
    frozen: tuple[Interval, ...]


def _pairs(events: list[tuple[str, float]], until: float) -> tuple[Interval, ...]:
    """``start``/``end`` events as intervals; a start with no end lasts ``until``."""
    out: list[Interval] = []
    start: float | None = None
    for kind, t in events:
        if kind == "start":
            start = max(0.0, t)
        elif start is not None:
            out.append(Interval(start, t))
            start = None
    if start is not None:
        out.append(Interval(start, until))
    return tuple(out)


def detect_video(path: str | Path, *, duration_s: float) -> VideoQc:
    """Black and frozen stretches of the clip at ``path``."""
    text = ff.run(["-nostats", "-loglevel", "info", "-i", str(path), "-an", "-vf",
                   f"blackdetect=d={BLACK_MIN_S}:pix_th={BLACK_PIXEL_THRESHOLD},"
                   f"freezedetect=n={FREEZE_NOISE_DB}dB:d={FREEZE_MIN_S}",
                   "-f", "null", "-"], timeout=ff.timeout_for(duration_s))
    black = tuple(Interval(float(a), float(b)) for a, b in _BLACK.findall(text))
    freeze = [(k, float(t)) for k, t in _FREEZE.findall(text)]
    return VideoQc(black, _pairs(freeze, duration_s))


def detect_silence(mix: str | Path, *, start_s: float, duration_s: float) -> tuple[Interval, ...]:
    """Silent stretches of ``mix`` between ``start_s`` and ``start_s + duration_s``, in
    seconds from ``start_s``."""
    text = ff.run(["-nostats", "-loglevel", "info", "-ss", f"{start_s:.3f}",
                   "-t", f"{duration_s:.3f}", "-i", str(mix), "-vn", "-af",
                   f"silencedetect=n={SILENCE_NOISE_DB}dB:d={SILENCE_MIN_S}",
                   "-f", "null", "-"], timeout=ff.timeout_for(duration_s))
    events = [(k, float(t)) for k, t in _SILENCE.findall(text)]
    return _pairs(events, duration_s)
