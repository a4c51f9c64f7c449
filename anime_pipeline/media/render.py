"""Every ffmpeg command the renderer issues for a shot, built with ffmpeg-python.

Each clip is rendered at its *generation* rate and size (the plan's target fps and
resolution tier) and conformed in the same encode to the episode's *delivery* format
(size, fps, codec settings). All clips therefore share one codec configuration, and the
composite (:mod:`anime_pipeline.media.composite`) is a stream copy through the concat
demuxer instead of a re-encode.

Inputs are opened with a protocol whitelist (:func:`anime_pipeline.media.ffmpeg.input_options`):
a keyframe only through ``file``, a source through ``file,crypto`` when local and
``http,https,tls,tcp,crypto`` when remote.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg  # ffmpeg-python

from anime_pipeline.domain.contracts import NVENC_ENCODER, SOFTWARE_ENCODER
from anime_pipeline.media import ffmpeg as ff

_COMMON = {"pix_fmt": "yuv420p", "profile:v": "high",
           "bf": 0,  # no B-frames: no edit lists, exact durations, clean concat
           "video_track_timescale": 90000, "movflags": "+faststart"}
# One codec configuration per encoder (the names are domain.contracts.ENCODERS) for every
# delivered clip (a concat `-c copy` needs identical streams; the composite re-encodes in
# software when an episode's clips used different ones).
ENCODER_ARGS: dict[str, dict[str, object]] = {
    SOFTWARE_ENCODER: {"c:v": SOFTWARE_ENCODER, "preset": "veryfast", "crf": 20, **_COMMON},
    NVENC_ENCODER: {"c:v": NVENC_ENCODER, "preset": "p4", "rc": "vbr", "cq": 21, "b:v": 0,
                    **_COMMON},
}


def codec_args(encoder: str) -> dict[str, object]:
    try:
        return ENCODER_ARGS[encoder]
    except KeyError:
        raise ValueError(f"unsupported encoder {encoder!r}; one of {list(ENCODER_ARGS)}") from None


THUMB_WIDTH = 320


@dataclass(frozen=True)
class Delivery:
    """The episode's delivery format."""

    width: int
    height: int
    fps: float

    @property
    def rate(self) -> Fraction:
        return fps_fraction(self.fps)

    def frames_for(self, duration_ms: int) -> int:
        return max(1, round(Fraction(duration_ms, 1000) * self.rate))


@dataclass(frozen=True)
class Generation:
    """The rate and size a backend generates at (from the compute plan)."""

    width: int
    height: int
    fps: float


def fps_fraction(fps: float) -> Fraction:
    """24 -> 24/1, 23.976 -> 24000/1001, 29.97 -> 30000/1001."""
    for base in (24, 30, 60, 120):
        ntsc = Fraction(base * 1000, 1001)
        if abs(float(ntsc) - fps) < 0.005:
            return ntsc
    return Fraction(fps).limit_denominator(1000)


def _compile(stream: ffmpeg.nodes.OutputStream) -> list[str]:
    # ffmpeg-python builds the argument list; ff.run supplies the binary and -y/-nostdin.
    return list(ffmpeg.get_args(stream))


def conform(video: ffmpeg.nodes.FilterableStream, delivery: Delivery, frames: int):
    """Generation-rate stream -> delivery fps and size, exactly ``frames`` frames."""
    return (
        video.filter("fps", fps=str(delivery.rate))
        .filter("scale", delivery.width, delivery.height, flags="bicubic")
        .filter("setsar", "1")
        # hold the last frame if the source runs short; -frames:v cuts the surplus
        .filter("tpad", stop_mode="clone", stop=frames)
        .filter("format", "yuv420p")
    )


def encode_args(video, out: Path, delivery: Delivery, frames: int,
            thumbnail: Path | None = None, encoder: str = SOFTWARE_ENCODER) -> list[str]:
    """Encode to ``out``; with ``thumbnail``, also write the middle frame as a small JPEG
    from the same decode (a second output, no second ffmpeg run)."""
    if thumbnail is None:
        return _compile(ffmpeg.output(
            video, str(out), r=str(delivery.rate), **{"frames:v": frames}, an=None, f="mp4",
            **codec_args(encoder),
        ))
    split = video.split()
    main, side = split[0], split[1]
    thumb = (side.filter("select", f"eq(n,{frames // 2})")
             .filter("scale", THUMB_WIDTH, -2))
    return _compile(ffmpeg.merge_outputs(
        ffmpeg.output(main, str(out), r=str(delivery.rate), **{"frames:v": frames}, an=None,
                      f="mp4", **codec_args(encoder)),
        ffmpeg.output(thumb, str(thumbnail), vframes=1, f="image2", c="mjpeg", q=5),
    ))


# --------------------------------------------------------------------------- camera moves


