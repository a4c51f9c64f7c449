"""The automated reviewer on real clips made with ffmpeg: black, frozen, wrong format, a
placeholder slate, and a dialogue line that is silent in the mix; by project review mode."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from anime_pipeline.domain.package import sha256_file
from anime_pipeline.domain.records import ClipRecord, ClipStatus
from anime_pipeline.ledger import default_url
from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.review import process, run_qc
from anime_pipeline.review.machine import ReviewState
from anime_pipeline.review.store import ReviewStore
from anime_pipeline.storage import EpisodeKeys, LocalStore, put_record
from anime_pipeline_tests.conftest import minimal_episode

pytestmark = pytest.mark.slow  # ffmpeg encodes and detectors

EP = "studio-a/moonlit-courier/ep99"
MOVING = "testsrc2=s=320x180:r=24"


def _clip(store: LocalStore, tmp: Path, shot: str, source: str, frames: int, *,
          size: str = "320x180", status: ClipStatus = ClipStatus.ok) -> ClipRecord:
    out = tmp / f"{shot}-{abs(hash(source)) % 10_000}.mp4"
    ff.run(["-f", "lavfi", "-i", source, "-frames:v", str(frames), "-s", size,
            "-pix_fmt", "yuv420p", "-c:v", "libx264", str(out)], timeout=60)
    keys = EpisodeKeys(EP)
    size_bytes, digest = out.stat().st_size, sha256_file(out)
    store.put_file(out, keys.clip(shot))  # moves it
    w, h = (int(x) for x in size.split("x"))
    record = ClipRecord(
        episode_key=EP, shot_id=shot, status=status, fingerprint="fp", backend="animatic",
        fps=24, resolution="360p", encoder="libx264", attempts=[], render_seconds=1.0,
        frames=frames, width=w, height=h, delivery_fps=24, size_bytes=size_bytes,
        sha256=digest, uri="u", shot_type="action", duration_ms=1000,
        segment_policy="single", segments=1)
    put_record(store, keys.clip_record(shot), record)
    return record


@pytest.fixture
def episode(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = LocalStore(tmp_path / "artifacts")
    folder = minimal_episode(tmp_path / "ep")
    return store, folder, catalog.register(store, folder), ReviewStore(default_url(tmp_path))


def test_each_rule_fails_the_clip_that_breaks_it(tmp_path: Path, episode) -> None:  # type: ignore[no-untyped-def]
    store, _, bundle, reviews = episode
    cases = {  # S01 pushes in over 1 s (24 frames), with a line of dialogue
        "black": ("color=black:s=320x180:r=24", 24, {}),
        "frozen": ("color=gray:s=320x180:r=24", 24, {}),
        "format": (MOVING, 20, {}),
        "placeholder": (MOVING, 24, {"status": ClipStatus.placeholder}),
    }
    for rule, (source, frames, kw) in cases.items():
        record = _clip(store, tmp_path, "S01", source, frames, **kw)
        report = run_qc(store, reviews, bundle, record)
        failed = {c.name for c in report.checks if not c.ok}
        assert failed == {rule} | ({"frozen"} if rule == "black" else set()), (rule, report)
        assert rule in (report.reason or "")
    good = run_qc(store, reviews, bundle, _clip(store, tmp_path, "S01", MOVING, 24))
    assert good.passed and good.reason is None


def test_a_line_over_silence_in_the_mix_fails(tmp_path: Path, episode) -> None:  # type: ignore[no-untyped-def]
    store, folder, _, reviews = episode
    with wave.open(str(folder / "audio" / "mix.wav"), "wb") as w:  # the mix, now silent
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 16000)
    bundle = catalog.register(store, folder)
    report = run_qc(store, reviews, bundle, _clip(store, tmp_path, "S01", MOVING, 24))
    [check] = [c for c in report.checks if not c.ok]
    assert check.name == "silent_dialogue" and "Aki's line at 100 ms" in check.detail


def test_review_modes(tmp_path: Path, episode) -> None:  # type: ignore[no-untyped-def]
    store, _, bundle, reviews = episode
    _clip(store, tmp_path, "S01", MOVING, 24)
    _clip(store, tmp_path, "S02", "color=black:s=320x180:r=24", 12)  # S02 is 500 ms
    human = process(store, reviews, bundle, regenerate=False)
    assert human.mode == "human" and human.sent_to_review == ["S01", "S02"]
    assert human.qc_rejected == {} and human.approved_by_qc == []
    reviews.set_review_mode("studio-a", "moonlit-courier", "human+ai")
    mixed = process(store, reviews, bundle, regenerate=False)
    assert mixed.qc_passed == ["S01"] and list(mixed.qc_rejected) == ["S02"]
    latest = reviews.latest(EP)
    assert latest["S01"].state is ReviewState.in_review  # a human decides what passes
    assert latest["S02"].state is ReviewState.rejected and latest["S02"].mode == "ai"
    assert latest["S02"].reason and latest["S02"].reason.startswith("QC: black")
    again = process(store, reviews, bundle, regenerate=False)  # measured once per version
    assert again.qc_passed == ["S01"] and again.qc_rejected == {}
    reviews.set_review_mode("studio-a", "moonlit-courier", "ai")
    auto = process(store, reviews, bundle, regenerate=False)
    assert auto.approved_by_qc == ["S01"]
    assert reviews.latest(EP)["S01"].state is ReviewState.approved
