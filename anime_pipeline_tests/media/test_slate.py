"""The placeholder slate with real ffmpeg: exact length, text fitted to any frame, any
characters, no font, a font that cannot be loaded; and the short reason."""

from __future__ import annotations

import functools
import http.server
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media import render as media
from anime_pipeline.media.slate import (
    SHORT_REASON_MAX,
    bar_height,
    font_metrics,
    render_slate,
    short_reason,
    slate_args,
    slate_lines,
)
from anime_pipeline.media.synth import find_font

FONT = find_font()
needs_font = pytest.mark.skipif(FONT is None, reason="no font on this machine")

BACKGROUND = np.array([0x2B, 0x2B, 0x3A])
LONG_ID = "W" * 32  # the widest id the contract allows (32 of its widest letter)
LONG_REASON = (
    "wan_i2v: RuntimeError: the render farm refused the job because the prompt was far too "
    "long and mentioned http://%{bogus}/x.mp4 with 100% certainty; retry later please"
)
HOSTILE_REASON = ("wan_i2v: RuntimeError: bad prompt '%{bogus}' %{pts} %% \\ \\n : ; , [x] {y}\n"
                  "line two 'quoted' \"dq\" = ok")


def _frame(path: Path, width: int, height: int, index: int) -> np.ndarray:
    raw = ff.run_stdout(["-i", str(path), "-vf", f"select=eq(n\\,{index})", "-frames:v", "1",
                         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], timeout=120)
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).astype(int)


def _frames(path: Path) -> int:
    return ff.probe(path, count_frames=True).video_frames or 0


def _card(frame: np.ndarray) -> tuple[np.ndarray, int]:
    """The frame between the amber bars (one row more on each side for the encoder)."""
    bar = bar_height(frame.shape[0])
    return frame[bar + 1: frame.shape[0] - bar - 1], bar


def _is_background(pixels: np.ndarray, tolerance: int = 14) -> np.ndarray:
    return np.all(np.abs(pixels - BACKGROUND) <= tolerance, axis=-1)


