"""The compute-aware shot budgeter: a small state machine over four steps.

INIT -> ANALYZING_COMPLEXITY (CB1) -> ALLOCATING_BUDGET (CB2) -> ASSIGNING_BACKENDS (CB3)
-> REBALANCING_SLA (CB4) -> COMPUTE_PLAN_READY, or FAILED with a reason.

Each step is a plain function that can be called (and tested) on its own:
:func:`analyze_complexity`, :func:`allocate_budget`, :func:`assign_backends`,
:func:`rebalance_sla`. :func:`build_compute_plan` runs them in order and assembles the
JSON-ready plan (schema: ``compute_plan.schema.json``). No Dagster import here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from anime_pipeline.budget.cost import DEFAULT_BACKEND_COSTS, CostHistory, rate_per_second
from anime_pipeline.budget.ladders import ladders_json
from anime_pipeline.budget.solver import Solution, pareto_front, solve_mckp, solve_uniform
from anime_pipeline.domain.contracts import (
    BACKEND_ANIMATIC,
    BACKEND_SOURCE_CLIP,
    GENERATIVE_BACKENDS,
    RESOLUTION_TIERS,
    ResourceState,
    tier_for_height,
)
from anime_pipeline.domain.episode import CreativeControl, Episode, Shot

PLAN_VERSION = "1.0"

STATE_INIT = "INIT"
STATE_ANALYZING = "ANALYZING_COMPLEXITY"
STATE_ALLOCATING = "ALLOCATING_BUDGET"
STATE_ASSIGNING = "ASSIGNING_BACKENDS"
STATE_REBALANCING = "REBALANCING_SLA"
STATE_READY = "COMPUTE_PLAN_READY"
STATE_FAILED = "FAILED"

STATUS_READY = "compute_plan_ready"
STATUS_REBALANCE = "rebalance_required"
STATUS_FAILED = "failed"

# ---------------------------------------------------------------- profile tables
PROFILE_BASELINE_FPS = {"LOW": 8.0, "MEDIUM": 12.0, "HIGH": 24.0}
PROFILE_BASE_RESOLUTION = {"LOW": "480p", "MEDIUM": "540p", "HIGH": "720p"}
PROFILE_CEILING_RESOLUTION = {"LOW": "540p", "MEDIUM": "720p", "HIGH": "1080p"}
PROFILES = ("LOW", "MEDIUM", "HIGH")

FPS_CAP_FACTOR = {"low": 0.5, "medium": 1.0, "high": 2.0}  # x baseline, with dynamic fps
FPS_LADDER = (6.0, 8.0, 12.0, 16.0, 24.0, 30.0, 48.0, 60.0)
MIN_FPS = 6.0
MIN_CANDIDATE_HEIGHT = 360
PREVIEW_ONLY_FPS = 6.0
PREVIEW_ONLY_TIER = "240p"

# ---------------------------------------------------------------- CB1 tables
TYPE_BASE = {"action": 0.45, "transition": 0.25, "establishing": 0.15, "insert": 0.10,
             "dialogue": 0.05}
CAMERA_WEIGHT = {"static": 0.0, "push_in": 0.10, "pull_out": 0.10, "pan_left": 0.12,
                 "pan_right": 0.12, "tilt_up": 0.12, "tilt_down": 0.12, "shake": 0.25}
DENSITY_SATURATION = 4.0  # onsets per second that count as "full" action
COMPLEXITY_THRESHOLDS = (0.30, 0.55)  # score < 0.30 low, < 0.55 medium, else high
OPENING_MIN_MS = 5000
OPENING_FRACTION = 0.10
OPENING_MAX_MS = 30000

# ---------------------------------------------------------------- value model
IMPORTANCE = {"low": 0.6, "normal": 1.0, "critical": 2.0}
OPENING_BONUS = 1.3
BACKEND_QUALITY = {"wan_i2v": 1.0, "comfyui_i2v": 0.85, BACKEND_SOURCE_CLIP: 1.0,
                   BACKEND_ANIMATIC: 0.4}
MOTION_TAU = {"low": 4.0, "medium": 8.0, "high": 14.0}  # fps at which motion saturates
MOTION_WEIGHT = {"low": 0.25, "medium": 0.45, "high": 0.65}  # share of motion vs detail
SMOOTH_MOTION_TAU_FACTOR = 1.5
REFERENCE_FPS = 24.0
REFERENCE_HEIGHT = 1080

# ---------------------------------------------------------------- CB3/CB4 tables
SEGMENT_MAX_MS = {"high": 1000, "medium": 4000, "low": None}
GENERATIVE_SEGMENT_MAX_MS = 5000
CONGESTION_QUEUE_DEPTH = 4
AVG_QUEUED_RUN_SEC = 60.0
PRIORITY_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
COMPLEXITIES = ("low", "medium", "high")

_BUDGET_MARGIN_SEC = 0.005  # half a centisecond: costs are rounded up to 0.01 s


class PlanningError(Exception):
    """An input the budgeter cannot plan (the plan ends in FAILED with this reason)."""


# ============================================================================ settings


@dataclass(frozen=True)
class PlanSettings:
    """Everything the steps need besides the shots, resolved once from the inputs."""

    profile: str
    profile_source: str
    mode: str
    shot_level_budget: bool
    dynamic_fps: bool
    backend_priority: bool
    delivery_fps: float
    delivery_height: int
    fps_cap: float
    baseline_fps: float
    base_tier: str
    ceiling_tier: str
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


def derive_profile(resources: ResourceState) -> str:
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
    if creative.global_profile is not None:
        profile, source = str(creative.global_profile.value), "creative_control"
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
    ceiling = tier_for_height(ceiling_h)
    base = tier_for_height(min(RESOLUTION_TIERS[PROFILE_BASE_RESOLUTION[profile]], ceiling_h))
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
        mode=str(creative.mode.value),
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


# ============================================================================ CB1


@dataclass(frozen=True)
class ShotAnalysis:
    shot_id: str
    index: int
    shot_type: str
    duration_ms: int
    start_ms: int
    criticality: str
    complexity: str
    complexity_score: float
    critical: bool
    degradable: bool
    opening: bool
    render_priority: str
    has_source: bool
    has_keyframe: bool
    event_density: float
    peak_energy: float
    in_manifest: bool
    weight: float  # value weight: duration x importance x opening bonus


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


def _manifest_shots(audio_manifest: Any, warnings: list[str]) -> dict[str, Mapping[str, Any]]:
    if audio_manifest is None:
        warnings.append("no audio manifest: every shot treated as silence")
        return {}
    if not isinstance(audio_manifest, Mapping):
        raise PlanningError("audio manifest must be a JSON object")
    shots = audio_manifest.get("shots", [])
    if not isinstance(shots, list):
        warnings.append("audio manifest `shots` is not a list: every shot treated as silence")
        return {}
    out: dict[str, Mapping[str, Any]] = {}
    for entry in shots:
        if isinstance(entry, Mapping) and isinstance(entry.get("shot_id"), str):
            out[entry["shot_id"]] = entry
    return out


def complexity_score(shot: Shot, event_density: float, peak_energy: float) -> float:
    """Motion complexity in [0, ~1.3]: shot type + camera move + audio action + duration."""
    score = TYPE_BASE.get(str(shot.type.value), 0.2)
    score += CAMERA_WEIGHT.get(str(shot.camera.move.value), 0.1) * (0.5 + shot.camera.strength)
    score += 0.25 * min(1.0, max(0.0, event_density) / DENSITY_SATURATION)
    score += 0.15 * min(1.0, max(0.0, peak_energy))
    if shot.duration_ms < 1500:
        score += 0.05  # quick cuts read as fast action
    elif shot.duration_ms > 8000:
        score -= 0.05  # long takes are usually calm
    return round(max(0.0, score), 4)


def complexity_level(score: float) -> str:
    low, medium = COMPLEXITY_THRESHOLDS
    return "low" if score < low else "medium" if score < medium else "high"


def analyze_complexity(
    episode: Episode,
    audio_manifest: Mapping[str, Any] | None,
    warnings: list[str] | None = None,
) -> list[ShotAnalysis]:
    """CB1: per shot, motion complexity low/medium/high; critical, degradable, opening."""
    warnings = warnings if warnings is not None else []
    ids = [s.id for s in episode.shots]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PlanningError(f"duplicate shot ids: {', '.join(dup)}")
    by_id = _manifest_shots(audio_manifest, warnings)
    if isinstance(audio_manifest, Mapping):
        key = audio_manifest.get("episode_key")
        if key is not None and key != episode.key:
            warnings.append(f"audio manifest is for {key!r}, not {episode.key!r}")
        unknown = sorted(set(by_id) - set(ids))
        if unknown:
            warnings.append(f"audio manifest has shots not in the episode: {unknown[:10]}")
    total_ms = episode.duration_ms
    opening_ms = min(OPENING_MAX_MS, max(OPENING_MIN_MS, OPENING_FRACTION * total_ms))
    missing: list[str] = []
    out: list[ShotAnalysis] = []
    start = 0
    for i, shot in enumerate(episode.shots):
        entry = by_id.get(shot.id)
        if entry is None:
            missing.append(shot.id)
            density = energy = 0.0
        else:
            density = max(0.0, _num(entry.get("event_density")))
            energy = min(1.0, max(0.0, _num(entry.get("peak_energy"))))
        score = complexity_score(shot, density, energy)
        crit = str(shot.criticality.value)
        critical = crit == "critical"
        opening = i == 0 or start < opening_ms
        priority = ("critical" if critical else "high" if opening
                    else "low" if crit == "low" else "normal")
        weight = shot.duration_ms / 1000.0 * IMPORTANCE[crit] * (OPENING_BONUS if opening else 1)
        out.append(ShotAnalysis(
            shot_id=shot.id, index=i, shot_type=str(shot.type.value),
            duration_ms=shot.duration_ms, start_ms=start, criticality=crit,
            complexity=complexity_level(score), complexity_score=score, critical=critical,
            degradable=not critical, opening=opening, render_priority=priority,
            has_source=shot.source is not None, has_keyframe=shot.keyframe is not None,
            event_density=round(density, 4), peak_energy=round(energy, 4),
            in_manifest=entry is not None, weight=weight,
        ))
        start += shot.duration_ms
    if missing and by_id:
        warnings.append(f"{len(missing)} shot(s) missing from the audio manifest, treated as "
                        f"silence: {missing[:10]}")
    return out


# ============================================================================ CB2


@dataclass
class CandidateGrid:
    """The candidate tiers of every shot: a full fps x resolution x backend grid of
    ``M`` cells, with per-shot masks expressed as infinite costs."""

    fps: np.ndarray  # (M,)
    tiers: list[str]  # (M,) tier names
    heights: np.ndarray  # (M,)
    backends: list[str]  # (M,)
    backend_idx: np.ndarray  # (M,)
    backend_names: list[str]
    fps_values: np.ndarray  # sorted distinct fps of the grid
    tier_values: list[str]  # sorted tiers of the grid
    cost: np.ndarray  # (n, M) render seconds, inf = not a candidate
    value: np.ndarray  # (n, M)
    cost_source: list[list[str]]  # per shot type index, per cell
    type_idx: np.ndarray  # (n,)
    segments: np.ndarray  # (n, B) segment count per backend
    segment_max_ms: list[list[int | None]]  # (n, B)
    floor_fps: np.ndarray  # (n,)
    cap_fps: np.ndarray  # (n,)
    floor_h: np.ndarray  # (n,)
    cap_h: np.ndarray  # (n,)

    def cell(self, fps_i: int, tier_i: int, backend_i: int) -> int:
        return (fps_i * len(self.tier_values) + tier_i) * len(self.backend_names) + backend_i


@dataclass
class Allocation:
    grid: CandidateGrid
    choice: np.ndarray  # (n,) chosen cell
    charged: np.ndarray  # (n,) seconds charged to the budget (preview + final when staged)
    preview_cell: np.ndarray  # (n,) cheapest cell: the preview tier
    solution: Solution
    budget_sec: float | None
    staged: bool = False
    restricted: np.ndarray | None = None  # (n,) bool: secondary shot kept at preview tier


def _snap_fps(value: float) -> float:
    return float(round(value, 3))


def shot_fps_range(a: ShotAnalysis, s: PlanSettings) -> tuple[float, float]:
    """(floor, cap) of a shot's generation fps. Generation fps never exceeds the delivery
    fps (clips are conformed up to it) nor the runtime's max_fps."""
    lowest = min(MIN_FPS, s.fps_cap)
    if not s.dynamic_fps:
        fixed = min(max(s.baseline_fps, s.min_fps or 0.0), s.fps_cap)
        return fixed, fixed
    # the profile's baseline for medium shots; low ones lowered, high ones raised
    cap = s.baseline_fps * FPS_CAP_FACTOR[a.complexity]
    cap = max([f for f in FPS_LADDER if f <= cap] or [cap])  # snap onto the ladder
    floor = max(lowest, s.min_fps or 0.0)
    if a.critical:
        floor = max(floor, s.baseline_fps)
    cap = max(cap, floor)
    cap = min(cap, s.fps_cap)
    floor = min(floor, cap)
    return _snap_fps(floor), _snap_fps(cap)


