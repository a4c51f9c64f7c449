"""The whole plan: output contract, schema, infeasible budgets, profiles, history, ladders."""

from __future__ import annotations

import copy
import json
from datetime import datetime

import jsonschema
import pytest

from anime_pipeline.budget import (
    CostHistory,
    DegradeStep,
    PlanValidationError,
    build_compute_plan,
    get_ladder,
    validate_plan,
)
from anime_pipeline.domain.contracts import RESOLUTION_TIERS, ResourceState
from anime_pipeline_tests.budget.support import (
    GPU,
    NOW,
    creative,
    episode,
    manifest,
    sample,
    shot,
)

STATES = ["INIT", "ANALYZING_COMPLEXITY", "ALLOCATING_BUDGET", "ASSIGNING_BACKENDS",
          "REBALANCING_SLA", "COMPUTE_PLAN_READY"]


def _plan(**cc):  # type: ignore[no-untyped-def]
    ep, audio = sample()
    resources = cc.pop("resources", GPU)
    history = cc.pop("history", None)
    return build_compute_plan(ep, creative(**cc), audio, resources, history, now=NOW)


def test_output_contract_and_schema() -> None:
    plan = _plan(global_profile="HIGH", budget={"max_gpu_minutes": 8})
    validate_plan(plan)
    json.dumps(plan, allow_nan=False)
    assert plan["version"] == "1.0" and plan["status"] == "compute_plan_ready"
    assert plan["global_profile"] == "HIGH"
    assert plan["states"] == STATES
    summary = plan["budget_summary"]
    assert summary["max_gpu_minutes"] == 8
    assert 0 < summary["estimated_gpu_minutes"] <= 8
    assert [s["shot_id"] for s in plan["shots"]] == [f"S{i:02d}" for i in range(1, 13)]
    for s in plan["shots"]:
        for key in ("shot_id", "complexity", "render_priority", "target_fps",
                    "target_resolution", "segment_policy", "backend_preference",
                    "retry_budget", "degrade_ladder_profile", "estimated_cost",
                    "candidates", "chosen"):
            assert key in s
        assert s["target_resolution"] in RESOLUTION_TIERS
        assert RESOLUTION_TIERS[s["target_resolution"]] <= 720
        assert s["target_fps"] <= 24
        assert s["chosen"]["id"] in {c["id"] for c in s["candidates"]}
        costs = [c["gpu_sec"] for c in s["candidates"]]
        values = [c["value"] for c in s["candidates"]]
        assert costs == sorted(costs) and values == sorted(values)  # a Pareto front
    total = sum(s["estimated_cost"]["gpu_sec"] for s in plan["shots"])
    assert total <= 8 * 60
    alloc = plan["allocation"]
    assert alloc["solver"] == "mckp_hull_greedy" and alloc["budget_used"] == pytest.approx(total)
    assert alloc["objective"] <= alloc["upper_bound"] + 1e-9
    assert plan["stages"][0]["name"] == "final"
    assert sorted(plan["stages"][0]["shots"]) == sorted(s["shot_id"] for s in plan["shots"])
    assert set(plan["degrade_ladders"]) >= {"DL_LOW_MOTION_V1", "DL_STANDARD_V1",
                                           "DL_HIGH_MOTION_V1", "DL_CRITICAL_V1"}


def test_infeasible_budget_gives_rebalance_proposal() -> None:
    plan = _plan(global_profile="HIGH", budget={"max_gpu_minutes": 0.05})
    validate_plan(plan)
    assert plan["status"] == "rebalance_required"
    assert plan["states"][-1] == "COMPUTE_PLAN_READY"
    prop = plan["rebalance_proposal"]
    assert prop["missing_gpu_minutes"] > 0
    assert prop["required_gpu_minutes"] > 0.05
    assert prop["preview_only_shots"]
    assert not {"S05", "S12"} & set(prop["preview_only_shots"])  # critical never preview-only
    assert plan["budget_summary"]["within_budget"] is False
    # every shot is at its cheapest candidate
    for s in plan["shots"]:
        assert s["chosen"]["gpu_sec"] == min(c["gpu_sec"] for c in s["candidates"])


def test_no_budget_means_no_cap() -> None:
    plan = _plan(global_profile="MEDIUM")
    validate_plan(plan)
    assert plan["budget_summary"]["max_gpu_minutes"] is None
    assert plan["budget_summary"]["budget_capped"] is False
    assert plan["allocation"]["solver"] == "max_value_no_budget"
    for s in plan["shots"]:
        assert s["chosen"]["value"] == max(c["value"] for c in s["candidates"])


@pytest.mark.parametrize(("resources", "profile"), [
    (ResourceState(), "LOW"),
    (ResourceState(gpu_count=1, vram_free_mb=16_000), "MEDIUM"),
    (ResourceState(gpu_count=1, vram_free_mb=80_000), "HIGH"),
    (ResourceState(gpu_count=2), "HIGH"),
    (ResourceState(gpu_count=2, policy_degraded=True), "MEDIUM"),
])
def test_profile_derived_from_resources(resources: ResourceState, profile: str) -> None:
    plan = _plan(resources=resources)
    assert plan["global_profile"] == profile
    assert plan["global_profile_source"] == "resources"
    assert plan["baseline"]["fps"] == {"LOW": 8, "MEDIUM": 12, "HIGH": 24}[profile]


def test_default_resources_are_local_only() -> None:
    ep, audio = sample()
    plan = build_compute_plan(ep, creative(), audio)
    validate_plan(plan)
    for s in plan["shots"]:
        assert set(s["backend_preference"]) <= {"animatic", "source_clip"}


