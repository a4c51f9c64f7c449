"""The quality checks fail on the inputs they exist to catch (typed plans and records)."""

from __future__ import annotations

from typing import Any

from anime_pipeline.budget import ComputePlan, build_compute_plan
from anime_pipeline.domain import checks
from anime_pipeline.domain.records import (
    ClipRecord,
    ClipRef,
    ClipStatus,
    CompositeRecord,
    StreamRecord,
)
from anime_pipeline_tests.budget.support import NOW, creative, episode, shot


def _plan(**budget: Any) -> ComputePlan:
    ep = episode([shot("S01", criticality="critical"), shot("S02", ms=2000)])
    return build_compute_plan(ep, creative(**budget), None, now=NOW)


def _with_summary(plan: ComputePlan, **values: Any) -> ComputePlan:
    summary = plan.budget_summary.model_copy(update=values)
    return plan.model_copy(update={"budget_summary": summary})


def test_budget_check() -> None:
    plan = _plan(budget={"max_gpu_minutes": 10})
    assert checks.plan_within_budget(plan).passed
    over = _with_summary(plan, max_gpu_minutes=0.001)
    assert not checks.plan_within_budget(over).passed
    tight = _plan(budget={"max_gpu_minutes": 0.001})  # the planner attaches a proposal
    assert tight.rebalance_proposal is not None and checks.plan_within_budget(tight).passed
    assert checks.plan_within_budget(_plan()).passed  # no cap


def test_every_shot_once() -> None:
    plan = _plan()
    assert checks.every_shot_planned_once(plan, ["S01", "S02"]).passed
    out = checks.every_shot_planned_once(plan, ["S01", "S02", "S03"])
    assert not out.passed and "S03" in out.description
    dup = plan.model_copy(update={"shots": [*plan.shots, plan.shots[0]]})
    assert "planned twice ['S01']" in checks.every_shot_planned_once(dup, ["S01", "S02"]
                                                                     ).description


def test_critical_floor() -> None:
    plan = _plan()
    assert checks.critical_shots_at_floor(plan).passed
    first = plan.shots[0]
    assert first.critical
    low = first.model_copy(update={"target_resolution": "240p"})
    out = checks.critical_shots_at_floor(plan.model_copy(update={"shots": [low, *plan.shots[1:]]}))
    assert not out.passed and f"S01: 240p < floor {first.floor.resolution}" in out.description


def _clip(status: ClipStatus, **kw: Any) -> ClipRecord:
    base = dict(episode_key="a/b/c", shot_id="S04", status=status, fingerprint="f",
                backend="animatic", fps=12, resolution="540p", encoder="libx264", frames=24,
                width=1280, height=720, delivery_fps=24, size_bytes=1000, sha256="0" * 64,
                uri="/x/S04.mp4", shot_type="action", duration_ms=1000)
    return ClipRecord(**{**base, **kw})


def test_clip_check_names_degraded_and_placeholder_shots() -> None:
    assert checks.clip_rendered_as_planned(_clip(ClipStatus.ok)).passed
    slate = checks.clip_rendered_as_planned(_clip(
        ClipStatus.placeholder, backend="placeholder", summary="keyframe could not be decoded"))
    assert not slate.passed
    assert slate.description == "S04 is a PLACEHOLDER slate: keyframe could not be decoded"
    low = checks.clip_rendered_as_planned(_clip(ClipStatus.degraded, summary="timed out"))
    assert not low.passed and "DEGRADED" in low.description


def _composite(**kw: Any) -> CompositeRecord:
    streams = [StreamRecord(kind="video", codec="h264", width=1280, height=720, fps=24.0),
               StreamRecord(kind="audio", codec="aac", sample_rate=48000),
               StreamRecord(kind="subtitle", codec="mov_text")]
    base = dict(episode_key="a/b/c", uri="/x.mp4", sha256="0" * 64, size_bytes=1,
                duration_ms=60_000, probed_duration_s=60.0, video_frames=1440,
                expected_frames=1440, width=1280, height=720, fps=24.0, streams=streams,
                subtitle_cues=3, subtitle_language="eng", burned_in=False, video_copied=True,
                clip_encoders=["libx264"],
                clips=[ClipRef(shot_id="S01", sha256="0" * 64, status=ClipStatus.ok)],
                compose_seconds=1.0)
    return CompositeRecord(**{**base, **kw})


def test_composite_check_counts_video_frames_not_the_container() -> None:
    assert checks.composite_matches_episode(_composite(), expect_subtitles=True).passed
    # The container lasts 60 s (the audio fills it) but the video stops at 26 s.
    short = _composite(video_frames=26 * 24)
    out = checks.composite_matches_episode(short, expect_subtitles=True)
    assert not out.passed and "decodes to 624 frames, expected 1440" in out.description
    bare = _composite(streams=_composite().streams[:1])
    out = checks.composite_matches_episode(bare, expect_subtitles=True)
    assert "no audio stream" in out.description and "no subtitle stream" in out.description


def test_every_check_describes_itself() -> None:
    assert set(checks.DESCRIPTIONS) == {
        "plan_within_budget", "every_shot_planned_once", "critical_shots_at_floor",
        "clip_rendered_as_planned", "composite_matches_episode", "package_checksums_match"}
    assert all(len(text) > 40 for text in checks.DESCRIPTIONS.values())
