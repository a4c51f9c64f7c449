"""The one place that finds and runs ffmpeg.

Binary: ``$FFMPEG_BINARY`` when set (it must name an executable file), else the binary
bundled with ``imageio-ffmpeg``. An ``ffmpeg`` on ``PATH`` is never used: a distribution's
ffmpeg is a different version with different filters and defaults, and would silently
replace the one the pipeline is tested with. The binary and its version are logged once per
process per binary on the ``anime_pipeline.media`` logger, and :func:`ffmpeg_info` gives both
(with where the binary came from) to the CLI and the UI.

Every subprocess has a timeout. ffmpeg runs in its own process group; on timeout the whole
group is killed (SIGKILL), the child is reaped and :class:`FfmpegTimeout` says what timed out
and after how long. Only the last :data:`STDERR_TAIL_BYTES` of ffmpeg's stderr are kept.
A failure caused by a full disk raises :class:`DiskFullError` (an ``OSError`` with errno
``ENOSPC``), never a bare "Conversion failed!".

Inputs are opened with a protocol whitelist (:func:`input_args`): local files may use only
``file`` (and ``crypto`` for local encrypted HLS), remote http(s) sources only
``http,https,tls,tcp,crypto``, so a remote playlist cannot pull ``file://`` segments and a
local one cannot reach the network.

Probing uses ffmpeg alone (imageio-ffmpeg ships no ffprobe): :func:`probe` parses the header
dump, :func:`count_video_frames` decodes the video stream, :func:`verify_clip` checks a
rendered clip completely.
"""

from __future__ import annotations

import errno
import functools
import importlib.resources
import logging
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Literal

from anime_pipeline.domain.contracts import NVENC_ENCODER

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("anime_pipeline.media")

ENV_BINARY = "FFMPEG_BINARY"
STDERR_TAIL_BYTES = 64 * 1024
#: Timeouts for the small fixed-cost calls (version, encoder list, header probe).
VERSION_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 60.0
#: A rendered clip smaller than this is not a clip (an MP4 of one 16x16 frame is ~1.4 KB).
MIN_CLIP_BYTES = 1024

#: Protocols an input may use (``-protocol_whitelist``).
FILE_PROTOCOLS = "file"
LOCAL_SOURCE_PROTOCOLS = "file,crypto"  # a local HLS source may be AES-128 encrypted
REMOTE_PROTOCOLS = "http,https,tls,tcp,crypto"
REMOTE_SCHEMES = ("http://", "https://")
#: A stalled remote read fails after this long instead of waiting for the whole timeout.
REMOTE_RW_TIMEOUT_US = 30_000_000

Source = Literal["FFMPEG_BINARY", "bundled"]


# --------------------------------------------------------------------------- errors


class FfmpegError(RuntimeError):
    """ffmpeg failed; ``cmd`` is the command, ``stderr`` the tail of what it printed."""

    def __init__(self, message: str, cmd: Sequence[str] = (), stderr: str = "") -> None:
        super().__init__(message)
        self.cmd = list(cmd)
        self.stderr = stderr


class FfmpegTimeout(FfmpegError):
    """ffmpeg ran past its timeout; its process group was killed."""

    def __init__(self, message: str, cmd: Sequence[str] = (), stderr: str = "", *,
                 timeout: float = 0.0) -> None:
        super().__init__(message, cmd, stderr)
        self.timeout = timeout


class DiskFullError(OSError):
    """No space left on the device ffmpeg (or Python) was writing to.

    An ``OSError`` with ``errno == ENOSPC`` and ``filename`` the path being written, so code
    that handles OS errors sees it as one; deliberately not an :class:`FfmpegError`, so that
    retries meant for a failing render do not spin on a full disk.
    """

    def __init__(self, path: str | Path, detail: str, cmd: Sequence[str] = (),
                 stderr: str = "") -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.path = str(path)
        self.detail = detail
        self.cmd = list(cmd)
        self.stderr = stderr

    def __str__(self) -> str:
        return f"disk full: no space left on device writing {self.path}: {self.detail}"


class ClipVerificationError(FfmpegError):
    """A media file is not what it should be (frames, size, rate, streams, decode errors)."""

    def __init__(self, message: str, path: str | Path, cmd: Sequence[str] = (),
                 stderr: str = "") -> None:
        super().__init__(message, cmd, stderr)
        self.path = str(path)


def disk_full(path: str | Path, error: OSError | None = None) -> DiskFullError:
    """A :class:`DiskFullError` for ``path`` (with the free space there), from ``error``."""
    detail = f"{_free_space(path)}"
    if error is not None and error.strerror:
        detail = f"{error.strerror} ({detail})"
    return DiskFullError(path, detail)


