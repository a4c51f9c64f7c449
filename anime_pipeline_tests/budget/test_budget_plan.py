"""The whole plan: output contract, schema, infeasible budgets, profiles, history, ladders."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any

import pydantic
import pytest

from anime_pipeline.budget import (
    ComputePlan,
    CostHistory,
    DegradeLadderStep,
    PlanValidationError,
    build_compute_plan,
    get_ladder,
    validate_plan,
)
from anime_pipeline.domain.contracts import MIN_FPS, RESOLUTION_TIERS, ResourceState
from anime_pipeline.domain.records import ClipMetadata, ClipStatus
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


def _plan(**cc: Any) -> ComputePlan:
    ep, audio = sample()
    resources = cc.pop("resources", GPU)
    history = cc.pop("history", None)
    return build_compute_plan(ep, creative(**cc), audio, resources, history, now=NOW)


def test_output_contract_and_schema() -> None:
    plan = _plan(global_profile="HIGH", budget={"max_gpu_minutes": 8})
    validate_plan(plan)
    json.dumps(plan.model_dump(mode="json"), allow_nan=False)
    assert plan.version == "1.0" and plan.status == "compute_plan_ready"
    assert plan.global_profile == "HIGH"
    assert plan.states == STATES
    summary = plan.budget_summary
    assert summary.max_gpu_minutes == 8
    assert 0 < summary.estimated_gpu_minutes <= 8
    assert plan.shot_ids == [f"S{i:02d}" for i in range(1, 13)]
    doc = plan.model_dump(mode="json")
    for s in doc["shots"]:
        for key in ("shot_id", "complexity", "render_priority", "target_fps",
                    "target_resolution", "segment_policy", "backend_preference",
                    "retry_budget", "degrade_ladder_profile", "estimated_cost",
                    "candidates", "chosen"):
            assert key in s
    for sp in plan.shots:
        assert sp.target_resolution in RESOLUTION_TIERS
        assert RESOLUTION_TIERS[sp.target_resolution] <= 720
        assert sp.target_fps <= 24
        assert sp.chosen.id in {c.id for c in sp.candidates}
        costs = [c.gpu_sec for c in sp.candidates]
        values = [c.value for c in sp.candidates]
        assert costs == sorted(costs) and values == sorted(values)  # a Pareto front
    total = sum(s.estimated_cost.gpu_sec for s in plan.shots)
    assert total <= 8 * 60
    alloc = plan.allocation
    assert alloc.solver == "mckp_hull_greedy" and alloc.budget_used == pytest.approx(total)
    assert alloc.upper_bound is not None and alloc.objective <= alloc.upper_bound + 1e-9
    assert plan.stages[0].name == "final"
    assert sorted(plan.stages[0].shots) == sorted(plan.shot_ids)
    assert set(plan.degrade_ladders) >= {"DL_LOW_MOTION_V1", "DL_STANDARD_V1",
                                         "DL_HIGH_MOTION_V1", "DL_CRITICAL_V1"}


def test_infeasible_budget_gives_rebalance_proposal() -> None:
    plan = _plan(global_profile="HIGH", budget={"max_gpu_minutes": 0.05})
    validate_plan(plan)
    assert plan.status == "rebalance_required"
    assert plan.states[-1] == "COMPUTE_PLAN_READY"
    prop = plan.rebalance_proposal
    assert prop is not None
    assert prop.missing_gpu_minutes > 0
    assert prop.required_gpu_minutes > 0.05
    assert prop.preview_only_shots
    assert not {"S05", "S12"} & set(prop.preview_only_shots)  # critical never preview-only
    assert plan.budget_summary.within_budget is False
    # every shot is at its cheapest candidate
    for s in plan.shots:
        assert s.chosen.gpu_sec == min(c.gpu_sec for c in s.candidates)


def test_no_budget_means_no_cap() -> None:
    plan = _plan(global_profile="MEDIUM")
    validate_plan(plan)
    assert plan.budget_summary.max_gpu_minutes is None
    assert plan.budget_summary.budget_capped is False
    assert plan.allocation.solver == "max_value_no_budget"
    for s in plan.shots:
        assert s.chosen.value == max(c.value for c in s.candidates)


@pytest.mark.parametrize(("resources", "profile"), [
    (ResourceState(), "LOW"),
    (ResourceState(gpu_count=1, vram_free_mb=16_000), "MEDIUM"),
    (ResourceState(gpu_count=1, vram_free_mb=80_000), "HIGH"),
    (ResourceState(gpu_count=2), "HIGH"),
    (ResourceState(gpu_count=2, policy_degraded=True), "MEDIUM"),
])
def test_profile_derived_from_resources(resources: ResourceState, profile: str) -> None:
    plan = _plan(resources=resources)
    assert plan.global_profile == profile
    assert plan.global_profile_source == "resources"
    assert plan.baseline is not None
    assert plan.baseline.fps == {"LOW": 8, "MEDIUM": 12, "HIGH": 24}[profile]


def test_default_resources_are_local_only() -> None:
    ep, audio = sample()
    plan = build_compute_plan(ep, creative(), audio)
    validate_plan(plan)
    for s in plan.shots:
        assert set(s.backend_preference) <= {"animatic", "source_clip"}


def test_generation_fps_never_above_delivery() -> None:
    ep = episode([shot("A", "action", 2000, camera={"move": "shake", "strength": 1})],
                 fps=10, height=360)
    plan = build_compute_plan(ep, creative(global_profile="HIGH"), manifest({"A": (9, 1)}),
                              GPU, now=NOW)
    validate_plan(plan)
    s = plan.shots[0]
    assert s.target_fps <= 10 and s.target_resolution == "360p"


_HISTORY = [{"backend": "animatic", "shot_type": t, "fps": 8, "resolution": "480p",
             "render_seconds": 30.0, "duration_ms": 3000} for t in
            ("establishing", "dialogue", "action", "insert", "transition")]


def test_history_changes_costs() -> None:
    records: list[dict[str, Any]] = [*_HISTORY]
    records.append({"backend": "animatic", "shot_type": "dialogue"})  # malformed: ignored
    history = CostHistory.from_records(records)
    assert history.records == 5 and history.rejected == 1
    base = _plan(global_profile="LOW", resources=ResourceState())
    hist = _plan(global_profile="LOW", resources=ResourceState(), history=history)
    validate_plan(hist)
    assert hist.cost_model is not None and hist.cost_model.history_records == 5
    assert hist.budget_summary.estimated_gpu_sec > base.budget_summary.estimated_gpu_sec * 5
    sources = {c.cost_source for s in hist.shots for c in s.candidates}
    assert "history_exact" in sources and "history_type" in sources


def _clip(rec: dict[str, Any], **kw: Any) -> ClipMetadata:
    values: dict[str, Any] = {
        "episode_key": "studio-a/moonlit-courier/ep01", "shot_id": "S01", "status": "ok",
        "cached": False, "encoder": "libx264", "frames": 24, "size_bytes": 1000,
        "attempts": 1, **rec, **kw}
    return ClipMetadata.model_validate(values)


def test_history_from_clip_metadata() -> None:
    """Typed clip metadata (attribute access) gives the same history as the dicts; reused
    clips and placeholder slates have no render time to learn from and are skipped."""
    clips = [_clip(r) for r in _HISTORY]
    clips.append(_clip(_HISTORY[0], cached=True, render_seconds=1.0))
    clips.append(_clip(_HISTORY[1], status=ClipStatus.placeholder, render_seconds=0.1))
    typed = CostHistory.from_records(clips)
    plain = CostHistory.from_records(_HISTORY)
    assert typed.records == 5 and typed.rejected == 0 and typed.skipped == 2
    assert (typed.exact, typed.by_type, typed.by_backend) == (
        plain.exact, plain.by_type, plain.by_backend)
    assert CostHistory.from_records([*_HISTORY, {**_HISTORY[0], "cached": True}]).skipped == 1

    class NoFps:  # an object without one of the fields is malformed, not an error
        backend, shot_type, resolution, render_seconds, duration_ms = (
            "animatic", "dialogue", "480p", 1.0, 1000)

    assert CostHistory.from_records([NoFps()]).rejected == 1  # type: ignore[list-item]
    ep, audio = sample()
    a = build_compute_plan(ep, creative(global_profile="LOW"), audio, ResourceState(), typed,
                           now=NOW)
    b = build_compute_plan(ep, creative(global_profile="LOW"), audio, ResourceState(), plain,
                           now=NOW)
    assert [s.chosen for s in a.shots] == [s.chosen for s in b.shots]


def test_failed_plan_is_schema_valid() -> None:
    ep = episode([shot("A"), shot("A")])
    plan = build_compute_plan(ep, creative(), manifest({}), now=NOW)
    validate_plan(plan)
    assert plan.status == "failed" and plan.states[-1] == "FAILED" and plan.failed
    assert plan.failure_reason is not None and "duplicate" in plan.failure_reason
    assert plan.shots == [] and plan.stages == [] and plan.sla is None
    bad = build_compute_plan(episode([shot("A")]), creative(), ["not", "a", "dict"],  # type: ignore[arg-type]
                             now=NOW)
    assert bad.status == "failed" and "audio manifest" in str(bad.failure_reason)
    naive = build_compute_plan(episode([shot("A")]), creative(), manifest({}),
                               now=datetime(2026, 1, 1))
    assert naive.status == "failed" and "timezone" in str(naive.failure_reason)
    capped = build_compute_plan(ep, creative(budget={"max_gpu_minutes": 2}), None, now=NOW)
    assert capped.budget_summary.budget_capped and capped.budget_summary.max_gpu_sec == 120


def test_manifest_without_shots_is_silence() -> None:
    ep, _ = sample()
    plan = build_compute_plan(ep, creative(), {"version": "1.0"}, now=NOW)
    validate_plan(plan)
    assert all(s.signals.in_audio_manifest is False for s in plan.shots)


# ------------------------------------------------------------------ validate_plan


def test_validate_plan_rejects_broken_plans() -> None:
    good = _plan(global_profile="HIGH", budget={"max_gpu_minutes": 5}).model_dump(mode="json")
    validate_plan(good)

    bad = copy.deepcopy(good)
    bad["shots"][0]["target_resolution"] = "999p"
    with pytest.raises(pydantic.ValidationError, match=r"shots\.0\.target_resolution"):
        validate_plan(bad)

    bad = copy.deepcopy(good)
    del bad["shots"][1]["retry_budget"]
    with pytest.raises(pydantic.ValidationError, match=r"shots\.1\.retry_budget"):
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
    with pytest.raises(pydantic.ValidationError, match="rebalance_proposal"):
        validate_plan(bad)  # a rebalance status needs a proposal


def test_validate_plan_checks_a_constructed_plan() -> None:
    """The planner builds the model without validation: validate_plan of the model checks
    every field like a dict's."""
    plan = _plan(global_profile="HIGH", budget={"max_gpu_minutes": 5})
    broken_shot = plan.shots[0].model_copy(update={"target_resolution": "999p"})
    broken = plan.model_copy(update={"shots": [broken_shot, *plan.shots[1:]]})
    with pytest.raises(pydantic.ValidationError, match=r"shots\.0\.target_resolution"):
        validate_plan(broken)
    twice = plan.model_copy(update={"shots": [*plan.shots, plan.shots[0]]})
    with pytest.raises(PlanValidationError, match="planned twice"):
        validate_plan(twice)


