"""Compute-aware shot budgeter: per-shot fps, resolution, backend and retries under a GPU
budget and an SLA. Pure Python (numpy, pydantic); no Dagster import.

Public API::

    build_compute_plan(episode, creative, audio_manifest, resources=None, history=None,
                       now=None) -> ComputePlan
    ComputePlan.model_validate_json(data)  # a stored plan; plan.model_dump(mode="json")
    validate_plan(plan) -> None
    get_ladder(name) -> list[DegradeLadderStep]
    CostHistory.from_records(records)

Modules, in the order of the state machine (``planner``): ``settings``, ``complexity``
(CB1), ``allocation`` (CB2, with ``cost`` and ``solver``), ``assignment`` (CB3), ``sla``
(CB4 and the rebalance proposal), ``document`` (assembling the plan), ``plan`` (the model),
``schema`` (JSON Schema and validation), ``ladders``.
"""

from anime_pipeline.budget.allocation import allocate_budget
from anime_pipeline.budget.assignment import assign_backends
from anime_pipeline.budget.complexity import analyze_complexity
from anime_pipeline.budget.cost import CostHistory, estimate_gpu_sec
from anime_pipeline.budget.ladders import LADDERS, DegradeLadderStep, get_ladder
from anime_pipeline.budget.plan import ComputePlan, ShotPlan
from anime_pipeline.budget.planner import build_compute_plan
from anime_pipeline.budget.schema import PlanValidationError, plan_schema, validate_plan
from anime_pipeline.budget.settings import PlanningError, resolve_settings
from anime_pipeline.budget.sla import rebalance_sla
from anime_pipeline.budget.solver import Solution, solve_mckp

__all__ = [
    "LADDERS",
    "ComputePlan",
    "CostHistory",
    "DegradeLadderStep",
    "PlanValidationError",
    "PlanningError",
    "ShotPlan",
    "Solution",
    "allocate_budget",
    "analyze_complexity",
    "assign_backends",
    "build_compute_plan",
    "estimate_gpu_sec",
    "get_ladder",
    "plan_schema",
    "rebalance_sla",
    "resolve_settings",
    "solve_mckp",
    "validate_plan",
]