def _grid_heights(s: PlanSettings) -> list[str]:
    ceiling_h = RESOLUTION_TIERS[s.ceiling_tier]
    tiers = [t for t, h in RESOLUTION_TIERS.items() if MIN_CANDIDATE_HEIGHT <= h <= ceiling_h]
    return tiers or [s.ceiling_tier]


def shot_height_range(a: ShotAnalysis, s: PlanSettings) -> tuple[int, int]:
    tiers = _grid_heights(s)
    lo = RESOLUTION_TIERS[tiers[0]]
    cap = RESOLUTION_TIERS[s.ceiling_tier]
    floor = lo
    if a.critical or s.mode == "final":
        floor = max(lo, RESOLUTION_TIERS[s.base_tier])
    return min(floor, cap), cap


def segment_max_ms(complexity: str, backend: str, dynamic_fps: bool) -> int | None:
    """Longest segment a shot is rendered in: high-complexity shots in 1 s microshots
    (with dynamic fps on), generative backends in at most 5 s pieces."""
    limit = SEGMENT_MAX_MS[complexity] if dynamic_fps else None
    if backend in GENERATIVE_BACKENDS:
        limit = min(limit or GENERATIVE_SEGMENT_MAX_MS, GENERATIVE_SEGMENT_MAX_MS)
    return limit