# ------------------------------------------------------------------ the typed plan


def test_round_trip_through_json() -> None:
    for plan in (_plan(global_profile="HIGH", budget={"max_gpu_minutes": 5}),
                 _plan(mode="preview", global_profile="HIGH"),
                 _plan(global_profile="HIGH", budget={"max_gpu_minutes": 0.05}),
                 build_compute_plan(episode([shot("A"), shot("A")]), creative(), None)):
        doc = plan.model_dump(mode="json", warnings="error")  # every value of its type
        back = ComputePlan.model_validate_json(plan.model_dump_json())
        assert back == plan
        assert back.model_dump(mode="json") == doc
        assert ComputePlan.model_validate(json.loads(json.dumps(doc))) == plan


def test_accessors() -> None:
    plan = _plan(mode="preview", global_profile="HIGH", budget={"max_gpu_minutes": 30})
    assert plan.shot_ids == [s.shot_id for s in plan.shots]
    s05 = plan.shot("S05")
    assert s05 is plan.shots[4] and s05.critical
    with pytest.raises(KeyError, match="S99"):
        plan.shot("S99")
    assert s05.target_height == RESOLUTION_TIERS[s05.target_resolution]
    assert s05.backend == s05.chosen.backend
    preview, final = plan.stage("preview"), plan.stage("final")
    assert preview is not None and final is not None and plan.stage("other") is None
    assert preview.estimated_finish <= final.estimated_finish
    assert plan.sla is not None and plan.sla.reasons == ["preview_mode"]
    assert plan.ladder("S05") == get_ladder("DL_CRITICAL_V1")
    assert plan.ladder("S05") == get_ladder(s05.degrade_ladder_profile)
    # a copy with other shots is indexed again
    fewer = plan.model_copy(update={"shots": plan.shots[5:]})
    assert fewer.shot("S06").shot_id == "S06" and fewer.shot_ids == plan.shot_ids[5:]
    with pytest.raises(KeyError):
        fewer.shot("S01")
    assert fewer == ComputePlan.model_validate(fewer.model_dump())


