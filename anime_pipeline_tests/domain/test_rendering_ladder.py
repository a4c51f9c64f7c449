"""domain.rendering alone: retries, the degrade ladder, verification and the slate, with fake
backends (no ffmpeg): what is tried, in which order, and what is recorded."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from anime_pipeline.budget import get_ladder
from anime_pipeline.domain.episode import Format, Shot
from anime_pipeline.domain.records import ClipStatus
from anime_pipeline.domain.rendering import RenderSpec, ShotJob, render_shot

SHOT = Shot.model_validate({"id": "S01", "type": "action", "duration_ms": 1000,
                            "keyframe": "k.png", "source": {"uri": "footage/a.mp4"}})
FMT = Format(width=320, height=180, fps=24)


class Fake:
    def __init__(self, name: str, fail: int = 0, error: BaseException | None = None) -> None:
        self.name, self.fail, self.error = name, fail, error
        self.specs: list[RenderSpec] = []

    def render(self, job: ShotJob, out: Path) -> None:
        self.specs.append(job.spec)
        if len(self.specs) <= self.fail:
            raise self.error or RuntimeError(f"{self.name} failed")
        out.write_bytes(b"clip")


class Slate:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def render_slate(self, shot: Shot, delivery: Format, reason: str, out: Path,
                     thumbnail: Path | None = None) -> None:
        self.reasons.append(reason)
        out.write_bytes(b"slate")


def _job(backend: str = "source_clip", fps: float = 24, res: str = "720p",
         encoder: str = "libx264") -> ShotJob:
    return ShotJob(SHOT, Path("."), FMT, RenderSpec(backend, fps, res, encoder))


def _render(tmp_path: Path, backends: dict[str, Fake], *, job: ShotJob | None = None,
            ladder: str = "DL_HIGH_MOTION_V1", retries: int = 1, slate: Slate | None = None,
            prefs: tuple[str, ...] = ("source_clip", "animatic"),
            verify=lambda p: None):  # type: ignore[no-untyped-def]
    return render_shot(job or _job(), tmp_path / "out.mp4", backends=backends,
                       backend_preference=list(prefs), retry_budget=retries,
                       ladder=get_ladder(ladder), slate=slate or Slate(), verify=verify)


def test_retries_then_ok(tmp_path: Path) -> None:
    src = Fake("source_clip", fail=1)
    out = _render(tmp_path, {"source_clip": src})
    assert out.status is ClipStatus.ok and out.reason is None
    assert [a.step for a in out.attempts] == ["initial", "retry 1"]


def test_ladder_order_then_next_backend(tmp_path: Path) -> None:
    """DL_HIGH_MOTION_V1: fps x0.75, ->540p, next backend (animatic) — which works."""
    src, anim = Fake("source_clip", fail=99), Fake("animatic")
    out = _render(tmp_path, {"source_clip": src, "animatic": anim})
    assert out.status is ClipStatus.degraded and out.backend == "animatic"
    assert [a.step for a in out.attempts] == [
        "initial", "retry 1", "lower_fps", "lower_resolution", "next_backend"]
    assert [(s.fps, s.resolution) for s in src.specs] == [
        (24, "720p"), (24, "720p"), (18, "720p"), (18, "540p")]
    assert anim.specs[0].backend == "animatic" and out.reason and "source_clip" in out.reason


def test_everything_fails_ends_in_the_slate_with_the_reason(tmp_path: Path) -> None:
    slate = Slate()
    out = _render(tmp_path, {"source_clip": Fake("source_clip", fail=99),
                             "animatic": Fake("animatic", fail=99)}, slate=slate)
    assert out.status is ClipStatus.placeholder and out.backend == "placeholder"
    assert slate.reasons == [out.reason] and "animatic failed" in (out.reason or "")
    assert out.attempts[-1].step == "placeholder" and out.attempts[-1].ok


def test_unverified_output_is_a_failed_attempt(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def verify(path: Path) -> None:
        seen.append(path.read_bytes())
        if path.read_bytes() == b"clip":
            raise ValueError("decoded 12 frames, expected 24")

    out = _render(tmp_path, {"source_clip": Fake("source_clip")}, retries=0, verify=verify,
                  prefs=("source_clip",))
    assert out.status is ClipStatus.placeholder
    failed = [a for a in out.attempts if not a.ok]
    assert failed and all("expected 24" in (a.error or "") for a in failed)
    assert seen[-1] == b"slate"


def test_hardware_encoder_falls_back_to_software_once(tmp_path: Path) -> None:
    class NvencFails(Fake):
        def render(self, job: ShotJob, out: Path) -> None:
            self.specs.append(job.spec)
            if job.spec.encoder == "h264_nvenc":
                raise RuntimeError("OpenEncodeSessionEx failed: out of memory")
            out.write_bytes(b"clip")

    src = NvencFails("source_clip")
    out = _render(tmp_path, {"source_clip": src}, job=_job(encoder="h264_nvenc"))
    assert out.status is ClipStatus.degraded and out.spec.encoder == "libx264"
    assert out.attempts[-1].step == "software_encoder"


def test_unconfigured_backend_skips_to_the_next(tmp_path: Path) -> None:
    out = _render(tmp_path, {"animatic": Fake("animatic")}, job=_job("comfyui_i2v"),
                  prefs=("comfyui_i2v", "animatic"))
    assert out.backend == "animatic" and out.status is ClipStatus.degraded
    assert [a.step for a in out.attempts] == ["initial", "next_backend"]  # no futile retries


def test_disk_full_is_never_a_placeholder(tmp_path: Path) -> None:
    full = Fake("source_clip", fail=99, error=OSError(errno.ENOSPC, "No space left on device"))
    slate = Slate()
    with pytest.raises(OSError) as err:
        _render(tmp_path, {"source_clip": full}, slate=slate)
    assert err.value.errno == errno.ENOSPC and slate.reasons == []
    assert len(full.specs) == 1  # not retried either
