"""Property tests over random episodes, creative controls and resource states: the budget
is never exceeded, every shot is planned exactly once, and every plan is schema-valid."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anime_pipeline.budget import build_compute_plan, validate_plan
from anime_pipeline.domain.contracts import RESOLUTION_TIERS, ResourceState
from anime_pipeline.domain.episode import CreativeControl, Episode
from anime_pipeline_tests.budget.support import NOW, episode

TYPES = ["establishing", "dialogue", "action", "insert", "transition"]
MOVES = ["static", "push_in", "pull_out", "pan_left", "pan_right", "tilt_up", "tilt_down",
         "shake"]


@st.composite
def shots(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 25))
    out = []
    for i in range(n):
        s: dict[str, Any] = {
            "id": f"S{i:02d}",
            "type": draw(st.sampled_from(TYPES)),
            "duration_ms": draw(st.integers(200, 20_000)),
            "criticality": draw(st.sampled_from(["low", "normal", "critical"])),
            "camera": {"move": draw(st.sampled_from(MOVES)),
                       "strength": draw(st.floats(0, 1))},
        }
        if draw(st.integers(0, 9)) == 0:
            s["source"] = {"uri": "footage/take.mp4", "in_ms": 0}
            if draw(st.booleans()):
                s["keyframe"] = f"keyframes/{s['id']}.png"
        else:
            s["keyframe"] = f"keyframes/{s['id']}.png"
        out.append(s)
    return out


@st.composite
def cases(draw: st.DrawFn) -> tuple[Episode, CreativeControl, dict[str, Any], ResourceState]:
    ep = episode(draw(shots()), fps=draw(st.sampled_from([5, 12, 24, 25, 30, 60])),
                 height=draw(st.sampled_from([240, 360, 720, 1080, 2160])))
    cc: dict[str, Any] = {
        "mode": draw(st.sampled_from(["preview", "standard", "final"])),
        "feature_flags": {k: draw(st.booleans()) for k in (
            "enable_shot_level_budget", "enable_dynamic_fps",
            "enable_backend_priority_assignment")},
        "style": {"prefer_smooth_motion": draw(st.booleans()),
                  "min_fps": draw(st.one_of(st.none(), st.sampled_from([6, 8, 12, 30])))},
    }
    profile = draw(st.one_of(st.none(), st.sampled_from(["LOW", "MEDIUM", "HIGH"])))
    if profile:
        cc["global_profile"] = profile
    if draw(st.integers(0, 4)):
        cc["budget"] = {"max_gpu_minutes": draw(st.floats(0.01, 200))}
    if draw(st.booleans()):
        cc["sla"] = {"deadline": (NOW + timedelta(minutes=draw(st.integers(-10, 600))))
                     .isoformat()}
    audio = {"shots": [
        {"shot_id": s.id, "event_density": draw(st.floats(0, 10)),
         "peak_energy": draw(st.floats(0, 1))}
        for s in ep.shots if draw(st.integers(0, 9))
    ]}
    backends = ("animatic", "source_clip",
                *draw(st.lists(st.sampled_from(["wan_i2v", "comfyui_i2v"]), unique=True)))
    res = ResourceState(
        gpu_queue_depth=draw(st.integers(0, 10)),
        gpu_count=draw(st.integers(0, 4)),
        vram_free_mb=draw(st.one_of(st.none(), st.integers(0, 90_000))),
        workers_available=draw(st.integers(0, 8)),
        available_backends=backends,
        policy_degraded=draw(st.booleans()),
        max_fps=draw(st.one_of(st.none(), st.sampled_from([8.0, 24.0]))),
        max_resolution=draw(st.one_of(st.none(), st.sampled_from(["480p", "1080p"]))),
    )
    return ep, CreativeControl.model_validate(cc), audio, res


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_plan_properties(case: tuple[Episode, CreativeControl, dict[str, Any], ResourceState]
                         ) -> None:
    ep, cc, audio, res = case
    plan = build_compute_plan(ep, cc, audio, res, now=NOW)
    validate_plan(plan)
    doc = json.loads(json.dumps(plan.model_dump(mode="json"), allow_nan=False))
    validate_plan(doc)
    assert plan.status in ("compute_plan_ready", "rebalance_required")

    # every shot planned exactly once, in episode order, and in exactly one first stage
    ids = [s.id for s in ep.shots]
    assert plan.shot_ids == ids
    first = plan.stages[0].shots
    assert sorted(first) == sorted(ids)
    if len(plan.stages) == 2:
        assert set(plan.stages[1].shots) <= set(ids)
        assert plan.stages[0].name == "preview"

    # the budget is never exceeded; a rebalance status always carries a proposal
    total = sum(s.estimated_cost.gpu_sec for s in plan.shots)
    budget = cc.budget.max_gpu_minutes
    if plan.status == "compute_plan_ready":
        if budget is not None:
            assert total <= budget * 60
            assert plan.budget_summary.estimated_gpu_minutes <= budget
    else:
        assert budget is not None and total > budget * 60
        assert plan.rebalance_proposal is not None
        assert plan.rebalance_proposal.missing_gpu_minutes > 0

    allowed = set(res.available_backends) | {"animatic", "source_clip"}
    for s, shot in zip(plan.shots, ep.shots, strict=True):
        assert s.target_fps <= ep.format.fps + 1e-9
        if res.max_fps:
            assert s.target_fps <= res.max_fps
        assert RESOLUTION_TIERS[s.target_resolution] <= max(ep.format.height, 240)
        prefs = s.backend_preference
        assert set(prefs) <= allowed and prefs[-1] in ("animatic", "source_clip")
        if shot.source is not None:
            assert prefs[0] == "source_clip"
        if not cc.feature_flags.enable_backend_priority_assignment:
            assert set(prefs) <= {"animatic", "source_clip"}
        if not cc.feature_flags.enable_dynamic_fps:
            assert len({x.target_fps for x in plan.shots}) == 1
        if cc.style.min_fps and plan.status == "compute_plan_ready":
            assert s.target_fps >= min(cc.style.min_fps, s.floor.fps) - 1e-9