@needs_font
@pytest.mark.parametrize("size", [(320, 180), (1280, 720), (1920, 1080)])
@pytest.mark.parametrize("reason", [LONG_REASON, HOSTILE_REASON], ids=["long", "hostile"])
def test_slate_text_stays_inside_the_frame(tmp_path: Path, size: tuple[int, int],
                                           reason: str) -> None:
    width, height = size
    delivery = media.Delivery(width, height, 24)
    out = tmp_path / "slate.mp4"
    drawn = render_slate(out, shot_id=LONG_ID, shot_type="action", duration_ms=1250,
                         reason=reason, delivery=delivery, timeout=120, work_dir=tmp_path)
    assert drawn
    assert _frames(out) == delivery.frames_for(1250) == 30
    card, _ = _card(_frame(out, width, height, 15))
    edge = max(1, math.ceil(width * 0.01))
    assert _is_background(card[:, :edge]).all(), "text reaches the left edge"
    assert _is_background(card[:, -edge:]).all(), "text reaches the right edge"
    assert _is_background(card[: max(1, height // 100)]).all()
    assert _is_background(card[-max(1, height // 100):]).all()
    text = card.min(axis=-1) > 150  # white and light grey text
    assert text.sum() > width * height * 0.004, "the slate shows its text"
    # the whole id is on the slate (on one line, or cut in two on a small frame)
    lines = [line.text for line in slate_lines(width, height, shot_id=LONG_ID,
                                               shot_type="action", duration_ms=1250,
                                               reason=reason, font=FONT)]
    assert LONG_ID in "".join(lines).replace(" ", "")
    assert "PLACEHOLDER" in lines and "1.25 s · action" in lines and len(lines) >= 5


@needs_font
def test_slate_at_the_extremes(tmp_path: Path) -> None:
    for width, height in [(16, 16), (7680, 4320), (180, 320)]:
        delivery = media.Delivery(width, height, 24)
        out = tmp_path / f"slate_{width}x{height}.mp4"
        drawn = render_slate(out, shot_id=LONG_ID, shot_type="insert", duration_ms=200,
                             reason=LONG_REASON, delivery=delivery, timeout=300)
        assert drawn == (width > 16)  # a 16x16 frame has no room for legible text
        assert _frames(out) == delivery.frames_for(200) == 5
        info = ff.probe(out).first("video")
        assert info is not None and (info.width, info.height) == (width, height)
        card, _ = _card(_frame(out, width, height, 2))
        if width > 16:
            edge = max(1, math.ceil(width * 0.01))
            assert _is_background(card[:, :edge]).all() and _is_background(card[:, -edge:]).all()


@needs_font
def test_any_characters_render_literally(tmp_path: Path) -> None:
    """%{...} expansions, quotes, backslashes, colons, newlines: drawn, never parsed."""
    work = tmp_path / "we'ird: %d, [dir]; x=y"
    work.mkdir()
    delivery = media.Delivery(320, 180, 25)
    out = work / "slate.mp4"
    assert render_slate(out, shot_id="S-01_x", shot_type="dialogue", duration_ms=1000,
                        reason=HOSTILE_REASON, delivery=delivery, timeout=120, work_dir=work)
    assert _frames(out) == 25
    # the text files hold exactly the lines, unexpanded
    text_dir = tmp_path / "texts"
    text_dir.mkdir()
    slate_args(out, shot_id="S-01_x", shot_type="dialogue", duration_ms=1000,
               reason=HOSTILE_REASON, delivery=delivery, text_file_dir=text_dir)
    written = [p.read_text(encoding="utf-8") for p in sorted(text_dir.glob("*.txt"))]
    assert "SHOT S-01_x" in written
    assert "%{bogus}" in " ".join(written) and "\\" in " ".join(written)
    assert all("\n" not in t for t in written)


@needs_font
def test_the_brief_url_reason_no_longer_fails_the_episode(tmp_path: Path) -> None:
    reason = ("source_clip: FfmpegError: ffmpeg failed (exit 8): http://%{bogus}/x.mp4: "
              "Server returned 404 Not Found")
    out = tmp_path / "slate.mp4"
    thumb = tmp_path / "slate.jpg"
    assert render_slate(out, shot_id="S04", shot_type="action", duration_ms=2000,
                        reason=reason, delivery=media.Delivery(1280, 720, 24), thumbnail=thumb,
                        timeout=120)
    assert _frames(out) == 48
    v = ff.probe(thumb).first("video")
    assert v is not None and v.width == media.THUMB_WIDTH
    lines = [line.text for line in slate_lines(1280, 720, shot_id="S04", shot_type="action",
                                               duration_ms=2000, reason=reason, font=FONT)]
    assert lines == ["PLACEHOLDER", "SHOT S04", "2.00 s · action",
                     "source footage unreachable (HTTP 404)"]


def test_no_font_gives_a_slate_without_text(tmp_path: Path) -> None:
    delivery = media.Delivery(320, 180, 24)
    out = tmp_path / "slate.mp4"
    assert not render_slate(out, shot_id="S01", shot_type="action", duration_ms=500,
                            reason="x", delivery=delivery, timeout=60, font=None)
    assert _frames(out) == 12
    card, _ = _card(_frame(out, 320, 180, 6))
    assert _is_background(card).all()


def test_a_font_that_cannot_be_loaded_falls_back_to_no_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """drawtext fails for real (not a font file, and a fontconfig without fonts to fall back
    on): the slate is rendered again, without text."""
    bogus = tmp_path / "not-a-font.ttf"
    bogus.write_text("this is not a font", encoding="utf-8")
    empty = tmp_path / "fonts.conf"
    empty.write_text('<?xml version="1.0"?><fontconfig></fontconfig>', encoding="utf-8")
    monkeypatch.setenv("FONTCONFIG_FILE", str(empty))
    delivery = media.Delivery(640, 360, 30)
    out = tmp_path / "slate.mp4"
    with pytest.raises(ff.FfmpegError):  # the run with text really fails
        with_text = slate_args(out, shot_id="S01", shot_type="action", duration_ms=500,
                               reason="x", delivery=delivery, text_file_dir=tmp_path,
                               font=str(bogus))
        assert any("drawtext" in a for a in with_text)
        ff.run(with_text, timeout=60)
    assert not render_slate(out, shot_id="S01", shot_type="action", duration_ms=500,
                            reason="x", delivery=delivery, timeout=60, font=str(bogus))
    assert _frames(out) == 15


def test_timeouts_are_not_swallowed(tmp_path: Path) -> None:
    with pytest.raises(ff.FfmpegError, match="timed out"):
        render_slate(tmp_path / "slate.mp4", shot_id="S01", shot_type="action",
                     duration_ms=120_000, reason="x", delivery=media.Delivery(3840, 2160, 60),
                     timeout=0.5)


# --------------------------------------------------------------------------- layout


@needs_font
@settings(max_examples=300, deadline=None)
@given(width=st.integers(8, 3840).map(lambda v: v * 2), height=st.integers(8, 2160).map(
    lambda v: v * 2), shot_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", fullmatch=True),
    reason=st.text(max_size=400))
def test_layout_fits_any_frame_and_text(width: int, height: int, shot_id: str,
                                        reason: str) -> None:
    assert FONT is not None
    metrics = font_metrics(FONT)
    lines = slate_lines(width, height, shot_id=shot_id, shot_type="establishing",
                        duration_ms=120_000, reason=reason, font=FONT)
    bar = bar_height(height)
    bottom = bar
    for line in lines:
        assert line.text and "\n" not in line.text and line.size >= 6
        assert line.x >= math.ceil(width * 0.01)
        assert line.x + line.width <= width - math.ceil(width * 0.01)
        assert metrics.width(line.text, line.size) <= line.width
        assert line.y >= bottom  # below the bar / the previous line
        bottom = line.y + math.ceil(metrics.line_height(line.size))
        assert bottom <= height - bar
    if width >= 320 and height >= 180:
        assert any(shot_id in line.text for line in lines)
        assert any(line.text == "PLACEHOLDER" for line in lines)


@needs_font
def test_layout_matches_what_drawtext_draws(tmp_path: Path) -> None:
    """The measured advances predict drawtext's text width within a few percent."""
    assert FONT is not None
    text = f"SHOT {LONG_ID} Äé 聞 %{{x}}"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    import ffmpeg

    video = ffmpeg.input("color=c=black:s=4000x200", f="lavfi").filter(
        "drawtext", fontfile=FONT, textfile=str(tmp_path / "t.txt"), expansion="none",
        fontsize=80, fontcolor="white", x=100, y=40)
    raw = ff.run_stdout(list(ffmpeg.output(video, "-", vframes=1, f="rawvideo",
                                           pix_fmt="gray").get_args()), timeout=60)
    ink = np.flatnonzero((np.frombuffer(raw, np.uint8).reshape(200, 4000) > 100).any(axis=0))
    predicted = font_metrics(FONT).width(text, 80)
    assert abs((ink.max() - 100) - predicted) < 0.04 * predicted


# --------------------------------------------------------------------------- short reason


@pytest.mark.parametrize(("full", "short"), [
    ("animatic: FfmpegTimeout: ffmpeg (a -> b) timed out after 600 s (limit 600 s); its "
     "process group 1 was killed. Last output: frame= 10", "render timed out after 600 s"),
    ("animatic: FfmpegError: ffmpeg timed out after 600.0s", "render timed out after 600 s"),
    ("animatic: FfmpegError: ffmpeg timed out after 2.5s", "render timed out after 2.5 s"),
    ("comfyui_i2v: BackendUnavailable: backend 'comfyui_i2v' is not configured",
     "backend comfyui_i2v is not configured"),
    ("wan_i2v: HTTP 503", "backend wan_i2v failed (HTTP 503)"),
    ("source_clip: FfmpegError: ffmpeg failed (exit 8): [http @ 0x55d0] HTTP error 404 Not "
     "Found\nhttp://%{bogus}/x.mp4: Server returned 404 Not Found",
     "source footage unreachable (HTTP 404)"),
    ("source_clip: FfmpegError: ffmpeg (http://h/x.mp4 -> o.mp4) failed (exit 145): [tcp @ "
     "0x56] Connection to tcp://h:80 failed: Connection refused",
     "source footage unreachable (connection refused)"),
    ("source_clip: FfmpegError: ffmpeg failed (exit 1): [tcp @ 0x1] Failed to resolve hostname "
     "cdn.example: Name or service not known", "source footage unreachable (host not found)"),
    ("OSError: [Errno 28] No space left on device: '/work/clip.mp4'", "disk full"),
    ("animatic: DiskFullError: no space left on /work (0 B free)", "disk full"),
    ("animatic: FfmpegError: ffmpeg (file:/ep/keyframes/S01.png -> o.mp4) failed (exit 69): "
     "[vist#0:0/png @ 0x56] [dec:png @ 0x56] Task finished with error code: -1145393733",
     "keyframe could not be decoded"),
    ("animatic: FfmpegError: ffmpeg failed (exit 1): keyframes/S01.png: Invalid data found "
     "when processing input", "keyframe could not be decoded"),
    ("animatic: FfmpegError: ffmpeg (file:/ep/keyframes/S01.png -> o.mp4) failed (exit 254): "
     "Error opening input: No such file or directory", "keyframe file missing"),
    ("animatic: ValueError: shot S01 has no keyframe for the animatic backend",
     "shot has no keyframe"),
    ("wan_i2v: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", "out of memory"),
    ("animatic: FfmpegError: ffmpeg failed (exit 234): [libx264 @ 0x6] broken\nmore",
     "render failed (ffmpeg exit 234)"),
    ("placeholder requested", "placeholder requested"),
    ("source footage unreachable (host not found)", "source footage unreachable (host not "
     "found)"),
    ("backend wan_i2v unreachable (connection lost)", "backend wan_i2v unreachable "
     "(connection lost)"),
    ("source_clip: FfmpegError: ffmpeg failed (exit 1): [tls @ 0x1] Connection timed out",
     "source footage unreachable (connection timed out)"),
    ("", "no reason given"),
    # ComfyUI's answers: what happened to the shot, never "ffmpeg error" for the server's codec
    ("comfyui_i2v: ExecutionFailed: ComfyUI at http://127.0.0.1:8188: node 6 (SaveVideo) "
     "failed: ExternalError: avcodec_open2(\"libx264\") failed",
     "backend comfyui_i2v failed on the server (node 6 SaveVideo)"),
    ("comfyui_i2v: PromptRejected: ComfyUI at http://127.0.0.1:8188 rejected workflow w: node 4 "
     "(ImageAddNoise) input strength: Value 50.0 bigger than max of 1.0 (strength)",
     "backend comfyui_i2v rejected the workflow (node 4 ImageAddNoise strength)"),
    ("comfyui_i2v: TemplateMismatch: workflow wan_i2v cannot run on http://h:8188: node 37 "
     "(UNETLoader): unet_name 'w.safetensors' is not on the server (it has: none)",
     "workflow wan_i2v needs a model file the server lacks"),
    ("comfyui_i2v: TemplateMismatch: workflow mine cannot run on http://h:8188: node 4: class "
     "NoSuchNode is not installed", "workflow mine needs a node the server lacks"),
    ("comfyui_i2v: FarmExhausted: comfyui_i2v: no server can take the shot (http://a: down)",
     "backend comfyui_i2v: no server available"),
    ("comfyui_i2v: PromptTimeout: prompt 1f2e on http://a:8188 still running after 30 s: "
     "interrupted", "backend comfyui_i2v: no result within 30 s"),
    ("wan_i2v: RuntimeError: prompt rejected by the safety filter", "wan_i2v: prompt rejected "
     "by the safety filter"),
])
def test_short_reason(full: str, short: str) -> None:
    assert short_reason(full) == short
    assert short_reason(short) == short  # a short reason stays what it is


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000))
def test_short_reason_is_one_capped_line(full: str) -> None:
    short = short_reason(full)
    assert 0 < len(short) <= SHORT_REASON_MAX
    assert short == " ".join(short.split()) and short.isprintable()
    assert " @ 0x" not in short


@pytest.fixture(scope="module")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("www")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def _failure(backend: str, args: list[str], timeout: float = 60) -> str:
    """The reason the renderer records for a real ffmpeg failure."""
    with pytest.raises(ff.FfmpegError) as e:
        ff.run(args, timeout=timeout)
    return f"{backend}: {type(e.value).__name__}: {str(e.value)[:600]}"


def test_short_reason_of_real_ffmpeg_failures(tmp_path: Path,
                                              http_root: tuple[str, Path]) -> None:
    base, _ = http_root
    gen, delivery = media.Generation(320, 180, 24), media.Delivery(320, 180, 24)
    out = tmp_path / "o.mp4"
    missing = _failure("source_clip", media.source_clip_args(
        f"{base}/%25%7Bbogus%7D/x.mp4", out, in_ms=0, duration_ms=500, gen=gen,
        delivery=delivery))
    assert short_reason(missing) == "source footage unreachable (HTTP 404)"
    bad = tmp_path / "S01.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 40)
    broken = _failure("animatic", media.animatic_args(
        bad, out, duration_ms=500, move="static", strength=0.3, gen=gen, delivery=delivery))
    assert short_reason(broken) == "keyframe could not be decoded"
    slow = _failure("animatic", ["-f", "lavfi", "-i", "testsrc2=s=1920x1080", "-t", "300",
                                 "-f", "null", "-"], timeout=0.5)
    assert short_reason(slow) == "render timed out after 0.5 s"