def segment_policy(limit: int | None) -> str:
    if limit is None:
        return "single_segment"
    if limit <= 1000:
        return f"microshot_split_if_duration_gt_{limit}ms"
    return f"split_if_duration_gt_{limit}ms"


def motion_quality(fps: np.ndarray, complexity: str, smooth: bool) -> np.ndarray:
    tau = MOTION_TAU[complexity] * (SMOOTH_MOTION_TAU_FACTOR if smooth else 1.0)
    return (1 - np.exp(-fps / tau)) / (1 - math.exp(-REFERENCE_FPS / tau))


def build_candidates(
    analyses: Sequence[ShotAnalysis],
    settings: PlanSettings,
    history: CostHistory | None = None,
) -> CandidateGrid:
    """Every shot's candidate tiers (fps x resolution x backend) with cost and value."""
    s = settings
    n = len(analyses)
    cache: dict[tuple[str, bool], tuple[float, float]] = {}
    ranges = []
    for a in analyses:
        key = (a.complexity, a.critical)
        if key not in cache:
            cache[key] = shot_fps_range(a, s)
        ranges.append(cache[key])
    fps_set = {_snap_fps(f) for f in FPS_LADDER if min(MIN_FPS, s.fps_cap) <= f <= s.fps_cap}
    for lo, hi in ranges:
        fps_set.update((lo, hi))
    fps_values = np.array(sorted(fps_set))
    tier_values = _grid_heights(s)
    backend_names = [BACKEND_ANIMATIC, BACKEND_SOURCE_CLIP, *s.generative_backends]
    nf, nt, nb = len(fps_values), len(tier_values), len(backend_names)
    m = nf * nt * nb
    mesh = np.meshgrid(np.arange(nf), np.arange(nt), np.arange(nb), indexing="ij")
    ff, tt, bb = (x.ravel() for x in mesh)
    cell_fps = fps_values[ff]
    tiers = [tier_values[t] for t in tt]
    heights = np.array([RESOLUTION_TIERS[t] for t in tiers], dtype=float)
    backends = [backend_names[b] for b in bb]

    # cost tables per shot type
    types = sorted({a.shot_type for a in analyses}) or ["establishing"]
    t_index = {t: i for i, t in enumerate(types)}
    rate = np.zeros((len(types), m))
    default_src = np.zeros((len(types), m), dtype=bool)
    sources: list[list[str]] = []
    for ti, t in enumerate(types):
        row: list[str] = []
        for j in range(m):
            r, _, src = rate_per_second(backends[j], t, float(cell_fps[j]), tiers[j], history)
            rate[ti, j] = r
            default_src[ti, j] = src == "default"
            row.append(src)
        sources.append(row)
    overhead = np.array([DEFAULT_BACKEND_COSTS[b].overhead_sec for b in backends])
    type_idx = np.array([t_index[a.shot_type] for a in analyses], dtype=int)
    dur_s = np.array([a.duration_ms / 1000.0 for a in analyses])

    # One row of segment limits per complexity level, looked up per shot (0 = no limit).
    limits_by_level = {c: [segment_max_ms(c, b, s.dynamic_fps) for b in backend_names]
                       for c in COMPLEXITIES}
    seg_max = [limits_by_level[a.complexity] for a in analyses]
    level_of = {c: i for i, c in enumerate(COMPLEXITIES)}
    limit_table = np.array([[lim or 0 for lim in limits_by_level[c]] for c in COMPLEXITIES],
                           dtype=float).reshape(len(COMPLEXITIES), nb)
    limit = limit_table[np.array([level_of[a.complexity] for a in analyses], dtype=int)]
    dur_ms = np.array([a.duration_ms for a in analyses], dtype=float)[:, None]
    segs = np.where(limit > 0, np.maximum(1.0, np.ceil(dur_ms / np.where(limit > 0, limit, 1.0))),
                    1.0).reshape(n, nb)
    charged_segs = segs[:, bb] - np.where(default_src[type_idx], 0.0, 1.0)
    cost = rate[type_idx] * dur_s[:, None] + overhead[None, :] * np.maximum(charged_segs, 0)
    cost = np.ceil(np.round(cost * 100.0, 6)) / 100.0  # whole centiseconds, rounded up

    # value tables per complexity
    res_q = np.sqrt(heights / REFERENCE_HEIGHT)
    bq = np.array([BACKEND_QUALITY.get(b, 0.8) for b in backends])
    quality = {}
    for cx in COMPLEXITIES:
        alpha = MOTION_WEIGHT[cx]
        mq = motion_quality(cell_fps, cx, s.prefer_smooth_motion)
        quality[cx] = bq * (alpha * mq + (1 - alpha) * res_q)
    weights = np.array([a.weight for a in analyses])
    qmat = (np.stack([quality[a.complexity] for a in analyses]) if n
            else np.zeros((0, m)))
    value = weights[:, None] * qmat

    # masks
    floor_fps = np.array([r[0] for r in ranges])
    cap_fps = np.array([r[1] for r in ranges])
    hr = [shot_height_range(a, s) for a in analyses]
    floor_h = np.array([h[0] for h in hr], dtype=float)
    cap_h = np.array([h[1] for h in hr], dtype=float)
    ok = ((cell_fps[None, :] >= floor_fps[:, None] - 1e-9)
          & (cell_fps[None, :] <= cap_fps[:, None] + 1e-9)
          & (heights[None, :] >= floor_h[:, None])
          & (heights[None, :] <= cap_h[:, None]))
    backend_ok = np.zeros((n, nb), dtype=bool)
    for i, a in enumerate(analyses):
        if a.has_source:
            backend_ok[i, 1] = True
        else:
            backend_ok[i, 0] = True
            if s.backend_priority:
                backend_ok[i, 2:] = True
    ok &= backend_ok[:, bb]
    cost = np.where(ok, cost, np.inf)
    value = np.where(ok, value, -np.inf)
    return CandidateGrid(
        fps=cell_fps, tiers=tiers, heights=heights, backends=backends,
        backend_idx=bb, backend_names=backend_names, fps_values=fps_values,
        tier_values=tier_values, cost=cost, value=value, cost_source=sources,
        type_idx=type_idx, segments=segs, segment_max_ms=seg_max, floor_fps=floor_fps,
        cap_fps=cap_fps, floor_h=floor_h, cap_h=cap_h,
    )


