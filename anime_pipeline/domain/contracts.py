"""Small shared vocabulary between planner, runtime profile and renderer. No Dagster import."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

# Resolution tiers by frame height. The width follows the delivery format's aspect ratio.
RESOLUTION_TIERS: dict[str, int] = {
    "240p": 240,
    "360p": 360,
    "480p": 480,
    "540p": 540,
    "720p": 720,
    "1080p": 1080,
    "1440p": 1440,
    "2160p": 2160,
}

# Render backends. Local ones need nothing but ffmpeg; the generative ones are HTTP clients.
BACKEND_ANIMATIC = "animatic"
BACKEND_SOURCE_CLIP = "source_clip"
BACKEND_PLACEHOLDER = "placeholder"
LOCAL_BACKENDS = (BACKEND_ANIMATIC, BACKEND_SOURCE_CLIP)
GENERATIVE_BACKENDS = ("wan_i2v", "comfyui_i2v")

# Video encoders every clip may be made with (one codec configuration each, see media.render).
SOFTWARE_ENCODER = "libx264"
NVENC_ENCODER = "h264_nvenc"
ENCODERS = (SOFTWARE_ENCODER, NVENC_ENCODER)

#: The lowest frame rate anything is ever generated at (budget candidates, ladder steps).
MIN_FPS = 6.0


def tier_height(tier: str) -> int:
    try:
        return RESOLUTION_TIERS[tier]
    except KeyError:
        known = list(RESOLUTION_TIERS)
        raise ValueError(f"unknown resolution tier {tier!r}; one of {known}") from None


@functools.lru_cache(maxsize=64)
def tier_for_height(height: int) -> str:
    """The largest tier not above ``height`` (the smallest tier if all are above)."""
    best = "240p"
    for name, h in RESOLUTION_TIERS.items():
        if h <= height:
            best = name
    return best


def size_for_tier(tier: str, delivery_width: int, delivery_height: int) -> tuple[int, int]:
    """(width, height) of a tier at the delivery aspect ratio, even, never above delivery."""
    h = min(tier_height(tier), delivery_height)
    w = round(delivery_width * h / delivery_height)
    return (w - w % 2, h - h % 2)


@dataclass(frozen=True)
class ResourceState:
    """What the planner knows of the machine/cluster when a plan is made.

    Filled from the runtime profile and the Dagster instance; defaults describe a plain
    CPU-only local machine with an idle queue.
    """

    gpu_queue_depth: int = 0  # runs queued or in progress on the instance
    gpu_count: int = 0
    vram_free_mb: int | None = None
    workers_available: int = 1
    available_backends: tuple[str, ...] = LOCAL_BACKENDS
    policy_name: str | None = None
    policy_degraded: bool = False
    max_fps: float | None = None
    max_resolution: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
