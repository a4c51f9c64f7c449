"""Reviewing an episode's shots: every new clip version goes to review; a reviewer approves
or rejects the version that is the shot's clip now (a decision about an older one is refused);
the automated reviewer measures each version once with ffmpeg's detectors and, by the
project's review mode, decides (``ai``), rejects what fails (``human+ai``), or stays out
(``human``).
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict

from anime_pipeline.domain.episode import EpisodeBundle, PackageParts
from anime_pipeline.domain.records import ClipRecord, ClipStatus, Retake
from anime_pipeline.media import qc as qc_media
from anime_pipeline.media.render import Delivery
from anime_pipeline.pipeline.clips import read_clip_records, read_retake
from anime_pipeline.review.machine import (
    ClipVersion,
    Decision,
    ProjectReviewMode,
    ReviewEvent,
    ReviewMode,
    ReviewState,
    ReviewTransitionError,
    next_event,
)
from anime_pipeline.review.qc import QcMeasurements, QcReport, judge
from anime_pipeline.review.store import ReviewStore
from anime_pipeline.storage import EpisodeKeys, Storage, put_record


class ShotReview(BaseModel):
    """Where one shot stands in review."""

    model_config = ConfigDict(frozen=True)

    shot_id: str
    state: ReviewState | None  # None: no clip yet
    clip_sha256: str | None = None
    clip_status: str | None = None  # ok | degraded | placeholder
    decision: Decision | None = None
    reason: str | None = None
    reviewer: str | None = None
    events: int = 0


class EpisodeReview(BaseModel):
    model_config = ConfigDict(frozen=True)

    episode_key: str
    shots: list[ShotReview]

    def count(self, state: ReviewState) -> int:
        return sum(1 for s in self.shots if s.state is state)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sync_versions(storage: Storage, reviews: ReviewStore, bundle: EpisodeBundle,
                  now: dt.datetime | None = None) -> list[str]:
    """Send every shot whose clip is a version not seen yet to review (``rendered`` then
    ``in_review``). The shots sent."""
    when = now or _now()
    key = bundle.episode.key
    latest = reviews.latest(key)
    events: list[ReviewEvent] = []
    sent: list[str] = []
    for shot_id, record in read_clip_records(storage, bundle).items():
        version = ClipVersion(sha256=record.sha256, fingerprint=record.fingerprint)
        last = latest.get(shot_id)
        if last is not None and last.version == version:
            continue
        rendered = next_event(last, episode_key=key, shot_id=shot_id,
                              state=ReviewState.rendered, version=version, at=when)
        events += [rendered, next_event(rendered, episode_key=key, shot_id=shot_id,
                                        state=ReviewState.in_review, version=version,
                                        at=when)]
        sent.append(shot_id)
    reviews.append(events)
    return sent


def decide(storage: Storage, reviews: ReviewStore, bundle: EpisodeBundle, shot_id: str,
           decision: Decision, *, reviewer: str, mode: ReviewMode = "human",
           reason: str | None = None, now: dt.datetime | None = None) -> ReviewEvent:
    """Approve or reject the shot's current clip; :class:`ReviewTransitionError` when the
    shot is not in review (or has no clip)."""
    bundle.episode.shot(shot_id)  # KeyError for a shot the episode does not have
    sync_versions(storage, reviews, bundle, now)
    last = reviews.latest(bundle.episode.key).get(shot_id)
    if last is None:
        raise ReviewTransitionError(f"{bundle.episode.key} {shot_id}: has no clip yet")
    event = next_event(last, episode_key=bundle.episode.key, shot_id=shot_id,
                       state=ReviewState(decision), version=last.version, at=now or _now(),
                       decision=decision, reason=reason, reviewer=reviewer, mode=mode)
    reviews.append([event])
    return event


def episode_review(storage: Storage, reviews: ReviewStore, bundle: EpisodeBundle,
                   ) -> EpisodeReview:
    """Every shot of the episode, in order, with its review state (after sending new clip
    versions to review)."""
    sync_versions(storage, reviews, bundle)
    records = read_clip_records(storage, bundle)
    history = reviews.history(bundle.episode.key)
    counts: dict[str, int] = {}
    last_decision: dict[str, ReviewEvent] = {}
    latest: dict[str, ReviewEvent] = {}
    for e in history:
        counts[e.shot_id] = counts.get(e.shot_id, 0) + 1
        latest[e.shot_id] = e
        if e.decision is not None:
            last_decision[e.shot_id] = e
    shots = []
    for shot in bundle.episode.shots:
        last = latest.get(shot.id)
        record = records.get(shot.id)
        decided = last_decision.get(shot.id)
        current = decided is not None and last is not None and decided.version == last.version
        shots.append(ShotReview(
            shot_id=shot.id, state=last.state if last else None,
            clip_sha256=record.sha256 if record else None,
            clip_status=record.status.value if record else None,
            decision=decided.decision if current and decided else None,
            reason=decided.reason if current and decided else None,
            reviewer=decided.reviewer if current and decided else None,
            events=counts.get(shot.id, 0)))
    return EpisodeReview(episode_key=bundle.episode.key, shots=shots)


# --------------------------------------------------------------------------- automated review

QC_REVIEWER = "qc"


def measure(storage: Storage, bundle: EpisodeBundle, record: ClipRecord) -> QcMeasurements:
    """Run ffmpeg's detectors on one clip (and on the mix under its dialogue lines)."""
    ep = bundle.episode
    shot = ep.shot(record.shot_id)
    video = qc_media.detect_video(storage.fetch(EpisodeKeys(ep.key).clip(shot.id)),
                                  duration_s=shot.duration_ms / 1000)
    shares: list[float] = []
    if shot.dialogue:
        start = ep.shot_starts_ms()[shot.id]
        mix = bundle.root / ep.audio
        for line in shot.dialogue:
            length = (line.end_ms - line.start_ms) / 1000
            silent = qc_media.detect_silence(mix, start_s=(start + line.start_ms) / 1000,
                                             duration_s=length)
            shares.append(min(1.0, sum(i.seconds for i in silent) / length))
    return QcMeasurements(
        width=record.width, height=record.height, fps=record.delivery_fps,
        frames=record.frames, placeholder=record.status is ClipStatus.placeholder,
        black=[(i.start, i.end) for i in video.black],
        frozen=[(i.start, i.end) for i in video.frozen], silent_line_share=shares)


