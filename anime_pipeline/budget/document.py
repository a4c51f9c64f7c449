"""Assembling the :class:`ComputePlan` from the steps' results (and the failed plan).

The per-shot part (a :class:`ShotPlan` per shot, each with its Pareto front of
candidates: a few hundred thousand models at 10,000 shots) is built with
:func:`trusted_constructor`, from values already of their declared types; the small parts
are validated as they are built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC
from typing import Final

import numpy as np

from anime_pipeline.budget.allocation import VALUE_MODEL, Allocation, CandidateGrid
from anime_pipeline.budget.assignment import ShotAssignment
from anime_pipeline.budget.complexity import ShotAnalysis
from anime_pipeline.budget.cost import DEFAULT_BACKEND_COSTS, CostHistory
from anime_pipeline.budget.ladders import ladders_json
from anime_pipeline.budget.plan import (
    PLAN_VERSION,
    AllocationReport,
    BackendCostSpec,
    Baseline,
    BudgetSummary,
    Candidate,
    ComputePlan,
    CostModel,
    EstimatedCost,
    FeatureFlags,
    Floor,
    LadderStepSpec,
    PlanState,
    RebalanceProposal,
    Segments,
    ShotPlan,
    Signals,
    trusted_constructor,
)
from anime_pipeline.budget.settings import PlanSettings
from anime_pipeline.budget.sla import SlaOutcome
from anime_pipeline.domain.contracts import tier_for_height
from anime_pipeline.domain.episode import CreativeControl, Episode

STATUS_READY: Final = "compute_plan_ready"
STATUS_REBALANCE: Final = "rebalance_required"
STATUS_FAILED: Final = "failed"

_candidate = trusted_constructor(Candidate)
_shot_plan = trusted_constructor(ShotPlan)
_segments = trusted_constructor(Segments)
_estimated_cost = trusted_constructor(EstimatedCost)
_floor = trusted_constructor(Floor)
_signals = trusted_constructor(Signals)


def out_num(x: float) -> float | int:
    """A number as written in a candidate id: ``24`` for 24.0, else 3 decimals."""
    xf = float(x)
    return int(round(xf)) if abs(xf - round(xf)) < 1e-9 else round(xf, 3)


class CandidateWriter:
    """Candidates of the grid, with the per-cell strings and the rounding done once."""

    def __init__(self, grid: CandidateGrid) -> None:
        self.grid = grid
        labels = [out_num(f) for f in grid.fps.tolist()]
        self.fps = [float(f) for f in labels]
        self.ids = [f"{f}fps_{t}_{b}" for f, t, b in zip(labels, grid.tiers, grid.backends,
                                                         strict=True)]
        n = grid.cost.shape[0]
        idx = grid.front()[0] if n else np.zeros((0, 1), dtype=int)
        self.front_idx = idx.tolist()
        safe = np.where(idx >= 0, idx, 0)
        rows = np.arange(n)[:, None]
        self.front_cost = np.round(grid.cost[rows, safe], 2).tolist()
        self.front_value = np.round(grid.value[rows, safe], 4).tolist()

    def one(self, i: int, j: int) -> Candidate:
        g = self.grid
        return _candidate({
            "id": self.ids[j], "fps": self.fps[j], "resolution": g.tiers[j],
            "backend": g.backends[j], "gpu_sec": round(float(g.cost[i, j]), 2),
            "value": round(float(g.value[i, j]), 4),
            "cost_source": g.cost_source[int(g.type_idx[i])][j],
        })

    def front(self, i: int, chosen: int) -> list[Candidate]:
        """Shot ``i``'s Pareto front by cost, with the ``chosen`` cell in it."""
        g = self.grid
        ids, fps, tiers, backends = self.ids, self.fps, g.tiers, g.backends
        sources = g.cost_source[int(g.type_idx[i])]
        out = []
        seen = False
        for j, c, v in zip(self.front_idx[i], self.front_cost[i], self.front_value[i],
                           strict=True):
            if j < 0:
                break
            seen = seen or j == chosen
            out.append(_candidate({"id": ids[j], "fps": fps[j], "resolution": tiers[j],
                                   "backend": backends[j], "gpu_sec": c, "value": v,
                                   "cost_source": sources[j]}))
        if not seen:  # the uniform level may pick a dominated tier: show it anyway
            out.append(self.one(i, chosen))
            out.sort(key=lambda d: (d.gpu_sec, -d.value))
        return out