def test_runtime_policy_is_part_of_the_plan() -> None:
    from anime_pipeline.domain.records import PolicyRecord

    plan = _plan(global_profile="LOW")
    assert plan.runtime_policy is None
    policy = PolicyRecord(name="gpu_single", profile_class="single_gpu", degraded=True,
                          degrade_level=1, reasons=["vram"], encoder="libx264",
                          render_concurrency=2)
    with_policy = plan.model_copy(update={"runtime_policy": policy})
    validate_plan(with_policy)
    back = ComputePlan.model_validate_json(with_policy.model_dump_json())
    assert back.runtime_policy == policy
    doc = with_policy.model_dump(mode="json")
    doc["runtime_policy"]["surprise"] = 1  # a PolicyRecord refuses unknown keys
    with pytest.raises(pydantic.ValidationError, match="runtime_policy"):
        validate_plan(doc)


def test_unknown_top_level_fields_are_kept() -> None:
    doc = _plan(global_profile="LOW").model_dump(mode="json")
    doc["added_by_a_newer_writer"] = {"x": 1}
    plan = ComputePlan.model_validate(doc)
    assert plan.model_dump(mode="json")["added_by_a_newer_writer"] == {"x": 1}


# ------------------------------------------------------------------ ladders


@pytest.mark.parametrize("name", ["DL_LOW_MOTION_V1", "DL_STANDARD_V1", "DL_HIGH_MOTION_V1",
                                  "DL_CRITICAL_V1", "DL_PREVIEW_V1"])