def run_qc(storage: Storage, reviews: ReviewStore, bundle: EpisodeBundle,
           record: ClipRecord) -> QcReport:
    """The QC report of the clip version ``record`` describes (measured once per version)."""
    key = bundle.episode.key
    version_key = _version_key(record)
    cached = reviews.qc_report(key, record.shot_id, version_key)
    if cached is not None:
        return cached
    fmt = bundle.episode.format
    delivery = Delivery(fmt.width, fmt.height, fmt.fps)
    shot = bundle.episode.shot(record.shot_id)
    report = judge(shot, measure(storage, bundle, record), width=fmt.width, height=fmt.height,
                   fps=fmt.fps, expected_frames=delivery.frames_for(shot.duration_ms))
    reviews.save_qc(key, version_key, report)
    return report


def request_retakes(storage: Storage, reviews: ReviewStore, bundle: EpisodeBundle,
                    now: dt.datetime | None = None) -> dict[str, int]:
    """Every rejected shot goes to ``regenerating`` with a new retake (take + 1, the
    rejection's reason as its note): the next render of the episode renders it again. The
    shots and their new takes."""
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    events: list[ReviewEvent] = []
    takes: dict[str, int] = {}
    for shot_id, last in reviews.latest(ep.key).items():
        if last.state is not ReviewState.rejected:
            continue
        before = read_retake(storage, keys, shot_id)
        retake = Retake(shot_id=shot_id, take=(before.take if before else 0) + 1,
                        note=last.reason, requested_by=last.reviewer)
        events.append(next_event(last, episode_key=ep.key, shot_id=shot_id,
                                 state=ReviewState.regenerating, version=last.version,
                                 at=now or _now(), reason=last.reason))
        put_record(storage, keys.retake(shot_id), retake)
        takes[shot_id] = retake.take
    reviews.append(events)
    return takes


