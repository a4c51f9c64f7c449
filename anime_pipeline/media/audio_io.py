"""Decoding audio to numpy through ffmpeg (the only ffmpeg runner is :mod:`.ffmpeg`).

:func:`stream_audio` is what the pipeline uses: the mix is decoded in bounded pieces read
from ffmpeg's stdout while it runs, so memory does not grow with the mix's length and the
analysis works beside the decoder. :func:`decode_audio` gathers the same pieces into one array
(for short files and tests).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from pathlib import Path

import numpy as np

from anime_pipeline.media.ffmpeg import (
    FfmpegError,
    FfmpegTimeout,
    input_args,
    stderr_summary,
    stream_stdout,
)

DEFAULT_SAMPLE_RATE = 22050
#: Samples per piece :func:`stream_audio` yields (float32: 1 MiB, about 12 s at 22.05 kHz).
CHUNK_SAMPLES = 1 << 18


class AudioDecodeError(FfmpegError):
    """The file could not be decoded as audio; the message names the file and the reason."""


def stream_audio(
    path: str | Path, sample_rate: int = DEFAULT_SAMPLE_RATE, *, timeout: float = 300.0,
    chunk_samples: int = CHUNK_SAMPLES,
) -> Generator[np.ndarray, None, None]:
    """Decode any audio ffmpeg reads to mono float32 pieces in [-1, 1] at ``sample_rate``.

    Yields arrays of ``chunk_samples`` samples (the last one may be shorter) as ffmpeg
    produces them; a few pieces are decoded ahead (:data:`~.ffmpeg.STREAM_PREFETCH`), never
    the whole file. The first audio stream is downmixed (``-ac 1``) and resampled (``-ar``);
    NaN becomes 0 and everything is clipped to [-1, 1]. Raises :class:`AudioDecodeError`
    naming the file when it is missing, is not media, or has no audio stream (after the
    pieces decoded before the failure, if any);
    :class:`~anime_pipeline.media.ffmpeg.FfmpegTimeout` when decoding and consuming take
    longer than ``timeout`` seconds together. Stopping early (``close()``) kills ffmpeg. The
    file is opened with ``-protocol_whitelist file``.
    """
    p = Path(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if chunk_samples <= 0:
        raise ValueError(f"chunk_samples must be positive, got {chunk_samples}")
    if not p.is_file():
        raise AudioDecodeError(f"cannot decode audio {p}: file not found")
    pieces = stream_stdout(decode_args(p, sample_rate), timeout=timeout,
                           chunk_bytes=4 * chunk_samples)
    try:
        for raw in pieces:
            usable = len(raw) - len(raw) % 4  # only the last piece can end inside a sample
            if usable:
                yield _samples(raw, usable)
    except FfmpegTimeout:
        raise
    except FfmpegError as e:
        reason = stderr_summary(e.stderr, 2) or str(e)
        if "matches no streams" in e.stderr:
            reason = "no audio stream"
        raise AudioDecodeError(f"cannot decode audio {p}: {reason}", e.cmd, e.stderr) from e
    finally:
        pieces.close()


def decode_args(path: Path, sample_rate: int) -> list[str]:
    """ffmpeg's arguments for the decode: the first audio stream, mono float32 on stdout."""
    return [
        "-v", "error", *input_args(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "-ar", str(int(sample_rate)), "-",
    ]  # fmt: skip


def _samples(raw: bytes, usable: int) -> np.ndarray:
    out = np.clip(np.frombuffer(raw, dtype="<f4", count=usable // 4), -1.0, 1.0)
    if math.isnan(float(out.sum())):  # rare: one pass to find out, a second to fix
        np.nan_to_num(out, copy=False, nan=0.0)
    return out.astype(np.float32, copy=False)


def decode_audio(
    path: str | Path, sample_rate: int = DEFAULT_SAMPLE_RATE, *, timeout: float = 300.0
) -> np.ndarray:
    """The whole of :func:`stream_audio` as one mono float32 array (short files, tests)."""
    pieces = list(stream_audio(path, sample_rate, timeout=timeout))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
