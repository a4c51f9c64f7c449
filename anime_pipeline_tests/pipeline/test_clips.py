"""pipeline.clips: render, verify, record, reuse only what was rendered as planned."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from anime_pipeline.backends import AnimaticBackend, SlateBackend
from anime_pipeline.domain.records import ClipRecord, ClipStatus
from anime_pipeline.domain.rendering import ShotJob
from anime_pipeline.media.ffmpeg import probe
from anime_pipeline.pipeline.clips import (
    Backends,
    ShotsNotPlanned,
    local_backends,
    render_environment,
    render_episode_clips,
)
from anime_pipeline.runtime.policy import ExecutionPolicyResolver
from anime_pipeline.runtime.testing import make_profile
from anime_pipeline.storage import EpisodeKeys, get_record
from anime_pipeline_tests.pipeline.conftest import ENV, Planned

pytestmark = pytest.mark.slow  # real ffmpeg renders


class Flaky:
    """The animatic backend, failing the first ``failures`` calls of each shot."""

    name = "animatic"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}

    def render(self, job: ShotJob, out: Path) -> None:
        n = self.calls[job.shot.id] = self.calls.get(job.shot.id, 0) + 1
        if n <= self.failures:
            raise RuntimeError(f"transient failure {n}")
        AnimaticBackend().render(job, out)


class Truncating:
    """Exits "successfully" with half a file: the clip must be refused, never recorded ok."""

    name = "animatic"

    def render(self, job: ShotJob, out: Path) -> None:
        AnimaticBackend().render(job, out)
        data = out.read_bytes()
        out.write_bytes(data[: len(data) // 2])


class DiskFull:
    name = "animatic"

    def render(self, job: ShotJob, out: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))


def _render(p: Planned, backends: Backends | None = None, **kw: object) -> dict[str, object]:
    with p.store.scratch() as work:
        outcomes = render_episode_clips(p.store, p.bundle, p.plan, p.shot_ids,
                                        backends=backends or local_backends(), env=ENV,
                                        work_dir=work, **kw)  # type: ignore[arg-type]
    return {o.shot_id: o for o in outcomes}


def _record(p: Planned, shot: str) -> ClipRecord:
    return get_record(p.store, EpisodeKeys(p.bundle.episode.key).clip_record(shot), ClipRecord)


def test_renders_verifies_records_and_reuses(planned: Planned) -> None:
    first = _render(planned)
    assert [first[s].status for s in planned.shot_ids] == [ClipStatus.ok, ClipStatus.ok]  # type: ignore[attr-defined]
    keys = EpisodeKeys(planned.bundle.episode.key)
    for shot in planned.bundle.episode.shots:
        rec = _record(planned, shot.id)
        info = probe(planned.store.fetch(keys.clip(shot.id)), count_frames=True, timeout=60)
        assert rec.frames == info.video_frames == round(shot.duration_ms * 24 / 1000)
        assert rec.size_bytes == planned.store.size(keys.clip(shot.id))
        assert rec.runtime_policy is not None and rec.runtime_policy.name == "TEST/baseline"
        assert planned.store.exists(keys.thumbnail(shot.id))
    again = _render(planned)
    assert all(o.cached for o in again.values())  # type: ignore[attr-defined]
    forced = _render(planned, force=True)
    assert not any(o.cached for o in forced.values())  # type: ignore[attr-defined]


def test_current_clips_are_found_once_and_reported_together(
        planned: Planned, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-render of current clips reads each record once and yields
    the reused clips first, as one ReusedClips, in the episode's order; nothing renders."""
    from anime_pipeline.pipeline import clips as clip_cases

    _render(planned)
    reads: list[str] = []
    real = clip_cases.get_record
    monkeypatch.setattr(clip_cases, "get_record",
                        lambda store, key, model: reads.append(key) or real(store, key, model))
    monkeypatch.setattr(clip_cases, "render_clip", None)  # would fail if anything rendered
    with planned.store.scratch() as work:
        items = list(clip_cases.render_clips(planned.store, planned.bundle, planned.plan,
                                             planned.shot_ids, backends=local_backends(),
                                             env=ENV, work_dir=work))
    [reused] = items
    assert isinstance(reused, clip_cases.ReusedClips)
    assert reused.shot_ids == planned.shot_ids and all(o.cached for o in reused.outcomes)
    assert sorted(reads) == sorted(EpisodeKeys(planned.bundle.episode.key).clip_record(s)
                                   for s in planned.shot_ids)
    todo, current = clip_cases.shots_to_render(planned.store, planned.bundle, planned.plan,
                                               planned.shot_ids)
    assert todo == [] and set(current) == set(planned.shot_ids)