def uniform_levels(grid: CandidateGrid, analyses: Sequence[ShotAnalysis]) -> np.ndarray:
    """Global levels for shot-level budgeting off: every (fps, resolution) pair of the grid
    for the local backends, then the same for the first generative backend; each shot takes
    the level clamped into its own floors and caps."""
    n = len(analyses)
    fv = grid.fps_values
    hv = np.array([RESOLUTION_TIERS[t] for t in grid.tier_values], dtype=float)
    nb = len(grid.backend_names)
    local_b = np.array([1 if a.has_source else 0 for a in analyses])
    classes = [local_b]
    if nb > 2:
        gen_b = np.where(local_b == 1, 1, 2)
        classes.append(gen_b)
    levels = []
    for b in classes:
        for f in fv:
            fc = np.clip(f, grid.floor_fps, grid.cap_fps)
            fi = np.searchsorted(fv, fc + 1e-9, side="right") - 1
            for h in hv:
                hc = np.clip(h, grid.floor_h, grid.cap_h)
                hi = np.searchsorted(hv, hc + 1e-9, side="right") - 1
                levels.append((fi * len(hv) + hi) * nb + b)
    return np.stack(levels, axis=1) if levels else np.zeros((n, 0), dtype=int)


def _solve(grid: CandidateGrid, analyses: Sequence[ShotAnalysis], settings: PlanSettings,
           cost: np.ndarray, value: np.ndarray, budget: float | None) -> Solution:
    b = None if budget is None else max(0.0, budget - _BUDGET_MARGIN_SEC)
    if settings.shot_level_budget:
        return solve_mckp(cost, value, b)
    return solve_uniform(cost, value, uniform_levels(grid, analyses), b)


