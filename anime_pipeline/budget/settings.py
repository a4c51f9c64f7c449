"""Plan settings: everything the steps need besides the shots, resolved once from the
episode, the creative control and the resource state (profile, caps, flags, SLA, queue)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from anime_pipeline.budget.plan import Mode, Profile, ProfileSource, Tier
from anime_pipeline.domain.contracts import (
    GENERATIVE_BACKENDS,
    RESOLUTION_TIERS,
    ResourceState,
    tier_for_height,
)
from anime_pipeline.domain.episode import CreativeControl, Episode

# ---------------------------------------------------------------- profile tables
PROFILE_BASELINE_FPS = {"LOW": 8.0, "MEDIUM": 12.0, "HIGH": 24.0}
PROFILE_BASE_RESOLUTION = {"LOW": "480p", "MEDIUM": "540p", "HIGH": "720p"}
PROFILE_CEILING_RESOLUTION = {"LOW": "540p", "MEDIUM": "720p", "HIGH": "1080p"}
PROFILES: tuple[Profile, ...] = ("LOW", "MEDIUM", "HIGH")

CONGESTION_QUEUE_DEPTH = 4
AVG_QUEUED_RUN_SEC = 60.0


class PlanningError(Exception):
    """An input the budgeter cannot plan (the plan ends in FAILED with this reason)."""


@dataclass(frozen=True)
class PlanSettings:
    """Everything the steps need besides the shots, resolved once from the inputs."""

    profile: Profile
    profile_source: ProfileSource
    mode: Mode
    shot_level_budget: bool
    dynamic_fps: bool
    backend_priority: bool
    delivery_fps: float
    delivery_height: int
    fps_cap: float
    baseline_fps: float
    base_tier: Tier
    ceiling_tier: Tier
    min_fps: float | None
    prefer_smooth_motion: bool
    generative_backends: tuple[str, ...]
    budget_sec: float | None
    now: datetime
    deadline: datetime | None
    parallelism: int
    queue_depth: int
    queue_delay_sec: float
    congested: bool

    @property
    def flags(self) -> dict[str, bool]:
        return {
            "enable_shot_level_budget": self.shot_level_budget,
            "enable_dynamic_fps": self.dynamic_fps,
            "enable_backend_priority_assignment": self.backend_priority,
        }


def derive_profile(resources: ResourceState) -> Profile:
    """Global profile when creative control gives none: no GPU -> LOW; 2+ GPUs or at least
    40 GB free VRAM -> HIGH; otherwise MEDIUM; one step lower when the runtime policy is
    degraded."""
    if resources.gpu_count <= 0:
        level = 0
    elif resources.gpu_count >= 2 or (resources.vram_free_mb or 0) >= 40_000:
        level = 2
    else:
        level = 1
    if resources.policy_degraded:
        level = max(0, level - 1)
    return PROFILES[level]


def _extra_float(resources: ResourceState, key: str, default: float) -> float:
    value = resources.extra.get(key, default) if resources.extra else default
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) and out >= 0 else default


def resolve_settings(
    episode: Episode,
    creative: CreativeControl,
    resources: ResourceState | None = None,
    now: datetime | None = None,
) -> PlanSettings:
    resources = resources or ResourceState()
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise PlanningError("`now` must be timezone-aware")
    profile: Profile
    source: ProfileSource
    if creative.global_profile is not None:
        profile, source = cast(Profile, creative.global_profile.value), "creative_control"
    else:
        profile, source = derive_profile(resources), "resources"
    delivery_fps = float(episode.format.fps)
    fps_cap = delivery_fps
    if resources.max_fps is not None and resources.max_fps > 0:
        fps_cap = min(fps_cap, float(resources.max_fps))
    ceiling_h = min(RESOLUTION_TIERS[PROFILE_CEILING_RESOLUTION[profile]],
                    RESOLUTION_TIERS[tier_for_height(episode.format.height)])
    if resources.max_resolution in RESOLUTION_TIERS:
        ceiling_h = min(ceiling_h, RESOLUTION_TIERS[str(resources.max_resolution)])
    ceiling = cast(Tier, tier_for_height(ceiling_h))
    base = cast(Tier, tier_for_height(min(RESOLUTION_TIERS[PROFILE_BASE_RESOLUTION[profile]],
                                          ceiling_h)))
    flags = creative.feature_flags
    available = set(resources.available_backends)
    generative = tuple(b for b in GENERATIVE_BACKENDS if b in available)
    max_min = creative.budget.max_gpu_minutes
    parallelism = max(1, int(resources.workers_available))
    depth = max(0, int(resources.gpu_queue_depth))
    avg_run = _extra_float(resources, "avg_queued_run_seconds", AVG_QUEUED_RUN_SEC)
    congestion = _extra_float(resources, "congestion_queue_depth", CONGESTION_QUEUE_DEPTH)
    return PlanSettings(
        profile=profile,
        profile_source=source,
        mode=cast(Mode, creative.mode.value),
        shot_level_budget=flags.enable_shot_level_budget,
        dynamic_fps=flags.enable_dynamic_fps,
        backend_priority=flags.enable_backend_priority_assignment,
        delivery_fps=delivery_fps,
        delivery_height=episode.format.height,
        fps_cap=fps_cap,
        baseline_fps=min(PROFILE_BASELINE_FPS[profile], fps_cap),
        base_tier=base,
        ceiling_tier=ceiling,
        min_fps=creative.style.min_fps,
        prefer_smooth_motion=creative.style.prefer_smooth_motion,
        generative_backends=generative,
        budget_sec=None if max_min is None else float(max_min) * 60.0,
        now=now,
        deadline=creative.sla.deadline,
        parallelism=parallelism,
        queue_depth=depth,
        queue_delay_sec=depth * avg_run / parallelism,
        congested=depth >= congestion,
    )
