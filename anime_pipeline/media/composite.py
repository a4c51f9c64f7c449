"""The episode composite: the clips in order, the mix, the subtitles, verified.

:func:`compose` concatenates the clips with the concat demuxer -- a stream copy
(``-c:v copy``) when their headers say they can be joined (:func:`concat_compatibility`:
one codec, size, time base, frame rate and aspect; see :mod:`anime_pipeline.media.mp4`),
a software re-encode when subtitles are burned in or the clips differ -- muxes the mix, adds
the SRT as a ``mov_text`` track, and then checks the result: exactly the episode's frame
count at the delivery size and rate, an AAC track exactly the episode's length, and the
subtitle track when one was asked for.

The mix is encoded once per episode (:func:`encode_mix`: AAC in an ``.m4a``, padded and cut
to the episode, its priming hidden by an edit list) and then *copied* into every composite
(``audio_encoded=True``), so a composite of stream-copied clips is a pure stream copy.

Verification decodes the composite's video stream in full, except when nothing was encoded
and the caller vouches that the clips are the very files that were decode-verified when they
were rendered (``clips_verified=True``, checked by sha256) and their codec configurations
are byte-identical: the composite's video packets are then those clips' own bytes
(``-auto_convert 0``), under the same configuration, each clip starting on its IDR picture, so
decoding it would decode exactly what was decoded already. Every packet of every stream is
read to the end instead (a stream copy to ``-f null``), which finds a cut-short or unreadable
file and counts the frames exactly (one packet per frame: no B-frames), at a twentieth of the
cost of a decode.

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
from anime_pipeline.media import mp4
from anime_pipeline.media.render import ENCODER_ARGS, Delivery, codec_args

AUDIO_CODEC = "aac"
AUDIO_BITRATE = "192k"
AUDIO_SAMPLE_RATE = 48000
SUBTITLE_CODEC = "mov_text"
AAC_FRAME = 1024  # samples per AAC frame: how far an AAC track's length may round
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
    audio_copied: bool = False  # the mix was encoded beforehand (encode_mix) and copied
    verified_by: str = "decode"  # "decode": the video decoded in full; "packets": read
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


# --------------------------------------------------------------------------- the mix


@dataclass(frozen=True)
class MixResult:
    """The episode's mix encoded for the composite, as verifying it found."""

    path: Path
    duration_s: float  # decoded to the end
    size_bytes: int
    seconds: float = 0.0


def encode_mix(audio: Path, out: Path, *, duration_ms: int, timeout: float) -> MixResult:
    """Encode the episode's mix ``audio`` to ``out`` (an ``.m4a``) as every composite carries
    it: AAC at 48 kHz, padded with silence and cut to exactly ``duration_ms``.

    The MP4's edit list hides the encoder's priming, so a stream copy of it starts on the
    episode's first picture, sample for sample. Verified by decoding it to the end: it must
    play exactly the episode's length. ``out`` is removed when anything fails.
    """
    t0 = time.perf_counter()
    if duration_ms <= 0:
        raise ValueError(f"duration_ms must be positive, got {duration_ms}")
    if not Path(audio).is_file():
        raise FileNotFoundError(f"cannot encode the mix: missing audio {audio}")
    seconds = f"{duration_ms / 1000:.3f}"
    args = [*ff.input_args(audio), "-map", "0:a:0",
            "-af", f"apad,atrim=0:{seconds}", "-c:a", AUDIO_CODEC, "-b:a", AUDIO_BITRATE,
            "-ar", str(AUDIO_SAMPLE_RATE), "-t", seconds, "-f", "mp4", ff.media_url(out)]
    try:
        ff.run(args, timeout=timeout)
        decoded = verify_mix(out, duration_ms=duration_ms, timeout=timeout)
    except BaseException:
        Path(out).unlink(missing_ok=True)
        raise
    return MixResult(path=Path(out), duration_s=decoded, size_bytes=Path(out).stat().st_size,
                     seconds=round(time.perf_counter() - t0, 3))