def _free_space(path: str | Path) -> str:
    p = Path(path).absolute()
    for candidate in (p, *p.parents):
        if candidate.is_dir():
            try:
                free = shutil.disk_usage(candidate).free
            except OSError:
                break
            return f"{_human(free)} free on the filesystem of {candidate}"
    return "free space unknown"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# --------------------------------------------------------------------------- the binary


@dataclass(frozen=True)
class FfmpegInfo:
    """The ffmpeg in use, for the CLI and the UI."""

    binary: str
    version: str
    source: Source

    def __str__(self) -> str:
        origin = f"${ENV_BINARY}" if self.source == "FFMPEG_BINARY" else "imageio-ffmpeg"
        return f"ffmpeg {self.version} ({origin}: {self.binary})"


def _bundled_binary() -> str:
    """The ffmpeg shipped inside the imageio-ffmpeg wheel (not its PATH/conda fallbacks)."""
    try:
        bin_dir = importlib.resources.files("imageio_ffmpeg.binaries")
    except ModuleNotFoundError as e:
        raise FfmpegError(f"imageio-ffmpeg is not installed; install it or set {ENV_BINARY}"
                          ) from e
    names: list[str] = []
    try:
        from imageio_ffmpeg._definitions import FNAME_PER_PLATFORM, get_platform

        name = FNAME_PER_PLATFORM.get(get_platform())
        if name:
            names.append(name)
    except ImportError:  # a future imageio-ffmpeg layout: fall back to the file name
        pass
    with importlib.resources.as_file(bin_dir) as directory:
        folder = Path(directory)
        names += sorted(p.name for p in folder.glob("ffmpeg*") if p.suffix not in (".md", ".py"))
        for name in names:
            exe = folder / name
            if exe.is_file() and os.access(exe, os.X_OK):
                return str(exe)
    raise FfmpegError(
        f"imageio-ffmpeg ships no ffmpeg binary for this platform (looked in {folder}); "
        f"set {ENV_BINARY} to the path of an ffmpeg executable"
    )


@functools.lru_cache(maxsize=8)
def _resolve(env_value: str | None) -> tuple[str, Source]:
    if env_value:
        path = Path(env_value).expanduser()
        if not path.is_file() or not os.access(path, os.X_OK):
            what = "does not exist" if not path.exists() else (
                "is not a file" if not path.is_file() else "is not executable")
            raise FfmpegError(
                f"{ENV_BINARY}={env_value!r} {what}: it must be the path of an executable "
                "ffmpeg (unset it to use the ffmpeg bundled with imageio-ffmpeg)"
            )
        return str(path.absolute()), "FFMPEG_BINARY"
    return _bundled_binary(), "bundled"


_announced: set[str] = set()
_announce_lock = threading.Lock()


def _announce(binary: str, source: Source) -> None:
    with _announce_lock:
        if binary in _announced:
            return
        _announced.add(binary)
    version = _version(binary)
    origin = f"${ENV_BINARY}" if source == "FFMPEG_BINARY" else "bundled with imageio-ffmpeg"
    if version == "unknown":
        log.warning("ffmpeg %s (%s): its version could not be read", binary, origin)
    else:
        log.info("using ffmpeg %s at %s (%s)", version, binary, origin)


def _current() -> tuple[str, Source]:
    binary, source = _resolve(os.environ.get(ENV_BINARY) or None)
    if binary not in _announced:
        _announce(binary, source)
    return binary, source


def ffmpeg_binary() -> str:
    """Path of the ffmpeg in use: ``$FFMPEG_BINARY`` or the imageio-ffmpeg bundled one."""
    return _current()[0]


def ffmpeg_source() -> Source:
    """Where :func:`ffmpeg_binary` comes from: ``"FFMPEG_BINARY"`` or ``"bundled"``."""
    return _current()[1]


@functools.lru_cache(maxsize=8)
def _version(binary: str) -> str:
    try:
        code, out, _ = _exec([binary, "-hide_banner", "-version"], timeout=VERSION_TIMEOUT_S,
                             what="ffmpeg -version", want_stdout=True)
    except (FfmpegError, OSError):
        return "unknown"
    first = out.decode("utf-8", "replace").splitlines()[:1]
    m = re.match(r"ffmpeg version (\S+)", first[0]) if first and code == 0 else None
    return m.group(1) if m else "unknown"


def ffmpeg_version() -> str:
    return _version(ffmpeg_binary())


def ffmpeg_info() -> FfmpegInfo:
    binary, source = _current()
    return FfmpegInfo(binary, _version(binary), source)


