"""The one place that finds and runs ffmpeg.

Binary resolution order: ``FFMPEG_BINARY`` env var, then ``ffmpeg`` on PATH, then the
binary bundled with ``imageio-ffmpeg`` (installed with the package, so a fresh machine works).
Commands are built with ffmpeg-python where a filter graph is involved; everything runs
through :func:`run` so errors carry ffmpeg's own last lines.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


class FfmpegError(RuntimeError):
    def __init__(self, message: str, cmd: Sequence[str] = (), stderr: str = "") -> None:
        super().__init__(message)
        self.cmd = list(cmd)
        self.stderr = stderr


@functools.lru_cache(maxsize=8)
def _resolve(env_value: str | None) -> str:
    if env_value:
        found = shutil.which(env_value) or (env_value if Path(env_value).is_file() else None)
        if not found:
            raise FfmpegError(f"FFMPEG_BINARY={env_value!r} is not an executable file")
        return found
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_binary() -> str:
    """Path of the ffmpeg binary in use (see module doc for the order)."""
    return _resolve(os.environ.get("FFMPEG_BINARY") or None)


@functools.lru_cache(maxsize=8)
def _version(binary: str) -> str:
    out = subprocess.run([binary, "-hide_banner", "-version"], capture_output=True, text=True)
    first = (out.stdout or "").splitlines()[:1]
    m = re.match(r"ffmpeg version (\S+)", first[0]) if first else None
    return m.group(1) if m else "unknown"


def ffmpeg_version() -> str:
    return _version(ffmpeg_binary())


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(args: Sequence[str], *, timeout: float | None = None, input: bytes | None = None) -> str:
    """Run ffmpeg with ``args`` (without the binary); return stderr; raise FfmpegError."""
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-y", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as e:
        raise FfmpegError(f"ffmpeg timed out after {timeout}s", cmd) from e
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise FfmpegError(
            f"ffmpeg failed (exit {proc.returncode}): {_tail(stderr, 4)}", cmd, stderr
        )
    return stderr


def run_stdout(args: Sequence[str], *, timeout: float | None = None) -> bytes:
    """Run ffmpeg and return what it writes to stdout (e.g. ``-f f32le -``)."""
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise FfmpegError(f"ffmpeg timed out after {timeout}s", cmd) from e
    if proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace")
        raise FfmpegError(
            f"ffmpeg failed (exit {proc.returncode}): {_tail(stderr, 4)}", cmd, stderr
        )
    return proc.stdout


# --------------------------------------------------------------------------- probing


@dataclass
class StreamInfo:
    index: int
    kind: str  # video | audio | subtitle | data
    codec: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None
    language: str | None = None


@dataclass
class MediaInfo:
    path: str
    duration_s: float | None
    streams: list[StreamInfo] = field(default_factory=list)
    video_frames: int | None = None

    def first(self, kind: str) -> StreamInfo | None:
        return next((s for s in self.streams if s.kind == kind), None)

    def of_kind(self, kind: str) -> list[StreamInfo]:
        return [s for s in self.streams if s.kind == kind]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_STREAM_RE = re.compile(
    r"^\s*Stream #0:(?P<idx>\d+)(?:\[[^\]]*\])?(?:\((?P<lang>[^)]*)\))?: "
    r"(?P<kind>Video|Audio|Subtitle|Data): (?P<codec>\w+)(?P<rest>.*)$"
)


def _parse_fps(rest: str) -> float | None:
    for unit in ("fps", "tbr"):
        m = re.search(r"([\d.]+)(k?) " + unit, rest)
        if m:
            value = float(m.group(1)) * (1000 if m.group(2) else 1)
            return value
    return None


def probe(path: str | Path, *, count_frames: bool = False) -> MediaInfo:
    """Describe a media file using ffmpeg alone (imageio-ffmpeg ships no ffprobe).

    With ``count_frames`` the video stream is decoded (``-f null``) for an exact frame count
    and a precise duration.
    """
    args = ["-hide_banner", "-nostdin", "-i", str(path)]
    if count_frames:
        args += ["-map", "0:v:0?", "-f", "null", "-"]
    proc = subprocess.run([ffmpeg_binary(), *args], capture_output=True)
    text = proc.stderr.decode("utf-8", "replace")
    if "Invalid data found" in text or "No such file" in text or "Input #0" not in text:
        raise FfmpegError(f"cannot read media {path}: {_tail(text, 2)}", args, text)
    duration = None
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    if m:
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    streams: list[StreamInfo] = []
    input_part = text.split("Output #0")[0] if "Output #0" in text else text
    for line in input_part.splitlines():
        sm = _STREAM_RE.match(line)
        if not sm:
            continue
        kind = sm.group("kind").lower()
        rest = sm.group("rest")
        info = StreamInfo(
            index=int(sm.group("idx")),
            kind=kind,
            codec=sm.group("codec"),
            language=sm.group("lang") if sm.group("lang") not in (None, "und") else None,
        )
        if kind == "video":
            dm = re.search(r", (\d{2,5})x(\d{2,5})", rest)
            if dm:
                info.width, info.height = int(dm.group(1)), int(dm.group(2))
            info.fps = _parse_fps(rest)
        elif kind == "audio":
            am = re.search(r"(\d+) Hz", rest)
            if am:
                info.sample_rate = int(am.group(1))
        streams.append(info)
    frames = None
    if count_frames:
        fm = re.findall(r"frame=\s*(\d+)", text)
        if fm:
            frames = int(fm[-1])
        tm = re.findall(r"time=(\d+):(\d+):([\d.]+)", text)
        if tm:
            h, mi, s = tm[-1]
            duration = int(h) * 3600 + int(mi) * 60 + float(s)
    return MediaInfo(path=str(path), duration_s=duration, streams=streams, video_frames=frames)


def encoders() -> list[str]:
    """Names of the video encoders this ffmpeg build offers."""
    out = subprocess.run(
        [ffmpeg_binary(), "-hide_banner", "-encoders"], capture_output=True, text=True
    ).stdout
    names = []
    for line in out.splitlines():
        m = re.match(r"^\s*V\S*\s+(\S+)", line)
        if m and m.group(1) != "=":
            names.append(m.group(1))
    return names


HARDWARE_ENCODER_SUFFIXES = ("_nvenc", "_qsv", "_vaapi", "_amf", "_videotoolbox", "_v4l2m2m")


def hardware_encoders() -> list[str]:
    """The hardware video encoders compiled into this ffmpeg (compiled in ≠ usable here)."""
    return [name for name in encoders() if name.endswith(HARDWARE_ENCODER_SUFFIXES)]


def nvenc_works(gpu_index: int = 0, *, timeout: float = 20.0) -> bool:
    """True when ffmpeg can really encode with ``h264_nvenc`` on GPU ``gpu_index``.

    Encodes a few lavfi test frames to ``-f null -``; a build without NVENC, a machine without
    an NVIDIA driver or a GPU without an NVENC engine all give False, never an exception.
    """
    if "h264_nvenc" not in encoders():
        return False
    args = [
        "-f", "lavfi", "-i", "testsrc2=size=256x144:rate=24",
        "-frames:v", "6", "-c:v", "h264_nvenc", "-gpu", str(gpu_index), "-f", "null", "-",
    ]  # fmt: skip
    try:
        run(args, timeout=timeout)
    except (FfmpegError, OSError):
        return False
    return True
