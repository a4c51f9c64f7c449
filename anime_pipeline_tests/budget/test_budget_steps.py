"""Each budgeter step (CB1..CB4) on its own, and each feature flag on and off."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from anime_pipeline.budget import ComputePlan, build_compute_plan, validate_plan
from anime_pipeline.budget.allocation import allocate_budget, build_candidates
from anime_pipeline.budget.assignment import assign_backends
from anime_pipeline.budget.complexity import analyze_complexity
from anime_pipeline.budget.settings import PlanningError, resolve_settings
from anime_pipeline.budget.sla import rebalance_sla
from anime_pipeline.domain.contracts import MIN_FPS, ResourceState
from anime_pipeline_tests.budget.support import (
    GPU,
    NOW,
    audio_record,
    creative,
    episode,
    manifest,
    sample,
    shot,
)

# ------------------------------------------------------------------ CB1


def test_cb1_complexity_from_type_camera_and_audio() -> None:
    ep = episode([
        shot("A", "action", 2000, camera={"move": "shake", "strength": 0.9}),
        shot("D", "dialogue", 4000),
        shot("E", "establishing", 4000, camera={"move": "push_in", "strength": 0.4}),
    ])
    got = analyze_complexity(ep, manifest({"A": (5.0, 0.9), "D": (0.3, 0.1), "E": (2.0, 0.7)}))
    assert [a.complexity for a in got] == ["high", "low", "medium"]
    assert got[0].complexity_score > got[2].complexity_score > got[1].complexity_score


def test_cb1_audio_density_raises_complexity() -> None:
    ep = episode([shot("X", "insert", 3000, camera={"move": "pan_left", "strength": 0.3})])
    quiet = analyze_complexity(ep, manifest({"X": (0.0, 0.0)}))[0]
    loud = analyze_complexity(ep, manifest({"X": (6.0, 1.0)}))[0]
    assert quiet.complexity == "low" and loud.complexity == "high"


def test_cb1_missing_shot_in_manifest_is_silence() -> None:
    ep = episode([shot("A", "dialogue"), shot("B", "dialogue")])
    warnings: list[str] = []
    got = analyze_complexity(ep, manifest({"A": (3.0, 0.9)}), warnings)
    assert got[1].in_manifest is False and got[1].event_density == 0.0
    assert got[0].in_manifest is True
    assert any("missing from the audio manifest" in w for w in warnings)


def test_cb1_critical_degradable_opening_priority() -> None:
    shots = [shot(f"S{i}", "dialogue", 3000) for i in range(10)]
    shots[5]["criticality"] = "critical"
    shots[7]["criticality"] = "low"
    got = analyze_complexity(episode(shots), manifest({}))
    assert got[0].opening and got[1].opening and not got[3].opening  # 5 s opening window
    assert got[0].render_priority == "high"
    assert got[5].critical and not got[5].degradable and got[5].render_priority == "critical"
    assert got[7].render_priority == "low" and got[7].degradable
    assert got[3].render_priority == "normal"


def test_cb1_typed_audio_manifest_equals_its_json() -> None:
    ep, audio = sample()
    entries = {e["shot_id"]: (e["event_density"], e["peak_energy"]) for e in audio["shots"]}
    typed = audio_record(ep, entries)
    assert analyze_complexity(ep, typed) == analyze_complexity(ep, audio)
    assert analyze_complexity(ep, typed.model_dump(mode="json")) == analyze_complexity(ep, audio)
    plan_typed = build_compute_plan(ep, creative(global_profile="HIGH"), typed, GPU, now=NOW)
    plan_json = build_compute_plan(ep, creative(global_profile="HIGH"), audio, GPU, now=NOW)
    assert plan_typed.shots == plan_json.shots


def test_cb1_manifest_warnings() -> None:
    ep = episode([shot("A", "dialogue"), shot("B", "dialogue")])
    other = episode([shot("A", "dialogue"), shot("Z", "dialogue")])
    typed = audio_record(other, {"A": (1.0, 0.5), "Z": (2.0, 0.5)})
    as_json = typed.model_dump(mode="json")
    as_json["episode_key"] = "someone/else/ep9"
    for given in (typed.model_copy(update={"episode_key": "someone/else/ep9"}), as_json):
        warnings: list[str] = []
        got = analyze_complexity(ep, given, warnings)
        assert got[0].in_manifest and not got[1].in_manifest
        assert any("is for 'someone/else/ep9'" in w for w in warnings)
        assert any("not in the episode: ['Z']" in w for w in warnings)
        assert any("1 shot(s) missing" in w for w in warnings)
    warnings = []
    analyze_complexity(ep, {"shots": {"A": 1}}, warnings)
    assert any("`shots` is not a list" in w for w in warnings)
    warnings = []
    got = analyze_complexity(ep, {"shots": [{"shot_id": "A", "event_density": "loud",
                                             "peak_energy": 7}, {"no": "id"}, "x"]}, warnings)
    assert got[0].event_density == 0.0 and got[0].peak_energy == 1.0  # clamped, tolerant
    warnings = []
    analyze_complexity(ep, None, warnings)
    assert warnings == ["no audio manifest: every shot treated as silence"]
    with pytest.raises(PlanningError, match="audio manifest"):
        analyze_complexity(ep, 42)  # type: ignore[arg-type]


def test_cb1_duplicate_ids_fail() -> None:
    ep = episode([shot("A"), shot("A")])
    with pytest.raises(PlanningError, match="duplicate"):
        analyze_complexity(ep, manifest({}))


# ------------------------------------------------------------------ CB2


def _settings(ep, **cc):  # type: ignore[no-untyped-def]
    resources = cc.pop("resources", GPU)
    return resolve_settings(ep, creative(**cc), resources, NOW)


def test_cb2_caps_fps_and_resolution_to_delivery() -> None:
    ep = episode([shot("A", "action", 2000, camera={"move": "shake", "strength": 1})],
                 fps=12, height=480)
    s = _settings(ep, global_profile="HIGH")
    grid = build_candidates(analyze_complexity(ep, manifest({"A": (6, 1)})), s)
    ok = np.isfinite(grid.cost[0])
    assert grid.fps[ok].max() <= 12
    assert grid.heights[ok].max() <= 480


def test_cb2_never_below_min_fps() -> None:
    ep, audio = sample()
    s = _settings(ep, global_profile="LOW")
    grid = build_candidates(analyze_complexity(ep, audio), s)
    assert grid.fps.min() == MIN_FPS
    assert (grid.floor_fps >= MIN_FPS).all()


def test_cb2_resources_cap_fps_and_resolution() -> None:
    ep, audio = sample()
    res = ResourceState(gpu_count=1, max_fps=12, max_resolution="540p",
                        available_backends=GPU.available_backends)
    s = _settings(ep, global_profile="HIGH", resources=res)
    grid = build_candidates(analyze_complexity(ep, audio), s)
    ok = np.isfinite(grid.cost)
    assert grid.fps[ok.any(axis=0)].max() <= 12
    assert grid.heights[ok.any(axis=0)].max() <= 540


def test_cb2_floors_critical_and_min_fps() -> None:
    ep, audio = sample()
    s = _settings(ep, global_profile="MEDIUM", style={"min_fps": 8},
                  budget={"max_gpu_minutes": 0.5})
    analyses = analyze_complexity(ep, audio)
    alloc = allocate_budget(analyses, s)
    fps = alloc.grid.fps[alloc.choice]
    h = alloc.grid.heights[alloc.choice]
    assert (fps >= 8).all()
    for a, f, hh in zip(analyses, fps, h, strict=True):
        if a.critical:
            assert f >= 12 and hh >= 540  # MEDIUM baseline fps / resolution


def test_cb2_total_within_budget_and_high_motion_gets_more_fps() -> None:
    ep = episode([
        shot("A", "action", 3000, camera={"move": "shake", "strength": 0.9}),
        shot("D", "dialogue", 3000),
    ] + [shot(f"F{i}", "insert", 2000) for i in range(6)])
    audio = manifest({"A": (5.0, 1.0), "D": (0.2, 0.1)})
    s = _settings(ep, global_profile="HIGH", budget={"max_gpu_minutes": 4})
    alloc = allocate_budget(analyze_complexity(ep, audio), s)
    assert alloc.solution.used <= 240
    assert alloc.grid.fps[alloc.choice[0]] > alloc.grid.fps[alloc.choice[1]]


def test_cb2_tighter_budget_never_costs_more() -> None:
    ep, audio = sample()
    analyses = analyze_complexity(ep, audio)
    used = []
    for minutes in (30, 10, 3, 1):
        s = _settings(ep, global_profile="HIGH", budget={"max_gpu_minutes": minutes})
        alloc = allocate_budget(analyses, s)
        assert alloc.solution.used <= minutes * 60
        used.append(alloc.solution.used)
    assert used == sorted(used, reverse=True)


# ------------------------------------------------------------------ CB3


def test_cb3_backend_preference_retry_and_ladder() -> None:
    ep, audio = sample()
    s = _settings(ep, global_profile="HIGH", budget={"max_gpu_minutes": 30})
    analyses = analyze_complexity(ep, audio)
    alloc = allocate_budget(analyses, s)
    out = assign_backends(analyses, alloc, s)
    by_id = {a.shot_id: (a, x) for a, x in zip(analyses, out, strict=True)}
    assert by_id["S09"][1].backend_preference == ["source_clip"]  # source, no keyframe
    for a, x in by_id.values():
        assert x.backend_preference[-1] in ("animatic", "source_clip")
        if x.backend in ("wan_i2v", "comfyui_i2v"):
            assert x.backend_preference[0] == x.backend
            assert set(x.backend_preference) == {"wan_i2v", "comfyui_i2v", "animatic"}
            assert x.retry_budget == {"critical": 3, "normal": 2, "low": 1}[a.criticality]
        if a.critical:
            assert x.degrade_ladder_profile == "DL_CRITICAL_V1"
        elif a.complexity == "high":
            assert x.degrade_ladder_profile == "DL_HIGH_MOTION_V1"
            assert x.segment_policy == "microshot_split_if_duration_gt_1000ms"
    assert any(x.backend == "wan_i2v" for _, x in by_id.values())


def test_cb3_source_shot_with_keyframe_falls_back_to_animatic() -> None:
    ep = episode([shot("S", source={"uri": "footage/a.mp4"}, keyframe="keyframes/S.png")])
    s = _settings(ep)
    analyses = analyze_complexity(ep, manifest({}))
    out = assign_backends(analyses, allocate_budget(analyses, s), s)
    assert out[0].backend_preference == ["source_clip", "animatic"]


def test_cb3_only_available_generative_backends() -> None:
    ep, audio = sample()
    res = ResourceState(gpu_count=1, available_backends=("animatic", "comfyui_i2v"))
    plan = build_compute_plan(ep, creative(global_profile="HIGH"), audio, res, now=NOW)
    used = {b for s in plan.shots for b in s.backend_preference}
    assert "wan_i2v" not in used and "comfyui_i2v" in used


def test_cb3_final_mode_adds_a_retry() -> None:
    ep, audio = sample()
    std = build_compute_plan(ep, creative(global_profile="LOW"), audio, now=NOW)
    fin = build_compute_plan(ep, creative(global_profile="LOW", mode="final"), audio, now=NOW)
    for a, b in zip(std.shots, fin.shots, strict=True):
        assert b.retry_budget == a.retry_budget + 1


# ------------------------------------------------------------------ CB4


def _cb4(ep, audio, **cc):  # type: ignore[no-untyped-def]
    s = _settings(ep, **cc)
    analyses = analyze_complexity(ep, audio)
    return analyses, rebalance_sla(analyses, allocate_budget(analyses, s), s)


def test_cb4_no_pressure_single_final_stage() -> None:
    ep, audio = sample()
    analyses, out = _cb4(ep, audio, global_profile="HIGH", budget={"max_gpu_minutes": 30})
    assert not out.staged and out.reasons == []
    assert [st.name for st in out.stages] == ["final"]
    assert out.stages[0].shots[:2] == ["S05", "S12"]  # critical shots render first


def test_cb4_preview_mode_secondary_shots_at_preview_tier() -> None:
    ep, audio = sample()
    analyses, out = _cb4(ep, audio, mode="preview", global_profile="HIGH",
                         budget={"max_gpu_minutes": 30})
    assert out.staged and out.reasons == ["preview_mode"]
    alloc = out.allocation
    for i, a in enumerate(analyses):
        if not (a.critical or a.opening):
            assert alloc.choice[i] == alloc.preview_cell[i]
    preview, final = out.stages
    assert preview.name == "preview" and final.name == "final"
    assert preview.shots[:3] == ["S05", "S12", "S01"]  # critical, then opening
    assert final.shots == []


def test_cb4_tight_deadline_preview_first_then_final_by_deadline() -> None:
    ep, audio = sample()
    deadline = NOW + timedelta(minutes=4)
    analyses, out = _cb4(ep, audio, global_profile="HIGH", budget={"max_gpu_minutes": 60},
                         sla={"deadline": deadline.isoformat()})
    assert "tight_deadline" in out.reasons and out.staged
    preview, final = out.stages
    assert set(preview.shots) == {a.shot_id for a in analyses}
    assert preview.shots[:3] == ["S05", "S12", "S01"]
    assert preview.estimated_finish <= final.estimated_finish
    assert out.sla.meets_deadline is True
    critical = {a.shot_id for a in analyses if a.critical or a.opening}
    assert not critical & set(final.shots)  # critical/opening are final in stage 1
    assert final.shots  # some secondary shots get their final render later


def test_cb4_impossible_deadline_is_reported() -> None:
    ep, audio = sample()
    analyses, out = _cb4(ep, audio, global_profile="HIGH", budget={"max_gpu_minutes": 60},
                         sla={"deadline": (NOW - timedelta(hours=1)).isoformat()})
    assert "tight_deadline" in out.reasons
    assert out.sla.meets_deadline is False
    assert any("deadline" in w for w in out.warnings)


def test_cb4_congested_queue_stages_and_delays() -> None:
    ep, audio = sample()
    res = ResourceState(gpu_count=1, gpu_queue_depth=8, workers_available=2,
                        available_backends=GPU.available_backends)
    analyses, out = _cb4(ep, audio, global_profile="HIGH", budget={"max_gpu_minutes": 30},
                         resources=res)
    assert "congested_queue" in out.reasons and out.staged
    assert out.sla.queue_delay_sec == 8 * 60 / 2


# ------------------------------------------------------------------ flags


def _plan(flags: dict[str, bool], **cc: Any) -> ComputePlan:
    ep, audio = sample()
    cc.setdefault("global_profile", "HIGH")
    cc.setdefault("budget", {"max_gpu_minutes": 6})
    plan = build_compute_plan(ep, creative(feature_flags=flags, **cc), audio, GPU, now=NOW)
    validate_plan(plan)
    return plan


def test_flag_shot_level_budget() -> None:
    on = _plan({"enable_shot_level_budget": True})
    off = _plan({"enable_shot_level_budget": False})
    assert on.allocation.solver == "mckp_hull_greedy"
    assert off.allocation.solver == "uniform_global_level"
    assert off.allocation.objective < on.allocation.objective
    # one global level: every non-critical keyframe shot gets the same resolution
    tiers = {s.target_resolution for s in off.shots if not s.critical}
    assert len(tiers) == 1
    assert len({s.target_resolution for s in on.shots}) > 1
    for p in (on, off):
        assert p.budget_summary.estimated_gpu_sec <= 6 * 60


def test_flag_dynamic_fps() -> None:
    on = _plan({"enable_dynamic_fps": True}, budget={"max_gpu_minutes": 30})
    off = _plan({"enable_dynamic_fps": False}, budget={"max_gpu_minutes": 30})
    assert {s.target_fps for s in off.shots} == {24}  # HIGH baseline, everywhere
    assert len({s.target_fps for s in on.shots}) > 1
    for s in on.shots:
        if s.complexity == "low" and not s.critical:
            assert s.target_fps <= 12  # lowered below the baseline
    assert any(s.segment_policy.startswith("microshot") for s in on.shots)
    assert not any(s.segment_policy.startswith("microshot") for s in off.shots)


def test_flag_backend_priority_assignment() -> None:
    on = _plan({"enable_backend_priority_assignment": True}, budget={"max_gpu_minutes": 30})
    off = _plan({"enable_backend_priority_assignment": False}, budget={"max_gpu_minutes": 30})
    gens = {"wan_i2v", "comfyui_i2v"}
    assert any(s.backend_preference[0] in gens for s in on.shots)
    for s in off.shots:
        assert not gens & set(s.backend_preference)
        assert all(c.backend not in gens for c in s.candidates)