# --------------------------------------------------------------------------- timeouts

TIMEOUT_BASE_S = 60.0
TIMEOUT_PER_MEDIA_SECOND_S = 10.0
TIMEOUT_PER_FRAME_S = 0.4
TIMEOUT_REFERENCE_PIXELS = 1920 * 1080


def timeout_for(media_seconds: float, *, pixels_per_frame: int | None = None,
                frames: int | None = None) -> float:
    """A generous timeout (seconds) for ffmpeg work on ``media_seconds`` of media.

    ``60 s + max(10 s x media_seconds, 0.4 s x frames) x max(1, pixels_per_frame / 1080p)``

    The base covers start-up, probing and slow storage; the work term allows 0.1x real time
    (or 0.4 s a frame when ``frames``, e.g. a high generation rate, is the better measure)
    at 1080p, and grows with the frame size above 1080p (never shrinks below it).
    """
    if not math.isfinite(media_seconds) or media_seconds < 0:
        raise ValueError(f"media_seconds must be a finite number >= 0, got {media_seconds}")
    work = TIMEOUT_PER_MEDIA_SECOND_S * media_seconds
    if frames is not None:
        work = max(work, TIMEOUT_PER_FRAME_S * max(0, frames))
    scale = 1.0
    if pixels_per_frame is not None:
        scale = max(1.0, pixels_per_frame / TIMEOUT_REFERENCE_PIXELS)
    return round(TIMEOUT_BASE_S + work * scale, 1)


# --------------------------------------------------------------------------- running


class _Tail:
    """The last ``limit`` bytes of a stream, read incrementally (bounded memory)."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.dropped = 0

    def drain(self, stream: IO[bytes]) -> None:
        try:
            while True:
                chunk = stream.read1(65536)  # type: ignore[attr-defined]
                if not chunk:
                    break
                self.buf += chunk
                excess = len(self.buf) - self.limit
                if excess > 0:
                    del self.buf[:excess]
                    self.dropped += excess
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        body = self.buf.decode("utf-8", "replace")
        if self.dropped:
            body = body.split("\n", 1)[-1]  # the first line is cut
            return f"[... {self.dropped} earlier bytes of ffmpeg output dropped ...]\n{body}"
        return body


def _read_all(stream: IO[bytes], chunks: list[bytes]) -> None:
    try:
        while True:
            chunk = stream.read1(1 << 20)  # type: ignore[attr-defined]
            if not chunk:
                break
            chunks.append(chunk)
    except (OSError, ValueError):
        pass


def _feed(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except (BrokenPipeError, OSError):
        pass
    finally:
        try:
            stream.close()
        except OSError:
            pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()  # the leader, should it have left its group
    except OSError:
        pass
    proc.wait()


def _check_timeout(timeout: float) -> float:
    if timeout is None or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"an ffmpeg timeout must be a positive number of seconds, "
                         f"got {timeout!r}")
    return float(timeout)


def _exec(cmd: Sequence[str], *, timeout: float, what: str, stdin_data: bytes | None = None,
          want_stdout: bool = False) -> tuple[int, bytes, str]:
    """Run ``cmd`` in its own process group; (exit code, stdout, stderr tail).

    On timeout the whole group is SIGKILLed and reaped, then :class:`FfmpegTimeout`.
    """
    limit = _check_timeout(timeout)
    cmd = list(cmd)
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if want_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
        )
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(_outputs(cmd), e) from e
        raise FfmpegError(f"cannot start {cmd[0]}: {e}", cmd) from e
    tail = _Tail()
    chunks: list[bytes] = []
    assert proc.stderr is not None
    threads = [threading.Thread(target=tail.drain, args=(proc.stderr,), daemon=True)]
    if want_stdout:
        assert proc.stdout is not None
        threads.append(threading.Thread(target=_read_all, args=(proc.stdout, chunks),
                                        daemon=True))
    if stdin_data is not None:
        assert proc.stdin is not None
        threads.append(threading.Thread(target=_feed, args=(proc.stdin, stdin_data),
                                        daemon=True))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        try:
            # ffmpeg's stderr reaches its end when ffmpeg exits: wait for that (a blocking
            # wait with a timeout) rather than in Popen.wait(timeout), which polls with
            # sleeps of up to 50 ms and so added some 25 ms to every call.
            threads[0].join(limit)
            code = proc.wait(timeout=max(0.0, limit - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - t0
            _kill_group(proc)
            _join(threads)
            raise FfmpegTimeout(
                f"{what} timed out after {elapsed:.1f} s (limit {limit:g} s); its process "
                f"group {proc.pid} was killed. Last output: "
                f"{_summary(tail.text(), 3) or '(none)'}",
                cmd, _untag(tail.text()), timeout=limit,
            ) from None
        except BaseException:  # KeyboardInterrupt and the like: leave nothing running
            _kill_group(proc)
            raise
        try:  # anything the child left behind in its group goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _join(threads)
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
    return code, b"".join(chunks), tail.text()


def _join(threads: Sequence[threading.Thread]) -> None:
    for t in threads:
        t.join(timeout=10)


_PROGRESS_RE = re.compile(r"^(\[info\] )?(frame|size|video|Lsize)=")
_LEVEL_RE = re.compile(r"\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ")
_ERROR_LEVEL_RE = re.compile(r"\[(panic|fatal|error)\] ")
#: Prefix every stderr line with its level (``[error]``), so errors can be told from chatter.
#: A relative flag: a later ``-v error`` in the arguments keeps it.
LEVEL_TAGS = ("-loglevel", "+level")


def _untag(text: str) -> str:
    """ffmpeg's output without the ``[level]`` tags :data:`LEVEL_TAGS` added."""
    return _LEVEL_RE.sub("", text)


