"""CB4, ``rebalance_sla``: staged delivery under SLA pressure (preview mode, a deadline the
CB2 plan would miss, a congested queue); and :func:`rebalance_proposal`, what to give up
when even the cheapest tier of every shot exceeds the budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np

from anime_pipeline.budget.allocation import (
    BUDGET_MARGIN_SEC,
    Allocation,
    solve_allocation,
)
from anime_pipeline.budget.complexity import ShotAnalysis
from anime_pipeline.budget.cost import CostHistory, estimate_gpu_sec
from anime_pipeline.budget.plan import (
    PreviewOnlyTier,
    RebalanceProposal,
    SlaReason,
    SlaReport,
    Stage,
)
from anime_pipeline.budget.settings import PlanSettings
from anime_pipeline.domain.contracts import BACKEND_ANIMATIC, BACKEND_SOURCE_CLIP

PRIORITY_RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}
PREVIEW_ONLY_FPS = 6.0
PREVIEW_ONLY_TIER: Final = "240p"


@dataclass
class SlaOutcome:
    reasons: list[SlaReason]
    staged: bool
    allocation: Allocation
    stages: list[Stage]
    sla: SlaReport
    warnings: list[str] = field(default_factory=list)


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def _finish(settings: PlanSettings, gpu_sec: float) -> datetime:
    return _utc(settings.now + timedelta(seconds=settings.queue_delay_sec
                                         + gpu_sec / settings.parallelism))


def render_order(analyses: Sequence[ShotAnalysis], idx: Sequence[int] | range) -> list[int]:
    """Shot positions in render order: critical, then opening (high), normal, low; each
    group in episode order."""
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
    reasons: list[SlaReason] = []
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
            if min_total <= capacity - BUDGET_MARGIN_SEC:
                budget = capacity if budget is None else min(budget, capacity)
            else:
                warnings.append("the deadline cannot be met even with every secondary shot "
                                "at the preview tier")
        if allocation.solution.feasible:
            sol = solve_allocation(grid, analyses, s, cost, value, budget)
        else:  # infeasible budget: keep the cheapest plan (the proposal explains it)
            sol = allocation.solution
        choice = sol.choice
        charged = cost[rows, choice]
        alloc = Allocation(grid=grid, choice=choice, charged=charged, preview_cell=preview,
                           solution=sol, budget_sec=s.budget_sec, staged=True,
                           restricted=restricted)

    ids = [a.shot_id for a in analyses]
    if staged:
        first = render_order(analyses, range(n))
        pv_cost = [float(alloc.charged[i]) if not secondary[i]
                   else float(grid.cost[i, alloc.preview_cell[i]]) for i in range(n)]
        p_sec = math.fsum(pv_cost[i] for i in first)
        later = render_order(analyses, [i for i in range(n) if secondary[i]
                                        and alloc.choice[i] != alloc.preview_cell[i]])
        f_sec = math.fsum(float(grid.cost[i, alloc.choice[i]]) for i in later)
        p_end = _finish(s, p_sec)
        end = _finish(s, p_sec + f_sec)
        stages = [
            Stage(name="preview", shots=[ids[i] for i in first],
                  estimated_gpu_sec=round(p_sec, 2), estimated_finish=p_end),
            Stage(name="final", shots=[ids[i] for i in later],
                  estimated_gpu_sec=round(f_sec, 2), estimated_finish=end),
        ]
    else:
        order = render_order(analyses, range(n))
        total = math.fsum(float(alloc.charged[i]) for i in order)
        end = _finish(s, total)
        stages = [Stage(name="final", shots=[ids[i] for i in order],
                        estimated_gpu_sec=round(total, 2), estimated_finish=end)]
    meets = None if s.deadline is None else end <= s.deadline
    preview_meets = None
    if s.deadline is not None and staged:
        preview_meets = _finish(s, stages[0].estimated_gpu_sec) <= s.deadline
    if meets is False:
        warnings.append("the final stage is estimated to finish after the SLA deadline")
    sla = SlaReport(
        deadline=None if s.deadline is None else _utc(s.deadline),
        now=_utc(s.now),
        reasons=reasons,
        staged=staged,
        queue_depth=s.queue_depth,
        congested=s.congested,
        queue_delay_sec=round(s.queue_delay_sec, 2),
        parallelism=s.parallelism,
        time_capacity_gpu_sec=None if capacity is None else round(capacity, 2),
        estimated_finish=end,
        meets_deadline=meets,
        preview_meets_deadline=preview_meets,
    )
    return SlaOutcome(reasons=reasons, staged=staged, allocation=alloc, stages=stages,
                      sla=sla, warnings=warnings)


def rebalance_proposal(
    analyses: Sequence[ShotAnalysis],
    allocation: Allocation,
    settings: PlanSettings,
    history: CostHistory | None,
) -> RebalanceProposal:
    """When even the cheapest tier of every shot exceeds the budget: how many GPU minutes
    are missing, and which secondary shots would go preview-only (6 fps, 240p, local
    backend, below the style floors) to close the gap, least valuable per second first."""
    budget = settings.budget_sec or 0.0
    grid = allocation.grid
    n = len(analyses)
    rows = np.arange(n)
    cheapest = grid.cost[rows, allocation.preview_cell] if n else np.zeros(0)
    required = math.fsum(cheapest.tolist())
    missing = max(0.0, required - budget)
    fps = min(PREVIEW_ONLY_FPS, settings.fps_cap)
    savings = []
    for i, a in enumerate(analyses):
        if a.critical:
            continue
        backend = BACKEND_SOURCE_CLIP if a.has_source else BACKEND_ANIMATIC
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
    return RebalanceProposal(
        reason="budget_below_cheapest_plan",
        max_gpu_minutes=round(budget / 60.0, 3),
        required_gpu_minutes=math.ceil(required / 60.0 * 1000) / 1000,
        missing_gpu_minutes=math.ceil(missing / 60.0 * 1000) / 1000,
        preview_only_shots=chosen,
        preview_only_tier=PreviewOnlyTier(fps=round(fps, 3), resolution=PREVIEW_ONLY_TIER),
        missing_after_preview_only_gpu_minutes=math.ceil(max(0.0, gap) / 60.0 * 1000) / 1000,
        suggested_max_gpu_minutes=math.ceil(required / 60.0 * 100) / 100,
    )