def verify_mix(path: Path, *, duration_ms: int, timeout: float) -> float:
    """Check that ``path`` is the mix as :func:`encode_mix` makes it (one AAC track at
    48 kHz that decodes without error to exactly ``duration_ms``); its decoded length."""
    expected = duration_ms / 1000
    try:
        movie = mp4.read_movie(path)
        decoded, errors = ff.decoded_audio_seconds(path, timeout=timeout)
    except ff.FfmpegTimeout:
        raise
    except (ff.FfmpegError, mp4.Mp4Error, OSError) as e:
        raise CompositeVerificationError(f"encoded mix {path} is not readable: {e}",
                                         path) from e
    problems = []
    tracks = [(t.kind, t.codec, t.timescale) for t in movie.tracks]
    if tracks != [("audio", "mp4a", AUDIO_SAMPLE_RATE)]:
        problems.append(f"tracks {tracks}, expected one AAC (mp4a) track at "
                        f"{AUDIO_SAMPLE_RATE} Hz")
    if abs(decoded - expected) > 0.001:
        problems.append(f"decodes to {decoded:.6f} s, expected {expected:.3f} s")
    if errors:
        problems.append("decode errors: " + "; ".join(errors[:3]))
    if problems:
        raise CompositeVerificationError(
            f"encoded mix {path} failed verification: " + "; ".join(problems), path)
    return decoded


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


def read_clip_headers(clips: Sequence[Path]) -> list[mp4.Movie]:
    """Every clip's MP4 header (:func:`anime_pipeline.media.mp4.read_movie`); a clip that
    is not a whole MP4 with a video track raises :class:`CompositeError` naming it."""
    movies = []
    for clip in clips:
        try:
            movie = mp4.read_movie(clip)
        except (mp4.Mp4Error, OSError) as e:
            raise CompositeError(f"cannot read the clip {clip}: {e}") from e
        if movie.first("video") is None:
            raise CompositeError(f"the clip {clip} has no video track")
        movies.append(movie)
    return movies


def concat_compatibility(movies: Sequence[mp4.Movie], delivery: Delivery,
                         ) -> tuple[str | None, bool]:
    """Whether clips with these headers can be joined by a stream copy.

    ``(None, identical)`` when they can: one codec, the delivery size and frame rate (a
    constant one, give or take a tick of rounding), one time base and one sample aspect;
    ``identical`` says whether their codec configuration records (SPS/PPS) are also byte for
    byte the same -- the concat demuxer repeats each clip's parameter sets in band, so a
    copy is still correct when they differ, but only a decode then proves it plays.
    ``(reason, False)`` when the video must be re-encoded.
    """
    first: mp4.Track | None = None
    first_name = ""
    identical = True
    for movie in movies:
        name = Path(movie.path).name
        v = movie.first("video")
        if v is None:
            return f"{name} has no video track", False
        if (v.width, v.height) != (delivery.width, delivery.height):
            return (f"{name} is {v.width}x{v.height}, the episode "
                    f"{delivery.width}x{delivery.height}"), False
        low, high = v.delta_range
        if not ff.fps_matches(v.fps, delivery.fps) or high - low > 1:
            return f"{name} is not at a constant {delivery.fps:g} fps", False
        if first is None:
            first, first_name = v, name
            continue
        for what, ours, theirs in (
            ("codec", first.codec, v.codec),
            ("time base", f"1/{first.timescale}", f"1/{v.timescale}"),
            ("sample aspect ratio", first.sar or (1, 1), v.sar or (1, 1)),
        ):
            if ours != theirs:
                return f"{name} differs from {first_name} in its {what} ({theirs} vs {ours})", False
        identical = identical and v.config == first.config
    return None, identical and first is not None and bool(first.config)


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


def _concat_input(list_file: Path, *, as_is: bool = False) -> list[str]:
    """The concat demuxer over ``list_file``. ``as_is``: the clips' codec configurations are
    byte-identical, so their packets pass unchanged (``-auto_convert 0``: no parameter sets
    repeated in band, no Annex B round trip) -- the composite's video packets are then the
    clips' own bytes."""
    return ["-f", "concat", "-safe", "0", *(["-auto_convert", "0"] if as_is else []),
            *ff.input_args(list_file)]