def _lines(stderr: str) -> list[str]:
    kept = [s.strip() for s in re.split(r"[\r\n]+", stderr)]
    return [s for s in kept if s and not _PROGRESS_RE.match(s) and not s.startswith("[...")]


def _summary(stderr: str, lines: int = 4) -> str:
    """What to tell a user of ffmpeg's stderr: its error lines (the first ones, where the
    cause usually is, and the last ones), else its last lines; progress lines left out."""
    every = _lines(stderr)
    pick = [s for s in every if _ERROR_LEVEL_RE.search(s)] or every
    if len(pick) > lines:
        head = max(1, lines // 2)
        pick = [*pick[:head], "...", *pick[-(lines - head):]]
    return " | ".join(_untag(s) for s in pick)


def stderr_summary(stderr: str, lines: int = 4) -> str:
    """A one-line digest of ffmpeg's stderr for an error message (see :func:`_summary`)."""
    return _summary(stderr, lines)


def _error_lines(stderr: str) -> list[str]:
    """The lines of a ``-v error`` run (each one an error), untagged."""
    return [_untag(s) for s in _lines(stderr)]


def _is_enospc(code: int, stderr: str) -> bool:
    return ("No space left on device" in stderr or "error code: -28 " in stderr
            or code == 256 - errno.ENOSPC)


def _outputs(cmd: Sequence[str]) -> str:
    last = cmd[-1] if cmd else ""
    if not last or last == "-" or last.startswith("pipe:"):
        return "(pipe)"
    return last.removeprefix("file:")


def _inputs(cmd: Sequence[str]) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "-i"]


def _describe(cmd: Sequence[str]) -> str:
    ins = [i.removeprefix("file:") for i in _inputs(cmd)]
    src = ins[0] if len(ins) == 1 else f"{len(ins)} inputs" if ins else "no input"
    return f"ffmpeg ({src} -> {_outputs(cmd)})"


def _raise_for(code: int, cmd: Sequence[str], stderr: str) -> None:
    if code == 0:
        return
    if _is_enospc(code, stderr):
        said = next((_untag(s) for s in _lines(stderr) if "No space left" in s),
                    _summary(stderr, 2))
        raise DiskFullError(
            _outputs(cmd), f"ffmpeg (exit {code}) said: {said}; {_free_space(_outputs(cmd))}",
            cmd, _untag(stderr),
        )
    raise FfmpegError(f"{_describe(cmd)} failed (exit {code}): {_summary(stderr)}", cmd,
                      _untag(stderr))


def run(args: Sequence[str], *, timeout: float, input: bytes | None = None) -> str:
    """Run ffmpeg with ``args`` (without the binary); return the tail of its stderr.

    Raises :class:`FfmpegTimeout`, :class:`DiskFullError` or :class:`FfmpegError`.
    """
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *LEVEL_TAGS, "-y", *args]
    code, _, stderr = _exec(cmd, timeout=timeout, what=_describe(cmd), stdin_data=input)
    _raise_for(code, cmd, stderr)
    return _untag(stderr)


def run_stdout(args: Sequence[str], *, timeout: float) -> bytes:
    """Run ffmpeg and return what it writes to stdout (e.g. ``-f f32le -``)."""
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *LEVEL_TAGS, *args]
    code, out, stderr = _exec(cmd, timeout=timeout, what=_describe(cmd), want_stdout=True)
    _raise_for(code, cmd, stderr)
    return out