def preview_cells(grid: CandidateGrid) -> np.ndarray:
    """Each shot's preview tier: its cheapest candidate (the most valuable among ties)."""
    if grid.cost.shape[0] == 0:
        return np.zeros(0, dtype=int)
    low = np.min(grid.cost, axis=1, keepdims=True)
    return np.argmax(np.where(grid.cost == low, grid.value, -np.inf), axis=1)


def allocate_budget(
    analyses: Sequence[ShotAnalysis],
    settings: PlanSettings,
    history: CostHistory | None = None,
) -> Allocation:
    """CB2: candidate tiers per shot and the multiple-choice knapsack over them."""
    grid = build_candidates(analyses, settings, history)
    sol = _solve(grid, analyses, settings, grid.cost, grid.value, settings.budget_sec)
    n = len(analyses)
    rows = np.arange(n)
    preview = preview_cells(grid)
    return Allocation(grid=grid, choice=sol.choice, charged=grid.cost[rows, sol.choice],
                      preview_cell=preview, solution=sol, budget_sec=settings.budget_sec)


# ============================================================================ CB3


@dataclass(frozen=True)
class ShotAssignment:
    backend: str
    backend_preference: list[str]
    retry_budget: int
    degrade_ladder_profile: str
    segment_policy: str
    segment_max_ms: int | None
    segments: int


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
            retry = {"critical": 3, "normal": 2, "low": 1}[a.criticality]
        else:
            retry = 2 if a.critical else 1
        if settings.mode == "final":
            retry = min(4, retry + 1)
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


# ============================================================================ CB4


@dataclass
class SlaOutcome:
    reasons: list[str]
    staged: bool
    allocation: Allocation
    stages: list[dict[str, Any]]
    sla: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _finish(settings: PlanSettings, gpu_sec: float) -> datetime:
    return settings.now + timedelta(seconds=settings.queue_delay_sec
                                    + gpu_sec / settings.parallelism)


def _render_order(analyses: Sequence[ShotAnalysis], idx: Sequence[int]) -> list[int]:
    return sorted(idx, key=lambda i: (PRIORITY_RANK[analyses[i].render_priority], i))


