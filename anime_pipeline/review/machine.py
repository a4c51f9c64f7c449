"""The review of one shot as a state machine (plain Python, no SQL, no Dagster).

::

    rendered ──► in_review ──► approved
                    │
                    └────────► rejected ──► regenerating ──► rendered ──► in_review ...

Every clip version (its sha256) starts at ``rendered``; a new version of the clip (rendered
again for any reason: a rejection, a changed input, a forced re-render) starts over, whatever
the state of the version before it. History is a list of events, never rewritten: the state of
a shot is the state of its last event.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ReviewState(StrEnum):
    rendered = "rendered"
    in_review = "in_review"
    approved = "approved"
    rejected = "rejected"
    regenerating = "regenerating"


Decision = Literal["approved", "rejected"]
ReviewMode = Literal["human", "ai"]
ProjectReviewMode = Literal["human", "ai", "human+ai"]

#: what may follow each state, for the same clip version
TRANSITIONS: dict[ReviewState, frozenset[ReviewState]] = {
    ReviewState.rendered: frozenset({ReviewState.in_review}),
    ReviewState.in_review: frozenset({ReviewState.approved, ReviewState.rejected}),
    ReviewState.approved: frozenset(),
    ReviewState.rejected: frozenset({ReviewState.regenerating}),
    ReviewState.regenerating: frozenset(),  # ends with a new version: ``rendered``
}


class ReviewTransitionError(ValueError):
    """A step the state machine does not allow (named: shot, from, to, why)."""


class ClipVersion(BaseModel):
    """One version of a shot's clip: what a decision is about."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    fingerprint: str


class ReviewEvent(BaseModel):
    """One step of a shot's review, as stored (append-only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    episode_key: str
    shot_id: str
    state: ReviewState
    version: ClipVersion
    decision: Decision | None = None
    reason: str | None = Field(default=None, max_length=2000)
    reviewer: str | None = Field(default=None, max_length=200)
    mode: ReviewMode | None = None
    at: dt.datetime


def next_event(last: ReviewEvent | None, *, episode_key: str, shot_id: str,
               state: ReviewState, version: ClipVersion, at: dt.datetime,
               decision: Decision | None = None, reason: str | None = None,
               reviewer: str | None = None, mode: ReviewMode | None = None) -> ReviewEvent:
    """The event that moves a shot from ``last`` to ``state``, or
    :class:`ReviewTransitionError`. ``rendered`` is allowed for a new version from any state
    (and for the first event); anything else must follow :data:`TRANSITIONS` on the same
    version — a decision about a version that is no longer the shot's clip is refused."""
    where = f"{episode_key} {shot_id}"
    if state is ReviewState.rendered:
        if last is not None and last.version == version:
            raise ReviewTransitionError(f"{where}: version {version.sha256[:12]} is already "
                                        f"recorded (state {last.state})")
    elif last is None:
        raise ReviewTransitionError(f"{where}: has no rendered clip to review yet")
    elif last.version != version:
        raise ReviewTransitionError(
            f"{where}: the clip changed since (now {last.version.sha256[:12]}, this step is "
            f"about {version.sha256[:12]}): reload and review the new version")
    elif state not in TRANSITIONS[last.state]:
        allowed = ", ".join(sorted(TRANSITIONS[last.state])) or "nothing until a new version"
        raise ReviewTransitionError(f"{where}: cannot go from {last.state} to {state} "
                                    f"(from {last.state}: {allowed})")
    if state in (ReviewState.approved, ReviewState.rejected):
        if decision != state.value:
            raise ReviewTransitionError(f"{where}: {state} needs the decision {state.value}")
        if state is ReviewState.rejected and not (reason or "").strip():
            raise ReviewTransitionError(f"{where}: a rejection needs a reason (it goes to the "
                                        "regeneration)")
        if mode is None or not (reviewer or "").strip():
            raise ReviewTransitionError(f"{where}: a decision needs its reviewer and mode")
    return ReviewEvent(episode_key=episode_key, shot_id=shot_id, state=state, version=version,
                       decision=decision, reason=(reason or "").strip() or None,
                       reviewer=(reviewer or "").strip() or None, mode=mode, at=at)
