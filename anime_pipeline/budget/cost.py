"""Cost model: how many render-seconds a shot costs at a given fps, resolution and backend.

The budget (``budget.max_gpu_minutes``) counts *render-slot seconds*: GPU seconds for the
generative backends and worker seconds for the local ffmpeg backends (both hold a render
slot; the local ones are simply ~40x cheaper). Retries are not counted: a failing shot
walks its degrade ladder, whose steps are cheaper than the planned render.

Default model (no history)::

    gpu_sec = segments * overhead[backend]
            + duration_s * fps * sec_per_frame[backend] * (height / 720) ** 2

With history (past clip materializations), the estimate comes from the most specific
group that has records, median of each group:

1. ``history_exact``  (backend, shot_type, fps, resolution): median render_seconds per
   second of shot, times the shot's duration;
2. ``history_type``   (backend, shot_type): median seconds per 720p-equivalent frame;
3. ``history_backend`` (backend): the same, over all shot types;
4. ``default``: the table below.

History rates already include each clip's fixed overhead, so only the overhead of extra
segments (beyond the first) is added to them.

History records are dicts or typed clip metadata
(:class:`~anime_pipeline.domain.records.ClipMetadata`, or anything with the same
attributes); a clip that was not really rendered (reused from the cache, or a placeholder
slate) says nothing about a backend's cost and is skipped.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from anime_pipeline.domain.contracts import RESOLUTION_TIERS

REFERENCE_HEIGHT = 720
PIXEL_EXPONENT = 2.0  # cost grows with the pixel count: (h / 720) ** 2


@dataclass(frozen=True)
class BackendCost:
    sec_per_frame_720p: float  # render seconds per generated frame at 720p
    overhead_sec: float  # fixed cost per segment (model warm-up, ffmpeg start, fetch)


DEFAULT_BACKEND_COSTS: dict[str, BackendCost] = {
    "wan_i2v": BackendCost(sec_per_frame_720p=1.6, overhead_sec=6.0),
    "comfyui_i2v": BackendCost(sec_per_frame_720p=0.9, overhead_sec=4.0),
    "animatic": BackendCost(sec_per_frame_720p=0.04, overhead_sec=0.5),
    "source_clip": BackendCost(sec_per_frame_720p=0.01, overhead_sec=1.0),
    "placeholder": BackendCost(sec_per_frame_720p=0.005, overhead_sec=0.2),
}
#: an unknown backend costs like the most expensive generative one
UNKNOWN_BACKEND_COST = BackendCost(sec_per_frame_720p=1.6, overhead_sec=6.0)


def pixel_factor(height: float) -> float:
    return float((height / REFERENCE_HEIGHT) ** PIXEL_EXPONENT)


def _fps_key(fps: float) -> float:
    return round(float(fps), 3)


_FIELDS = ("backend", "shot_type", "fps", "resolution", "render_seconds", "duration_ms")


class ClipTiming(Protocol):
    """What a history record needs, read by attribute (e.g. ``ClipMetadata``)."""

    @property
    def backend(self) -> str: ...
    @property
    def shot_type(self) -> str: ...
    @property
    def fps(self) -> float: ...
    @property
    def resolution(self) -> str: ...
    @property
    def render_seconds(self) -> float: ...
    @property
    def duration_ms(self) -> int: ...


HistoryRecord = Mapping[str, Any] | ClipTiming


def _fields(rec: Any) -> tuple[Any, ...]:
    """The record's six fields; KeyError when one is missing."""
    if isinstance(rec, Mapping):
        return tuple(rec[k] for k in _FIELDS)
    try:
        return tuple(getattr(rec, k) for k in _FIELDS)
    except AttributeError as e:
        raise KeyError(str(e)) from None


def _not_rendered(rec: Any) -> bool:
    """A reused (cached) clip or a placeholder slate: no render time to learn from."""
    if isinstance(rec, Mapping):
        return bool(rec.get("cached")) or bool(rec.get("placeholder")) \
            or rec.get("status") == "placeholder"
    return bool(getattr(rec, "cached", False)) or bool(getattr(rec, "placeholder", False))