def rebalance_sla(
    analyses: Sequence[ShotAnalysis],
    allocation: Allocation,
    settings: PlanSettings,
) -> SlaOutcome:
    """CB4: under preview mode, a tight deadline or a congested queue, deliver a preview of
    every shot first (critical and opening shots already at their final tier, secondary
    shots at the low-cost preview tier) and the secondary shots' final renders after."""
    s = settings
    grid = allocation.grid
    n = len(analyses)
    rows = np.arange(n)
    warnings: list[str] = []
    reasons: list[str] = []
    if s.mode == "preview":
        reasons.append("preview_mode")
    if s.congested:
        reasons.append("congested_queue")
    capacity: float | None = None
    if s.deadline is not None:
        capacity = max(0.0, ((s.deadline - s.now).total_seconds() - s.queue_delay_sec)
                       * s.parallelism)
        if _finish(s, allocation.solution.used) > s.deadline:
            reasons.append("tight_deadline")
    staged = bool(reasons)
    alloc = allocation
    secondary = np.array([not (a.critical or a.opening) for a in analyses], dtype=bool)
    if staged and n:
        preview = allocation.preview_cell
        pcost = grid.cost[rows, preview]
        cost = grid.cost + np.where(secondary, pcost, 0.0)[:, None]
        cost[rows, preview] = pcost
        restricted = secondary & (s.mode == "preview")
        if restricted.any():
            keep = np.zeros_like(cost, dtype=bool)
            keep[rows, preview] = True
            cost = np.where(keep | ~restricted[:, None], cost, np.inf)
        value = np.where(np.isfinite(cost), grid.value, -np.inf)
        budget = s.budget_sec
        min_total = math.fsum(np.min(cost, axis=1).tolist())
        if "tight_deadline" in reasons and capacity is not None:
            if min_total <= capacity - _BUDGET_MARGIN_SEC:
                budget = capacity if budget is None else min(budget, capacity)
            else:
                warnings.append("the deadline cannot be met even with every secondary shot "
                                "at the preview tier")
        if allocation.solution.feasible:
            sol = _solve(grid, analyses, s, cost, value, budget)
        else:  # infeasible budget: keep the cheapest plan (the proposal explains it)
            sol = allocation.solution
        choice = sol.choice
        charged = cost[rows, choice]
        alloc = Allocation(grid=grid, choice=choice, charged=charged, preview_cell=preview,
                           solution=sol, budget_sec=s.budget_sec, staged=True,
                           restricted=restricted)

    stages: list[dict[str, Any]] = []
    if staged:
        first = _render_order(analyses, range(n))
        pv_cost = [float(alloc.charged[i]) if not secondary[i]
                   else float(grid.cost[i, alloc.preview_cell[i]]) for i in range(n)]
        p_sec = math.fsum(pv_cost[i] for i in first)
        later = _render_order(analyses, [i for i in range(n) if secondary[i]
                                         and alloc.choice[i] != alloc.preview_cell[i]])
        f_sec = math.fsum(float(grid.cost[i, alloc.choice[i]]) for i in later)
        p_end = _finish(s, p_sec)
        f_end = _finish(s, p_sec + f_sec)
        stages = [
            {"name": "preview", "shots": [analyses[i].shot_id for i in first],
             "estimated_gpu_sec": round(p_sec, 2), "estimated_finish": _iso(p_end)},
            {"name": "final", "shots": [analyses[i].shot_id for i in later],
             "estimated_gpu_sec": round(f_sec, 2), "estimated_finish": _iso(f_end)},
        ]
        end = f_end
    else:
        order = _render_order(analyses, range(n))
        total = math.fsum(float(alloc.charged[i]) for i in order)
        end = _finish(s, total)
        stages = [{"name": "final", "shots": [analyses[i].shot_id for i in order],
                   "estimated_gpu_sec": round(total, 2), "estimated_finish": _iso(end)}]
    meets = None if s.deadline is None else end <= s.deadline
    preview_meets = None
    if s.deadline is not None and staged:
        preview_meets = _finish(s, float(stages[0]["estimated_gpu_sec"])) <= s.deadline
    if meets is False:
        warnings.append("the final stage is estimated to finish after the SLA deadline")
    sla = {
        "deadline": None if s.deadline is None else _iso(s.deadline),
        "now": _iso(s.now),
        "reasons": reasons,
        "staged": staged,
        "queue_depth": s.queue_depth,
        "congested": s.congested,
        "queue_delay_sec": round(s.queue_delay_sec, 2),
        "parallelism": s.parallelism,
        "time_capacity_gpu_sec": None if capacity is None else round(capacity, 2),
        "estimated_finish": _iso(end),
        "meets_deadline": meets,
        "preview_meets_deadline": preview_meets,
    }
    return SlaOutcome(reasons=reasons, staged=staged, allocation=alloc, stages=stages,
                      sla=sla, warnings=warnings)


# ============================================================================ proposal


def rebalance_proposal(
    analyses: Sequence[ShotAnalysis],
    allocation: Allocation,
    settings: PlanSettings,
    history: CostHistory | None,
) -> dict[str, Any]:
    """When even the cheapest tier of every shot exceeds the budget: how many GPU minutes
    are missing, and which secondary shots would go preview-only (6 fps, 240p, local
    backend, below the style floors) to close the gap, least valuable per second first."""
    from anime_pipeline.budget.cost import estimate_gpu_sec

    budget = settings.budget_sec or 0.0
    grid = allocation.grid
    n = len(analyses)
    rows = np.arange(n)
    cheapest = grid.cost[rows, allocation.preview_cell] if n else np.zeros(0)
    required = math.fsum(cheapest.tolist())
    missing = max(0.0, required - budget)
    savings = []
    for i, a in enumerate(analyses):
        if a.critical:
            continue
        backend = BACKEND_SOURCE_CLIP if a.has_source else BACKEND_ANIMATIC
        fps = min(PREVIEW_ONLY_FPS, settings.fps_cap)
        po = math.ceil(estimate_gpu_sec(backend, a.shot_type, fps, PREVIEW_ONLY_TIER,
                                        a.duration_ms, 1, history) * 100) / 100
        save = float(cheapest[i]) - po
        if save > 0:
            savings.append((a.weight / save, i, save))
    savings.sort()
    chosen: list[str] = []
    gap = missing
    for _, i, save in savings:
        if gap <= 0:
            break
        chosen.append(analyses[i].shot_id)
        gap -= save
    return {
        "reason": "budget_below_cheapest_plan",
        "max_gpu_minutes": round(budget / 60.0, 3),
        "required_gpu_minutes": math.ceil(required / 60.0 * 1000) / 1000,
        "missing_gpu_minutes": math.ceil(missing / 60.0 * 1000) / 1000,
        "preview_only_shots": chosen,
        "preview_only_tier": {"fps": _out_num(min(PREVIEW_ONLY_FPS, settings.fps_cap)),
                              "resolution": PREVIEW_ONLY_TIER},
        "missing_after_preview_only_gpu_minutes": math.ceil(max(0.0, gap) / 60.0 * 1000)
        / 1000,
        "suggested_max_gpu_minutes": math.ceil(required / 60.0 * 100) / 100,
    }