#: :func:`stream_stdout` hands out stdout in pieces of this many bytes unless told otherwise.
STREAM_CHUNK_BYTES = 1 << 20
#: ... and lets ffmpeg run this many pieces ahead of the consumer.
STREAM_PREFETCH = 4


#: How much ffmpeg may write before a reader must be there (Linux caps it at
#: /proc/sys/fs/pipe-max-size, 1 MiB by default; the default pipe holds 64 KiB).
STREAM_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = int(getattr(fcntl, "F_SETPIPE_SZ", 1031)) if fcntl is not None else 0


def _widen_pipe(stream: IO[bytes], chunk_bytes: int) -> None:
    """Let ffmpeg run up to a piece (at most :data:`STREAM_PIPE_BYTES`) ahead of the reader
    thread (which can wait a few ms for the GIL) instead of 64 KiB; best effort."""
    if fcntl is None or not sys.platform.startswith("linux"):
        return
    try:
        fcntl.fcntl(stream.fileno(), _F_SETPIPE_SZ, min(chunk_bytes, STREAM_PIPE_BYTES))
    except (OSError, ValueError):
        pass


def stream_stdout(args: Sequence[str], *, timeout: float, chunk_bytes: int = STREAM_CHUNK_BYTES,
                  prefetch: int = STREAM_PREFETCH) -> Generator[bytes, None, None]:
    """Run ffmpeg and yield its stdout as it comes, in pieces of ``chunk_bytes`` (only the last
    may be shorter), so that what is held never depends on the output's length: at most
    ``prefetch`` pieces wait in a queue (ffmpeg decodes ahead while the consumer works), one is
    being read and one is with the consumer.

    ``timeout`` bounds the whole run, the consumer's time between pieces included. ffmpeg
    runs in its own process group, like every call here; on timeout the group is killed and
    :class:`FfmpegTimeout` raised; when the consumer stops early (``close()``, an exception,
    the generator dropped) the group is killed too. A failing ffmpeg raises
    :class:`FfmpegError` (or :class:`DiskFullError`) after the pieces it did write.
    """
    limit = _check_timeout(timeout)
    if chunk_bytes <= 0 or prefetch <= 0:
        raise ValueError(f"chunk_bytes and prefetch must be positive, got {chunk_bytes}, "
                         f"{prefetch}")
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *LEVEL_TAGS, *args]
    what = _describe(cmd)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(_outputs(cmd), e) from e
        raise FfmpegError(f"cannot start {cmd[0]}: {e}", cmd) from e
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    _widen_pipe(stdout, chunk_bytes)
    tail = _Tail()
    pieces: queue.Queue[bytes | None] = queue.Queue(maxsize=prefetch)  # None: the end
    stop = threading.Event()

    def offer(piece: bytes | None) -> None:
        while not stop.is_set():
            try:
                pieces.put(piece, timeout=0.1)
                return
            except queue.Full:
                continue

    def pump() -> None:
        try:
            while not stop.is_set():
                piece = stdout.read(chunk_bytes)  # blocks until chunk_bytes or EOF
                if not piece:
                    break
                offer(piece)
        except (OSError, ValueError):  # the pipe closed under us: we are stopping
            pass
        finally:
            offer(None)

    threads = [threading.Thread(target=tail.drain, args=(proc.stderr,), daemon=True),
               threading.Thread(target=pump, daemon=True)]
    for t in threads:
        t.start()

    def timed_out() -> FfmpegTimeout:
        elapsed = time.monotonic() - t0
        _kill_group(proc)
        stop.set()
        _join(threads)
        return FfmpegTimeout(
            f"{what} timed out after {elapsed:.1f} s (limit {limit:g} s); its process "
            f"group {proc.pid} was killed. Last output: {_summary(tail.text(), 3) or '(none)'}",
            cmd, _untag(tail.text()), timeout=limit)

    try:
        while True:
            left = t0 + limit - time.monotonic()
            if left <= 0:
                raise timed_out()
            try:
                piece = pieces.get(timeout=left)
            except queue.Empty:
                raise timed_out() from None
            if piece is None:
                break
            yield piece
        try:
            code = proc.wait(timeout=max(0.01, t0 + limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise timed_out() from None
        try:  # anything the child left behind in its group goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        stop.set()
        _join(threads)
        _raise_for(code, cmd, tail.text())
    finally:
        stop.set()
        if proc.returncode is None:  # stopped early, failed or timed out: leave nothing running
            _kill_group(proc)
        for stream in (proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        _join(threads)


# --------------------------------------------------------------------------- inputs


def is_remote(uri: str | Path) -> bool:
    return isinstance(uri, str) and uri.lower().startswith(REMOTE_SCHEMES)


def media_url(uri: str | Path) -> str:
    """What ffmpeg is given for ``uri``: a remote URL as is, a local path as ``file:PATH``
    (so no part of a file name is ever read as a protocol)."""
    if is_remote(uri):
        return str(uri)
    text = str(uri)
    return text if text.startswith("file:") else f"file:{text}"


def protocol_whitelist(uri: str | Path, *, local: str = FILE_PROTOCOLS) -> str:
    """The ``-protocol_whitelist`` for an input: :data:`REMOTE_PROTOCOLS` for http(s),
    ``local`` (``file`` unless said otherwise) for everything else."""
    return REMOTE_PROTOCOLS if is_remote(uri) else local


def input_options(uri: str | Path, *, local: str = FILE_PROTOCOLS) -> dict[str, str]:
    """Input options (ffmpeg-python style, without dashes) restricting ``uri``'s protocols."""
    opts = {"protocol_whitelist": protocol_whitelist(uri, local=local)}
    if is_remote(uri):
        opts["rw_timeout"] = str(REMOTE_RW_TIMEOUT_US)
    return opts


def input_args(uri: str | Path, *, local: str = FILE_PROTOCOLS) -> list[str]:
    """``[-protocol_whitelist P (-rw_timeout T) -i URL]`` for one input."""
    args: list[str] = []
    for key, value in input_options(uri, local=local).items():
        args += [f"-{key}", value]
    return [*args, "-i", media_url(uri)]


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
    encoder: str | None = None  # the stream's encoder tag (libx264, h264_nvenc...), if written


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


_ENCODER_RE = re.compile(r"^\s{6,}encoder\s*:\s*(.+?)\s*$")  # a stream's metadata


def _parse_fps(rest: str) -> float | None:
    for unit in ("fps", "tbr"):
        m = re.search(r"([\d.]+)(k?) " + unit, rest)
        if m:
            value = float(m.group(1)) * (1000 if m.group(2) else 1)
            return value
    return None


def _parse_header(path: str, text: str) -> MediaInfo:
    duration = None
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    if m:
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    streams: list[StreamInfo] = []
    input_part = text.split("Output #0")[0] if "Output #0" in text else text
    for line in input_part.splitlines():
        sm = _STREAM_RE.match(line)
        if not sm:
            em = _ENCODER_RE.match(line)
            if em and streams and streams[-1].encoder is None:
                streams[-1].encoder = em.group(1).split()[-1]
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
    return MediaInfo(path=path, duration_s=duration, streams=streams)


def probe(path: str | Path, *, count_frames: bool = False,
          timeout: float | None = None) -> MediaInfo:
    """Describe a media file from ffmpeg's header dump.

    With ``count_frames`` the video stream is also decoded (:func:`count_video_frames`) for
    an exact frame count; ``duration_s`` then is that of the decoded video. ``timeout``
    applies to each ffmpeg call; by default :data:`PROBE_TIMEOUT_S` for the header and
    :func:`timeout_for` the header's duration for the decode.
    """
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *input_args(path)]
    _, _, text = _exec(cmd, timeout=timeout or PROBE_TIMEOUT_S, what=f"probing {path}")
    if "Input #0" not in text:
        raise FfmpegError(f"cannot read media {path}: {_summary(text, 2)}", cmd, text)
    info = _parse_header(str(path), text)
    if count_frames:
        video = info.first("video")
        limit = timeout or timeout_for(
            info.duration_s or 0.0,
            pixels_per_frame=(video.width or 0) * (video.height or 0) if video else None)
        decoded = count_video_frames(path, timeout=limit)
        info.video_frames = decoded.frames
        if video and video.fps:
            info.duration_s = round(decoded.frames / video.fps, 6)
    return info


@dataclass(frozen=True)
class VideoDecode:
    """The result of decoding a file's first video stream to the end."""

    frames: int
    errors: list[str]  # what the demuxer/decoder reported at level error (empty when clean)
    last_time_s: float | None  # presentation time of the last decoded frame


def count_video_frames(path: str | Path, *, timeout: float) -> VideoDecode:
    """Decode the first video stream of ``path`` entirely (``-f null``) and count its frames.

    This is the stream, not the container: a composite whose audio runs to 60 s while its
    video stops at 26 s counts 26 s of frames. Raises :class:`FfmpegError` when the file
    cannot be opened or has no video stream; decode errors are returned, not raised.
    """
    # Every frame is decoded (a truncated or corrupt stream fails), on one thread and without
    # the in-loop deblocking: the cheapest full decode, so verifying a clip takes little from
    # the renders running beside it.
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *LEVEL_TAGS, "-v", "error",
           "-nostats", "-progress", "pipe:1", "-stats_period", "5",
           "-threads", "1", "-skip_loop_filter", "all", *input_args(path),
           "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "null", "-"]
    code, out, stderr = _exec(cmd, timeout=timeout, what=f"decoding the video of {path}",
                              want_stdout=True)
    progress = out.decode("utf-8", "replace")
    errors = _error_lines(stderr)
    if code != 0:
        raise FfmpegError(f"cannot decode the video of {path}: {_summary(stderr, 3)}",
                          cmd, _untag(stderr))
    frames = re.findall(r"^frame=(\d+)", progress, re.M)
    times = re.findall(r"^out_time_us=(\d+)", progress, re.M)
    return VideoDecode(
        frames=int(frames[-1]) if frames else 0, errors=errors,
        last_time_s=int(times[-1]) / 1e6 if times else None,
    )


def count_packets(args: Sequence[str], *, timeout: float) -> VideoDecode:
    """Video packets of the input ``args`` describe, read without decoding (a stream copy
    to ``-f null``): cheap, to count the frames of clips before concatenating them.
    ``errors`` holds what the demuxer reported (a concat entry it could not open...)."""
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *LEVEL_TAGS, "-v", "error",
           "-nostats", "-progress", "pipe:1", "-stats_period", "5", *args,
           "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    code, out, stderr = _exec(cmd, timeout=timeout, what=_describe(cmd), want_stdout=True)
    _raise_for(code, cmd, stderr)
    progress = out.decode("utf-8", "replace")
    frames = re.findall(r"^frame=(\d+)", progress, re.M)
    times = re.findall(r"^out_time_us=(\d+)", progress, re.M)
    return VideoDecode(
        frames=int(frames[-1]) if frames else 0,
        errors=_error_lines(stderr),
        last_time_s=int(times[-1]) / 1e6 if times else None,
    )


def read_packets(path: str | Path, *, timeout: float) -> tuple[MediaInfo, VideoDecode]:
    """Read every packet of every stream of ``path`` to its end without decoding (a stream
    copy to ``-f null``), in one ffmpeg run that also gives :func:`probe`'s header.

    ``frames`` counts the first video stream's packets; ``errors`` holds what the demuxer
    reported (a file cut short, an unreadable packet). Raises :class:`FfmpegError` when the
    file cannot be opened."""
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *LEVEL_TAGS, "-nostats",
           "-progress", "pipe:1", "-stats_period", "5", *input_args(path),
           "-map", "0", "-c", "copy", "-f", "null", "-"]
    code, out, stderr = _exec(cmd, timeout=timeout, what=f"reading the packets of {path}",
                              want_stdout=True)
    _raise_for(code, cmd, stderr)
    text = _untag(stderr)
    if "Input #0" not in text:
        raise FfmpegError(f"cannot read media {path}: {_summary(stderr, 2)}", cmd, text)
    progress = out.decode("utf-8", "replace")
    frames = re.findall(r"^frame=(\d+)", progress, re.M)
    times = re.findall(r"^out_time_us=(\d+)", progress, re.M)
    errors = [_untag(s) for s in _lines(stderr) if _ERROR_LEVEL_RE.search(s)]
    return _parse_header(str(path), text), VideoDecode(
        frames=int(frames[-1]) if frames else 0, errors=errors,
        last_time_s=int(times[-1]) / 1e6 if times else None)


def decoded_audio_seconds(path: str | Path, *, timeout: float) -> tuple[float, list[str]]:
    """Decode the first audio stream of ``path`` to the end (``-f null``): how long it
    plays (the end of its last decoded sample, edit lists applied: AAC priming and padding
    are not counted) and the decode errors. Raises :class:`FfmpegError` when it cannot be
    read at all."""
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *LEVEL_TAGS, "-v", "error",
           "-nostats", "-progress", "pipe:1", "-stats_period", "5", "-threads", "1",
           *input_args(path), "-map", "0:a:0", "-f", "null", "-"]
    code, out, stderr = _exec(cmd, timeout=timeout, what=f"decoding the audio of {path}",
                              want_stdout=True)
    if code != 0:
        raise FfmpegError(f"cannot decode the audio of {path}: {_summary(stderr, 3)}",
                          cmd, _untag(stderr))
    times = re.findall(r"^out_time_us=(\d+)", out.decode("utf-8", "replace"), re.M)
    return (int(times[-1]) / 1e6 if times else 0.0), _error_lines(stderr)


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class ClipProbe:
    """A verified clip: what decoding it found."""

    path: str
    frames: int
    width: int
    height: int
    fps: float
    codec: str
    size_bytes: int
    duration_s: float  # frames / fps

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fps_matches(found: float | None, expected: float) -> bool:
    """ffmpeg prints rates rounded to 2 decimals (23.98 for 24000/1001)."""
    return found is not None and abs(found - expected) <= 0.011


