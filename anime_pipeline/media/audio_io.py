"""Decoding audio to numpy through ffmpeg (the only ffmpeg runner is :mod:`.ffmpeg`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anime_pipeline.media.ffmpeg import (
    FfmpegError,
    FfmpegTimeout,
    input_args,
    run_stdout,
    stderr_summary,
)

DEFAULT_SAMPLE_RATE = 22050


class AudioDecodeError(FfmpegError):
    """The file could not be decoded as audio; the message names the file and the reason."""


def decode_audio(
    path: str | Path, sample_rate: int = DEFAULT_SAMPLE_RATE, *, timeout: float = 300.0
) -> np.ndarray:
    """Decode any audio ffmpeg reads to a mono float32 array in [-1, 1] at ``sample_rate``.

    The first audio stream is downmixed (``-ac 1``) and resampled (``-ar``). Raises
    :class:`AudioDecodeError` naming the file when it is missing, is not media, or has no
    audio stream; :class:`~anime_pipeline.media.ffmpeg.FfmpegTimeout` after ``timeout``
    seconds. The file is opened with ``-protocol_whitelist file``.
    """
    p = Path(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not p.is_file():
        raise AudioDecodeError(f"cannot decode audio {p}: file not found")
    args = [
        "-v", "error", *input_args(p), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "-ar", str(int(sample_rate)), "-",
    ]  # fmt: skip
    try:
        raw = run_stdout(args, timeout=timeout)
    except FfmpegTimeout:
        raise
    except FfmpegError as e:
        reason = stderr_summary(e.stderr, 2) or str(e)
        if "matches no streams" in e.stderr:
            reason = "no audio stream"
        raise AudioDecodeError(f"cannot decode audio {p}: {reason}", e.cmd, e.stderr) from e
    usable = len(raw) - len(raw) % 4
    samples = np.frombuffer(raw[:usable], dtype="<f4").astype(np.float32, copy=True)
    np.nan_to_num(samples, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(samples, -1.0, 1.0, out=samples)
    return samples