def shot_plans(
    analyses: Sequence[ShotAnalysis],
    assignments: Sequence[ShotAssignment],
    final: Allocation,
    outcome: SlaOutcome,
) -> list[ShotPlan]:
    """One :class:`ShotPlan` per shot, in episode order."""
    grid = final.grid
    writer = CandidateWriter(grid)
    later = set(outcome.stages[1].shots) if outcome.staged else set()
    choice = final.choice.tolist()
    preview_cell = final.preview_cell.tolist()
    charged_all = [round(x, 2) for x in final.charged.tolist()]
    floor_fps = [float(out_num(f)) for f in grid.floor_fps.tolist()]
    floor_tier = [tier_for_height(int(h)) for h in grid.floor_h.tolist()]
    staged = outcome.staged
    out: list[ShotPlan] = []
    for i, a in enumerate(analyses):
        j = choice[i]
        asg = assignments[i]
        charged = charged_all[i]
        chosen = writer.one(i, j)
        render = chosen.gpu_sec
        if staged:
            shot_stages = ["preview", "final"] if a.shot_id in later else ["preview"]
        else:
            shot_stages = ["final"]
        out.append(_shot_plan({
            "shot_id": a.shot_id,
            "complexity": a.complexity,
            "complexity_score": a.complexity_score,
            "critical": a.critical,
            "degradable": a.degradable,
            "opening": a.opening,
            "render_priority": a.render_priority,
            "target_fps": writer.fps[j],
            "target_resolution": grid.tiers[j],
            "segment_policy": asg.segment_policy,
            "segments": _segments({"max_ms": asg.segment_max_ms, "count": asg.segments}),
            "backend_preference": asg.backend_preference,
            "retry_budget": asg.retry_budget,
            "degrade_ladder_profile": asg.degrade_ladder_profile,
            "estimated_cost": _estimated_cost({
                "gpu_sec": charged,
                "render_gpu_sec": render,
                "preview_gpu_sec": round(charged - render, 2),
                "source": chosen.cost_source,
            }),
            "floor": _floor({"fps": floor_fps[i], "resolution": floor_tier[i]}),
            "stages": shot_stages,
            "preview": (writer.one(i, preview_cell[i]) if staged and len(shot_stages) == 2
                        else None),
            "signals": _signals({"event_density": a.event_density,
                                 "peak_energy": a.peak_energy,
                                 "in_audio_manifest": a.in_manifest,
                                 "duration_ms": a.duration_ms, "shot_type": a.shot_type}),
            "candidates": writer.front(i, j),
            "chosen": chosen,
        }))
    return out


def degrade_ladders() -> dict[str, list[LadderStepSpec]]:
    """Every ladder, embedded in each plan so a renderer needs no code to walk it."""
    return {name: [LadderStepSpec.model_validate(step) for step in steps]
            for name, steps in ladders_json().items()}


def cost_model(history: CostHistory | None) -> CostModel:
    return CostModel(
        history_records=0 if history is None else history.records,
        default_backend_costs={b: BackendCostSpec(sec_per_frame_720p=c.sec_per_frame_720p,
                                                  overhead_sec=c.overhead_sec)
                               for b, c in DEFAULT_BACKEND_COSTS.items()},
    )