def verify_clip(path: str | Path, *, expected_frames: int, width: int, height: int,
                fps: float, timeout: float, min_bytes: int = MIN_CLIP_BYTES) -> ClipProbe:
    """Check that ``path`` is a whole clip: decode its video stream to the end and compare
    frame count, size and rate; refuse decode errors and a trivially small file.

    One ffmpeg run does it all: the header it prints describes the streams (as :func:`probe`
    reads them), the decode (as :func:`count_video_frames` does it) counts the frames and
    reports errors. ``timeout`` bounds the whole verification. Raises
    :class:`ClipVerificationError` with every problem found.
    """
    p = Path(path)
    deadline = time.monotonic() + _check_timeout(timeout)
    if not p.is_file():
        raise ClipVerificationError(f"clip {p} does not exist", p)
    size = p.stat().st_size
    if size < min_bytes:
        raise ClipVerificationError(
            f"clip {p} is {size} bytes: too small to be a video clip (at least {min_bytes})", p)
    cmd = [ffmpeg_binary(), "-hide_banner", "-nostdin", *LEVEL_TAGS, "-nostats",
           "-progress", "pipe:1", "-stats_period", "5", "-threads", "1",
           "-skip_loop_filter", "all", *input_args(p),
           "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "null", "-"]
    code, out, stderr = _exec(cmd, timeout=_remaining(deadline, p), what=f"verifying {p}",
                              want_stdout=True)
    text = _untag(stderr)
    if "Input #0" in text:
        info = _parse_header(str(p), text)
    elif code != 0:
        raise ClipVerificationError(
            f"clip {p} is not readable media: cannot read media {p}: {_summary(stderr, 2)}",
            p, cmd, text)
    else:  # the header scrolled out of the kept stderr (a flood of errors): read it alone
        info = probe(p, timeout=_remaining(deadline, p))
    video = info.first("video")
    if video is None:
        raise ClipVerificationError(f"clip {p} has no video stream", p)
    if code != 0:
        raise ClipVerificationError(
            f"clip {p}: cannot decode the video of {p}: {_summary(stderr, 3)}", p, cmd, text)
    problems: list[str] = []
    if (video.width, video.height) != (width, height):
        problems.append(f"frame size {video.width}x{video.height}, expected {width}x{height}")
    if not fps_matches(video.fps, fps):
        problems.append(f"frame rate {video.fps}, expected {fps:g}")
    counted = re.findall(r"^frame=(\d+)", out.decode("utf-8", "replace"), re.M)
    frames = int(counted[-1]) if counted else 0
    errors = [_untag(s) for s in _lines(stderr) if _ERROR_LEVEL_RE.search(s)]
    if frames != expected_frames:
        problems.append(f"{frames} video frames decoded, expected {expected_frames}")
    if errors:
        shown = "; ".join(errors[:3])
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        problems.append(f"decode errors: {shown}{more}")
    if problems:
        raise ClipVerificationError(f"clip {p} failed verification: " + "; ".join(problems),
                                    p, stderr="\n".join(errors))
    return ClipProbe(
        path=str(p), frames=frames, width=width, height=height,
        fps=float(video.fps or fps), codec=video.codec, size_bytes=size,
        duration_s=round(frames / fps, 6),
    )


def _remaining(deadline: float, path: Path) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FfmpegTimeout(f"verifying {path} ran out of time", timeout=0.0)
    return left


# --------------------------------------------------------------------------- encoders


def encoders(*, timeout: float = VERSION_TIMEOUT_S) -> list[str]:
    """Names of the video encoders this ffmpeg build offers."""
    cmd = [ffmpeg_binary(), "-hide_banner", "-encoders"]
    code, out, stderr = _exec(cmd, timeout=timeout, what="ffmpeg -encoders", want_stdout=True)
    _raise_for(code, cmd, stderr)
    names = []
    for line in out.decode("utf-8", "replace").splitlines():
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
    ``timeout`` bounds each of the two ffmpeg calls (encoder list, test encode).
    """
    try:
        if NVENC_ENCODER not in encoders(timeout=timeout):
            return False
        args = [
            "-f", "lavfi", "-i", "testsrc2=size=256x144:rate=24",
            "-frames:v", "6", "-c:v", NVENC_ENCODER, "-gpu", str(gpu_index), "-f", "null", "-",
        ]  # fmt: skip
        run(args, timeout=timeout)
    except (FfmpegError, OSError):
        return False
    return True
