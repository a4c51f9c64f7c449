"""The committed JSON Schema is generated from ComputePlan, and agrees with the model: every
plan the planner makes validates against it, and it rejects what the model rejects."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import timedelta
from functools import cache
from typing import Any

import jsonschema
import pydantic
import pytest

from anime_pipeline.budget import build_compute_plan, plan_schema, validate_plan
from anime_pipeline.budget.__main__ import main as schema_main
from anime_pipeline.budget.schema import SCHEMA_PATH, generate_plan_schema, schema_text
from anime_pipeline_tests.budget.support import GPU, NOW, creative, episode, sample, shot


@cache
def _validator() -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(plan_schema())
    cls.check_schema(plan_schema())
    return cls(plan_schema(), format_checker=cls.FORMAT_CHECKER)


def test_committed_schema_is_generated_from_the_model() -> None:
    """If this fails, the model changed: run ``python -m anime_pipeline.budget``."""
    assert plan_schema() == generate_plan_schema()
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(generate_plan_schema())
    assert plan_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert plan_schema()["title"] == "shot_compute_budget_plan"
    assert schema_main(["--check"]) == 0


@cache
def _plans() -> list[dict[str, Any]]:
    ep, audio = sample()
    variants: list[dict[str, Any]] = [
        {"global_profile": "HIGH", "budget": {"max_gpu_minutes": 8}},
        {"global_profile": "HIGH", "budget": {"max_gpu_minutes": 0.05}},  # rebalance
        {"mode": "preview", "global_profile": "HIGH", "budget": {"max_gpu_minutes": 30}},
        {"global_profile": "HIGH", "budget": {"max_gpu_minutes": 60},
         "sla": {"deadline": (NOW + timedelta(minutes=4)).isoformat()}},
        {"mode": "final", "feature_flags": {"enable_shot_level_budget": False}},
        {"feature_flags": {"enable_dynamic_fps": False}},
    ]
    plans = [build_compute_plan(ep, creative(**cc), audio, GPU, now=NOW) for cc in variants]
    plans.append(build_compute_plan(episode([shot("A"), shot("A")]), creative(), None,
                                    now=NOW))  # failed
    return [p.model_dump(mode="json") for p in plans]


def test_every_plan_validates_against_the_schema() -> None:
    plans = _plans()
    assert {p["status"] for p in plans} == {"compute_plan_ready", "rebalance_required",
                                            "failed"}
    for doc in plans:
        _validator().validate(doc)
        json.dumps(doc, allow_nan=False)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = doc
        for key in head:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return edit


_DELETE = object()

BROKEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "version": _set("version", "2.0"),
    "status": _set("status", "done"),
    "states empty": _set("states", []),
    "unknown state": _set("states", ["INIT", "SLEEPING"]),
    "no budget_summary": _set("budget_summary", _DELETE),
    "negative estimate": _set("budget_summary.estimated_gpu_minutes", -1),
    "zero max minutes": _set("budget_summary.max_gpu_minutes", 0),
    "empty solver": _set("allocation.solver", ""),
    "tier": _set("shots.0.target_resolution", "999p"),
    "no retry_budget": _set("shots.1.retry_budget", _DELETE),
    "retry_budget 11": _set("shots.1.retry_budget", 11),
    "retry_budget float": _set("shots.1.retry_budget", 1.5),
    "fps 0": _set("shots.0.target_fps", 0),
    "shot id": _set("shots.0.shot_id", "-bad id-"),
    "segment policy": _set("shots.0.segment_policy", "whenever"),
    "segments 0": _set("shots.0.segments.count", 0),
    "ladder name": _set("shots.0.degrade_ladder_profile", "standard"),
    "backend name": _set("shots.0.backend_preference", ["Wan I2V", "animatic"]),
    "backend twice": _set("shots.0.backend_preference", ["animatic", "animatic"]),
    "no backend": _set("shots.0.backend_preference", []),
    "no candidates": _set("shots.0.candidates", []),
    "candidate cost": _set("shots.0.candidates.0.gpu_sec", -0.5),
    "cost source": _set("shots.0.chosen.cost_source", "guess"),
    "no floor": _set("shots.0.floor", _DELETE),
    "peak energy": _set("shots.0.signals.peak_energy", 1.5),
    "complexity": _set("shots.0.complexity", "extreme"),
    "priority": _set("shots.0.render_priority", "urgent"),
    "stage name": _set("stages.0.name", "draft"),
    "stage finish": _set("stages.0.estimated_finish", "tomorrow"),
    "stage shot twice": _set("stages.0.shots", ["S01", "S01"]),
    "sla reason": _set("sla.reasons", ["because"]),
    "ladder step": _set("degrade_ladders.DL_STANDARD_V1.0.fps_factor", 1.5),
    "ladder action": _set("degrade_ladders.DL_STANDARD_V1.0.action", "give_up"),
    "empty ladder": _set("degrade_ladders.DL_STANDARD_V1", []),
    "rebalance without proposal": _set("status", "rebalance_required"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_schema_and_model_reject_the_same_broken_plans(name: str) -> None:
    bad = copy.deepcopy(_plans()[0])
    BROKEN[name](bad)
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(bad)
    with pytest.raises(pydantic.ValidationError):
        validate_plan(bad)


def test_failed_status_needs_a_reason() -> None:
    bad = copy.deepcopy(_plans()[-1])
    assert bad["status"] == "failed"
    bad["failure_reason"] = None
    with pytest.raises(jsonschema.ValidationError):
        _validator().validate(bad)
    with pytest.raises(pydantic.ValidationError, match="failure_reason"):
        validate_plan(bad)


def test_extra_fields_are_allowed_by_both() -> None:
    extra = copy.deepcopy(_plans()[0])
    extra["note"] = "from a newer writer"
    extra["shots"][0]["note"] = "ignored by the model"
    _validator().validate(extra)
    validate_plan(extra)
