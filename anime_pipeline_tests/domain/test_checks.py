"""The quality checks fail on the inputs they exist to catch."""

from __future__ import annotations

from anime_pipeline.domain import checks
from anime_pipeline.media.ffmpeg import MediaInfo, StreamInfo


def _plan(**over: object) -> dict:
    plan = {
        "status": "compute_plan_ready",
        "budget_summary": {"max_gpu_minutes": 10, "estimated_gpu_minutes": 4.0},
        "rebalance_proposal": None,
        "shots": [
            {"shot_id": "S01", "critical": True, "target_fps": 12, "target_resolution": "720p",
             "floor": {"fps": 12, "resolution": "540p"}},
            {"shot_id": "S02", "critical": False, "target_fps": 8, "target_resolution": "360p",
             "floor": {"fps": 8, "resolution": "360p"}},
        ],
    }
    plan.update(over)
    return plan


def test_budget_check() -> None:
    assert checks.plan_within_budget(_plan()).passed
    over = _plan(budget_summary={"max_gpu_minutes": 3, "estimated_gpu_minutes": 4.0})
    assert not checks.plan_within_budget(over).passed
    over["rebalance_proposal"] = {"missing_gpu_minutes": 1.0}
    assert checks.plan_within_budget(over).passed
    no_cap = _plan(budget_summary={"max_gpu_minutes": None, "estimated_gpu_minutes": 99})
    assert checks.plan_within_budget(no_cap).passed


def test_every_shot_once() -> None:
    assert checks.every_shot_planned_once(_plan(), ["S01", "S02"]).passed
    out = checks.every_shot_planned_once(_plan(), ["S01", "S02", "S03"])
    assert not out.passed and "S03" in out.description
    dup = _plan()
    dup["shots"].append(dict(dup["shots"][0]))
    assert "planned twice ['S01']" in checks.every_shot_planned_once(dup, ["S01", "S02"]
                                                                     ).description


def test_critical_floor() -> None:
    assert checks.critical_shots_at_floor(_plan()).passed
    low = _plan()
    low["shots"][0]["target_resolution"] = "480p"
    out = checks.critical_shots_at_floor(low)
    assert not out.passed and "S01: 480p < floor 540p" in out.description
    low["shots"][1]["target_fps"] = 1  # not critical: no floor enforced by this check
    assert "S02" not in checks.critical_shots_at_floor(low).description


def test_composite_check() -> None:
    good = MediaInfo("x.mp4", 60.0, [StreamInfo(0, "video", "h264", 1280, 720, 24.0),
                                     StreamInfo(1, "audio", "aac", sample_rate=48000),
                                     StreamInfo(2, "subtitle", "mov_text")])
    kw = dict(duration_ms=60_000, width=1280, height=720, fps=24.0, expect_subtitles=True)
    assert checks.composite_matches_episode(good, **kw).passed  # type: ignore[arg-type]
    bad = MediaInfo("x.mp4", 59.0, good.streams[:1])
    out = checks.composite_matches_episode(bad, **kw)  # type: ignore[arg-type]
    assert not out.passed
    assert "no audio stream" in out.description and "no subtitle stream" in out.description
    assert "lasts 59.0 s" in out.description
