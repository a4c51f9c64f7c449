"""The compute plan's JSON Schema and :func:`validate_plan` (shape + plan invariants).

The shape is :class:`~anime_pipeline.budget.plan.ComputePlan`: ``validate_plan`` validates
with it (pydantic), and the committed ``compute_plan.schema.json`` is generated from it, for
readers that are not Python. Regenerate it after changing the model (a test fails until
then)::

    .venv/bin/python -m anime_pipeline.budget            # write compute_plan.schema.json
    .venv/bin/python -m anime_pipeline.budget --check    # exit 1 when it is out of date
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from anime_pipeline.budget.ladders import LADDERS
from anime_pipeline.budget.plan import ComputePlan
from anime_pipeline.domain.contracts import LOCAL_BACKENDS, RESOLUTION_TIERS

SCHEMA_PATH = Path(__file__).with_name("compute_plan.schema.json")
SCHEMA_ID = "https://anime-pipeline.local/schemas/compute_plan.schema.json"


class PlanValidationError(ValueError):
    """A plan of the right shape that breaks one of the plan's invariants."""


def generate_plan_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :class:`ComputePlan`, as committed."""
    schema = ComputePlan.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "description": "Per-shot compute plan written by "
                       "anime_pipeline.budget.build_compute_plan, generated from "
                       "anime_pipeline.budget.plan.ComputePlan (python -m "
                       "anime_pipeline.budget). Extra top-level fields are kept.",
    }


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_plan_schema(path: Path = SCHEMA_PATH) -> Path:
    """Regenerate the committed schema file from the model."""
    path.write_text(schema_text(generate_plan_schema()), encoding="utf-8")
    plan_schema.cache_clear()
    return path


@lru_cache(maxsize=1)
def plan_schema() -> dict[str, Any]:
    """The committed JSON Schema (``compute_plan.schema.json``)."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


def validate_plan(plan: ComputePlan | dict[str, Any]) -> None:
    """Raise ``pydantic.ValidationError`` (shape: the error names the field, e.g.
    ``shots.0.target_resolution``) or :class:`PlanValidationError` (invariants) for a bad
    plan; return None for a valid one. A :class:`ComputePlan` is validated field by field
    like a dict (the planner constructs it without validation).

    Invariants: every shot planned once; the estimated total within the budget unless a
    rebalance proposal is present; every shot at or above its floor; every
    ``backend_preference`` ends with a local backend; ladders are known; stages list only
    planned shots.
    """
    checked = ComputePlan.model_validate(plan)
    seen: set[str] = set()
    for i, s in enumerate(checked.shots):
        if s.shot_id in seen:
            raise PlanValidationError(
                f"compute plan.shots[{i}].shot_id: {s.shot_id!r} planned twice")
        seen.add(s.shot_id)
    max_min = checked.budget_summary.max_gpu_minutes
    total = sum(s.estimated_cost.gpu_sec for s in checked.shots)
    if (max_min is not None and checked.status != "failed"
            and total > max_min * 60.0 + 1e-6 and checked.rebalance_proposal is None):
        raise PlanValidationError(
            f"compute plan.budget_summary: shots total {total / 60:.3f} GPU minutes, above "
            f"max_gpu_minutes {max_min}, and there is no rebalance_proposal")
    for i, s in enumerate(checked.shots):
        where = f"compute plan.shots[{i}]"
        prefs = s.backend_preference
        if prefs[-1] not in LOCAL_BACKENDS:
            raise PlanValidationError(
                f"{where}.backend_preference: must end with a local backend "
                f"{list(LOCAL_BACKENDS)}, got {prefs}")
        if s.degrade_ladder_profile not in LADDERS:
            raise PlanValidationError(
                f"{where}.degrade_ladder_profile: unknown ladder {s.degrade_ladder_profile!r}")
        if s.target_fps + 1e-9 < s.floor.fps:
            raise PlanValidationError(
                f"{where}.target_fps: {s.target_fps:g} is below its floor {s.floor.fps:g}")
        if RESOLUTION_TIERS[s.target_resolution] < RESOLUTION_TIERS[s.floor.resolution]:
            raise PlanValidationError(
                f"{where}.target_resolution: {s.target_resolution} is below its floor "
                f"{s.floor.resolution}")
    for k, stage in enumerate(checked.stages):
        unknown = set(stage.shots) - seen
        if unknown:
            raise PlanValidationError(
                f"compute plan.stages[{k}].shots: not planned shots {sorted(unknown)[:5]}")
