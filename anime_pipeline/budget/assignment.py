"""CB3, ``assign_backends``: per shot, the ordered backend preference, the retry budget,
the degrade ladder and the segment policy of its allocated tier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from anime_pipeline.budget.allocation import Allocation
from anime_pipeline.budget.complexity import ShotAnalysis
from anime_pipeline.budget.settings import PlanSettings
from anime_pipeline.domain.contracts import (
    BACKEND_ANIMATIC,
    BACKEND_SOURCE_CLIP,
    GENERATIVE_BACKENDS,
)

GENERATIVE_RETRIES = {"critical": 3, "normal": 2, "low": 1}
MAX_RETRIES = 4


@dataclass(frozen=True)
class ShotAssignment:
    backend: str
    backend_preference: list[str]
    retry_budget: int
    degrade_ladder_profile: str
    segment_policy: str
    segment_max_ms: int | None
    segments: int


def segment_policy(limit: int | None) -> str:
    if limit is None:
        return "single_segment"
    if limit <= 1000:
        return f"microshot_split_if_duration_gt_{limit}ms"
    return f"split_if_duration_gt_{limit}ms"


def assign_backends(
    analyses: Sequence[ShotAnalysis],
    allocation: Allocation,
    settings: PlanSettings,
) -> list[ShotAssignment]:
    """CB3: ordered backend preference, retry budget and degrade ladder per shot."""
    grid = allocation.grid
    out: list[ShotAssignment] = []
    restricted = (allocation.restricted.tolist() if allocation.restricted is not None
                  else None)
    choice = allocation.choice.tolist()
    backend_idx = grid.backend_idx.tolist()
    segments = grid.segments.astype(int).tolist()
    for i, a in enumerate(analyses):
        cell = choice[i]
        backend = grid.backends[cell]
        b_i = backend_idx[cell]
        prefs: list[str] = []
        if backend in GENERATIVE_BACKENDS and settings.backend_priority:
            prefs.append(backend)
            prefs += [g for g in settings.generative_backends if g != backend]
        if a.has_source:
            prefs.append(BACKEND_SOURCE_CLIP)
        if a.has_keyframe:
            prefs.append(BACKEND_ANIMATIC)
        generative = backend in GENERATIVE_BACKENDS
        if generative:
            retry = GENERATIVE_RETRIES[a.criticality]
        else:
            retry = 2 if a.critical else 1
        if settings.mode == "final":
            retry = min(MAX_RETRIES, retry + 1)
        preview_only = restricted is not None and bool(restricted[i])
        if a.critical:
            ladder = "DL_CRITICAL_V1"
        elif preview_only:
            ladder = "DL_PREVIEW_V1"
        elif a.complexity == "high":
            ladder = "DL_HIGH_MOTION_V1"
        elif a.complexity == "low":
            ladder = "DL_LOW_MOTION_V1"
        else:
            ladder = "DL_STANDARD_V1"
        limit = grid.segment_max_ms[i][b_i]
        out.append(ShotAssignment(
            backend=backend, backend_preference=prefs, retry_budget=retry,
            degrade_ladder_profile=ladder, segment_policy=segment_policy(limit),
            segment_max_ms=limit, segments=segments[i][b_i],
        ))
    return out
