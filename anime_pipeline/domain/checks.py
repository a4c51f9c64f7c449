"""Quality checks on the pipeline's outputs, as plain functions (no Dagster).

Each returns a :class:`CheckOutcome`; the Dagster layer reports them as asset checks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anime_pipeline.domain.contracts import tier_height
from anime_pipeline.domain.package import verify_package
from anime_pipeline.media.ffmpeg import MediaInfo


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def plan_within_budget(plan: Mapping[str, Any]) -> CheckOutcome:
    summary = plan["budget_summary"]
    cap, est = summary.get("max_gpu_minutes"), summary.get("estimated_gpu_minutes")
    if cap is None:
        return CheckOutcome("plan_within_budget", True, "no GPU budget set: nothing to exceed",
                            {"estimated_gpu_minutes": est})
    if est is not None and est <= cap + 1e-9:
        return CheckOutcome("plan_within_budget", True,
                            f"{est:.2f} of {cap:g} GPU minutes planned",
                            {"estimated_gpu_minutes": est, "max_gpu_minutes": cap})
    proposal = plan.get("rebalance_proposal")
    return CheckOutcome(
        "plan_within_budget", bool(proposal),
        "over budget; a rebalance proposal is attached" if proposal
        else "over budget and no rebalance proposal",
        {"estimated_gpu_minutes": est, "max_gpu_minutes": cap, "status": plan.get("status")},
    )


def every_shot_planned_once(plan: Mapping[str, Any], shot_ids: Sequence[str]) -> CheckOutcome:
    counts = Counter(s["shot_id"] for s in plan["shots"])
    missing = [s for s in shot_ids if s not in counts]
    twice = sorted(s for s, n in counts.items() if n > 1)
    unknown = sorted(set(counts) - set(shot_ids))
    ok = not (missing or twice or unknown)
    return CheckOutcome(
        "every_shot_planned_once", ok,
        f"{len(shot_ids)} shots planned once each" if ok else
        f"missing {missing}, planned twice {twice}, not in the episode {unknown}",
        {"planned": sum(counts.values()), "shots": len(shot_ids)},
    )


def critical_shots_at_floor(plan: Mapping[str, Any]) -> CheckOutcome:
    below = []
    critical = [s for s in plan["shots"] if s.get("critical")
                or s.get("render_priority") == "critical"]
    for s in critical:
        floor = s.get("floor") or {}
        if floor.get("fps") is not None and float(s["target_fps"]) < float(floor["fps"]):
            below.append(f"{s['shot_id']}: {s['target_fps']} fps < floor {floor['fps']}")
        if floor.get("resolution") and (
            tier_height(s["target_resolution"]) < tier_height(floor["resolution"])
        ):
            below.append(f"{s['shot_id']}: {s['target_resolution']} < floor "
                         f"{floor['resolution']}")
    return CheckOutcome(
        "critical_shots_at_floor", not below,
        f"{len(critical)} critical shot(s) at or above their floor" if not below
        else "; ".join(below),
        {"critical_shots": len(critical)},
    )


def composite_matches_episode(info: MediaInfo, *, duration_ms: int, width: int, height: int,
                              fps: float, expect_subtitles: bool) -> CheckOutcome:
    problems = []
    video = info.first("video")
    if video is None:
        problems.append("no video stream")
    else:
        if (video.width, video.height) != (width, height):
            problems.append(f"video {video.width}x{video.height}, expected {width}x{height}")
        if video.fps is not None and abs(video.fps - fps) > 0.01:
            problems.append(f"video at {video.fps} fps, expected {fps:g}")
    if info.first("audio") is None:
        problems.append("no audio stream")
    if expect_subtitles and info.first("subtitle") is None:
        problems.append("no subtitle stream")
    if info.duration_s is None or abs(info.duration_s * 1000 - duration_ms) > 1000 / fps + 1:
        problems.append(f"lasts {info.duration_s} s, expected {duration_ms / 1000} s (±1 frame)")
    return CheckOutcome("composite_matches_episode", not problems,
                        "format, length and streams as delivered" if not problems
                        else "; ".join(problems),
                        {"duration_s": info.duration_s})


def package_checksums_match(path: Path) -> CheckOutcome:
    problems = verify_package(path)
    return CheckOutcome("package_checksums_match", not problems,
                        "every file matches manifest.json" if not problems
                        else "; ".join(problems[:10]), {"problems": len(problems)})
