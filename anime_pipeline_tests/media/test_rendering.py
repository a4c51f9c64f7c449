"""Shot rendering with real ffmpeg (media.render): camera moves, the generation rate seen in
the delivered clip, source cuts (file, http MP4, HLS), the encoder vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anime_pipeline.domain import contracts
from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media import render as media
from anime_pipeline_tests.media.conftest import T

DELIVERY = media.Delivery(320, 180, 24)
GEN_8FPS = media.Generation(320, 180, 8)


def _verified_frames(path: Path, expected: int) -> int:
    probe = ff.verify_clip(path, expected_frames=expected, width=320, height=180, fps=24,
                           timeout=T)
    return probe.frames


@pytest.fixture(scope="module")
def keyframe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kf") / "S01.png"
    ff.run(["-f", "lavfi", "-i", "testsrc2=size=640x360", "-frames:v", "1", str(path)],
           timeout=T)
    return path


@pytest.mark.parametrize("move", ["static", "push_in", "pull_out", "pan_left", "pan_right",
                                  "tilt_up", "tilt_down", "shake"])
def test_animatic_camera_moves_exact_length(keyframe: Path, tmp_path: Path, move: str) -> None:
    out = tmp_path / f"{move}.mp4"
    media.render(media.animatic_args(keyframe, out, duration_ms=1250, move=move, strength=0.7,
                                     gen=GEN_8FPS, delivery=DELIVERY), timeout=T)
    assert _verified_frames(out, 30) == 30  # 1.25 s at 24 fps, although generated at 8 fps


def test_animatic_writes_the_thumbnail_from_the_same_decode(keyframe: Path,
                                                            tmp_path: Path) -> None:
    out, thumb = tmp_path / "c.mp4", tmp_path / "c.jpg"
    media.render(media.animatic_args(keyframe, out, duration_ms=500, move="push_in",
                                     strength=0.5, gen=GEN_8FPS, delivery=DELIVERY,
                                     thumbnail=thumb), timeout=T)
    assert _verified_frames(out, 12) == 12
    video = ff.probe(thumb).first("video")
    assert video is not None and video.width == media.THUMB_WIDTH


def test_generation_rate_is_visible_in_the_delivered_clip(keyframe: Path,
                                                          tmp_path: Path) -> None:
    """At 8 fps generation each picture is held 3 delivery frames: 24 frames, 8 distinct."""
    out = tmp_path / "c.mp4"
    media.render(media.animatic_args(keyframe, out, duration_ms=1000, move="pan_right",
                                     strength=1.0, gen=GEN_8FPS, delivery=DELIVERY), timeout=T)
    raw = ff.run_stdout(["-i", str(out), "-vf", "scale=80:46,format=gray", "-f", "rawvideo",
                         "-"], timeout=T)
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 46, 80).astype(np.float32)
    assert len(frames) == 24
    diffs = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))
    # A new generated picture moves the image; a held copy differs only by encoder noise.
    moves = int((diffs > diffs.max() * 0.3).sum())
    assert 6 <= moves <= 8, diffs.round(2)


def test_undecodable_keyframe_fails_for_real(tmp_path: Path) -> None:
    """A PNG by its magic bytes that ffmpeg cannot decode: an FfmpegError naming the input."""
    bad = tmp_path / "S01.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ff.FfmpegError) as info:
        media.render(media.animatic_args(bad, tmp_path / "o.mp4", duration_ms=500,
                                         move="static", strength=0, gen=GEN_8FPS,
                                         delivery=DELIVERY), timeout=T)
    assert "S01.png" in str(info.value)


@pytest.mark.parametrize("kind", ["file", "http_mp4", "hls"])
def test_source_clip_cut(footage: Path, http_root: str, tmp_path: Path, kind: str) -> None:
    uri = {"file": str(footage / "take.mp4"), "http_mp4": f"{http_root}/take.mp4",
           "hls": f"{http_root}/take.m3u8"}[kind]
    out = tmp_path / "cut.mp4"
    media.render(media.source_clip_args(uri, out, in_ms=1000, duration_ms=1500,
                                        gen=media.Generation(320, 180, 24), delivery=DELIVERY),
                 timeout=T)
    assert _verified_frames(out, 36) == 36  # only the cut: 1.5 s


def test_render_requires_a_timeout(keyframe: Path, tmp_path: Path) -> None:
    args = media.animatic_args(keyframe, tmp_path / "o.mp4", duration_ms=500, move="static",
                               strength=0, gen=GEN_8FPS, delivery=DELIVERY)
    with pytest.raises(TypeError):
        media.render(args)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="timeout"):
        media.render(args, timeout=None)  # type: ignore[arg-type]


def test_one_encoder_vocabulary() -> None:
    assert set(media.ENCODER_ARGS) == set(contracts.ENCODERS)
    assert media.codec_args(contracts.SOFTWARE_ENCODER)["c:v"] == "libx264"
    assert media.codec_args(contracts.NVENC_ENCODER)["c:v"] == "h264_nvenc"
    with pytest.raises(ValueError, match="unsupported encoder"):
        media.codec_args("libx265")
    for gone in ("VIDEO_CODEC_ARGS", "thumbnail_args", "composite_args", "concat_list"):
        assert not hasattr(media, gone)


def test_fps_fraction() -> None:
    assert media.fps_fraction(24) == 24
    assert str(media.fps_fraction(23.976)) == "24000/1001"
    assert str(media.fps_fraction(29.97)) == "30000/1001"
    assert media.Delivery(1280, 720, 23.976).frames_for(1001) == 24


def test_every_kind_of_clip_can_be_joined_by_a_stream_copy(keyframe: Path, footage: Path,
                                                          tmp_path: Path) -> None:
    """An animatic, a cut from footage and a placeholder slate, at different generation
    rates and sizes, all conformed to one delivery: one codec configuration record byte for
    byte, one time base, one frame duration, one aspect -- the composite copies them."""
    from anime_pipeline.media import mp4
    from anime_pipeline.media.composite import concat_compatibility
    from anime_pipeline.media.slate import render_slate

    animatic, cut, slate = tmp_path / "a.mp4", tmp_path / "c.mp4", tmp_path / "s.mp4"
    media.render(media.animatic_args(keyframe, animatic, duration_ms=1250, move="push_in",
                                     strength=0.5, gen=GEN_8FPS, delivery=DELIVERY), timeout=T)
    media.render(media.source_clip_args(str(footage / "take.mp4"), cut, in_ms=500,
                                        duration_ms=1000, gen=media.Generation(640, 360, 12),
                                        delivery=DELIVERY), timeout=T)
    render_slate(slate, shot_id="S09", shot_type="action", duration_ms=750, reason="test",
                 delivery=DELIVERY, timeout=T)
    movies = [mp4.read_movie(p) for p in (animatic, cut, slate)]
    assert concat_compatibility(movies, DELIVERY) == (None, True)
    assert [m.first("video").samples for m in movies] == [30, 24, 18]  # type: ignore[union-attr]