def test_the_render_span_holds_every_shot_to_render() -> None:
    from anime_pipeline.pipeline.clips import render_span

    shots = ["S01", "S02", "S03", "S04", "S05"]
    assert render_span(shots, []) == []
    assert render_span(shots, ["S03"]) == ["S03"]
    assert render_span(shots, ["S04", "S02"]) == ["S02", "S03", "S04"]
    assert render_span(shots, shots) == shots


def test_retry_then_ok(planned: Planned) -> None:
    flaky = Flaky(failures=1)
    out = _render(planned, Backends({"animatic": flaky}, SlateBackend()))
    rec = out["S01"].record  # type: ignore[attr-defined]
    assert rec.status is ClipStatus.ok
    assert [a.step for a in rec.attempts][:2] == ["initial", "retry 1"]
    assert rec.attempts[0].error and "transient failure" in rec.attempts[0].error


def test_placeholder_is_retried_on_the_next_run(planned: Planned) -> None:
    broken = Backends({"animatic": Flaky(failures=10**6)}, SlateBackend())
    out = _render(planned, broken)
    rec = out["S01"].record  # type: ignore[attr-defined]
    assert rec.status is ClipStatus.placeholder and rec.backend == "placeholder"
    assert rec.summary and len(rec.summary) <= 120 and rec.reason and "transient" in rec.reason
    # The next run does not reuse the slate: the shot is rendered again, and now it works.
    healed = _render(planned)
    assert not healed["S01"].cached  # type: ignore[attr-defined]
    assert _record(planned, "S01").status is ClipStatus.ok


def test_truncated_clip_is_never_accepted(planned: Planned) -> None:
    out = _render(planned, Backends({"animatic": Truncating()}, SlateBackend()))
    for shot in planned.shot_ids:
        rec = out[shot].record  # type: ignore[attr-defined]
        assert rec.status is ClipStatus.placeholder, rec
        failed = [a for a in rec.attempts if not a.ok]
        assert failed and all("ClipVerificationError" in (a.error or "") for a in failed)


def test_disk_full_stops_the_run_and_is_never_a_placeholder(planned: Planned) -> None:
    with pytest.raises(OSError) as err:
        _render(planned, Backends({"animatic": DiskFull()}, SlateBackend()))
    assert err.value.errno == errno.ENOSPC
    keys = EpisodeKeys(planned.bundle.episode.key)
    assert not any(planned.store.exists(keys.clip_record(s)) for s in planned.shot_ids)


def test_shots_not_in_the_plan_are_refused_before_rendering(planned: Planned) -> None:
    with planned.store.scratch() as work, pytest.raises(ShotsNotPlanned, match="S99"):
        render_episode_clips(planned.store, planned.bundle, planned.plan, ["S01", "S99"],
                             backends=local_backends(), env=ENV, work_dir=work)
    assert not planned.store.exists(EpisodeKeys(planned.bundle.episode.key).clip("S01"))


def test_render_environment_caps_concurrency_and_falls_back_to_software() -> None:
    gpu_policy = ExecutionPolicyResolver().resolve(make_profile(vram_gib=[24.0], nvenc=True))
    assert gpu_policy.encoder == "h264_nvenc"
    env = render_environment(gpu_policy, requested_concurrency=64, nvenc_fits=lambda mb: False)
    assert env.encoder == "libx264" and env.concurrency == 6  # the setting's ceiling
    assert env.local_concurrency == min(6, gpu_policy.render_concurrency)
    assert env.notes and "software" in env.notes[0]
    fits = render_environment(gpu_policy, requested_concurrency=1, nvenc_fits=lambda mb: True)
    assert fits.encoder == "h264_nvenc" and fits.local_concurrency == 1 and not fits.notes
