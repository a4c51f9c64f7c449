"""The episode composite: the clips in order, the mix, the subtitles, verified.

:func:`compose` concatenates the clips with the concat demuxer -- a stream copy
(``-c:v copy``) when they share one codec configuration, a software re-encode when subtitles
are burned in or the clips came from different encoders -- muxes the mix padded with silence
and cut to the episode, adds the SRT as a ``mov_text`` track, and then checks the result by
decoding its video stream: exactly the episode's frame count at the delivery size and rate,
an AAC track, and the subtitle track when one was asked for.

Every input is opened with ``-protocol_whitelist file``: a concat list can name only local
files.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from anime_pipeline.domain.contracts import SOFTWARE_ENCODER
from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media.render import ENCODER_ARGS, Delivery, codec_args

AUDIO_CODEC = "aac"
AUDIO_BITRATE = "192k"
AUDIO_SAMPLE_RATE = 48000
SUBTITLE_CODEC = "mov_text"
LIST_NAME = "concat.txt"


class CompositeError(ff.FfmpegError):
    """The clips cannot make the episode (unreadable, or far fewer frames than it needs)."""


class CompositeVerificationError(ff.ClipVerificationError):
    """The composite ffmpeg wrote is not the episode (frames, size, rate or streams)."""


@dataclass(frozen=True)
class ComposeResult:
    """What verifying the composite found."""

    path: Path
    video_frames: int  # decoded from the video stream
    expected_frames: int
    duration_s: float | None  # the container's duration
    video_duration_s: float  # video_frames / fps
    width: int
    height: int
    fps: float
    streams: list[ff.StreamInfo] = field(default_factory=list)
    video_copied: bool = True
    reencode_reason: str | None = None
    size_bytes: int = 0
    seconds: float = 0.0

    @property
    def audio(self) -> ff.StreamInfo | None:
        return next((s for s in self.streams if s.kind == "audio"), None)

    @property
    def subtitles(self) -> ff.StreamInfo | None:
        return next((s for s in self.streams if s.kind == "subtitle"), None)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# --------------------------------------------------------------------------- inputs


def concat_list(clips: Sequence[Path], list_file: Path) -> None:
    """Write a concat-demuxer list of ``clips`` that reads every name literally.

    Absolute paths in single quotes (a quote becomes ``'\\''``); a name holding a line break,
    which the line-based list cannot carry, is reached through a symlink beside the list.
    """
    lines = []
    for i, clip in enumerate(clips):
        target = str(Path(clip).resolve())
        if "\n" in target or "\r" in target:
            link = list_file.parent / f"concat_{i:05d}.mp4"
            link.unlink(missing_ok=True)
            link.symlink_to(target)
            target = link.name  # relative to the list, so the list's own folder may be odd
        escaped = target.replace("'", "'\\''")
        lines.append(f"file '{escaped}'")
    list_file.write_text("\n".join(lines) + "\n", encoding="utf-8")


def filter_path(path: Path | str) -> str:
    """``path`` escaped as a filter option value inside a filtergraph (both levels)."""
    value = str(path)
    for ch in "\\':":  # option level
        value = value.replace(ch, "\\" + ch)
    out = []
    for ch in value:  # graph level
        out.append("\\" + ch if ch in "\\'[],;" else ch)
    return "".join(out)


def _hold_clip(last: Path, out: Path, *, frames: int, delivery: Delivery,
               timeout: float) -> Path:
    """``frames`` frames of ``last``'s final picture, encoded like ``last`` (same encoder,
    same settings, delivery size and rate), to extend a stream copy by a frame or two."""
    info = ff.probe(last, timeout=timeout)
    video = info.first("video")
    encoder = video.encoder if video else None
    if encoder not in ENCODER_ARGS:
        raise ValueError(f"{last.name} was made by encoder {encoder!r}, not one of ours")
    still = out.with_suffix(".png")
    ff.run(["-sseof", "-1", *ff.input_args(last), "-map", "0:v:0", "-update", "1",
            "-f", "image2", "-c:v", "png", ff.media_url(still)], timeout=timeout)
    args = ["-loop", "1", "-framerate", str(delivery.rate), *ff.input_args(still),
            "-vf", f"scale={delivery.width}:{delivery.height},setsar=1,format=yuv420p",
            "-frames:v", str(frames), "-an"]
    for key, value in codec_args(encoder).items():
        args += [f"-{key}", str(value)]
    ff.run([*args, "-r", str(delivery.rate), "-f", "mp4", ff.media_url(out)], timeout=timeout)
    still.unlink(missing_ok=True)
    return out


def _concat_input(list_file: Path) -> list[str]:
    return ["-f", "concat", "-safe", "0", *ff.input_args(list_file)]


def _composite_args(
    list_file: Path, audio: Path, srt: Path | None, out: Path, *, duration_ms: int,
    delivery: Delivery, frames: int, burn_in_ass: Path | None, subtitle_language: str,
    title: str, copy: bool, hold_frames: int,
) -> list[str]:
    seconds = f"{duration_ms / 1000:.3f}"
    args = [*_concat_input(list_file), *ff.input_args(audio)]
    if srt is not None:
        args += ["-f", "srt", *ff.input_args(srt)]
    args += ["-map", "0:v:0", "-map", "1:a:0"]
    if srt is not None:
        args += ["-map", "2:s:0", "-c:s", SUBTITLE_CODEC,
                 "-metadata:s:s:0", f"language={subtitle_language}",
                 "-metadata:s:s:0", "title=Dialogue"]
    if copy:
        args += ["-c:v", "copy"]
    else:
        filters = []
        if burn_in_ass is not None:
            filters.append(f"ass=filename={filter_path(burn_in_ass.absolute())}")
        if hold_frames > 0:  # clips a frame or two short (shot rounding): hold the last one
            filters.append(f"tpad=stop_mode=clone:stop={hold_frames}")
        if filters:
            args += ["-vf", ",".join(filters)]
        for key, value in codec_args(SOFTWARE_ENCODER).items():
            if key != "movflags":
                args += [f"-{key}", str(value)]
        args += ["-r", str(delivery.rate)]
    args += ["-frames:v", str(frames)]
    # Audio: pad with silence then cut, so the mix matches the episode exactly.
    args += ["-af", f"apad,atrim=0:{seconds}", "-c:a", AUDIO_CODEC, "-b:a", AUDIO_BITRATE,
             "-ar", str(AUDIO_SAMPLE_RATE)]
    args += ["-t", seconds, "-metadata", f"title={title}", "-movflags", "+faststart",
             "-f", "mp4", ff.media_url(out)]
    return args


# --------------------------------------------------------------------------- compose


def compose(
    clips: Sequence[Path], audio: Path, out: Path, *, work_dir: Path, duration_ms: int,
    delivery: Delivery, srt: Path | None = None, burn_in_ass: Path | None = None,
    subtitle_language: str = "und", title: str = "", reencode: bool = False, timeout: float,
) -> ComposeResult:
    """Make the episode MP4 ``out`` from ``clips`` (in order) and the mix ``audio``.

    The video is stream-copied unless ``burn_in_ass`` (subtitles drawn on the picture) or
    ``reencode`` (clips made by different encoders) asks for a software re-encode. Clips a
    frame or two short of the episode (each shot's frame count is rounded on its own) are
    extended by a tiny clip holding the last frame, encoded like them, so the copy stays a
    copy (a re-encode holds the frame when that clip cannot be made); surplus frames are cut
    (``-frames:v``). ``srt`` becomes a ``mov_text`` track tagged
    ``subtitle_language``. ``timeout`` (see :func:`~anime_pipeline.media.ffmpeg.timeout_for`)
    bounds each ffmpeg pass: counting the clips' frames, composing, verifying.

    Raises :class:`CompositeError` when the clips cannot make the episode,
    :class:`CompositeVerificationError` when the output is not it (then ``out`` is removed),
    :class:`~anime_pipeline.media.ffmpeg.DiskFullError`,
    :class:`~anime_pipeline.media.ffmpeg.FfmpegTimeout` or ``FfmpegError``.
    """
    t0 = time.perf_counter()
    if not clips:
        raise ValueError("compose needs at least one clip")
    if duration_ms <= 0:
        raise ValueError(f"duration_ms must be positive, got {duration_ms}")
    named = [("clip", Path(c)) for c in clips] + [("audio", Path(audio))]
    named += [(kind, p) for kind, p in (("subtitles", srt), ("burn-in subtitles", burn_in_ass))
              if p is not None]
    missing = [f"{kind} {p}" for kind, p in named if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot compose {out}: missing {', '.join(missing[:5])}")
    list_file = work_dir / LIST_NAME
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        concat_list(clips, list_file)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ff.disk_full(list_file, e) from e
        raise

    expected = delivery.frames_for(duration_ms)
    source = ff.count_packets(_concat_input(list_file), timeout=timeout)
    if source.errors:
        raise CompositeError(f"cannot read the clips of {out}: " + "; ".join(source.errors[:3]),
                             stderr="\n".join(source.errors))
    shortfall = expected - source.frames
    rounding = (len(clips) + 1) // 2  # each clip's count is its own length rounded
    if shortfall > rounding:
        raise CompositeError(
            f"the {len(clips)} clips hold {source.frames} video frames, the episode needs "
            f"{expected} ({duration_ms / 1000:.3f} s at {delivery.fps:g} fps): "
            f"{shortfall} missing"
        )
    reason = None
    if burn_in_ass is not None:
        reason = "subtitles burned in"
    elif reencode:
        reason = "clips made with different encoders"
    hold = max(0, shortfall)
    if hold and reason is None:
        # Keep the stream copy: a tiny clip holding the last frame, made with the clips'
        # own encoder settings, goes at the end of the list.
        try:
            extra = _hold_clip(Path(clips[-1]), work_dir / "hold.mp4", frames=hold,
                               delivery=delivery, timeout=timeout)
        except ff.FfmpegTimeout:
            raise
        except (ff.FfmpegError, ValueError) as e:
            reason = f"clips {hold} frame(s) short of the episode: last frame held ({e})"
        else:
            concat_list([*clips, extra], list_file)
            hold = 0
    args = _composite_args(
        list_file, Path(audio), srt, out, duration_ms=duration_ms, delivery=delivery,
        frames=expected, burn_in_ass=burn_in_ass, subtitle_language=subtitle_language,
        title=title, copy=reason is None, hold_frames=hold,
    )
    try:
        ff.run(args, timeout=timeout)
        info = verify_composite(out, duration_ms=duration_ms, delivery=delivery,
                                subtitles=srt is not None, subtitle_language=subtitle_language,
                                timeout=timeout)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    frames = info.video_frames or 0
    return ComposeResult(
        path=out, video_frames=frames, expected_frames=expected, duration_s=info.duration_s,
        video_duration_s=round(frames / float(delivery.rate), 6),
        width=delivery.width, height=delivery.height, fps=delivery.fps, streams=info.streams,
        video_copied=reason is None, reencode_reason=reason, size_bytes=out.stat().st_size,
        seconds=round(time.perf_counter() - t0, 3),
    )


def verify_composite(path: Path, *, duration_ms: int, delivery: Delivery,
                     subtitles: bool = False, subtitle_language: str = "und",
                     timeout: float) -> ff.MediaInfo:
    """Check that ``path`` is the episode: its video stream decoded to the end holds exactly
    ``delivery.frames_for(duration_ms)`` frames at the delivery size and rate with no decode
    error, an AAC track at 48 kHz, one ``mov_text`` track tagged ``subtitle_language`` when
    ``subtitles`` (none otherwise), and the episode's length.

    Returns the probe with ``video_frames`` decoded; raises
    :class:`CompositeVerificationError` listing every problem. ``timeout`` bounds each of
    the two ffmpeg calls (header, decode).
    """
    out = Path(path)
    expected = delivery.frames_for(duration_ms)
    language = subtitle_language
    size = out.stat().st_size if out.is_file() else 0
    if size < ff.MIN_CLIP_BYTES:
        raise CompositeVerificationError(f"composite {out} is {size} bytes", out)
    try:
        info = ff.probe(out, timeout=timeout)
        decoded = ff.count_video_frames(out, timeout=timeout)
    except ff.FfmpegTimeout:
        raise
    except ff.FfmpegError as e:
        raise CompositeVerificationError(f"composite {out} is not readable: {e}", out, e.cmd,
                                         e.stderr) from e
    problems = []
    video = info.first("video")
    if video is None:
        problems.append("no video stream")
    else:
        if (video.width, video.height) != (delivery.width, delivery.height):
            problems.append(f"frame size {video.width}x{video.height}, expected "
                            f"{delivery.width}x{delivery.height}")
        if not ff.fps_matches(video.fps, delivery.fps):
            problems.append(f"frame rate {video.fps}, expected {delivery.fps:g}")
    rate = float(delivery.rate)
    if decoded.frames != expected:
        problems.append(
            f"its video stream has {decoded.frames} frames ({decoded.frames / rate:.3f} s), "
            f"expected {expected} ({duration_ms / 1000:.3f} s)"
            + (f" although the container lasts {info.duration_s:.3f} s"
               if info.duration_s else ""))
    if decoded.errors:
        problems.append("decode errors: " + "; ".join(decoded.errors[:3]))
    audio = info.first("audio")
    if audio is None:
        problems.append("no audio stream")
    elif audio.codec != AUDIO_CODEC or audio.sample_rate != AUDIO_SAMPLE_RATE:
        problems.append(f"audio is {audio.codec} at {audio.sample_rate} Hz, expected "
                        f"{AUDIO_CODEC} at {AUDIO_SAMPLE_RATE} Hz")
    subs = info.of_kind("subtitle")
    if not subtitles and subs:
        problems.append(f"{len(subs)} subtitle stream(s), expected none")
    elif subtitles:
        if len(subs) != 1 or subs[0].codec != SUBTITLE_CODEC:
            problems.append(f"subtitle streams {[s.codec for s in subs]}, expected one "
                            f"{SUBTITLE_CODEC}")
        elif language not in ("", "und") and subs[0].language != language:
            problems.append(f"subtitle language {subs[0].language}, expected {language}")
    if info.duration_s is None or abs(info.duration_s - duration_ms / 1000) > 1 / rate + 0.05:
        problems.append(f"lasts {info.duration_s} s, expected {duration_ms / 1000:.3f} s")
    if problems:
        raise CompositeVerificationError(
            f"composite {out} failed verification: " + "; ".join(problems), out,
            stderr="\n".join(decoded.errors))
    info.video_frames = decoded.frames
    return info
