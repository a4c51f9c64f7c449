"""Shot review: the state machine alone, then through the use case and the CLI on clip records
of a registered episode (history in the ledger's SQLite, never rewritten)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from anime_pipeline.cli import main
from anime_pipeline.domain.records import ClipRecord, ClipStatus
from anime_pipeline.ledger import default_url
from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.review import decide, episode_review, sync_versions
from anime_pipeline.review.machine import (
    ClipVersion,
    ReviewState,
    ReviewTransitionError,
    next_event,
)
from anime_pipeline.review.store import ReviewStore
from anime_pipeline.storage import EpisodeKeys, LocalStore, put_record
from anime_pipeline_tests.conftest import minimal_episode

T = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
V1 = ClipVersion(sha256="1" * 64, fingerprint="f1")
V2 = ClipVersion(sha256="2" * 64, fingerprint="f2")
EP = "studio-a/moonlit-courier/ep99"


def step(last, state, version=V1, **kw):  # type: ignore[no-untyped-def]
    return next_event(last, episode_key=EP, shot_id="S01", state=state, version=version,
                      at=T, **kw)


def test_the_state_machine_walks_rendered_review_reject_regenerate_and_back() -> None:
    rendered = step(None, ReviewState.rendered)
    review = step(rendered, ReviewState.in_review)
    rejected = step(review, ReviewState.rejected, decision="rejected", reason=" too dark ",
                    reviewer="mei", mode="human")
    assert rejected.reason == "too dark"
    regen = step(rejected, ReviewState.regenerating)
    again = step(regen, ReviewState.rendered, version=V2)  # a new version starts over
    back = step(again, ReviewState.in_review, version=V2)
    approved = step(back, ReviewState.approved, version=V2, decision="approved",
                    reviewer="mei", mode="ai")
    assert approved.state is ReviewState.approved


@pytest.mark.parametrize(("setup", "state", "kw", "message"), [
    ("none", ReviewState.in_review, {}, "has no rendered clip"),
    ("rendered", ReviewState.approved, {"decision": "approved", "reviewer": "a",
                                        "mode": "human"}, "cannot go from rendered"),
    ("review", ReviewState.rejected, {"decision": "rejected", "reviewer": "a",
                                      "mode": "human"}, "needs a reason"),
    ("review", ReviewState.approved, {"decision": "approved"}, "reviewer and mode"),
    ("review", ReviewState.approved, {"decision": "rejected", "reviewer": "a",
                                      "mode": "human"}, "needs the decision approved"),
    ("rendered", ReviewState.rendered, {}, "already recorded"),
])
def test_the_state_machine_refuses_with_the_shot_named(setup, state, kw, message):  # type: ignore[no-untyped-def]
    last = None
    if setup in ("rendered", "review"):
        last = step(None, ReviewState.rendered)
    if setup == "review":
        last = step(last, ReviewState.in_review)
    with pytest.raises(ReviewTransitionError, match=message) as err:
        step(last, state, **kw)
    assert f"{EP} S01" in str(err.value)


def test_a_decision_about_an_older_version_is_refused() -> None:
    review = step(step(None, ReviewState.rendered), ReviewState.in_review)
    with pytest.raises(ReviewTransitionError, match="the clip changed since"):
        step(review, ReviewState.approved, version=V2, decision="approved", reviewer="a",
             mode="human")


def _clip(store: LocalStore, shot: str, sha: str, status: ClipStatus = ClipStatus.ok) -> None:
    put_record(store, EpisodeKeys(EP).clip_record(shot), ClipRecord(
        episode_key=EP, shot_id=shot, status=status, fingerprint=f"fp-{sha[:4]}",
        backend="animatic", fps=12, resolution="360p", encoder="libx264", attempts=[],
        render_seconds=1.0, frames=24, width=320, height=180, delivery_fps=24,
        size_bytes=1, sha256=sha, uri="u", shot_type="action", duration_ms=1000,
        segment_policy="single", segments=1))


def test_new_versions_go_to_review_and_history_is_kept(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "artifacts")
    bundle = catalog.register(store, minimal_episode(tmp_path / "ep"))
    reviews = ReviewStore(default_url(tmp_path))
    _clip(store, "S01", "a" * 64)
    assert sync_versions(store, reviews, bundle) == ["S01"]
    assert sync_versions(store, reviews, bundle) == []  # nothing new
    status = episode_review(store, reviews, bundle)
    assert [(s.shot_id, s.state) for s in status.shots] == [
        ("S01", ReviewState.in_review), ("S02", None)]  # S02 has no clip yet
    decide(store, reviews, bundle, "S01", "rejected", reviewer="mei", reason="eyes drift")
    with pytest.raises(ReviewTransitionError, match="cannot go from rejected to approved"):
        decide(store, reviews, bundle, "S01", "approved", reviewer="mei")
    _clip(store, "S01", "b" * 64)  # a new version of the clip: back in review
    decide(store, reviews, bundle, "S01", "approved", reviewer="aki", mode="ai")
    [s01, _] = episode_review(store, reviews, bundle).shots
    assert (s01.state, s01.decision, s01.reviewer, s01.clip_sha256) == (
        ReviewState.approved, "approved", "aki", "b" * 64)
    states = [(e.state.value, e.version.sha256[0]) for e in reviews.history(EP, "S01")]
    assert states == [("rendered", "a"), ("in_review", "a"), ("rejected", "a"),
                      ("rendered", "b"), ("in_review", "b"), ("approved", "b")]


def test_the_review_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    store = LocalStore(tmp_path / "artifacts")  # $ANIME_PIPELINE_STORAGE (conftest)
    catalog.register(store, minimal_episode(tmp_path / "ep"))
    _clip(store, "S01", "c" * 64)
    _clip(store, "S02", "d" * 64, ClipStatus.placeholder)
    args = ["--home", str(home)]
    assert main(["review", "reject", EP, "S02", "--reason", "a slate", "--reviewer", "mei",
                 *args]) == 0
    assert main(["review", "reject", EP, "S01", *args]) == 2  # a reason is required
    assert main(["review", "approve", EP, "S09", *args]) == 1
    assert "shot 'S09' is not in episode" in capsys.readouterr().err
    assert main(["review", "status", EP, "--json", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(s["shot_id"], s["state"], s["clip_status"], s["reason"]) for s in out["shots"]] == [
        ("S01", "in_review", "ok", None), ("S02", "rejected", "placeholder", "a slate")]
    assert main(["review", "status", "x/y/z", *args]) == 1
    assert "is not registered" in capsys.readouterr().err
