"""Concrete render backends. Each renders one shot to an MP4 at the delivery format."""

from __future__ import annotations

import tempfile
from pathlib import Path

from anime_pipeline.domain.contracts import (
    BACKEND_ANIMATIC,
    BACKEND_PLACEHOLDER,
    BACKEND_SOURCE_CLIP,
)
from anime_pipeline.domain.episode import Format, Shot
from anime_pipeline.domain.rendering import RenderBackend, ShotJob
from anime_pipeline.media import render as media


def _delivery(fmt: Format) -> media.Delivery:
    return media.Delivery(fmt.width, fmt.height, fmt.fps)


def _generation(job: ShotJob) -> media.Generation:
    w, h = job.generation_size
    return media.Generation(w, h, min(job.spec.fps, job.delivery.fps))


class AnimaticBackend:
    """The keyframe with the shot's camera move (push in, pan, tilt, shake...)."""

    name = BACKEND_ANIMATIC

    def __init__(self, timeout_s: float = 600) -> None:
        self.timeout_s = timeout_s

    def render(self, job: ShotJob, out: Path) -> None:
        if not job.shot.keyframe:
            raise ValueError(f"shot {job.shot.id} has no keyframe for the animatic backend")
        args = media.animatic_args(
            job.episode_root / job.shot.keyframe, out,
            duration_ms=job.shot.duration_ms, move=job.shot.camera.move.value,
            strength=job.shot.camera.strength, gen=_generation(job),
            delivery=_delivery(job.delivery), thumbnail=job.thumbnail, encoder=job.spec.encoder,
        )
        media.render(args, timeout=self.timeout_s)


class SourceClipBackend:
    """Cut ``duration_ms`` from ``source.uri`` at ``in_ms`` (local file or http(s) MP4/HLS)."""

    name = BACKEND_SOURCE_CLIP

    def __init__(self, timeout_s: float = 600) -> None:
        self.timeout_s = timeout_s

    def render(self, job: ShotJob, out: Path) -> None:
        source = job.shot.source
        if source is None:
            raise ValueError(f"shot {job.shot.id} has no source for the source_clip backend")
        uri = source.uri if source.is_remote else str(job.episode_root / source.uri)
        args = media.source_clip_args(
            uri, out, in_ms=source.in_ms, duration_ms=job.shot.duration_ms,
            gen=_generation(job), delivery=_delivery(job.delivery), thumbnail=job.thumbnail,
            encoder=job.spec.encoder,
        )
        media.render(args, timeout=self.timeout_s)


class PlaceholderBackend:
    """A slate with the shot id, its duration and why it is a placeholder."""

    name = BACKEND_PLACEHOLDER

    def render(self, job: ShotJob, out: Path) -> None:
        self.placeholder(job.shot, job.delivery, "placeholder requested", out, job.thumbnail)

    def placeholder(self, shot: Shot, delivery: Format, reason: str, out: Path,
                    thumbnail: Path | None = None) -> None:
        text = (
            f"SHOT {shot.id}   {shot.duration_ms / 1000:.2f} s   ({shot.type.value})\n"
            f"PLACEHOLDER\n{_wrap(reason, 60)}"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False,
                                         encoding="utf-8") as f:
            f.write(text)
            text_file = Path(f.name)
        try:
            media.render(media.placeholder_args(out, text_file, duration_ms=shot.duration_ms,
                                                delivery=_delivery(delivery),
                                                thumbnail=thumbnail))
        finally:
            text_file.unlink(missing_ok=True)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:4])


def default_backends() -> dict[str, RenderBackend]:
    return {b.name: b for b in (AnimaticBackend(), SourceClipBackend(), PlaceholderBackend())}