def regenerating_takes(storage: Storage, reviews: ReviewStore, bundle: EpisodeBundle,
                       ) -> dict[str, int]:
    """The shots waiting for their retake's render (state ``regenerating``) and their takes:
    what a render of the episode must still do for review."""
    keys = EpisodeKeys(bundle.episode.key)
    out: dict[str, int] = {}
    for shot_id, last in reviews.latest(bundle.episode.key).items():
        if last.state is ReviewState.regenerating:
            retake = read_retake(storage, keys, shot_id)
            out[shot_id] = retake.take if retake else 0
    return out


def qc_pending(storage: Storage, reviews: ReviewStore, bundle: EpisodeBundle) -> list[str]:
    """Shots in review whose current version the automated reviewer has not measured, when
    the project's mode uses it."""
    ep = bundle.episode
    if reviews.review_mode(ep.tenant_id, ep.project_id) == "human":
        return []
    records = read_clip_records(storage, bundle)
    out = []
    for shot_id, last in reviews.latest(ep.key).items():
        record = records.get(shot_id)
        if last.state is ReviewState.in_review and record is not None and \
                reviews.qc_report(ep.key, shot_id, _version_key(record)) is None:
            out.append(shot_id)
    return sorted(out)


def _version_key(record: ClipRecord) -> str:
    return f"{record.sha256}:{record.fingerprint}:{record.status.value}"


class ProcessResult(BaseModel):
    """What one ``review process`` pass did."""

    model_config = ConfigDict(frozen=True)

    episode_key: str
    mode: ProjectReviewMode
    sent_to_review: list[str]
    qc_passed: list[str]
    qc_rejected: dict[str, str]  # shot -> reason
    approved_by_qc: list[str]
    retakes: dict[str, int] = {}  # shot -> its new take (rendered by the next render)


def process(storage: Storage, reviews: ReviewStore, bundle: EpisodeBundle,
            now: dt.datetime | None = None, *, regenerate: bool = True) -> ProcessResult:
    """One pass of the review loop: new clip versions go to review; in ``ai`` and
    ``human+ai`` mode the automated reviewer checks every version in review — in ``ai`` mode
    its verdict is the decision, in ``human+ai`` it rejects what fails and leaves what passes
    for a human; then (``regenerate``) every rejected shot gets a retake, which the next
    render of the episode renders (the caller renders: the CLI in the foreground, the review
    sensor by a run)."""
    ep = bundle.episode
    mode = reviews.review_mode(ep.tenant_id, ep.project_id)
    sent = sync_versions(storage, reviews, bundle, now)
    passed: list[str] = []
    rejected: dict[str, str] = {}
    approved: list[str] = []
    if mode != "human":
        records = read_clip_records(storage, bundle)
        for shot_id, last in reviews.latest(ep.key).items():
            record = records.get(shot_id)
            if last.state is not ReviewState.in_review or record is None \
                    or record.sha256 != last.version.sha256:
                continue
            report = run_qc(storage, reviews, bundle, record)
            if not report.passed:
                rejected[shot_id] = report.reason or "QC failed"
                decide(storage, reviews, bundle, shot_id, "rejected", reviewer=QC_REVIEWER,
                       mode="ai", reason=f"QC: {report.reason}", now=now)
            elif mode == "ai":
                approved.append(shot_id)
                decide(storage, reviews, bundle, shot_id, "approved", reviewer=QC_REVIEWER,
                       mode="ai", reason="QC passed", now=now)
            else:
                passed.append(shot_id)
    retakes = request_retakes(storage, reviews, bundle, now) if regenerate else {}
    return ProcessResult(episode_key=ep.key, mode=mode, sent_to_review=sent, qc_passed=passed,
                         qc_rejected=rejected, approved_by_qc=approved, retakes=retakes)


# --------------------------------------------------------------------------- the package


def package_parts_for(reviews: ReviewStore, bundle: EpisodeBundle) -> PackageParts:
    """What goes into the episode's delivery ZIP: ``package:`` of its creative_control.yaml,
    else its project's setting, else the defaults (keyframes and the review report in)."""
    ep = bundle.episode
    return (bundle.creative.package or reviews.package_parts(ep.tenant_id, ep.project_id)
            or PackageParts())


def review_report(storage: Storage, reviews: ReviewStore, bundle: EpisodeBundle) -> bytes:
    """``review_report.json`` of the package: the review state and decision of every shot's
    clip (no timestamp: an unchanged review keeps an unchanged package)."""
    return episode_review(storage, reviews, bundle).model_dump_json(indent=2).encode()