def _composite_args(
    list_file: Path, audio: Path, srt: Path | None, out: Path, *, duration_ms: int,
    delivery: Delivery, frames: int, burn_in_ass: Path | None, subtitle_language: str,
    title: str, copy: bool, hold_frames: int, audio_copy: bool, as_is: bool = False,
) -> list[str]:
    seconds = f"{duration_ms / 1000:.3f}"
    args = [*_concat_input(list_file, as_is=copy and as_is), *ff.input_args(audio)]
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
        # Every decoded picture is the episode's next frame: timestamps made from the frame
        # number, not taken from the concat demuxer (which does not rescale a clip written
        # with another time base, and would stack its frames on one instant).
        rate = delivery.rate
        filters = [f"setpts=N*{rate.denominator}/({rate.numerator}*TB)"]
        if burn_in_ass is not None:
            filters.append(f"ass=filename={filter_path(burn_in_ass.absolute())}")
        if hold_frames > 0:  # clips a frame or two short (shot rounding): hold the last one
            filters.append(f"tpad=stop_mode=clone:stop={hold_frames}")
        args += ["-vf", ",".join(filters)]
        for key, value in codec_args(SOFTWARE_ENCODER).items():
            if key != "movflags":
                args += [f"-{key}", str(value)]
        args += ["-r", str(delivery.rate)]
    args += ["-frames:v", str(frames)]
    if audio_copy:  # encode_mix made it: AAC, exactly the episode's length already
        args += ["-c:a", "copy"]
    else:  # pad with silence then cut, so the mix matches the episode exactly
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
    audio_encoded: bool = False, clips_verified: bool = False,
) -> ComposeResult:
    """Make the episode MP4 ``out`` from ``clips`` (in order) and the mix ``audio``.

    The video is stream-copied unless ``burn_in_ass`` (subtitles drawn on the picture),
    ``reencode`` (clips made by different encoders) or the clips' headers
    (:func:`concat_compatibility`) ask for a software re-encode. Clips a frame or two short
    of the episode (each shot's frame count is rounded on its own) are extended by a tiny
    clip holding the last frame, encoded like them, so the copy stays a copy (a re-encode
    holds the frame when that clip cannot be made); surplus frames are cut (``-frames:v``).
    ``srt`` becomes a ``mov_text`` track tagged ``subtitle_language``.

    ``audio_encoded``: ``audio`` is the mix as :func:`encode_mix` made it for this episode,
    and is copied; otherwise it is encoded here (padded and cut to the episode).
    ``clips_verified``: the caller vouches that ``clips`` are the files that were decoded in
    full when rendered; a pure stream copy is then verified by reading every packet rather
    than decoding (see :func:`verify_composite`). ``timeout`` (see
    :func:`~anime_pipeline.media.ffmpeg.timeout_for`) bounds each ffmpeg pass.

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
    headers = read_clip_headers([Path(c) for c in clips])
    # one sample per frame: the renderer writes no B-frames, and the header was checked
    # against the decode when each clip was verified
    source_frames = sum(video.samples for m in headers if (video := m.first("video")))
    shortfall = expected - source_frames
    rounding = (len(clips) + 1) // 2  # each clip's count is its own length rounded
    if shortfall > rounding:
        raise CompositeError(
            f"the {len(clips)} clips hold {source_frames} video frames, the episode needs "
            f"{expected} ({duration_ms / 1000:.3f} s at {delivery.fps:g} fps): "
            f"{shortfall} missing"
        )
    reason = None
    identical = False
    if burn_in_ass is not None:
        reason = "subtitles burned in"
    elif reencode:
        reason = "clips made with different encoders"
    else:
        incompatible, identical = concat_compatibility(headers, delivery)
        if incompatible:
            reason = f"clips cannot be stream-copied together: {incompatible}"
    hold = max(0, shortfall)
    if hold and reason is None:
        # Keep the stream copy: a tiny clip holding the last frame, made with the clips'
        # own encoder settings, goes at the end of the list.
        try:
            extra = _hold_clip(Path(clips[-1]), work_dir / "hold.mp4", frames=hold,
                               delivery=delivery, timeout=timeout)
            if clips_verified:  # it joins verified clips: decode it too (a frame or two)
                ff.verify_clip(extra, expected_frames=hold, width=delivery.width,
                               height=delivery.height, fps=delivery.fps, timeout=timeout)
            incompatible, same = concat_compatibility([*headers, mp4.read_movie(extra)],
                                                      delivery)
            if incompatible:
                raise ValueError(incompatible)
        except ff.FfmpegTimeout:
            raise
        except (ff.FfmpegError, ValueError) as e:
            reason = f"clips {hold} frame(s) short of the episode: last frame held ({e})"
        else:
            concat_list([*clips, extra], list_file)
            identical = identical and same
            hold = 0
    copy = reason is None
    decode = not (copy and clips_verified and identical)
    args = _composite_args(
        list_file, Path(audio), srt, out, duration_ms=duration_ms, delivery=delivery,
        frames=expected, burn_in_ass=burn_in_ass, subtitle_language=subtitle_language,
        title=title, copy=copy, hold_frames=hold, audio_copy=audio_encoded, as_is=identical,
    )
    try:
        ff.run(args, timeout=timeout)
        info = verify_composite(out, duration_ms=duration_ms, delivery=delivery,
                                subtitles=srt is not None, subtitle_language=subtitle_language,
                                timeout=timeout, decode=decode)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    frames = info.video_frames or 0
    return ComposeResult(
        path=out, video_frames=frames, expected_frames=expected, duration_s=info.duration_s,
        video_duration_s=round(frames / float(delivery.rate), 6),
        width=delivery.width, height=delivery.height, fps=delivery.fps, streams=info.streams,
        video_copied=copy, reencode_reason=reason, audio_copied=audio_encoded,
        verified_by="decode" if decode else "packets", size_bytes=out.stat().st_size,
        seconds=round(time.perf_counter() - t0, 3),
    )


def verify_composite(path: Path, *, duration_ms: int, delivery: Delivery,
                     subtitles: bool = False, subtitle_language: str = "und",
                     timeout: float, decode: bool = True) -> ff.MediaInfo:
    """Check that ``path`` is the episode: its video stream holds exactly
    ``delivery.frames_for(duration_ms)`` frames at the delivery size and rate with no error
    reading it, an AAC track at 48 kHz that plays the episode's length (within one AAC
    frame), one ``mov_text`` track tagged ``subtitle_language`` when ``subtitles`` (none
    otherwise), and the episode's length.

    ``decode``: the video stream is decoded to the end (the frames counted are decoded
    pictures). Without it every packet of every stream is read to the end without decoding
    -- for a pure stream copy of clips that were themselves decoded in full: the packets
    are theirs, one per frame.

    Returns the probe with ``video_frames`` counted; raises
    :class:`CompositeVerificationError` listing every problem. ``timeout`` bounds each
    ffmpeg call (header and decode; or the one read).
    """
    out = Path(path)
    expected = delivery.frames_for(duration_ms)
    language = subtitle_language
    size = out.stat().st_size if out.is_file() else 0
    if size < ff.MIN_CLIP_BYTES:
        raise CompositeVerificationError(f"composite {out} is {size} bytes", out)
    try:
        if decode:
            info = ff.probe(out, timeout=timeout)
            decoded = ff.count_video_frames(out, timeout=timeout)
        else:  # the header and every packet, in one run
            info, decoded = ff.read_packets(out, timeout=timeout)
        movie = mp4.read_movie(out)
    except ff.FfmpegTimeout:
        raise
    except ff.FfmpegError as e:
        raise CompositeVerificationError(f"composite {out} is not readable: {e}", out, e.cmd,
                                         e.stderr) from e
    except (mp4.Mp4Error, OSError) as e:
        raise CompositeVerificationError(f"composite {out} is not a whole MP4: {e}",
                                         out) from e
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
        problems.append(("decode" if decode else "read") + " errors: "
                        + "; ".join(decoded.errors[:3]))
    audio = info.first("audio")
    if audio is None:
        problems.append("no audio stream")
    elif audio.codec != AUDIO_CODEC or audio.sample_rate != AUDIO_SAMPLE_RATE:
        problems.append(f"audio is {audio.codec} at {audio.sample_rate} Hz, expected "
                        f"{AUDIO_CODEC} at {AUDIO_SAMPLE_RATE} Hz")
    else:
        track = movie.first("audio")
        plays = track.presented_s if track is not None else 0.0
        if abs(plays - duration_ms / 1000) > AAC_FRAME / AUDIO_SAMPLE_RATE + 0.001:
            problems.append(f"its audio plays {plays:.3f} s, expected "
                            f"{duration_ms / 1000:.3f} s")
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
