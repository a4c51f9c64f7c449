"""Execution policy: resolution per class, degrade ladders, restore, ResourceState."""

from __future__ import annotations

import pytest

from anime_pipeline.domain.contracts import RESOLUTION_TIERS, ResourceState
from anime_pipeline.runtime.explain import describe_policy
from anime_pipeline.runtime.policy import (
    ExecutionPolicy,
    ExecutionPolicyResolver,
    apply_steps,
    at_floor,
    degrade,
    restore,
    to_resource_state,
)
from anime_pipeline.runtime.profile import ProfileClass
from anime_pipeline.runtime.testing import make_profile

R = ExecutionPolicyResolver()


def _h(tier: str) -> int:
    return RESOLUTION_TIERS[tier]


def test_local_gpu_high() -> None:
    p = R.resolve(make_profile(vram_gib=[24.0, 24.0]))
    assert p.profile_class == ProfileClass.LOCAL_GPU_HIGH
    assert p.encoder == "h264_nvenc" and p.uses_local_gpu
    assert (p.render_concurrency, p.max_resolution, p.max_fps) == (4, "1080p", 24)
    assert p.max_shots_in_flight == 8 and p.gpu_pool_limit == 2
    assert not p.degraded and p.degrade_level == 0 and p.reasons == []
    assert p.preferred_backends[0] == "animatic" and "placeholder" in p.allowed_backends


def test_local_gpu_mid_without_working_nvenc() -> None:
    p = R.resolve(make_profile(vram_gib=[8.0], nvenc=False))
    assert p.profile_class == ProfileClass.LOCAL_GPU_MID
    assert p.encoder == "libx264" and p.uses_local_gpu
    assert (p.render_concurrency, p.max_resolution) == (3, "1080p")
    assert p.gpu_pool_limit == 1


def test_local_gpu_low() -> None:
    p = R.resolve(make_profile(vram_gib=[6.0]))
    assert p.profile_class == ProfileClass.LOCAL_GPU_LOW
    assert (p.render_concurrency, p.max_resolution, p.max_fps) == (2, "720p", 24)


def test_local_cpu_only_is_capped_by_threads_and_memory() -> None:
    p = R.resolve(make_profile(threads=2))
    assert p.profile_class == ProfileClass.LOCAL_CPU_ONLY
    assert p.encoder == "libx264" and not p.uses_local_gpu
    assert p.render_concurrency == 2 and p.max_resolution == "720p"
    assert p.preferred_backends == ["animatic", "source_clip"]
    assert set(p.allowed_backends) == {"animatic", "source_clip", "placeholder"}
    tight = R.resolve(make_profile(threads=16, mem_available_gb=2.0))
    assert tight.render_concurrency == 1  # 2 GB / 1.5 GB per render


def test_cloud_hybrid_prefers_the_remote_backend() -> None:
    p = R.resolve(make_profile(threads=2, backends={"comfyui_i2v": True, "wan_i2v": False}))
    assert p.profile_class == ProfileClass.CLOUD_HYBRID
    assert p.preferred_backends[0] == "comfyui_i2v"
    assert "comfyui_i2v" in p.allowed_backends and "wan_i2v" not in p.allowed_backends
    # The policy caps what runs here (ffmpeg) by the threads; waiting on the farm is bounded
    # by the concurrency setting instead (pipeline.scheduling).
    assert p.render_concurrency == 2
    assert p.max_resolution == "1080p" and p.encoder == "libx264"
    with_gpu = R.resolve(make_profile(vram_gib=[8.0], backends={"comfyui_i2v": True}))
    assert with_gpu.profile_class == ProfileClass.CLOUD_HYBRID
    assert with_gpu.encoder == "h264_nvenc"  # the local GPU still encodes


