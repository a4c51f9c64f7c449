"""Build profiles of machines we are not on (for tests and what-if planning). No detection."""

from __future__ import annotations

from anime_pipeline.runtime.profile import (
    BackendProbe,
    CpuInfo,
    DiskInfo,
    GpuInfo,
    GpuSummary,
    MemoryInfo,
    OsInfo,
    RuntimeProfile,
    SoftwareInfo,
)


def make_profile(
    *,
    vram_gib: list[float] | None = None,
    vram_used_frac: float = 0.1,
    nvenc: bool = True,
    backends: dict[str, bool] | None = None,
    loopback_backends: bool = False,
    threads: int = 16,
    physical_cores: int | None = None,
    mem_total_gb: float = 64.0,
    mem_available_gb: float = 48.0,
    disk_free_gb: float = 500.0,
) -> RuntimeProfile:
    """A profile with GPUs of the given VRAM sizes and backends ``{name: reachable}``."""
    gpus = [
        GpuInfo(
            index=i,
            name=f"NVIDIA Test GPU {gib:g}GB",
            vram_total_mb=int(gib * 1024),
            vram_used_mb=int(gib * 1024 * vram_used_frac),
            utilisation_pct=10.0,
            nvenc_works=nvenc,
        )
        for i, gib in enumerate(vram_gib or [])
    ]
    host = "127.0.0.1" if loopback_backends else "render.example.net"
    probes = [
        BackendProbe(
            name=name,
            url=f"http://{host}:8188/",
            reachable=ok,
            status=200 if ok else None,
            latency_ms=5.0 if ok else None,
            error=None if ok else "URLError: connection refused",
            loopback=loopback_backends,
        )
        for name, ok in (backends or {}).items()
    ]
    cores = physical_cores or max(1, threads // 2)
    return RuntimeProfile.build(
        os=OsInfo(system="Linux", release="test", machine="x86_64", python="3.11", hostname="t"),
        cpu=CpuInfo(
            model="Test CPU",
            physical_cores=cores,
            threads=threads,
            freq_mhz=3000.0,
            max_freq_mhz=3000.0,
            score=cores * 3.0,
        ),  # fmt: skip
        memory=MemoryInfo(total_gb=mem_total_gb, available_gb=mem_available_gb),
        gpu=GpuSummary(
            nvml_available=bool(gpus),
            driver="550.00" if gpus else None,
            devices=gpus,
            reason=None if gpus else "NVML unavailable: test machine",
        ),
        software=SoftwareInfo(
            ffmpeg_path="/usr/bin/ffmpeg", ffmpeg_version="test", hardware_encoders=["h264_nvenc"]
        ),
        backends=probes,
        disk=DiskInfo(path="/data", free_gb=disk_free_gb, total_gb=1000.0),
    )
