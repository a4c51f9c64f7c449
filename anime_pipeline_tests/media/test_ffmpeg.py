"""The ffmpeg runner with real ffmpeg: which binary, timeouts that kill the process group,
bounded stderr, disk full, clip verification, protocol whitelists."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media import render as media
from anime_pipeline.media.audio_io import AudioDecodeError, decode_audio
from anime_pipeline_tests.media.conftest import T, write_script

DELIVERY = media.Delivery(320, 180, 24)


@pytest.fixture
def bundled() -> str:
    return ff._resolve(None)[0]


@pytest.fixture
def use_binary(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests that set $FFMPEG_BINARY get it unset again afterwards."""
    yield
    monkeypatch.delenv(ff.ENV_BINARY, raising=False)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _clip(path: Path, seconds: float = 1.0) -> Path:
    ff.run(["-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=24:duration={seconds}",
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-bf", "0",
            "-movflags", "+faststart", str(path)], timeout=T)
    return path


# --------------------------------------------------------------------------- the binary


def test_bundled_binary_wins_over_ffmpeg_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 bundled: str) -> None:
    marker = tmp_path / "path_ffmpeg_ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_script(bin_dir / "ffmpeg", f"touch '{marker}'\nexit 1\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(bin_dir / "ffmpeg"))  # imageio's own override
    monkeypatch.delenv(ff.ENV_BINARY, raising=False)
    assert ff.ffmpeg_binary() == bundled
    assert "imageio_ffmpeg" in bundled and Path(bundled).is_file()
    assert ff.ffmpeg_source() == "bundled"
    ff.run(["-f", "lavfi", "-i", "testsrc2=d=0.1", "-f", "null", "-"], timeout=T)
    assert ff.encoders(timeout=T)
    assert not marker.exists()
    info = ff.ffmpeg_info()
    assert info.binary == bundled and info.source == "bundled"
    assert info.version != "unknown" and info.version in str(info)


def test_ffmpeg_binary_env_is_used_and_logged_once(tmp_path: Path, bundled: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture,
                                                   use_binary: None) -> None:
    calls = tmp_path / "calls"
    wrapper = write_script(tmp_path / "my ffmpeg", f'echo x >> "{calls}"\nexec "{bundled}" "$@"\n')
    monkeypatch.setenv(ff.ENV_BINARY, str(wrapper))
    with caplog.at_level(logging.INFO, logger="anime_pipeline.media"):
        assert ff.ffmpeg_binary() == str(wrapper)
        assert ff.ffmpeg_source() == "FFMPEG_BINARY"
        ff.run(["-f", "lavfi", "-i", "testsrc2=d=0.1", "-f", "null", "-"], timeout=T)
        ff.ffmpeg_binary()
    logged = [r for r in caplog.records if r.name == "anime_pipeline.media"]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    version = ff.ffmpeg_version()
    assert str(wrapper) in logged[0].getMessage() and version in logged[0].getMessage()
    assert calls.read_text().count("x") >= 2  # -version, then the run
    # The cache is keyed on the variable: unsetting it goes back to the bundled binary.
    monkeypatch.delenv(ff.ENV_BINARY)
    assert ff.ffmpeg_binary() == bundled and ff.ffmpeg_source() == "bundled"


@pytest.mark.parametrize("case", ["missing", "directory", "not_executable", "bare_name"])
def test_ffmpeg_binary_env_must_be_an_executable_file(tmp_path: Path, case: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      use_binary: None) -> None:
    value = {"missing": str(tmp_path / "nope"), "directory": str(tmp_path),
             "not_executable": str(tmp_path / "plain"), "bare_name": "ffmpeg"}[case]
    (tmp_path / "plain").write_text("#!/bin/sh\n")
    monkeypatch.setenv(ff.ENV_BINARY, value)
    with pytest.raises(ff.FfmpegError, match="FFMPEG_BINARY=.*executable"):
        ff.ffmpeg_binary()
    with pytest.raises(ff.FfmpegError, match="FFMPEG_BINARY"):
        ff.run(["-version"], timeout=T)


# --------------------------------------------------------------------------- timeouts


