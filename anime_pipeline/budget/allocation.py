"""CB2, ``allocate_budget``: every shot's candidate tiers (a grid of fps x resolution x
backend cells, each with a cost and a value) and the multiple-choice knapsack over them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from anime_pipeline.budget.complexity import ShotAnalysis
from anime_pipeline.budget.cost import DEFAULT_BACKEND_COSTS, CostHistory, rate_per_second
from anime_pipeline.budget.settings import PlanSettings
from anime_pipeline.budget.solver import Solution, pareto_front, solve_mckp, solve_uniform
from anime_pipeline.domain.contracts import (
    BACKEND_ANIMATIC,
    BACKEND_SOURCE_CLIP,
    GENERATIVE_BACKENDS,
    MIN_FPS,
    RESOLUTION_TIERS,
)

FPS_CAP_FACTOR = {"low": 0.5, "medium": 1.0, "high": 2.0}  # x baseline, with dynamic fps
FPS_LADDER = (6.0, 8.0, 12.0, 16.0, 24.0, 30.0, 48.0, 60.0)
MIN_CANDIDATE_HEIGHT = 360
COMPLEXITIES = ("low", "medium", "high")

# ---------------------------------------------------------------- value model
BACKEND_QUALITY = {"wan_i2v": 1.0, "comfyui_i2v": 0.85, BACKEND_SOURCE_CLIP: 1.0,
                   BACKEND_ANIMATIC: 0.4}
MOTION_TAU = {"low": 4.0, "medium": 8.0, "high": 14.0}  # fps at which motion saturates
MOTION_WEIGHT = {"low": 0.25, "medium": 0.45, "high": 0.65}  # share of motion vs detail
SMOOTH_MOTION_TAU_FACTOR = 1.5
REFERENCE_FPS = 24.0
REFERENCE_HEIGHT = 1080
VALUE_MODEL = ("duration_s x importance x opening_bonus x backend_quality x "
               "(motion_weight x motion(fps) + (1 - motion_weight) x sqrt(height / 1080))")

# ---------------------------------------------------------------- segments
SEGMENT_MAX_MS = {"high": 1000, "medium": 4000, "low": None}
GENERATIVE_SEGMENT_MAX_MS = 5000

BUDGET_MARGIN_SEC = 0.005  # half a centisecond: costs are rounded up to 0.01 s

Front = tuple[np.ndarray, np.ndarray, np.ndarray]


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
    _front: Front | None = field(default=None, repr=False, compare=False)

    def cell(self, fps_i: int, tier_i: int, backend_i: int) -> int:
        return (fps_i * len(self.tier_values) + tier_i) * len(self.backend_names) + backend_i

    def front(self) -> Front:
        """:func:`pareto_front` of ``cost`` and ``value`` (computed once)."""
        if self._front is None:
            if self.cost.shape[0]:
                self._front = pareto_front(self.cost, self.value)
            else:
                self._front = (np.zeros((0, 1), dtype=int), np.zeros((0, 1)), np.zeros((0, 1)))
        return self._front


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
    # fps and height ranges depend only on (complexity, critical): computed once per pair
    cache: dict[tuple[str, bool], tuple[float, float, int, int]] = {}
    ranges = []
    for a in analyses:
        key = (a.complexity, a.critical)
        if key not in cache:
            cache[key] = (*shot_fps_range(a, s), *shot_height_range(a, s))
        ranges.append(cache[key])
    fps_set = {_snap_fps(f) for f in FPS_LADDER if min(MIN_FPS, s.fps_cap) <= f <= s.fps_cap}
    for lo, hi, _, _ in cache.values():
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
    rng = np.array(ranges, dtype=float).reshape(n, 4)
    floor_fps, cap_fps, floor_h, cap_h = (rng[:, k].copy() for k in range(4))
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


def solve_allocation(
    grid: CandidateGrid,
    analyses: Sequence[ShotAnalysis],
    settings: PlanSettings,
    cost: np.ndarray,
    value: np.ndarray,
    budget: float | None,
) -> Solution:
    """The knapsack over ``cost``/``value`` (the grid's own or CB4's staged ones): MCKP
    with shot-level budgeting, else the best uniform global level. The solver gets the
    budget minus :data:`BUDGET_MARGIN_SEC`, so the rounded per-shot costs sum within it."""
    b = None if budget is None else max(0.0, budget - BUDGET_MARGIN_SEC)
    if settings.shot_level_budget:
        front = grid.front() if cost is grid.cost and value is grid.value else None
        return solve_mckp(cost, value, b, front=front)
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
    sol = solve_allocation(grid, analyses, settings, grid.cost, grid.value,
                           settings.budget_sec)
    n = len(analyses)
    rows = np.arange(n)
    preview = preview_cells(grid)
    return Allocation(grid=grid, choice=sol.choice, charged=grid.cost[rows, sol.choice],
                      preview_cell=preview, solution=sol, budget_sec=settings.budget_sec)