def test_ladders_end_with_placeholder(name: str) -> None:
    steps = get_ladder(name)
    assert steps[-1] == DegradeLadderStep("placeholder")
    assert all(isinstance(s, DegradeLadderStep) for s in steps)
    for s in steps:
        if s.action == "lower_resolution":
            assert s.resolution in RESOLUTION_TIERS
        if s.action == "lower_fps":
            assert s.fps_factor is not None and 0 < s.fps_factor < 1
            assert s.apply_fps(8) >= MIN_FPS and s.apply_fps(24) < 24
            assert s.apply_fps(MIN_FPS) == MIN_FPS


def test_ladder_errors_and_frozen() -> None:
    with pytest.raises(KeyError, match="unknown degrade ladder"):
        get_ladder("DL_NOPE")
    with pytest.raises(ValueError):
        DegradeLadderStep("lower_fps")
    with pytest.raises(ValueError):
        DegradeLadderStep("lower_resolution", resolution="123p")
    step = get_ladder("DL_STANDARD_V1")[0]
    with pytest.raises(AttributeError):
        step.action = "placeholder"  # type: ignore[misc]
    get_ladder("DL_STANDARD_V1").clear()  # a copy: the named ladder is unchanged
    assert get_ladder("DL_STANDARD_V1")


def test_embedded_ladders_are_the_named_ones() -> None:
    plan = _plan(global_profile="LOW")
    doc = plan.model_dump(mode="json")["degrade_ladders"]
    assert doc["DL_STANDARD_V1"][0] == {"action": "lower_fps", "fps_factor": 0.5}
    assert doc["DL_PREVIEW_V1"] == [{"action": "next_backend"}, {"action": "placeholder"}]
    for name, steps in plan.degrade_ladders.items():
        assert [s.to_step() for s in steps] == get_ladder(name)
    bad = plan.model_dump(mode="json")
    bad["degrade_ladders"]["DL_STANDARD_V1"][0] = {"action": "placeholder", "fps_factor": 0.5}
    with pytest.raises(pydantic.ValidationError, match="takes no fps_factor"):
        validate_plan(bad)


def test_gc_state_is_restored() -> None:
    import gc

    from anime_pipeline.budget.plan import gc_paused

    assert gc.isenabled()
    _plan(global_profile="LOW")
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # left as found
    finally:
        gc.enable()
    gc.freeze()  # a process that froze objects keeps them frozen
    try:
        count = gc.get_freeze_count()
        with gc_paused():
            made = [[i] for i in range(100)]
        assert gc.get_freeze_count() == count and made
    finally:
        gc.unfreeze()