def test_timeout_for_scales_with_the_work() -> None:
    assert ff.timeout_for(0) == 60
    assert ff.timeout_for(2) == 80  # 60 + 10 x 2
    assert ff.timeout_for(2, frames=240) == 60 + 96  # 0.4 s x 240 frames beats 10 s x 2
    assert ff.timeout_for(2, pixels_per_frame=320 * 180) == 80  # never below the 1080p rate
    assert ff.timeout_for(2, pixels_per_frame=3840 * 2160) == 60 + 20 * 4
    assert ff.timeout_for(600) > ff.timeout_for(60) > ff.timeout_for(1)
    with pytest.raises(ValueError):
        ff.timeout_for(-1)
    with pytest.raises(ValueError):
        ff.timeout_for(float("nan"))


def test_timeout_is_required_and_positive() -> None:
    args = ["-f", "lavfi", "-i", "testsrc2=d=0.1", "-f", "null", "-"]
    with pytest.raises(TypeError):
        ff.run(args)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ff.run_stdout(args)  # type: ignore[call-arg]
    for bad in (None, 0, -5):
        with pytest.raises(ValueError, match="timeout"):
            ff.run(args, timeout=bad)  # type: ignore[arg-type]


def test_ffmpeg_hung_on_a_fifo_is_killed(tmp_path: Path) -> None:
    """Opening a FIFO nobody writes to blocks ffmpeg forever: the timeout ends it."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(ff.FfmpegTimeout) as info:
        ff.run(["-i", str(fifo), "-f", "null", "-"], timeout=1.5)
    assert time.monotonic() - t0 < 15
    err = info.value
    assert isinstance(err, ff.FfmpegError) and err.timeout == 1.5
    assert "timed out after" in str(err) and "limit 1.5 s" in str(err)
    assert "in.fifo" in str(err)  # says what timed out
    for call in (lambda: ff.run_stdout(["-i", str(fifo), "-f", "s16le", "-"], timeout=1),
                 lambda: list(ff.stream_stdout(["-i", str(fifo), "-f", "s16le", "-"],
                                               timeout=1)),
                 lambda: ff.probe(fifo, timeout=1),
                 lambda: ff.count_video_frames(fifo, timeout=1)):
        with pytest.raises(ff.FfmpegTimeout):
            call()


def test_timeout_kills_the_whole_process_group(tmp_path: Path, bundled: str,
                                               monkeypatch: pytest.MonkeyPatch,
                                               use_binary: None) -> None:
    """A wrapper that runs ffmpeg as its child (and leaves a grandchild sleeping): on timeout
    the wrapper, the ffmpeg under it and the sleeper all die, not just the direct child."""
    pids = tmp_path / "pids"
    wrapper = write_script(tmp_path / "wrapper", (
        f'case "$*" in *-version*) exec "{bundled}" "$@";; esac\n'
        f'"{bundled}" "$@" &\n'
        f'echo "ffmpeg $!" >> "{pids}"\n'
        'sleep 1000 &\n'
        f'echo "sleep $!" >> "{pids}"\n'
        f'echo "wrapper $$" >> "{pids}"\n'
        'wait\n'))
    monkeypatch.setenv(ff.ENV_BINARY, str(wrapper))
    ff.ffmpeg_binary()  # resolves and runs -version through the wrapper
    pids.write_text("")
    with pytest.raises(ff.FfmpegTimeout) as info:
        ff.run(["-re", "-f", "lavfi", "-i", "testsrc2=size=64x36:rate=24:duration=3600",
                "-f", "null", "-"], timeout=2)
    assert "timed out" in str(info.value)
    started = dict(line.split() for line in pids.read_text().splitlines())
    assert set(started) == {"ffmpeg", "sleep", "wrapper"}
    for name, pid in started.items():
        assert _wait_gone(int(pid)), f"{name} (pid {pid}) survived the timeout"


def test_normal_exit_leaves_no_stragglers(tmp_path: Path, bundled: str,
                                          monkeypatch: pytest.MonkeyPatch,
                                          use_binary: None) -> None:
    pids = tmp_path / "pids"
    wrapper = write_script(tmp_path / "wrapper", (
        f'sleep 1000 &\necho "$!" >> "{pids}"\nexec "{bundled}" "$@"\n'))
    monkeypatch.setenv(ff.ENV_BINARY, str(wrapper))
    ff.run(["-f", "lavfi", "-i", "testsrc2=d=0.1", "-f", "null", "-"], timeout=T)
    for pid in pids.read_text().split():
        assert _wait_gone(int(pid))


def test_hung_encoder_listing_and_version_time_out(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture,
                                                   use_binary: None) -> None:
    """A binary that never answers: -version, -encoders and the NVENC test all give up."""
    stuck = write_script(tmp_path / "stuck", "exec sleep 1000\n")
    monkeypatch.setenv(ff.ENV_BINARY, str(stuck))
    monkeypatch.setattr(ff, "VERSION_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="anime_pipeline.media"):
        assert ff.ffmpeg_binary() == str(stuck)
    assert "version could not be read" in caplog.text
    with pytest.raises(ff.FfmpegTimeout, match="encoders"):
        ff.encoders(timeout=1)
    assert ff.nvenc_works(0, timeout=1) is False
    assert time.monotonic() - t0 < 20


def _pid_wrapper(tmp_path: Path, bundled: str) -> tuple[Path, Path]:
    """An $FFMPEG_BINARY that runs ffmpeg as its child beside a sleeping grandchild and
    writes down every pid (ffmpeg -version passes straight through)."""
    pids = tmp_path / "pids"
    wrapper = write_script(tmp_path / "wrapper", (
        f'case "$*" in *-version*) exec "{bundled}" "$@";; esac\n'
        f'"{bundled}" "$@" &\n'
        f'echo "ffmpeg $!" >> "{pids}"\n'
        'sleep 1000 &\n'
        f'echo "sleep $!" >> "{pids}"\n'
        f'echo "wrapper $$" >> "{pids}"\n'
        'wait\n'))
    return wrapper, pids


ENDLESS_PCM = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=22050:duration=36000",
               "-f", "f32le", "-"]


def test_stream_stdout_hands_out_bounded_pieces_and_raises_failures() -> None:
    pieces = list(ff.stream_stdout(
        ["-f", "lavfi", "-i", "sine=sample_rate=8000:duration=3", "-f", "s16le", "-"],
        timeout=T, chunk_bytes=10_000, prefetch=2))
    assert [len(p) for p in pieces[:-1]] == [10_000] * (len(pieces) - 1)
    assert sum(len(p) for p in pieces) == 3 * 8000 * 2
    with pytest.raises(ff.FfmpegError, match="nowhere.wav"):
        list(ff.stream_stdout(["-i", "file:/nowhere.wav", "-f", "s16le", "-"], timeout=T))
    with pytest.raises(ValueError):
        next(ff.stream_stdout(ENDLESS_PCM, timeout=T, chunk_bytes=0))


def test_stream_stdout_stopped_early_kills_the_whole_group(
        tmp_path: Path, bundled: str, monkeypatch: pytest.MonkeyPatch, use_binary: None) -> None:
    wrapper, pids = _pid_wrapper(tmp_path, bundled)
    monkeypatch.setenv(ff.ENV_BINARY, str(wrapper))
    ff.ffmpeg_binary()
    pids.write_text("")
    stream = ff.stream_stdout(ENDLESS_PCM, timeout=T, chunk_bytes=4096)
    assert len(next(stream)) == 4096 and len(next(stream)) == 4096  # 10 hours of sine: never ends
    stream.close()
    started = dict(line.split() for line in pids.read_text().splitlines())
    assert set(started) == {"ffmpeg", "sleep", "wrapper"}
    for name, pid in started.items():
        assert _wait_gone(int(pid)), f"{name} (pid {pid}) survived the early stop"


def test_stream_stdout_timeout_counts_the_consumers_time(
        tmp_path: Path, bundled: str, monkeypatch: pytest.MonkeyPatch, use_binary: None) -> None:
    """A consumer slower than the timeout: FfmpegTimeout at the next piece, group killed."""
    wrapper, pids = _pid_wrapper(tmp_path, bundled)
    monkeypatch.setenv(ff.ENV_BINARY, str(wrapper))
    ff.ffmpeg_binary()
    pids.write_text("")
    t0 = time.monotonic()
    with pytest.raises(ff.FfmpegTimeout) as info:
        for _ in ff.stream_stdout(ENDLESS_PCM, timeout=1.0, chunk_bytes=4096):
            time.sleep(0.3)
    assert time.monotonic() - t0 < 15
    assert "timed out after" in str(info.value) and "limit 1 s" in str(info.value)
    for name, pid in dict(line.split() for line in pids.read_text().splitlines()).items():
        assert _wait_gone(int(pid)), f"{name} (pid {pid}) survived the timeout"


# --------------------------------------------------------------------------- stderr


def test_stderr_kept_is_a_bounded_tail() -> None:
    """showinfo prints a line per frame: 3000 frames is ~1 MB of stderr; 64 KiB are kept."""
    text = ff.run(["-f", "lavfi", "-i", "testsrc2=size=32x32:rate=1000:duration=3",
                   "-vf", "showinfo", "-f", "null", "-"], timeout=T)
    assert len(text.encode()) <= ff.STDERR_TAIL_BYTES + 200
    assert "earlier bytes of ffmpeg output dropped" in text
    assert "n:2999" in text  # the end is what is kept


def test_a_timed_out_chatty_ffmpeg_keeps_only_the_tail() -> None:
    with pytest.raises(ff.FfmpegTimeout) as info:
        ff.run(["-f", "lavfi", "-i", "testsrc2=size=32x32:rate=1000", "-vf", "showinfo",
                "-f", "null", "-"], timeout=2)
    assert len(info.value.stderr.encode()) <= ff.STDERR_TAIL_BYTES + 200
    assert len(str(info.value)) < 2000


def test_a_failure_names_its_cause_not_just_conversion_failed(tmp_path: Path) -> None:
    with pytest.raises(ff.FfmpegError) as info:
        ff.run(["-f", "lavfi", "-i", "testsrc2=d=0.2", "-c:v", "libx264",
                "-preset", "no-such-preset", str(tmp_path / "o.mp4")], timeout=T)
    message = str(info.value)
    assert "no-such-preset" in message and "o.mp4" in message and "exit" in message
    assert "[info] " not in info.value.stderr  # level tags are for us, not for the user


# --------------------------------------------------------------------------- disk full


def test_disk_full_on_a_tiny_filesystem(tiny_fs: Path) -> None:
    out = tiny_fs / "clip.mp4"
    args = ["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=24:duration=10",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out)]
    with pytest.raises(ff.DiskFullError) as info:
        ff.run(args, timeout=T)
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert not isinstance(err, ff.FfmpegError)  # distinct: no render retry spins on it
    assert err.filename == str(out)
    message = str(err)
    assert str(out) in message and "No space left on device" in message
    assert "free on the filesystem" in message
    assert message.strip() != "Conversion failed!"


def test_disk_full_writing_to_dev_full() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    with pytest.raises(ff.DiskFullError) as info:
        ff.run(["-f", "lavfi", "-i", "testsrc2=size=64x36:rate=24:duration=1",
                "-c:v", "libx264", "-f", "mp4", "/dev/full"], timeout=T)
    assert info.value.errno == errno.ENOSPC and "/dev/full" in str(info.value)


def test_disk_full_from_python_names_the_path(tiny_fs: Path) -> None:
    filler = tiny_fs / "filler"
    with pytest.raises(OSError) as raw:
        with filler.open("wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    assert raw.value.errno == errno.ENOSPC
    err = ff.disk_full(tiny_fs / "concat.txt", raw.value)
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert "concat.txt" in str(err) and "0 B free" in str(err)


# --------------------------------------------------------------------------- verification


def test_verify_clip_accepts_a_whole_clip(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "ok.mp4")
    probe = ff.verify_clip(clip, expected_frames=24, width=320, height=180, fps=24, timeout=T)
    assert (probe.frames, probe.width, probe.height, probe.fps) == (24, 320, 180, 24)
    assert probe.codec == "h264" and probe.size_bytes == clip.stat().st_size
    assert probe.duration_s == 1.0


def test_verify_clip_refuses_a_clip_cut_in_half(tmp_path: Path) -> None:
    """ffmpeg exits 0 reading it; only decoding to the end shows it."""
    whole = _clip(tmp_path / "whole.mp4", seconds=2)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert ff.probe(cut).first("video") is not None  # the header still looks fine
    with pytest.raises(ff.ClipVerificationError) as info:
        ff.verify_clip(cut, expected_frames=48, width=320, height=180, fps=24, timeout=T)
    message = str(info.value)
    assert "cut.mp4" in message and "expected 48" in message and "decode errors" in message
    assert isinstance(info.value, ff.FfmpegError) and info.value.path == str(cut)


def test_verify_clip_refuses_a_262_byte_clip(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.mp4"
    tiny.write_bytes(_clip(tmp_path / "src.mp4").read_bytes()[:262])
    with pytest.raises(ff.ClipVerificationError, match="262 bytes"):
        ff.verify_clip(tiny, expected_frames=24, width=320, height=180, fps=24, timeout=T)


def test_verify_clip_names_every_mismatch(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "ok.mp4")
    with pytest.raises(ff.ClipVerificationError) as info:
        ff.verify_clip(clip, expected_frames=30, width=640, height=360, fps=25, timeout=T)
    message = str(info.value)
    assert "24 video frames decoded, expected 30" in message
    assert "frame size 320x180, expected 640x360" in message
    assert "frame rate 24.0, expected 25" in message
    with pytest.raises(ff.ClipVerificationError, match="does not exist"):
        ff.verify_clip(tmp_path / "nope.mp4", expected_frames=1, width=1, height=1, fps=1,
                       timeout=T)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ff.ClipVerificationError, match="not readable media"):
        ff.verify_clip(junk, expected_frames=1, width=1, height=1, fps=1, timeout=T)
    audio_only = tmp_path / "audio.m4a"
    ff.run(["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(audio_only)], timeout=T)
    with pytest.raises(ff.ClipVerificationError, match="no video stream"):
        ff.verify_clip(audio_only, expected_frames=1, width=1, height=1, fps=1, timeout=T)


def test_frame_count_is_of_the_video_stream_not_the_container(tmp_path: Path) -> None:
    """26 s of video under 60 s of audio: the container says 60 s, the video holds 26 s."""
    out = tmp_path / "short_video.mp4"
    ff.run(["-f", "lavfi", "-i", "color=c=gray:size=64x36:rate=24:duration=26",
            "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "60",
            "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-b:a", "16k",
            str(out)], timeout=T)
    info = ff.probe(out)
    assert info.duration_s is not None and info.duration_s > 59
    decoded = ff.count_video_frames(out, timeout=T)
    assert decoded.frames == 26 * 24 and not decoded.errors
    counted = ff.probe(out, count_frames=True)
    assert counted.video_frames == 26 * 24 and counted.duration_s == 26.0


# --------------------------------------------------------------------------- protocols


def _source_cut(uri: str, out: Path) -> None:
    media.render(media.source_clip_args(uri, out, in_ms=0, duration_ms=500,
                                        gen=media.Generation(320, 180, 24), delivery=DELIVERY),
                 timeout=T)


def _playlist(path: Path, segments: list[str]) -> Path:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2",
             "#EXT-X-MEDIA-SEQUENCE:0"]
    for seg in segments:
        lines += ["#EXTINF:1.000000,", seg]
    path.write_text("\n".join([*lines, "#EXT-X-ENDLIST", ""]), encoding="utf-8")
    return path


def _segments(footage: Path) -> list[str]:
    text = (footage / "take.m3u8").read_text()
    return [line for line in text.splitlines() if line.endswith(".ts")]


def test_input_arguments_restrict_protocols(tmp_path: Path) -> None:
    assert ff.input_args(tmp_path / "a.mp4") == [
        "-protocol_whitelist", "file", "-i", f"file:{tmp_path / 'a.mp4'}"]
    remote = ff.input_args("https://cdn.example/a.m3u8")
    assert remote[:2] == ["-protocol_whitelist", "http,https,tls,tcp,crypto"]
    assert remote[-2:] == ["-i", "https://cdn.example/a.m3u8"]
    local_source = media.source_clip_args(str(tmp_path / "a.mp4"), tmp_path / "o.mp4", in_ms=0,
                                          duration_ms=500, gen=media.Generation(320, 180, 24),
                                          delivery=DELIVERY)
    i = local_source.index("-protocol_whitelist")
    assert local_source[i + 1] == "file,crypto"
    animatic = media.animatic_args(tmp_path / "k.png", tmp_path / "o.mp4", duration_ms=500,
                                   move="static", strength=0,
                                   gen=media.Generation(320, 180, 24), delivery=DELIVERY)
    assert animatic[animatic.index("-protocol_whitelist") + 1] == "file"


def test_local_playlist_cannot_reach_the_network(footage: Path, http_root: str,
                                                 tmp_path: Path) -> None:
    segs = _segments(footage)
    playlist = _playlist(tmp_path / "net.m3u8", [f"{http_root}/{s}" for s in segs])
    with pytest.raises(ff.FfmpegError, match="Protocol 'http' not on whitelist 'file,crypto'"):
        _source_cut(str(playlist), tmp_path / "o.mp4")
    with pytest.raises(AudioDecodeError, match="not on whitelist"):
        decode_audio(playlist, timeout=T)
    disguised = _playlist(tmp_path / "net.mp4", [f"{http_root}/{s}" for s in segs])
    with pytest.raises(ff.FfmpegError):
        _source_cut(str(disguised), tmp_path / "o.mp4")
    # The same playlist opened the way it was before (no whitelist, no file: prefix)
    # reaches the server with some ffmpeg builds; ours refuses it whatever the build.
    with pytest.raises(ff.FfmpegError):
        ff.count_packets(["-protocol_whitelist", "file", "-i", str(tmp_path / "net.m3u8")],
                         timeout=T)


def test_local_playlist_naming_etc_hostname_fails(tmp_path: Path) -> None:
    playlist = _playlist(tmp_path / "host.m3u8", ["file:///etc/hostname"])
    with pytest.raises(ff.FfmpegError):
        _source_cut(str(playlist), tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists() or (tmp_path / "o.mp4").stat().st_size == 0


def test_remote_playlist_cannot_pull_local_files(footage: Path, http_root: str,
                                                 tmp_path: Path) -> None:
    segs = _segments(footage)
    _playlist(footage / "evil.m3u8", [f"file://{footage / s}" for s in segs])
    try:
        with pytest.raises(ff.FfmpegError, match="'file' not on whitelist"):
            _source_cut(f"{http_root}/evil.m3u8", tmp_path / "o.mp4")
    finally:
        (footage / "evil.m3u8").unlink()


def test_remote_hls_cut_still_works(footage: Path, http_root: str, tmp_path: Path) -> None:
    out = tmp_path / "o.mp4"
    _source_cut(f"{http_root}/take.m3u8", out)
    assert ff.verify_clip(out, expected_frames=12, width=320, height=180, fps=24,
                          timeout=T).frames == 12


def test_remote_encrypted_hls_cut_works(footage: Path, http_root: str, tmp_path: Path) -> None:
    """AES-128 HLS with its key over http: ``crypto`` is in the remote whitelist."""
    enc = footage / "enc"
    enc.mkdir(exist_ok=True)
    (enc / "enc.key").write_bytes(bytes(range(16)))
    info = tmp_path / "enc.keyinfo"
    info.write_text(f"{http_root}/enc/enc.key\n{enc / 'enc.key'}\n", encoding="utf-8")
    ff.run(["-i", str(footage / "take.mp4"), "-c", "copy", "-f", "hls", "-hls_time", "1",
            "-hls_list_size", "0", "-hls_key_info_file", str(info), str(enc / "enc.m3u8")],
           timeout=T)
    assert "METHOD=AES-128" in (enc / "enc.m3u8").read_text()
    out = tmp_path / "o.mp4"
    _source_cut(f"{http_root}/enc/enc.m3u8", out)
    assert ff.verify_clip(out, expected_frames=12, width=320, height=180, fps=24,
                          timeout=T).frames == 12


def test_concat_list_cannot_reach_the_network(footage: Path, http_root: str,
                                              tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"file '{footage / 'take.mp4'}'\nfile '{http_root}/take.mp4'\n")
    found = ff.count_packets(["-f", "concat", "-safe", "0", *ff.input_args(listing)], timeout=T)
    assert any("not on whitelist" in e for e in found.errors)
    assert found.frames == 120  # only the local entry was read


def test_probe_and_subprocess_helpers_leave_nothing_running(tmp_path: Path) -> None:
    before = _children()
    _clip(tmp_path / "a.mp4")
    ff.probe(tmp_path / "a.mp4")
    ff.count_video_frames(tmp_path / "a.mp4", timeout=T)
    ff.encoders()
    assert _children() <= before


def _children() -> set[int]:
    """Live processes whose parent is this one."""
    found = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] not in ("Z", "X"):
            found.add(int(stat_file.parent.name))
    return found