def test_generation_fps_never_above_delivery() -> None:
    ep = episode([shot("A", "action", 2000, camera={"move": "shake", "strength": 1})],
                 fps=10, height=360)
    plan = build_compute_plan(ep, creative(global_profile="HIGH"), manifest({"A": (9, 1)}),
                              GPU, now=NOW)
    validate_plan(plan)
    s = plan["shots"][0]
    assert s["target_fps"] <= 10 and s["target_resolution"] == "360p"


def test_history_changes_costs() -> None:
    records = [{"backend": "animatic", "shot_type": t, "fps": 8, "resolution": "480p",
                "render_seconds": 30.0, "duration_ms": 3000} for t in
               ("establishing", "dialogue", "action", "insert", "transition")]
    records.append({"backend": "animatic", "shot_type": "dialogue"})  # malformed: ignored
    history = CostHistory.from_records(records)
    assert history.records == 5 and history.rejected == 1
    base = _plan(global_profile="LOW", resources=ResourceState())
    hist = _plan(global_profile="LOW", resources=ResourceState(), history=history)
    validate_plan(hist)
    assert hist["cost_model"]["history_records"] == 5
    assert hist["budget_summary"]["estimated_gpu_sec"] > base["budget_summary"][
        "estimated_gpu_sec"] * 5
    sources = {c["cost_source"] for s in hist["shots"] for c in s["candidates"]}
    assert "history_exact" in sources and "history_type" in sources


def test_failed_plan_is_schema_valid() -> None:
    ep = episode([shot("A"), shot("A")])
    plan = build_compute_plan(ep, creative(), manifest({}), now=NOW)
    validate_plan(plan)
    assert plan["status"] == "failed" and plan["states"][-1] == "FAILED"
    assert "duplicate" in plan["failure_reason"]
    bad = build_compute_plan(episode([shot("A")]), creative(), ["not", "a", "dict"],  # type: ignore[arg-type]
                             now=NOW)
    assert bad["status"] == "failed" and "audio manifest" in bad["failure_reason"]
    naive = build_compute_plan(episode([shot("A")]), creative(), manifest({}),
                               now=datetime(2026, 1, 1))
    assert naive["status"] == "failed" and "timezone" in naive["failure_reason"]


def test_manifest_without_shots_is_silence() -> None:
    ep, _ = sample()
    plan = build_compute_plan(ep, creative(), {"version": "1.0"}, now=NOW)
    validate_plan(plan)
    assert all(s["signals"]["in_audio_manifest"] is False for s in plan["shots"])


# ------------------------------------------------------------------ validate_plan


def test_validate_plan_rejects_broken_plans() -> None:
    good = _plan(global_profile="HIGH", budget={"max_gpu_minutes": 5})
    validate_plan(good)

    bad = copy.deepcopy(good)
    bad["shots"][0]["target_resolution"] = "999p"
    with pytest.raises(jsonschema.ValidationError, match="shots"):
        validate_plan(bad)

    bad = copy.deepcopy(good)
    del bad["shots"][1]["retry_budget"]
    with pytest.raises(jsonschema.ValidationError, match="retry_budget"):
        validate_plan(bad)

    bad = copy.deepcopy(good)
    bad["shots"].append(copy.deepcopy(bad["shots"][0]))
    with pytest.raises(PlanValidationError, match="planned twice"):
        validate_plan(bad)

    bad = copy.deepcopy(good)
    bad["shots"][0]["estimated_cost"]["gpu_sec"] = 10_000
    with pytest.raises(PlanValidationError, match="max_gpu_minutes"):
        validate_plan(bad)

    bad = copy.deepcopy(good)
    bad["shots"][2]["backend_preference"] = ["wan_i2v"]
    with pytest.raises(PlanValidationError, match="local backend"):
        validate_plan(bad)

    bad = copy.deepcopy(good)
    crit = next(s for s in bad["shots"] if s["critical"])
    crit["target_fps"] = 6
    with pytest.raises(PlanValidationError, match="floor"):
        validate_plan(bad)

    bad = copy.deepcopy(good)
    bad["status"] = "rebalance_required"
    with pytest.raises(jsonschema.ValidationError):
        validate_plan(bad)  # a rebalance status needs a proposal


# ------------------------------------------------------------------ ladders


@pytest.mark.parametrize("name", ["DL_LOW_MOTION_V1", "DL_STANDARD_V1", "DL_HIGH_MOTION_V1",
                                  "DL_CRITICAL_V1", "DL_PREVIEW_V1"])
def test_ladders_end_with_placeholder(name: str) -> None:
    steps = get_ladder(name)
    assert steps[-1] == DegradeStep("placeholder")
    assert all(isinstance(s, DegradeStep) for s in steps)
    for s in steps:
        if s.action == "lower_resolution":
            assert s.resolution in RESOLUTION_TIERS
        if s.action == "lower_fps":
            assert s.fps_factor is not None and 0 < s.fps_factor < 1
            assert s.apply_fps(8) >= 6 and s.apply_fps(24) < 24


def test_ladder_errors_and_frozen() -> None:
    with pytest.raises(KeyError, match="unknown degrade ladder"):
        get_ladder("DL_NOPE")
    with pytest.raises(ValueError):
        DegradeStep("lower_fps")
    with pytest.raises(ValueError):
        DegradeStep("lower_resolution", resolution="123p")
    step = get_ladder("DL_STANDARD_V1")[0]
    with pytest.raises(AttributeError):
        step.action = "placeholder"  # type: ignore[misc]
    get_ladder("DL_STANDARD_V1").clear()  # a copy: the named ladder is unchanged
    assert get_ladder("DL_STANDARD_V1")
