"""The compute plan's JSON Schema and :func:`validate_plan` (schema + plan invariants)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema

from anime_pipeline.budget.ladders import LADDERS
from anime_pipeline.domain.contracts import LOCAL_BACKENDS, RESOLUTION_TIERS

SCHEMA_PATH = Path(__file__).with_name("compute_plan.schema.json")


class PlanValidationError(ValueError):
    """A plan that passes the JSON Schema but breaks one of the plan's invariants."""


@lru_cache(maxsize=1)
def plan_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return schema


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(plan_schema())
    cls.check_schema(plan_schema())
    return cls(plan_schema(), format_checker=cls.FORMAT_CHECKER)


def _where(error: jsonschema.ValidationError) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)


def validate_plan(plan: Any) -> None:
    """Raise ``jsonschema.ValidationError`` (schema) or :class:`PlanValidationError`
    (invariants) with a message naming the field; return None for a valid plan.

    Invariants: every shot planned once; the estimated total within the budget unless a
    rebalance proposal is present; every shot at or above its floor; every
    ``backend_preference`` ends with a local backend; ladders are known.
    """
    error = jsonschema.exceptions.best_match(_validator().iter_errors(plan))
    if error is not None:
        error.message = f"compute plan{_where(error) or ''}: {error.message}"
        raise error
    shots = plan["shots"]
    ids = [s["shot_id"] for s in shots]
    seen: set[str] = set()
    for i, sid in enumerate(ids):
        if sid in seen:
            raise PlanValidationError(f"compute plan.shots[{i}].shot_id: {sid!r} planned twice")
        seen.add(sid)
    summary = plan["budget_summary"]
    max_min = summary.get("max_gpu_minutes")
    total = sum(float(s["estimated_cost"]["gpu_sec"]) for s in shots)
    if (max_min is not None and plan["status"] != "failed"
            and total > float(max_min) * 60.0 + 1e-6 and not plan.get("rebalance_proposal")):
        raise PlanValidationError(
            f"compute plan.budget_summary: shots total {total / 60:.3f} GPU minutes, above "
            f"max_gpu_minutes {max_min}, and there is no rebalance_proposal")
    for i, s in enumerate(shots):
        where = f"compute plan.shots[{i}]"
        prefs = s["backend_preference"]
        if prefs[-1] not in LOCAL_BACKENDS:
            raise PlanValidationError(
                f"{where}.backend_preference: must end with a local backend "
                f"{list(LOCAL_BACKENDS)}, got {prefs}")
        if s["degrade_ladder_profile"] not in LADDERS:
            raise PlanValidationError(
                f"{where}.degrade_ladder_profile: unknown ladder {s['degrade_ladder_profile']!r}")
        floor = s.get("floor")
        if floor:
            if float(s["target_fps"]) + 1e-9 < float(floor["fps"]):
                raise PlanValidationError(
                    f"{where}.target_fps: {s['target_fps']} is below its floor {floor['fps']}")
            if RESOLUTION_TIERS[s["target_resolution"]] < RESOLUTION_TIERS[floor["resolution"]]:
                raise PlanValidationError(
                    f"{where}.target_resolution: {s['target_resolution']} is below its floor "
                    f"{floor['resolution']}")
    for k, stage in enumerate(plan["stages"]):
        unknown = set(stage["shots"]) - seen
        if unknown:
            raise PlanValidationError(
                f"compute plan.stages[{k}].shots: not planned shots {sorted(unknown)[:5]}")