def _camera_expressions(move: str, strength: float, n: int, gen: Generation) -> dict[str, str]:
    """zoompan z/x/y expressions for a camera move over ``n`` generated frames.

    ``on`` is the output frame number; progress p goes 0 -> 1 across the shot.
    """
    s = max(0.0, min(1.0, strength))
    p = f"(on/{max(1, n - 1)})"
    zoom = 1 + 0.35 * s  # how far a push/pull travels
    margin = 1 + 0.25 * s  # zoom used for pans/tilts/shake so there is room to move
    cx, cy = "(iw/2-(iw/zoom/2))", "(ih/2-(ih/zoom/2))"
    if move == "push_in":
        return {"z": f"1+{zoom - 1:.4f}*{p}", "x": cx, "y": cy}
    if move == "pull_out":
        return {"z": f"{zoom:.4f}-{zoom - 1:.4f}*{p}", "x": cx, "y": cy}
    if move in ("pan_left", "pan_right"):
        travel = f"(iw-iw/zoom)*{p}" if move == "pan_right" else f"(iw-iw/zoom)*(1-{p})"
        return {"z": f"{margin:.4f}", "x": travel, "y": cy}
    if move in ("tilt_up", "tilt_down"):
        travel = f"(ih-ih/zoom)*{p}" if move == "tilt_down" else f"(ih-ih/zoom)*(1-{p})"
        return {"z": f"{margin:.4f}", "x": cx, "y": travel}
    if move == "shake":
        amp = 0.5  # fraction of the free margin used by the shake
        return {
            "z": f"{margin:.4f}",
            "x": f"{cx}*(1+{amp}*sin(on*2.1)*cos(on*0.7))",
            "y": f"{cy}*(1+{amp}*sin(on*1.7+1))",
        }
    return {"z": "1", "x": cx, "y": cy}


def animatic_args(
    keyframe: Path, out: Path, *, duration_ms: int, move: str, strength: float,
    gen: Generation, delivery: Delivery, thumbnail: Path | None = None,
    encoder: str = SOFTWARE_ENCODER,
) -> list[str]:
    """Keyframe + camera move at the generation rate/size, conformed to delivery."""
    n_gen = max(2, round(duration_ms * gen.fps / 1000))
    frames = delivery.frames_for(duration_ms)
    # Upscale the still 2x over the generation size first: zoompan positions on integer
    # pixels, and the extra resolution keeps slow moves from stepping visibly.
    work_w, work_h = gen.width * 2, gen.height * 2
    still = (
        ffmpeg.input(ff.media_url(keyframe), **ff.input_options(keyframe))
        .filter("scale", work_w, work_h, force_original_aspect_ratio="increase")
        .filter("crop", work_w, work_h)
    )
    expr = _camera_expressions(move, strength, n_gen, gen)
    moving = still.filter(
        "zoompan", z=expr["z"], x=expr["x"], y=expr["y"], d=n_gen,
        s=f"{gen.width}x{gen.height}", fps=gen.fps,
    )
    return encode_args(conform(moving, delivery, frames), out, delivery, frames, thumbnail, encoder)


def source_clip_args(
    uri: str, out: Path, *, in_ms: int, duration_ms: int, gen: Generation, delivery: Delivery,
    thumbnail: Path | None = None, encoder: str = SOFTWARE_ENCODER,
) -> list[str]:
    """Cut ``duration_ms`` at ``in_ms`` from a file or http(s) MP4/HLS; keep only the cut.

    ``uri`` is an http(s) URL or a local path; a local HLS playlist may reach only local
    files, a remote one only the network."""
    frames = delivery.frames_for(duration_ms)
    src = ffmpeg.input(ff.media_url(uri), ss=f"{in_ms / 1000:.3f}", t=f"{duration_ms / 1000:.3f}",
                       **ff.input_options(uri, local=ff.LOCAL_SOURCE_PROTOCOLS))
    video = (
        src.video.filter("fps", fps=gen.fps)
        .filter("scale", gen.width, gen.height, force_original_aspect_ratio="decrease")
        .filter("pad", gen.width, gen.height, "(ow-iw)/2", "(oh-ih)/2", color="black")
    )
    return encode_args(conform(video, delivery, frames), out, delivery, frames, thumbnail, encoder)


def generated_args(
    segments: Sequence[tuple[Path, bool]], out: Path, *, duration_ms: int, delivery: Delivery,
    thumbnail: Path | None = None, encoder: str = SOFTWARE_ENCODER,
) -> list[str]:
    """Stitch generated segment videos (``(path, drop_first_frame)``: a segment that started
    from the previous one's last frame repeats it) and conform them to the delivery format,
    exactly the shot's frame count (held on the last frame if the model gave fewer)."""
    frames = delivery.frames_for(duration_ms)
    parts = []
    for path, drop_first in segments:
        video = ffmpeg.input(ff.media_url(path), **ff.input_options(path)).video
        if drop_first:
            video = video.filter("trim", start_frame=1).filter("setpts", "PTS-STARTPTS")
        parts.append(video.filter("setsar", "1"))
    joined = parts[0] if len(parts) == 1 else ffmpeg.concat(*parts, v=1, a=0)
    return encode_args(conform(joined, delivery, frames), out, delivery, frames, thumbnail,
                       encoder)


def last_frame_args(video: Path, out: Path) -> list[str]:
    """The last frame of ``video`` as a PNG (the start image of the next segment): only the
    last second is decoded; every decoded frame overwrites ``out``, the last one stays."""
    stream = ffmpeg.input(ff.media_url(video), sseof="-1", **ff.input_options(video))
    return _compile(ffmpeg.output(stream.video, str(out), f="image2", c="png", update=1))


def render(args: Sequence[str], *, timeout: float) -> None:
    """Run one of the commands above (``timeout`` in seconds, see ``ff.timeout_for``)."""
    ff.run(args, timeout=timeout)
