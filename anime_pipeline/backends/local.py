"""The local render backends and the placeholder slate. Each renders one shot to an MP4 at the
delivery format through :mod:`anime_pipeline.media`, with a timeout scaled to the shot."""

from __future__ import annotations

from pathlib import Path

from anime_pipeline.backends.ratelimit import SOURCE_HOSTS, HostBuckets
from anime_pipeline.domain.contracts import BACKEND_ANIMATIC, BACKEND_SOURCE_CLIP
from anime_pipeline.domain.episode import Format, Shot
from anime_pipeline.domain.rendering import ShotJob
from anime_pipeline.media import render as media
from anime_pipeline.media import slate
from anime_pipeline.media.ffmpeg import timeout_for


def delivery_of(fmt: Format) -> media.Delivery:
    return media.Delivery(fmt.width, fmt.height, fmt.fps)


def generation_of(job: ShotJob) -> media.Generation:
    w, h = job.generation_size
    return media.Generation(w, h, min(job.spec.fps, job.delivery.fps))


def animatic_args(job: ShotJob, out: Path) -> list[str]:
    """The ffmpeg arguments of an animatic render (also used bare by the benchmark)."""
    if not job.shot.keyframe:
        raise ValueError(f"shot {job.shot.id} has no keyframe for the animatic backend")
    return media.animatic_args(
        job.episode_root / job.shot.keyframe, out,
        duration_ms=job.shot.duration_ms, move=job.shot.camera.move.value,
        strength=job.shot.camera.strength, gen=generation_of(job),
        delivery=delivery_of(job.delivery), thumbnail=job.thumbnail, encoder=job.spec.encoder,
    )


def source_clip_args(job: ShotJob, out: Path) -> list[str]:
    """The ffmpeg arguments of a cut from the shot's source (file or http(s) MP4/HLS)."""
    source = job.shot.source
    if source is None:
        raise ValueError(f"shot {job.shot.id} has no source for the source_clip backend")
    uri = source.uri if source.is_remote else str(job.episode_root / source.uri)
    return media.source_clip_args(
        uri, out, in_ms=source.in_ms, duration_ms=job.shot.duration_ms,
        gen=generation_of(job), delivery=delivery_of(job.delivery), thumbnail=job.thumbnail,
        encoder=job.spec.encoder,
    )


class AnimaticBackend:
    """The keyframe with the shot's camera move (push in, pan, tilt, shake...)."""

    name = BACKEND_ANIMATIC

    def render(self, job: ShotJob, out: Path) -> None:
        media.render(animatic_args(job, out), timeout=timeout_for(job.shot.duration_ms / 1000))


class SourceClipBackend:
    """Cut ``duration_ms`` from ``source.uri`` at ``in_ms`` (local file or http(s) MP4/HLS)."""

    name = BACKEND_SOURCE_CLIP

    def __init__(self, hosts: HostBuckets | None = None) -> None:
        self.hosts = hosts or SOURCE_HOSTS  # requests per second per footage host

    def render(self, job: ShotJob, out: Path) -> None:
        remote = self._remote(job)
        if remote and job.shot.source is not None:
            self.hosts.take(job.shot.source.uri, job.cancel)  # before ffmpeg opens it
        # Remote sources may be slow to answer: twice the local allowance.
        timeout = timeout_for(job.shot.duration_ms / 1000) * (2 if remote else 1)
        media.render(source_clip_args(job, out), timeout=timeout)

    @staticmethod
    def _remote(job: ShotJob) -> bool:
        return job.shot.source is not None and job.shot.source.is_remote


class SlateBackend:
    """The placeholder slate: shot id, duration, type and a short reason, at the delivery
    format and exactly the shot's length. Never fails on its text."""

    def render_slate(self, shot: Shot, delivery: Format, reason: str, out: Path,
                     thumbnail: Path | None = None) -> None:
        slate.render_slate(
            out, shot_id=shot.id, shot_type=shot.type.value, duration_ms=shot.duration_ms,
            reason=reason, delivery=delivery_of(delivery), thumbnail=thumbnail,
            timeout=timeout_for(shot.duration_ms / 1000),
        )