def ready_plan(
    *,
    episode: Episode,
    creative: CreativeControl,
    settings: PlanSettings,
    analyses: Sequence[ShotAnalysis],
    assignments: Sequence[ShotAssignment],
    allocation: Allocation,
    outcome: SlaOutcome,
    proposal: RebalanceProposal | None,
    history: CostHistory | None,
    states: list[PlanState],
    warnings: list[str],
    started: float,
) -> ComputePlan:
    """The plan of a planned episode: ``compute_plan_ready``, or ``rebalance_required``
    with the ``proposal`` when the budget is below the cheapest plan."""
    final = outcome.allocation
    sol = final.solution
    feasible = allocation.solution.feasible and sol.feasible
    shots = shot_plans(analyses, assignments, final, outcome)
    total_sec = math.fsum(s.estimated_cost.gpu_sec for s in shots)
    budget = settings.budget_sec
    max_min = creative.budget.max_gpu_minutes
    s = settings
    allocation_report = AllocationReport(
        objective=round(sol.objective, 4),
        upper_bound=None if sol.upper_bound is None else round(sol.upper_bound, 4),
        budget_used=round(total_sec, 2),
        budget_gpu_sec=None if budget is None else round(budget, 2),
        min_cost_gpu_sec=round(sol.min_cost, 2),
        solver=sol.solver,
        time_ms=round(sol.time_ms + (allocation.solution.time_ms
                                     if final is not allocation else 0.0), 3),
        planning_time_ms=round((time.perf_counter() - started) * 1000, 3),
        feasible=feasible,
        shots=len(shots),
        candidates_considered=int(np.isfinite(final.grid.cost).sum()),
        value_model=VALUE_MODEL,
    )
    return ComputePlan.model_construct(
        version=PLAN_VERSION,
        status=STATUS_READY if feasible else STATUS_REBALANCE,
        episode_key=episode.key,
        mode=s.mode,
        global_profile=s.profile,
        global_profile_source=s.profile_source,
        feature_flags=FeatureFlags(**s.flags),
        baseline=Baseline(fps=float(out_num(s.baseline_fps)),
                          resolution=s.base_tier, max_resolution=s.ceiling_tier,
                          max_fps=float(out_num(s.fps_cap))),
        budget_summary=BudgetSummary(
            max_gpu_minutes=None if max_min is None else float(max_min),
            estimated_gpu_minutes=math.floor(total_sec / 60.0 * 1000) / 1000,
            max_gpu_sec=None if budget is None else round(budget, 2),
            estimated_gpu_sec=round(total_sec, 2),
            within_budget=None if budget is None else total_sec <= budget,
            budget_capped=budget is not None,
        ),
        shots=shots,
        allocation=allocation_report,
        stages=outcome.stages,
        sla=outcome.sla,
        states=states,
        rebalance_proposal=proposal,
        degrade_ladders=degrade_ladders(),
        cost_model=cost_model(history),
        warnings=warnings,
        failure_reason=None,
        generated_at=s.now.astimezone(UTC),
        runtime_policy=None,
    )


def failed_plan(
    reason: str,
    states: list[PlanState],
    episode: Episode | None,
    creative: CreativeControl,
    warnings: list[str],
    started: float,
) -> ComputePlan:
    """The plan of an episode the budgeter could not plan: no shots, ``failure_reason``."""
    max_min = creative.budget.max_gpu_minutes
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    return ComputePlan(
        version=PLAN_VERSION,
        status=STATUS_FAILED,
        episode_key=episode.key if episode is not None else None,
        failure_reason=reason,
        global_profile=(creative.global_profile.value if creative.global_profile
                        else None),
        budget_summary=BudgetSummary(
            max_gpu_minutes=max_min, estimated_gpu_minutes=0.0,
            max_gpu_sec=None if max_min is None else round(max_min * 60.0, 2),
            budget_capped=max_min is not None),
        shots=[],
        states=[*states, "FAILED"],
        warnings=warnings,
        allocation=AllocationReport(objective=0.0, budget_used=0.0, solver="none",
                                    time_ms=elapsed_ms, planning_time_ms=elapsed_ms),
        stages=[],
        rebalance_proposal=None,
    )