def test_vram_degrade_moves_work_off_the_gpu() -> None:
    base = R.resolve(
        make_profile(vram_gib=[24.0], backends={"comfyui_i2v": True}, loopback_backends=True)
    )
    assert (
        base.local_gpu_services == ["comfyui_i2v"] and base.preferred_backends[0] == "comfyui_i2v"
    )
    d1 = degrade(base, "VRAM 92% used > 85%", "vram")
    assert d1.degraded and d1.degrade_level == 1
    assert d1.encoder == "libx264" and not d1.uses_local_gpu
    assert "comfyui_i2v" not in d1.allowed_backends  # it ran on this GPU
    assert d1.render_concurrency == base.render_concurrency // 2
    assert d1.reasons == ["[vram] VRAM 92% used > 85%"]
    assert d1.name == "LOCAL_GPU_HIGH/degraded-1"
    assert base.encoder == "h264_nvenc" and not base.degraded  # the input is untouched


def test_vram_degrade_keeps_a_real_remote_backend() -> None:
    base = R.resolve(make_profile(vram_gib=[8.0], backends={"comfyui_i2v": True}))
    d1 = degrade(base, "vram", "vram")
    assert d1.preferred_backends[0] == "comfyui_i2v" and d1.encoder == "libx264"


def test_memory_degrade_halves_concurrency_and_prefers_remote() -> None:
    base = R.resolve(make_profile(backends={"wan_i2v": True}))
    base = base.model_copy(update={"preferred_backends": ["animatic", "wan_i2v"]})
    d1 = degrade(base, "available memory 1.2 GB < 2.0 GB", "memory")
    assert d1.render_concurrency == base.render_concurrency // 2
    assert d1.max_shots_in_flight == base.max_shots_in_flight // 2
    assert d1.preferred_backends[0] == "wan_i2v"


def test_failure_chain_reaches_a_floor_and_stays_there() -> None:
    p: ExecutionPolicy = R.resolve(make_profile(vram_gib=[24.0]))
    seen = [p]
    for i in range(8):
        p = degrade(p, f"failure rate step {i}", "failure_rate")
        seen.append(p)
    assert not seen[1].uses_local_gpu and seen[1].encoder == "libx264"  # GPU → CPU first
    for a, b in zip(seen, seen[1:], strict=False):
        assert b.degrade_level == a.degrade_level + 1
        assert b.render_concurrency <= a.render_concurrency
        assert _h(b.max_resolution) <= _h(a.max_resolution)
        assert b.max_fps <= a.max_fps
    assert at_floor(p)
    assert (p.render_concurrency, p.max_resolution, p.max_fps) == (1, "480p", 8)
    assert len(p.reasons) == 8 and p.degrade_level == 8


def test_restore_and_replay() -> None:
    profile = make_profile(vram_gib=[8.0])
    base = R.resolve(profile)
    steps = [("vram", "VRAM high"), ("failure_rate", "40% failed"), ("manual", "producer asked")]
    chained = base
    for kind, reason in steps:
        chained = R.degrade(chained, reason, kind)
    assert apply_steps(base, steps) == chained
    assert restore(profile) == base == R.restore(profile)
    assert apply_steps(base, []) == base


def test_to_resource_state() -> None:
    profile = make_profile(vram_gib=[24.0], vram_used_frac=0.25)
    base = R.resolve(profile)
    rs = to_resource_state(base, profile, queue_depth=3)
    assert isinstance(rs, ResourceState)
    assert rs.gpu_queue_depth == 3 and rs.gpu_count == 1
    assert rs.vram_free_mb == 24 * 1024 - 6 * 1024
    assert rs.workers_available == base.render_concurrency
    assert rs.policy_name == "LOCAL_GPU_HIGH/baseline" and rs.policy_degraded is False
    assert rs.max_resolution == "1080p" and rs.max_fps == 24
    assert rs.extra["encoder"] == "h264_nvenc"
    off = to_resource_state(degrade(base, "VRAM high", "vram"), profile, 0)
    assert off.policy_degraded and off.gpu_count == 0 and off.vram_free_mb is None
    assert off.extra["degrade_reasons"] == ["[vram] VRAM high"]


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_policy_summary(lang: str) -> None:
    base = R.resolve(make_profile(vram_gib=[8.0]))
    assert base.encoder in describe_policy(base, lang)
    d = degrade(base, "VRAM 90% used > 85%", "vram")
    assert ("DEGRADED" if lang == "en" else "已降级") in describe_policy(d, lang)