# ============================================================================ assembly


def _out_num(x: float) -> float | int:
    xf = float(x)
    return int(round(xf)) if abs(xf - round(xf)) < 1e-9 else round(xf, 3)


class _CandidateWriter:
    """JSON for candidates, with the per-cell strings and the rounding done once."""

    def __init__(self, grid: CandidateGrid) -> None:
        self.grid = grid
        self.fps = [_out_num(f) for f in grid.fps.tolist()]
        self.ids = [f"{f}fps_{t}_{b}" for f, t, b in zip(self.fps, grid.tiers, grid.backends,
                                                         strict=True)]

        n = grid.cost.shape[0]
        if n:
            idx, _, _ = pareto_front(grid.cost, grid.value)
        else:
            idx = np.zeros((0, 1), dtype=int)
        self.front_idx = idx.tolist()
        safe = np.where(idx >= 0, idx, 0)
        rows = np.arange(n)[:, None]
        self.front_cost = np.round(grid.cost[rows, safe], 2).tolist()
        self.front_value = np.round(grid.value[rows, safe], 4).tolist()

    def one(self, i: int, j: int) -> dict[str, Any]:
        g = self.grid
        return {
            "id": self.ids[j], "fps": self.fps[j], "resolution": g.tiers[j],
            "backend": g.backends[j], "gpu_sec": round(float(g.cost[i, j]), 2),
            "value": round(float(g.value[i, j]), 4),
            "cost_source": g.cost_source[int(g.type_idx[i])][j],
        }

    def front(self, i: int, chosen: int) -> list[dict[str, Any]]:
        g = self.grid
        sources = g.cost_source[int(g.type_idx[i])]
        out = []
        seen = False
        for j, c, v in zip(self.front_idx[i], self.front_cost[i], self.front_value[i],
                           strict=True):
            if j < 0:
                break
            seen = seen or j == chosen
            out.append({"id": self.ids[j], "fps": self.fps[j], "resolution": g.tiers[j],
                        "backend": g.backends[j], "gpu_sec": c, "value": v,
                        "cost_source": sources[j]})
        if not seen:  # the uniform level may pick a dominated tier: show it anyway
            out.append(self.one(i, chosen))
            out.sort(key=lambda d: (d["gpu_sec"], -d["value"]))
        return out


def _failed_plan(reason: str, states: list[str], episode: Episode | None,
                 creative: CreativeControl, warnings: list[str],
                 started: float) -> dict[str, Any]:
    max_min = creative.budget.max_gpu_minutes
    return {
        "version": PLAN_VERSION,
        "status": STATUS_FAILED,
        "episode_key": episode.key if episode is not None else None,
        "failure_reason": reason,
        "global_profile": (creative.global_profile.value if creative.global_profile
                           else None),
        "budget_summary": {"max_gpu_minutes": max_min, "estimated_gpu_minutes": 0.0},
        "shots": [],
        "states": [*states, STATE_FAILED],
        "warnings": warnings,
        "allocation": {"objective": 0.0, "budget_used": 0.0, "solver": "none",
                       "time_ms": round((time.perf_counter() - started) * 1000, 3)},
        "stages": [],
        "rebalance_proposal": None,
    }


