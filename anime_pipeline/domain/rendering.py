"""Rendering one shot: retries, then the degrade ladder, then a placeholder slate.

Plain Python, no Dagster. Backends sit behind :class:`RenderBackend`; the concrete ones
(which call ffmpeg or an HTTP service) live in :mod:`anime_pipeline.backends`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from anime_pipeline.domain.contracts import (
    BACKEND_PLACEHOLDER,
    RESOLUTION_TIERS,
    size_for_tier,
    tier_height,
)
from anime_pipeline.domain.episode import Format, Shot
from anime_pipeline.domain.package import sha256_file

log = logging.getLogger("anime_pipeline.render")

# Bump when a change to the renderer changes its output for the same inputs.
RENDERER_VERSION = "1"
MIN_FPS = 6.0
SOFTWARE_ENCODER = "libx264"


@dataclass(frozen=True)
class RenderSpec:
    """What one attempt renders: backend, generation fps and resolution tier."""

    backend: str
    fps: float
    resolution: str
    encoder: str = SOFTWARE_ENCODER  # libx264, or h264_nvenc when the policy allows it


@dataclass(frozen=True)
class ShotJob:
    """Everything a backend needs to render one shot."""

    shot: Shot
    episode_root: Path
    delivery: Format
    spec: RenderSpec
    thumbnail: Path | None = None  # where to write a preview frame, if wanted

    @property
    def generation_size(self) -> tuple[int, int]:
        return size_for_tier(self.spec.resolution, self.delivery.width, self.delivery.height)


class RenderBackend(Protocol):
    name: str

    def render(self, job: ShotJob, out: Path) -> None:
        """Render ``job`` to ``out`` (an MP4 at the delivery format); raise on failure."""
        ...


class SlateRenderer(Protocol):
    """Makes the placeholder slate that ends every degrade ladder."""

    def placeholder(self, shot: Shot, delivery: Format, reason: str, out: Path,
                    thumbnail: Path | None = None) -> None: ...


class BackendUnavailable(RuntimeError):
    pass


@dataclass
class Attempt:
    backend: str
    fps: float
    resolution: str
    ok: bool
    seconds: float
    error: str | None = None
    step: str = "initial"
    encoder: str = SOFTWARE_ENCODER


@dataclass
class ClipResult:
    shot_id: str
    path: Path
    backend: str
    fps: float
    resolution: str
    degraded: bool
    placeholder: bool
    reason: str | None
    attempts: list[Attempt] = field(default_factory=list)
    seconds: float = 0.0
    encoder: str = SOFTWARE_ENCODER

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass(frozen=True)
class LadderStep:
    """Mirror of the budgeter's DegradeStep (duck-typed, so either can be passed)."""

    action: str
    fps_factor: float | None = None
    resolution: str | None = None


def _apply_step(spec: RenderSpec, step: Any, backends: Sequence[str]) -> RenderSpec | None:
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


def render_shot(
    job: ShotJob,
    out: Path,
    *,
    backends: Mapping[str, RenderBackend],
    backend_preference: Sequence[str],
    retry_budget: int,
    ladder: Sequence[Any],
    placeholder: SlateRenderer,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> ClipResult:
    """Render with ``retry_budget`` retries, then walk the degrade ladder; a placeholder
    slate of the same length ends every ladder, so a shot always yields a clip."""
    t0 = time.perf_counter()
    attempts: list[Attempt] = []
    spec = job.spec
    last_error = "no attempt made"

    def attempt(spec: RenderSpec, step: str) -> bool:
        nonlocal last_error
        t = time.perf_counter()
        backend = backends.get(spec.backend)
        try:
            if backend is None:
                raise BackendUnavailable(f"backend {spec.backend!r} is not configured")
            backend.render(replace(job, spec=spec), out)
        except Exception as e:  # a backend may fail in any way; record and move on
            last_error = f"{spec.backend}: {type(e).__name__}: {str(e).strip()[:300]}"
            a = Attempt(spec.backend, spec.fps, spec.resolution, False,
                        time.perf_counter() - t, last_error, step, spec.encoder)
            attempts.append(a)
            log.warning("shot %s attempt failed (%s): %s", job.shot.id, step, last_error)
            if on_attempt:
                on_attempt(a)
            return False
        a = Attempt(spec.backend, spec.fps, spec.resolution, True, time.perf_counter() - t,
                    None, step, spec.encoder)
        attempts.append(a)
        if on_attempt:
            on_attempt(a)
        return True

    def result(spec: RenderSpec, degraded: bool) -> ClipResult:
        return ClipResult(job.shot.id, out, spec.backend, spec.fps, spec.resolution, degraded,
                          False, last_error if degraded else None, attempts,
                          time.perf_counter() - t0, spec.encoder)

    for i in range(1 + max(0, retry_budget)):
        if attempt(spec, "initial" if i == 0 else f"retry {i}"):
            return result(spec, degraded=False)
        if spec.backend not in backends:
            break  # retrying an unconfigured backend cannot help
    if spec.encoder != SOFTWARE_ENCODER and spec.backend in backends:
        # A hardware encoder can fail where the software one works (driver, session limits).
        spec = replace(spec, encoder=SOFTWARE_ENCODER)
        if attempt(spec, "software_encoder"):
            return result(spec, degraded=True)
    for step in ladder:
        if step.action == "placeholder":
            break
        if spec.backend not in backends and step.action != "next_backend":
            continue  # lowering fps or resolution cannot help a backend that is not there
        new_spec = _apply_step(spec, step, backend_preference)
        if new_spec is None:
            continue
        spec = new_spec
        if attempt(spec, step.action):
            return result(spec, degraded=True)

    reason = last_error
    t = time.perf_counter()
    placeholder.placeholder(job.shot, job.delivery, reason, out, job.thumbnail)
    attempts.append(Attempt(BACKEND_PLACEHOLDER, job.delivery.fps, "delivery", True,
                            time.perf_counter() - t, None, "placeholder"))
    log.error("shot %s rendered as placeholder slate: %s", job.shot.id, reason)
    return ClipResult(job.shot.id, out, BACKEND_PLACEHOLDER, job.delivery.fps, "delivery",
                      True, True, reason, attempts, time.perf_counter() - t0)


def clip_fingerprint(
    shot: Shot, episode_root: Path, delivery: Format, plan_entry: Mapping[str, Any]
) -> str:
    """Hash of everything that determines a clip: re-rendering is skipped when it matches."""
    h = hashlib.sha256()
    relevant = {k: plan_entry.get(k) for k in (
        "target_fps", "target_resolution", "backend_preference", "retry_budget",
        "degrade_ladder_profile", "segment_policy")}
    h.update(json.dumps({
        "renderer": RENDERER_VERSION,
        "shot": shot.model_dump(mode="json"),
        "delivery": delivery.model_dump(mode="json"),
        "plan": relevant,
    }, sort_keys=True).encode())
    for rel in (shot.keyframe, shot.source.uri if shot.source else None):
        if rel and not rel.lower().startswith(("http://", "https://")):
            p = episode_root / rel
            h.update(sha256_file(p).encode() if p.exists() else b"missing")
    return h.hexdigest()
