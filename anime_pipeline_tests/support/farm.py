"""A ``render_backends.yaml`` naming ComfyUI doubles, for tests that render on a farm."""

from __future__ import annotations

from anime_pipeline.backends.config import BackendsConfig, parse_backends
from anime_pipeline_tests.support.comfyui_double import ComfyDouble


def render_backends_yaml(*servers: ComfyDouble, max_inflight: int = 1,
                         rps: float | None = None) -> str:
    """``comfyui_i2v`` on ``weightfree_i2v`` over ``servers``, each ``max_inflight``."""
    lines = ["comfyui_i2v:", "  kind: comfyui", "  workflow: weightfree_i2v", "  servers:"]
    for d in servers:
        lines += [f"    - url: {d.url}", f"      max_inflight: {max_inflight}"]
    if rps is not None:
        lines.append(f"  requests_per_second: {rps}")
    return "\n".join(lines) + "\n"


def farm_config(*servers: ComfyDouble, max_inflight: int = 1,
                rps: float | None = None) -> BackendsConfig:
    return parse_backends(render_backends_yaml(*servers, max_inflight=max_inflight, rps=rps))
