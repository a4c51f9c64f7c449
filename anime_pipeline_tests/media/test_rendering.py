"""Shot rendering with real ffmpeg: camera moves, source cuts (file, http MP4, HLS),
retries, the degrade ladder and the placeholder slate."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from anime_pipeline.backends import AnimaticBackend, PlaceholderBackend, default_backends
from anime_pipeline.budget import get_ladder
from anime_pipeline.domain.episode import Format, Shot, load_episode
from anime_pipeline.domain.rendering import RenderSpec, ShotJob, render_shot
from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media import render as media

FMT = Format(width=320, height=180, fps=24)


def _frames(path: Path) -> int:
    info = ff.probe(path, count_frames=True)
    v = info.first("video")
    assert v is not None and (v.width, v.height) == (320, 180) and v.fps == 24
    return info.video_frames or 0


@pytest.mark.parametrize("move", ["static", "push_in", "pull_out", "pan_left", "pan_right",
                                  "tilt_up", "tilt_down", "shake"])
def test_animatic_camera_moves_exact_length(episode_dir: Path, tmp_path: Path, move: str) -> None:
    shot = Shot.model_validate({"id": "S01", "type": "action", "duration_ms": 1250,
                                "keyframe": "keyframes/S01.png",
                                "camera": {"move": move, "strength": 0.7}})
    out = tmp_path / f"{move}.mp4"
    AnimaticBackend().render(ShotJob(shot, episode_dir, FMT, RenderSpec("animatic", 8, "240p")),
                             out)
    assert _frames(out) == 30  # 1.25 s at 24 fps, although generated at 8 fps


def test_generation_rate_is_visible_in_the_delivered_clip(episode_dir: Path, tmp_path: Path
                                                          ) -> None:
    """At 8 fps generation each picture is held 3 delivery frames: 24 frames, 8 distinct."""
    ff.run(["-f", "lavfi", "-i", "testsrc2=size=640x360", "-frames:v", "1",
            str(episode_dir / "keyframes" / "S01.png")])
    shot = Shot.model_validate({"id": "S01", "type": "action", "duration_ms": 1000,
                                "keyframe": "keyframes/S01.png",
                                "camera": {"move": "pan_right", "strength": 1.0}})
    out = tmp_path / "c.mp4"
    AnimaticBackend().render(ShotJob(shot, episode_dir, FMT, RenderSpec("animatic", 8, "240p")),
                             out)
    raw = ff.run_stdout(["-i", str(out), "-vf", "scale=80:46,format=gray", "-f", "rawvideo",
                         "-"])
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 46, 80).astype(np.float32)
    assert len(frames) == 24
    diffs = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))
    # A new generated picture moves the image; a held copy differs only by encoder noise.
    moves = int((diffs > diffs.max() * 0.3).sum())
    assert 6 <= moves <= 8, diffs.round(2)


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("footage")
    ff.run(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", "4", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", str(d / "take.mp4")])
    ff.run(["-i", str(d / "take.mp4"), "-c", "copy", "-f", "hls", "-hls_time", "1",
            "-hls_list_size", "0", str(d / "take.m3u8")])
    return d


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte-range support (RFC 7233), as a CDN serves them."""

    def send_head(self):  # type: ignore[no-untyped-def]
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start_s, _, end_s = rng.removeprefix("bytes=").partition("-")
        start = int(start_s or 0)
        end = min(int(end_s) if end_s else size - 1, size - 1)
        f = path.open("rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):  # type: ignore[no-untyped-def]
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            chunk = source.read(min(65536, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(footage: Path) -> Iterator[str]:
    handler = functools.partial(RangeHandler, directory=str(footage))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("kind", ["file", "http_mp4", "hls"])
def test_source_clip_cut(footage: Path, http_root: str, tmp_path: Path, kind: str) -> None:
    uri = {"file": "take.mp4", "http_mp4": f"{http_root}/take.mp4",
           "hls": f"{http_root}/take.m3u8"}[kind]
    shot = Shot.model_validate({"id": "S07", "type": "insert", "duration_ms": 1500,
                                "source": {"uri": uri, "in_ms": 1000}})
    out = tmp_path / "cut.mp4"
    default_backends()["source_clip"].render(
        ShotJob(shot, footage, FMT, RenderSpec("source_clip", 24, "240p")), out)
    assert _frames(out) == 36  # only the cut: 1.5 s


def test_failing_backend_retries_then_degrades_then_placeholder(
    episode_dir: Path, tmp_path: Path
) -> None:
    """A keyframe that is a PNG by its magic bytes but undecodable fails for real in ffmpeg."""
    (episode_dir / "keyframes" / "S01.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    bundle_shot = load_episode(episode_dir).episode.shots[0]
    out = tmp_path / "S01.mp4"
    thumb = tmp_path / "S01.jpg"
    result = render_shot(
        ShotJob(bundle_shot, episode_dir, FMT, RenderSpec("animatic", 12, "240p"), thumb), out,
        backends=default_backends(), backend_preference=["animatic"], retry_budget=2,
        ladder=get_ladder("DL_STANDARD_V1"), placeholder=PlaceholderBackend(),
    )
    assert result.placeholder and result.degraded
    assert result.backend == "placeholder"
    assert "animatic" in (result.reason or "")
    steps = [a.step for a in result.attempts]
    assert steps[:3] == ["initial", "retry 1", "retry 2"]
    assert steps[-1] == "placeholder"
    assert any(s == "lower_fps" for s in steps)  # the ladder was walked before giving up
    assert _frames(out) == 24  # the slate lasts exactly the shot
    assert thumb.is_file()


def test_unconfigured_backend_falls_to_next_backend(episode_dir: Path, tmp_path: Path) -> None:
    shot = load_episode(episode_dir).episode.shots[1]
    out = tmp_path / "S02.mp4"
    result = render_shot(
        ShotJob(shot, episode_dir, FMT, RenderSpec("wan_i2v", 12, "240p")), out,
        backends=default_backends(), backend_preference=["wan_i2v", "animatic"],
        retry_budget=3, ladder=get_ladder("DL_HIGH_MOTION_V1"), placeholder=PlaceholderBackend(),
    )
    assert not result.placeholder and result.degraded
    assert result.backend == "animatic"
    assert result.attempts[0].error and "not configured" in result.attempts[0].error
    assert len([a for a in result.attempts if a.backend == "wan_i2v"]) == 1  # no futile retries
    assert _frames(out) == 12


def test_placeholder_shows_reason(tmp_path: Path) -> None:
    shot = Shot.model_validate({"id": "S09", "type": "action", "duration_ms": 800,
                                "keyframe": "k.png"})
    out = tmp_path / "slate.mp4"
    PlaceholderBackend().placeholder(shot, FMT, "wan_i2v: HTTP 503", out)
    assert _frames(out) == round(0.8 * 24)


def test_fps_fraction() -> None:
    assert media.fps_fraction(24) == 24
    assert str(media.fps_fraction(23.976)) == "24000/1001"
    assert str(media.fps_fraction(29.97)) == "30000/1001"
    assert media.Delivery(1280, 720, 23.976).frames_for(1001) == 24
