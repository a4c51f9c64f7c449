"""Compute-aware shot budgeter: per-shot fps, resolution, backend and retries under a GPU
budget and an SLA. Pure Python (numpy); no Dagster import.

Public API::

    build_compute_plan(episode, creative, audio_manifest, resources=None, history=None,
                       now=None) -> dict
    validate_plan(plan) -> None
    get_ladder(name) -> list[DegradeStep]
    CostHistory.from_records(records)
"""

from anime_pipeline.budget.cost import CostHistory, estimate_gpu_sec
from anime_pipeline.budget.ladders import LADDERS, DegradeStep, get_ladder
from anime_pipeline.budget.planner import (
    PlanningError,
    allocate_budget,
    analyze_complexity,
    assign_backends,
    build_compute_plan,
    rebalance_sla,
    resolve_settings,
)
from anime_pipeline.budget.schema import PlanValidationError, plan_schema, validate_plan
from anime_pipeline.budget.solver import Solution, solve_mckp

__all__ = [
    "LADDERS",
    "CostHistory",
    "DegradeStep",
    "PlanValidationError",
    "PlanningError",
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