def build_compute_plan(
    episode: Episode,
    creative: CreativeControl,
    audio_manifest: Mapping[str, Any] | None,
    resources: ResourceState | None = None,
    history: CostHistory | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Run CB1..CB4 and return the JSON-ready, schema-valid compute plan."""
    started = time.perf_counter()
    states = [STATE_INIT]
    warnings: list[str] = []
    try:
        settings = resolve_settings(episode, creative, resources, now)
        states.append(STATE_ANALYZING)
        analyses = analyze_complexity(episode, audio_manifest, warnings)
        states.append(STATE_ALLOCATING)
        allocation = allocate_budget(analyses, settings, history)
        states.append(STATE_ASSIGNING)
        assignments = assign_backends(analyses, allocation, settings)
        states.append(STATE_REBALANCING)
        outcome = rebalance_sla(analyses, allocation, settings)
        warnings += outcome.warnings
        final = outcome.allocation
        if final is not allocation:  # CB4 re-allocated: assign the new tiers
            assignments = assign_backends(analyses, final, settings)
    except PlanningError as e:
        return _failed_plan(str(e), states, episode, creative, warnings, started)
    states.append(STATE_READY)

    grid = final.grid
    sol = final.solution
    n = len(analyses)
    feasible = allocation.solution.feasible and sol.feasible
    proposal = None if feasible else rebalance_proposal(analyses, allocation, settings,
                                                        history)
    if proposal is not None:
        warnings.append(
            f"budget infeasible: {proposal['missing_gpu_minutes']} GPU minutes missing "
            "even with every shot at its cheapest tier")
    later = set(outcome.stages[1]["shots"]) if outcome.staged else set()
    shots_out: list[dict[str, Any]] = []
    writer = _CandidateWriter(grid)
    for i, a in enumerate(analyses):
        j = int(final.choice[i])
        asg = assignments[i]
        charged = round(float(final.charged[i]), 2)
        render = round(float(grid.cost[i, j]), 2)
        chosen = writer.one(i, j)
        if outcome.staged:
            shot_stages = ["preview", "final"] if a.shot_id in later else ["preview"]
        else:
            shot_stages = ["final"]
        pj = int(final.preview_cell[i])
        shots_out.append({
            "shot_id": a.shot_id,
            "complexity": a.complexity,
            "complexity_score": a.complexity_score,
            "critical": a.critical,
            "degradable": a.degradable,
            "opening": a.opening,
            "render_priority": a.render_priority,
            "target_fps": _out_num(grid.fps[j]),
            "target_resolution": grid.tiers[j],
            "segment_policy": asg.segment_policy,
            "segments": {"max_ms": asg.segment_max_ms, "count": asg.segments},
            "backend_preference": asg.backend_preference,
            "retry_budget": asg.retry_budget,
            "degrade_ladder_profile": asg.degrade_ladder_profile,
            "estimated_cost": {
                "gpu_sec": charged,
                "render_gpu_sec": render,
                "preview_gpu_sec": round(charged - render, 2),
                "source": chosen["cost_source"],
            },
            "floor": {"fps": _out_num(grid.floor_fps[i]),
                      "resolution": tier_for_height(int(grid.floor_h[i]))},
            "stages": shot_stages,
            "preview": (writer.one(i, pj) if "final" in shot_stages
                        and outcome.staged else None),
            "signals": {"event_density": a.event_density, "peak_energy": a.peak_energy,
                        "in_audio_manifest": a.in_manifest,
                        "duration_ms": a.duration_ms, "shot_type": a.shot_type},
            "candidates": writer.front(i, j),
            "chosen": chosen,
        })
    total_sec = math.fsum(float(x) for x in (s["estimated_cost"]["gpu_sec"]
                                             for s in shots_out))
    budget = settings.budget_sec
    max_min = creative.budget.max_gpu_minutes
    plan: dict[str, Any] = {
        "version": PLAN_VERSION,
        "status": STATUS_READY if feasible else STATUS_REBALANCE,
        "episode_key": episode.key,
        "mode": settings.mode,
        "global_profile": settings.profile,
        "global_profile_source": settings.profile_source,
        "feature_flags": settings.flags,
        "baseline": {"fps": _out_num(settings.baseline_fps),
                     "resolution": settings.base_tier,
                     "max_resolution": settings.ceiling_tier,
                     "max_fps": _out_num(settings.fps_cap)},
        "budget_summary": {
            "max_gpu_minutes": None if max_min is None else float(max_min),
            "estimated_gpu_minutes": math.floor(total_sec / 60.0 * 1000) / 1000,
            "max_gpu_sec": None if budget is None else round(budget, 2),
            "estimated_gpu_sec": round(total_sec, 2),
            "within_budget": None if budget is None else total_sec <= budget,
            "budget_capped": budget is not None,
        },
        "shots": shots_out,
        "allocation": {
            "objective": round(sol.objective, 4),
            "upper_bound": None if sol.upper_bound is None else round(sol.upper_bound, 4),
            "budget_used": round(total_sec, 2),
            "budget_gpu_sec": None if budget is None else round(budget, 2),
            "min_cost_gpu_sec": round(sol.min_cost, 2),
            "solver": sol.solver,
            "time_ms": round(sol.time_ms + (allocation.solution.time_ms
                                            if final is not allocation else 0.0), 3),
            "planning_time_ms": round((time.perf_counter() - started) * 1000, 3),
            "feasible": feasible,
            "shots": n,
            "candidates_considered": int(np.isfinite(grid.cost).sum()),
            "value_model": "duration_s x importance x opening_bonus x backend_quality x "
                           "(motion_weight x motion(fps) + (1 - motion_weight) x "
                           "sqrt(height / 1080))",
        },
        "stages": outcome.stages,
        "sla": outcome.sla,
        "states": states,
        "rebalance_proposal": proposal,
        "degrade_ladders": ladders_json(),
        "cost_model": {
            "history_records": 0 if history is None else history.records,
            "default_backend_costs": {b: {"sec_per_frame_720p": c.sec_per_frame_720p,
                                          "overhead_sec": c.overhead_sec}
                                      for b, c in DEFAULT_BACKEND_COSTS.items()},
        },
        "warnings": warnings,
        "failure_reason": None,
        "generated_at": _iso(settings.now),
    }
    return plan
