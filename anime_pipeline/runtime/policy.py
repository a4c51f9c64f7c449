"""Execution policy: what the renderer and the budgeter may do on this machine, right now.

:class:`ExecutionPolicyResolver` turns a :class:`RuntimeProfile` into the *baseline* policy of
its class; :func:`degrade` steps a policy one rung down the ladder, recording why;
:func:`restore` goes back to the baseline. The monitor persists the degrade steps, and
:func:`apply_steps` replays them on the baseline, so the policy in force is always
``baseline + persisted steps`` (see :mod:`anime_pipeline.runtime.state`).

Degrade ladder — one call, one rung; ``kind`` says which rule asked for it:

* ``vram``: move GPU work off the GPU — encoder ``libx264``, backends served from this GPU
  machine (loopback URLs) out, other reachable backends preferred, concurrency halved. Off the
  GPU already → as ``generic``.
* ``memory``: concurrency and shots in flight halved, remote backends preferred when present.
  At concurrency 1 already → as ``generic``.
* ``failure_rate``, ``manual``, ``generic``: on the GPU → as ``vram``; otherwise concurrency
  halved and resolution one tier down (not below 480p); at concurrency 1, resolution and fps
  down (24 → 12 → 8 fps). At the floor (no GPU, 1 render, 480p, 8 fps) the step is still
  recorded, and nothing else changes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from anime_pipeline.domain.contracts import (
    BACKEND_ANIMATIC,
    BACKEND_PLACEHOLDER,
    BACKEND_SOURCE_CLIP,
    NVENC_ENCODER,
    RESOLUTION_TIERS,
    SOFTWARE_ENCODER,
    ResourceState,
)
from anime_pipeline.domain.records import PolicyRecord
from anime_pipeline.runtime.profile import GPU_CLASSES, ProfileClass, RuntimeProfile

Encoder = Literal["h264_nvenc", "libx264"]  # domain.contracts.ENCODERS

LOCAL_CPU_BACKENDS = [BACKEND_ANIMATIC, BACKEND_SOURCE_CLIP, BACKEND_PLACEHOLDER]
MIN_RESOLUTION = "480p"
FPS_LADDER = (24.0, 12.0, 8.0)
MEMORY_PER_RENDER_GB = 1.5  # what one local render (decode + filters + encode) may take


class ClassDefaults(BaseModel):
    render_concurrency: int
    max_resolution: str
    max_fps: float
    cpu_bound: bool  # concurrency capped by CPU threads


# The policy table (README mirrors it).
CLASS_DEFAULTS: dict[ProfileClass, ClassDefaults] = {
    ProfileClass.LOCAL_GPU_HIGH: ClassDefaults(
        render_concurrency=4, max_resolution="1080p", max_fps=24, cpu_bound=True
    ),
    ProfileClass.LOCAL_GPU_MID: ClassDefaults(
        render_concurrency=3, max_resolution="1080p", max_fps=24, cpu_bound=True
    ),
    ProfileClass.LOCAL_GPU_LOW: ClassDefaults(
        render_concurrency=2, max_resolution="720p", max_fps=24, cpu_bound=True
    ),
    ProfileClass.LOCAL_CPU_ONLY: ClassDefaults(
        render_concurrency=4, max_resolution="720p", max_fps=24, cpu_bound=True
    ),
    # Generation runs on the farm; what runs here (stitching, conforming, verifying) is ffmpeg
    # on this machine's cores. Shots waiting on the farm are bounded by the concurrency
    # setting instead (pipeline.scheduling), not by this.
    ProfileClass.CLOUD_HYBRID: ClassDefaults(
        render_concurrency=4, max_resolution="1080p", max_fps=24, cpu_bound=True
    ),
}


class ExecutionPolicy(BaseModel):
    name: str
    profile_class: ProfileClass
    allowed_backends: list[str]
    preferred_backends: list[str]
    remote_backends: list[str] = Field(default_factory=list)  # reachable HTTP backends
    local_gpu_services: list[str] = Field(default_factory=list)  # of those, on this GPU
    uses_local_gpu: bool
    encoder: Encoder
    render_concurrency: int
    max_resolution: str
    max_fps: float
    max_shots_in_flight: int
    gpu_pool_limit: int
    degraded: bool = False
    degrade_level: int = 0
    reasons: list[str] = Field(default_factory=list)


class ExecutionPolicyResolver:
    """Baseline policy for a profile. Stateless; construct with other limits if needed."""

    def __init__(self, memory_per_render_gb: float = MEMORY_PER_RENDER_GB) -> None:
        self.memory_per_render_gb = memory_per_render_gb

    def resolve(self, profile: RuntimeProfile) -> ExecutionPolicy:
        cls = profile.profile_class
        d = CLASS_DEFAULTS[cls]
        local_gpu = profile.local_class in GPU_CLASSES
        remote = list(profile.reachable_backends)
        on_this_gpu = [b.name for b in profile.backends if b.reachable and b.loopback]

        concurrency = d.render_concurrency
        if d.cpu_bound:
            concurrency = min(concurrency, max(1, profile.cpu.threads))
        by_memory = int(profile.memory.available_gb // self.memory_per_render_gb)
        concurrency = max(1, min(concurrency, max(1, by_memory)))

        if cls == ProfileClass.CLOUD_HYBRID:
            preferred = remote + [BACKEND_ANIMATIC, BACKEND_SOURCE_CLIP]
        elif local_gpu:
            # reachable generative services next to a capable GPU (e.g. a local ComfyUI) first
            preferred = remote + [BACKEND_ANIMATIC, BACKEND_SOURCE_CLIP]
        else:
            preferred = [BACKEND_ANIMATIC, BACKEND_SOURCE_CLIP]
        allowed = _unique(remote + LOCAL_CPU_BACKENDS)

        return ExecutionPolicy(
            name=f"{cls.value}/baseline",
            profile_class=cls,
            allowed_backends=allowed,
            preferred_backends=_unique(preferred),
            remote_backends=remote,
            local_gpu_services=on_this_gpu if local_gpu else [],
            uses_local_gpu=local_gpu,
            encoder=NVENC_ENCODER if profile.nvenc_works else SOFTWARE_ENCODER,
            render_concurrency=concurrency,
            max_resolution=d.max_resolution,
            max_fps=d.max_fps,
            max_shots_in_flight=2 * concurrency,
            gpu_pool_limit=max(1, profile.gpu_count),
        )

    def degrade(
        self, policy: ExecutionPolicy, reason: str, kind: str = "generic"
    ) -> ExecutionPolicy:
        return degrade(policy, reason, kind)

    def restore(self, profile: RuntimeProfile) -> ExecutionPolicy:
        return self.resolve(profile)


# --------------------------------------------------------------------------- ladder


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _tier_down(tier: str) -> str:
    names = list(RESOLUTION_TIERS)
    floor = names.index(MIN_RESOLUTION)
    i = names.index(tier)
    return names[max(floor, i - 1)] if i > floor else tier


def _fps_down(fps: float) -> float:
    for step in FPS_LADDER:
        if step < fps:
            return step
    return fps


def _off_gpu(p: ExecutionPolicy) -> dict[str, object]:
    # Services served from this machine while it has a GPU run on that GPU: they go.
    remote_first = [b for b in p.remote_backends if b not in p.local_gpu_services]
    allowed = _unique(remote_first + LOCAL_CPU_BACKENDS)
    preferred = _unique(remote_first + [BACKEND_ANIMATIC, BACKEND_SOURCE_CLIP])
    c = max(1, p.render_concurrency // 2)
    return {
        "uses_local_gpu": False,
        "local_gpu_services": [],
        "remote_backends": remote_first,
        "encoder": SOFTWARE_ENCODER,
        "allowed_backends": allowed,
        "preferred_backends": preferred,
        "render_concurrency": c,
        "max_shots_in_flight": max(1, min(p.max_shots_in_flight, 2 * c)),
    }


def _lighter(p: ExecutionPolicy) -> dict[str, object]:
    if p.render_concurrency > 1:
        c = max(1, p.render_concurrency // 2)
        return {
            "render_concurrency": c,
            "max_shots_in_flight": max(1, min(p.max_shots_in_flight, 2 * c)),
            "max_resolution": _tier_down(p.max_resolution),
        }
    return {
        "max_resolution": _tier_down(p.max_resolution),
        "max_fps": _fps_down(p.max_fps),
        "max_shots_in_flight": 1,
    }


def _less_memory(p: ExecutionPolicy) -> dict[str, object]:
    c = max(1, p.render_concurrency // 2)
    changes: dict[str, object] = {
        "render_concurrency": c,
        "max_shots_in_flight": max(1, p.max_shots_in_flight // 2),
    }
    if p.remote_backends:
        changes["preferred_backends"] = _unique(
            [b for b in p.remote_backends if b in p.allowed_backends] + p.preferred_backends
        )
    return changes


def degrade(policy: ExecutionPolicy, reason: str, kind: str = "generic") -> ExecutionPolicy:
    """The next lower policy, with ``reason`` recorded. Never raises; the floor stays the floor."""
    if kind == "vram":
        changes = _off_gpu(policy) if _on_gpu(policy) else _lighter(policy)
    elif kind == "memory":
        changes = _less_memory(policy) if policy.render_concurrency > 1 else _lighter(policy)
    else:
        changes = _off_gpu(policy) if _on_gpu(policy) else _lighter(policy)
    level = policy.degrade_level + 1
    changes.update(
        degraded=True,
        degrade_level=level,
        reasons=[*policy.reasons, f"[{kind}] {reason}"],
        name=f"{policy.profile_class.value}/degraded-{level}",
    )
    return policy.model_copy(update=changes, deep=True)


def _on_gpu(p: ExecutionPolicy) -> bool:
    return p.uses_local_gpu or p.encoder == NVENC_ENCODER


def restore(
    profile: RuntimeProfile, resolver: ExecutionPolicyResolver | None = None
) -> ExecutionPolicy:
    """Back to the resolved baseline of ``profile``."""
    return (resolver or ExecutionPolicyResolver()).resolve(profile)


def apply_steps(baseline: ExecutionPolicy, steps: list[tuple[str, str]]) -> ExecutionPolicy:
    """Replay persisted ``(kind, reason)`` degrade steps on a baseline."""
    policy = baseline
    for kind, reason in steps:
        policy = degrade(policy, reason, kind)
    return policy


def at_floor(policy: ExecutionPolicy) -> bool:
    return (
        not _on_gpu(policy)
        and policy.render_concurrency <= 1
        and policy.max_resolution == _tier_down(policy.max_resolution)
        and policy.max_fps == _fps_down(policy.max_fps)
    )


def policy_record(policy: ExecutionPolicy) -> PolicyRecord:
    """What a plan and each clip record of the policy they were made under."""
    return PolicyRecord(
        name=policy.name, profile_class=str(policy.profile_class.value),
        degraded=policy.degraded, degrade_level=policy.degrade_level,
        reasons=list(policy.reasons), encoder=policy.encoder,
        render_concurrency=policy.render_concurrency,
    )


def to_resource_state(
    policy: ExecutionPolicy, profile: RuntimeProfile, queue_depth: int = 0
) -> ResourceState:
    """What the budgeter needs of the machine and the policy in force."""
    best = profile.best_gpu
    return ResourceState(
        gpu_queue_depth=queue_depth,
        gpu_count=profile.gpu_count if policy.uses_local_gpu else 0,
        vram_free_mb=best.vram_free_mb if (best and policy.uses_local_gpu) else None,
        workers_available=policy.render_concurrency,
        available_backends=tuple(policy.allowed_backends),
        policy_name=policy.name,
        policy_degraded=policy.degraded,
        max_fps=policy.max_fps,
        max_resolution=policy.max_resolution,
        extra={
            "profile_class": policy.profile_class.value,
            "preferred_backends": list(policy.preferred_backends),
            "encoder": policy.encoder,
            "degrade_level": policy.degrade_level,
            "degrade_reasons": list(policy.reasons),
            "max_shots_in_flight": policy.max_shots_in_flight,
            "gpu_pool_limit": policy.gpu_pool_limit,
            "gpu_count_detected": profile.gpu_count,
        },
    )
