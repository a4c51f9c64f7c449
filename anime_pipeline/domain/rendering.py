"""Rendering one shot: retries, then the degrade ladder, then a placeholder slate.

Plain Python, no Dagster. Backends sit behind :class:`RenderBackend`; the concrete ones (which
call ffmpeg or an HTTP service) live in :mod:`anime_pipeline.backends`. Every attempt's output
is verified (``verify``: decoded frame count, size, rate) before it counts, so a backend that
"succeeds" with a truncated file is a failed attempt like any other.

Failures of the machine, not of the shot, are never papered over with a slate: a full disk
(``ENOSPC``) or a hung render's :class:`RenderAborted` propagate to the caller.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from anime_pipeline.domain.contracts import (
    BACKEND_PLACEHOLDER,
    MIN_FPS,
    RESOLUTION_TIERS,
    SOFTWARE_ENCODER,
    size_for_tier,
    tier_height,
)
from anime_pipeline.domain.episode import Format, Shot
from anime_pipeline.domain.filehash import FILE_HASHES, FileHashes
from anime_pipeline.domain.records import ClipStatus, RenderAttempt, Usage

log = logging.getLogger("anime_pipeline.render")

# Bump when a change to the renderer changes its output for the same inputs.
RENDERER_VERSION = "2"
PLACEHOLDER_RESOLUTION = "delivery"


@dataclass(frozen=True)
class RenderSpec:
    """What one attempt renders: backend, generation fps and resolution tier, encoder."""

    backend: str
    fps: float
    resolution: str
    encoder: str = SOFTWARE_ENCODER


@dataclass(frozen=True)
class ShotJob:
    """Everything a backend needs to render one shot."""

    shot: Shot
    episode_root: Path
    delivery: Format
    spec: RenderSpec
    thumbnail: Path | None = None  # where to write a preview frame, if wanted
    segment_max_ms: int | None = None  # generate in windows of at most this (the plan's)
    run_id: str = ""  # with ``attempt``: what makes a generative seed and file name unique
    attempt: int = 0
    take: int = 0  # a retake after a rejection in review (0: the first take)
    note: str | None = None  # the reviewer's note, added to a generative prompt
    cancel: threading.Event | None = None  # set when the run stops: stop and clean up

    @property
    def generation_size(self) -> tuple[int, int]:
        return size_for_tier(self.spec.resolution, self.delivery.width, self.delivery.height)


@dataclass(frozen=True)
class RenderInfo:
    """What a backend tells of a render besides the file: where, and what it cost."""

    server: str | None = None
    usage: tuple[Usage, ...] = ()


class RenderBackend(Protocol):
    name: str

    def render(self, job: ShotJob, out: Path) -> RenderInfo | None:
        """Render ``job`` to ``out`` (an MP4 at the delivery format); raise on failure."""
        ...


class SlateRenderer(Protocol):
    """Makes the placeholder slate that ends every degrade ladder."""

    def render_slate(self, shot: Shot, delivery: Format, reason: str, out: Path,
                     thumbnail: Path | None = None) -> None: ...


class LadderStep(Protocol):
    """A step of a degrade ladder (``budget.DegradeLadderStep``, duck-typed)."""

    @property
    def action(self) -> str: ...
    @property
    def fps_factor(self) -> float | None: ...
    @property
    def resolution(self) -> str | None: ...


class NotRetryable(Exception):  # noqa: N818 - a marker mixed into errors, not raised alone
    """Mixed into errors that the same attempt repeated cannot fix (a workflow the server
    rejects, a template missing a node): no retries, straight to the next ladder step."""


class BackendUnavailable(RuntimeError, NotRetryable):
    pass


class RenderAborted(RuntimeError):
    """The machine, not the shot, failed (disk full, ...): stop, never slate over it."""


def is_fatal(error: BaseException) -> bool:
    """Errors no retry, ladder step or slate can answer."""
    return isinstance(error, RenderAborted) or (
        isinstance(error, OSError) and error.errno == errno.ENOSPC
    )


@dataclass
class RenderOutcome:
    """What :func:`render_shot` produced at ``path``: how, after which attempts, and why."""

    shot_id: str
    path: Path
    status: ClipStatus
    spec: RenderSpec
    reason: str | None
    attempts: list[RenderAttempt] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def backend(self) -> str:
        return BACKEND_PLACEHOLDER if self.status is ClipStatus.placeholder else self.spec.backend


def _apply_step(spec: RenderSpec, step: LadderStep,
                backends: Sequence[str]) -> RenderSpec | None:
    """The spec after a ladder step, or None when the step changes nothing."""
    if step.action == "lower_fps":
        fps = max(MIN_FPS, round(spec.fps * (step.fps_factor or 0.5), 3))
        return replace(spec, fps=fps) if fps < spec.fps else None
    if step.action == "lower_resolution":
        target = step.resolution or _lower_tier(spec.resolution)
        if target and tier_height(target) < tier_height(spec.resolution):
            return replace(spec, resolution=target)
        return None
    if step.action == "next_backend":
        idx = list(backends).index(spec.backend) if spec.backend in backends else -1
        if idx + 1 < len(backends):
            return replace(spec, backend=backends[idx + 1])
        return None
    return None


def _lower_tier(tier: str) -> str | None:
    names = list(RESOLUTION_TIERS)
    i = names.index(tier)
    return names[i - 1] if i > 0 else None


def _clear(*paths: Path | None) -> None:
    for p in paths:
        if p is not None:
            p.unlink(missing_ok=True)


def _describe(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text[:600]}"


def render_shot(
    job: ShotJob,
    out: Path,
    *,
    backends: Mapping[str, RenderBackend],
    backend_preference: Sequence[str],
    retry_budget: int,
    ladder: Sequence[LadderStep],
    slate: SlateRenderer,
    verify: Callable[[Path], object],
    on_attempt: Callable[[RenderAttempt], None] | None = None,
) -> RenderOutcome:
    """Render with ``retry_budget`` retries, then walk the degrade ladder; a placeholder slate
    of the same length ends every ladder, so a shot always yields a clip.

    ``verify(out)`` raises when a file is not the clip it should be; such an attempt failed.
    """
    t0 = time.perf_counter()
    attempts: list[RenderAttempt] = []
    spec = job.spec
    last_error = "no attempt made"
    retryable = True

    def record(spec: RenderSpec, ok: bool, started: float, step: str,
               error: str | None, info: RenderInfo | None = None) -> None:
        a = RenderAttempt(backend=spec.backend, fps=spec.fps, resolution=spec.resolution,
                          encoder=spec.encoder, ok=ok,
                          seconds=round(time.perf_counter() - started, 3), step=step,
                          error=error, server=info.server if info else None,
                          usage=list(info.usage) if info else [])
        attempts.append(a)
        if on_attempt:
            on_attempt(a)

    def attempt(spec: RenderSpec, step: str) -> bool:
        nonlocal last_error, retryable
        started = time.perf_counter()
        backend = backends.get(spec.backend)
        info: RenderInfo | None = None
        try:
            if backend is None:
                raise BackendUnavailable(f"backend {spec.backend!r} is not configured")
            if job.cancel is not None and job.cancel.is_set():
                raise RenderAborted("the run was stopped")
            _clear(out, job.thumbnail)  # nothing of a failed attempt may pass for this one's
            info = backend.render(replace(job, spec=spec, attempt=len(attempts)), out)
            verify(out)
        except Exception as e:  # a backend may fail in any way; record and move on
            if is_fatal(e):
                raise
            retryable = not isinstance(e, NotRetryable)
            last_error = f"{spec.backend}: {_describe(e)}"
            record(spec, False, started, step, last_error, getattr(e, "info", None) or info)
            log.warning("shot %s attempt failed (%s): %s", job.shot.id, step, last_error)
            return False
        record(spec, True, started, step, None, info)
        return True

    def done(spec: RenderSpec, status: ClipStatus) -> RenderOutcome:
        return RenderOutcome(job.shot.id, out, status, spec,
                             None if status is ClipStatus.ok else last_error, attempts,
                             time.perf_counter() - t0)

    for i in range(1 + max(0, retry_budget)):
        if attempt(spec, "initial" if i == 0 else f"retry {i}"):
            return done(spec, ClipStatus.ok)
        if not retryable:
            break  # an unconfigured backend, a rejected workflow: retrying cannot help
    if spec.encoder != SOFTWARE_ENCODER and spec.backend in backends:
        # A hardware encoder can fail where the software one works (driver, session limits).
        spec = replace(spec, encoder=SOFTWARE_ENCODER)
        if attempt(spec, "software_encoder"):
            return done(spec, ClipStatus.degraded)
    for step in ladder:
        if step.action == "placeholder":
            break
        if not retryable and step.action != "next_backend":
            continue  # lower fps or resolution cannot help a missing backend or workflow
        new_spec = _apply_step(spec, step, backend_preference)
        if new_spec is None:
            continue
        spec = new_spec
        if attempt(spec, step.action):
            return done(spec, ClipStatus.degraded)

    started = time.perf_counter()
    slate_spec = RenderSpec(BACKEND_PLACEHOLDER, job.delivery.fps, PLACEHOLDER_RESOLUTION)
    _clear(out, job.thumbnail)
    slate.render_slate(job.shot, job.delivery, last_error, out, job.thumbnail)
    verify(out)  # a slate that is not a clip is a bug, not a shot failure: let it raise
    record(slate_spec, True, started, "placeholder", None)
    log.error("shot %s rendered as placeholder slate: %s", job.shot.id, last_error)
    return RenderOutcome(job.shot.id, out, ClipStatus.placeholder, slate_spec, last_error,
                         attempts, time.perf_counter() - t0)


def clip_fingerprint(
    shot: Shot, episode_root: Path, delivery: Format, plan_fields: Mapping[str, Any],
    hashes: FileHashes = FILE_HASHES,
) -> str:
    """Hash of everything that determines a clip: re-rendering is skipped when it matches.

    ``plan_fields``: the shot's plan values that shape the render (fps, resolution, backends,
    retries, ladder, segments). The shot's local files (keyframe, footage) are hashed through
    ``hashes``: once per process while a file is unchanged (:mod:`~anime_pipeline.domain.
    filehash`).
    """
    h = hashlib.sha256()
    h.update(json.dumps({
        "renderer": RENDERER_VERSION,
        "shot": shot.model_dump(mode="json"),
        "delivery": delivery.model_dump(mode="json"),
        "plan": dict(plan_fields),
    }, sort_keys=True, default=str).encode())
    for rel in (shot.keyframe, shot.source.uri if shot.source else None):
        if rel and not rel.lower().startswith(("http://", "https://")):
            digest = hashes.sha256(episode_root / rel)
            h.update(digest.encode() if digest is not None else b"missing")
    return h.hexdigest()