@dataclass
class CostHistory:
    """Past render times grouped by backend, shot type, fps and resolution."""

    exact: dict[tuple[str, str, float, str], float] = field(default_factory=dict)
    by_type: dict[tuple[str, str], float] = field(default_factory=dict)
    by_backend: dict[str, float] = field(default_factory=dict)
    records: int = 0
    rejected: int = 0
    skipped: int = 0  # clips not really rendered (cached, placeholder)

    @classmethod
    def from_records(cls, records: Iterable[HistoryRecord]) -> CostHistory:
        """Build from ``{"backend","shot_type","fps","resolution","render_seconds",
        "duration_ms"}`` dicts or objects with those attributes (``ClipMetadata``);
        malformed records are counted in ``rejected``, cached or placeholder clips in
        ``skipped``."""
        exact: dict[tuple[str, str, float, str], list[float]] = defaultdict(list)
        by_type: dict[tuple[str, str], list[float]] = defaultdict(list)
        by_backend: dict[str, list[float]] = defaultdict(list)
        n = bad = skipped = 0
        for rec in records:
            if _not_rendered(rec):
                skipped += 1
                continue
            try:
                backend_v, type_v, fps_v, res_v, secs_v, dur_v = _fields(rec)
                backend = str(backend_v)
                shot_type = str(getattr(type_v, "value", type_v))
                fps = float(fps_v)
                res = str(res_v)
                secs = float(secs_v)
                dur_s = float(dur_v) / 1000.0
            except (KeyError, TypeError, ValueError):
                bad += 1
                continue
            if (
                res not in RESOLUTION_TIERS
                or not all(math.isfinite(x) for x in (fps, secs, dur_s))
                or fps <= 0
                or dur_s <= 0
                or secs < 0
            ):
                bad += 1
                continue
            n += 1
            exact[(backend, shot_type, _fps_key(fps), res)].append(secs / dur_s)
            per_frame = secs / (dur_s * fps * pixel_factor(RESOLUTION_TIERS[res]))
            by_type[(backend, shot_type)].append(per_frame)
            by_backend[backend].append(per_frame)
        med = statistics.median
        return cls(
            exact={k: med(v) for k, v in exact.items()},
            by_type={k: med(v) for k, v in by_type.items()},
            by_backend={k: med(v) for k, v in by_backend.items()},
            records=n,
            rejected=bad,
            skipped=skipped,
        )

    def __len__(self) -> int:
        return self.records


def rate_per_second(
    backend: str,
    shot_type: str,
    fps: float,
    resolution: str,
    history: CostHistory | None,
) -> tuple[float, float, str]:
    """(render seconds per second of shot, overhead per *extra* segment or per segment,
    source). For the default model the overhead is charged per segment; for history
    sources it is charged per segment beyond the first (see the module docstring)."""
    costs = DEFAULT_BACKEND_COSTS.get(backend, UNKNOWN_BACKEND_COST)
    pf = pixel_factor(RESOLUTION_TIERS[resolution])
    if history is not None and history.records:
        hit = history.exact.get((backend, shot_type, _fps_key(fps), resolution))
        if hit is not None:
            return hit, costs.overhead_sec, "history_exact"
        per_frame = history.by_type.get((backend, shot_type))
        if per_frame is not None:
            return per_frame * fps * pf, costs.overhead_sec, "history_type"
        per_frame = history.by_backend.get(backend)
        if per_frame is not None:
            return per_frame * fps * pf, costs.overhead_sec, "history_backend"
    return costs.sec_per_frame_720p * fps * pf, costs.overhead_sec, "default"


def estimate_gpu_sec(
    backend: str,
    shot_type: str,
    fps: float,
    resolution: str,
    duration_ms: int,
    segments: int = 1,
    history: CostHistory | None = None,
) -> float:
    """Estimated render seconds of one shot (not rounded)."""
    rate, overhead, source = rate_per_second(backend, shot_type, fps, resolution, history)
    extra_segments = segments if source == "default" else max(0, segments - 1)
    return rate * duration_ms / 1000.0 + overhead * extra_segments
