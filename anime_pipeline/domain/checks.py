"""Quality checks on the pipeline's outputs, as plain functions over typed records (no Dagster).

Each returns a :class:`CheckOutcome`; the Dagster layer reports them as asset checks on the
episode's (or the clip's) partition. Every check says what it checks in :data:`DESCRIPTIONS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anime_pipeline.domain.contracts import tier_height
from anime_pipeline.domain.package import verify_package
from anime_pipeline.domain.records import ClipRecord, ClipStatus, CompositeRecord

if TYPE_CHECKING:
    from anime_pipeline.budget.plan import ComputePlan

DESCRIPTIONS = {
    "plan_within_budget": "The episode's planned GPU minutes fit its budget "
                          "(creative_control.yaml budget.max_gpu_minutes), or the plan carries a "
                          "rebalance proposal saying what is missing.",
    "every_shot_planned_once": "Every shot of the episode appears in the compute plan exactly "
                               "once, and the plan holds no shot the episode does not have.",
    "critical_shots_at_floor": "Shots marked critical are planned at or above their floor fps "
                               "and resolution.",
    "clip_rendered_as_planned": "The shot's clip was rendered with its planned backend, fps and "
                                "resolution: not degraded down its ladder, not a placeholder "
                                "slate (a warning: the episode still composes).",
    "composite_matches_episode": "The composite's video stream decodes to exactly the episode's "
                                 "frame count at its size and fps, with the audio mix and (when "
                                 "there is dialogue and it is not burned in) a subtitle track.",
    "package_checksums_match": "Every file in the delivery ZIP is re-read and matches the size "
                               "and sha256 listed in its manifest.json; nothing is unlisted.",
}


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def plan_within_budget(plan: ComputePlan) -> CheckOutcome:
    summary = plan.budget_summary
    cap, est = summary.max_gpu_minutes, summary.estimated_gpu_minutes
    if cap is None:
        return CheckOutcome("plan_within_budget", True, "no GPU budget set: nothing to exceed",
                            {"estimated_gpu_minutes": est})
    if est is not None and est <= cap + 1e-9:
        return CheckOutcome("plan_within_budget", True,
                            f"{est:.2f} of {cap:g} GPU minutes planned",
                            {"estimated_gpu_minutes": est, "max_gpu_minutes": cap})
    proposal = plan.rebalance_proposal
    return CheckOutcome(
        "plan_within_budget", proposal is not None,
        "over budget; a rebalance proposal is attached" if proposal is not None
        else "over budget and no rebalance proposal",
        {"estimated_gpu_minutes": est, "max_gpu_minutes": cap, "status": plan.status},
    )


def every_shot_planned_once(plan: ComputePlan, shot_ids: Sequence[str]) -> CheckOutcome:
    counts = Counter(s.shot_id for s in plan.shots)
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


def critical_shots_at_floor(plan: ComputePlan) -> CheckOutcome:
    below = []
    critical = [s for s in plan.shots if s.critical or s.render_priority == "critical"]
    for s in critical:
        floor = s.floor
        if floor is None:
            continue
        if floor.fps is not None and float(s.target_fps) < float(floor.fps):
            below.append(f"{s.shot_id}: {s.target_fps} fps < floor {floor.fps}")
        if floor.resolution and tier_height(s.target_resolution) < tier_height(floor.resolution):
            below.append(f"{s.shot_id}: {s.target_resolution} < floor {floor.resolution}")
    return CheckOutcome(
        "critical_shots_at_floor", not below,
        f"{len(critical)} critical shot(s) at or above their floor" if not below
        else "; ".join(below),
        {"critical_shots": len(critical)},
    )


def clip_rendered_as_planned(record: ClipRecord) -> CheckOutcome:
    if record.status is ClipStatus.ok:
        text = (f"{record.shot_id}: {record.backend} at {record.fps:g} fps, "
                f"{record.resolution}, {record.frames} frames verified")
    elif record.status is ClipStatus.degraded:
        text = (f"{record.shot_id} DEGRADED to {record.backend} at {record.fps:g} fps, "
                f"{record.resolution}: {record.summary or record.reason}")
    else:
        text = f"{record.shot_id} is a PLACEHOLDER slate: {record.summary or record.reason}"
    return CheckOutcome("clip_rendered_as_planned", record.status is ClipStatus.ok, text,
                        {"status": record.status.value, "attempts": len(record.attempts),
                         "reason": record.reason or ""})


def composite_matches_episode(record: CompositeRecord, *, expect_subtitles: bool) -> CheckOutcome:
    problems = []
    video = next((s for s in record.streams if s.kind == "video"), None)
    if video is None:
        problems.append("no video stream")
    else:
        if (video.width, video.height) != (record.width, record.height):
            problems.append(f"video {video.width}x{video.height}, expected "
                            f"{record.width}x{record.height}")
        if video.fps is not None and abs(video.fps - record.fps) > 0.01:
            problems.append(f"video at {video.fps} fps, expected {record.fps:g}")
    if record.video_frames != record.expected_frames:
        problems.append(f"video stream decodes to {record.video_frames} frames, expected "
                        f"{record.expected_frames} ({record.duration_ms / 1000:g} s at "
                        f"{record.fps:g} fps)")
    if not any(s.kind == "audio" for s in record.streams):
        problems.append("no audio stream")
    if expect_subtitles and not any(s.kind == "subtitle" for s in record.streams):
        problems.append("no subtitle stream")
    return CheckOutcome("composite_matches_episode", not problems,
                        f"{record.video_frames} frames at {record.width}x{record.height}"
                        f"@{record.fps:g}, audio and subtitles as delivered" if not problems
                        else "; ".join(problems),
                        {"video_frames": record.video_frames,
                         "expected_frames": record.expected_frames,
                         "duration_s": record.probed_duration_s})


def package_checksums_match(path: Path) -> CheckOutcome:
    problems = verify_package(path)
    return CheckOutcome("package_checksums_match", not problems,
                        "every file matches manifest.json" if not problems
                        else "; ".join(problems[:10]), {"problems": len(problems)})
