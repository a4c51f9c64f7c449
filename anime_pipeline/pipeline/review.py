"""Reviewing an episode's shots: every new clip version goes to review; a reviewer approves
or rejects the version that is the shot's clip now (a decision about an older one is refused).
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict

from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.pipeline.clips import read_clip_records
from anime_pipeline.review.machine import (
    ClipVersion,
    Decision,
    ReviewEvent,
    ReviewMode,
    ReviewState,
    ReviewTransitionError,
    next_event,
)
from anime_pipeline.review.store import ReviewStore
from anime_pipeline.storage import Storage


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
