"""What the pipeline runs on: CPU, memory, GPUs, ffmpeg, render backends, disk, OS.

Plain Python (no Dagster). :meth:`RuntimeProfile.detect` never raises for a missing GPU, driver,
backend or frequency reading: those are facts about the machine, recorded as such.

Profile classes (VRAM is the largest single GPU's total memory as NVML reports it, in GiB):

============== ==============================================================================
LOCAL_GPU_HIGH a local NVIDIA GPU with >= 15.5 GiB (the "16 GB" cards report 15.6-16.0 GiB)
LOCAL_GPU_MID  a local NVIDIA GPU with >= 7.5 GiB (the "8 GB" cards)
LOCAL_GPU_LOW  a local NVIDIA GPU with >= 3.5 GiB (the "4-6 GB" cards)
LOCAL_CPU_ONLY no usable GPU (none, no driver, or < 3.5 GiB)
CLOUD_HYBRID   a configured render backend answered over HTTP, and there is no LOCAL_GPU_HIGH
============== ==============================================================================

Precedence: ``LOCAL_GPU_HIGH`` > ``CLOUD_HYBRID`` > ``LOCAL_GPU_MID`` > ``LOCAL_GPU_LOW`` >
``LOCAL_CPU_ONLY``. A 16 GB local GPU runs the generative models itself, so a reachable remote
backend is only a fallback there; on anything smaller, the remote backend is the stronger
renderer and the class says so. ``local_class`` always records the class the machine alone
would have, so the policy can still use a local GPU (e.g. NVENC) under ``CLOUD_HYBRID``.

Render backends are configured as ``{name: url}``; when ``remote_backends`` is not passed,
``ANIME_PIPELINE_BACKENDS="comfyui_i2v=http://host:8188,wan_i2v=http://..."`` is read.
"""

from __future__ import annotations

import concurrent.futures
import os
import platform
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path

import psutil
from pydantic import BaseModel, Field

from anime_pipeline.runtime import nvml

GIB = 1024**3

# VRAM thresholds in GiB (see module doc).
VRAM_HIGH_GIB = 15.5
VRAM_MID_GIB = 7.5
VRAM_LOW_GIB = 3.5

BACKEND_PROBE_TIMEOUT_S = 1.5
BACKENDS_ENV = "ANIME_PIPELINE_BACKENDS"


class ProfileClass(StrEnum):
    LOCAL_GPU_HIGH = "LOCAL_GPU_HIGH"
    LOCAL_GPU_MID = "LOCAL_GPU_MID"
    LOCAL_GPU_LOW = "LOCAL_GPU_LOW"
    LOCAL_CPU_ONLY = "LOCAL_CPU_ONLY"
    CLOUD_HYBRID = "CLOUD_HYBRID"


GPU_CLASSES = (ProfileClass.LOCAL_GPU_HIGH, ProfileClass.LOCAL_GPU_MID, ProfileClass.LOCAL_GPU_LOW)


class CpuInfo(BaseModel):
    model: str | None = None
    physical_cores: int
    threads: int
    freq_mhz: float | None = None  # current, as the OS reports it
    max_freq_mhz: float | None = None
    score: float  # coarse: physical cores x GHz (2.5 GHz assumed when unknown)


class MemoryInfo(BaseModel):
    total_gb: float
    available_gb: float


class GpuInfo(BaseModel):
    index: int
    name: str
    vram_total_mb: int
    vram_used_mb: int
    utilisation_pct: float | None = None
    nvenc_works: bool | None = None  # None: not tested

    @property
    def vram_total_gib(self) -> float:
        return self.vram_total_mb / 1024

    @property
    def vram_free_mb(self) -> int:
        return max(0, self.vram_total_mb - self.vram_used_mb)


class GpuSummary(BaseModel):
    nvml_available: bool
    driver: str | None = None
    cuda_driver: str | None = None
    devices: list[GpuInfo] = Field(default_factory=list)
    reason: str | None = None  # why none were found, when none were


class SoftwareInfo(BaseModel):
    ffmpeg_path: str | None = None
    ffmpeg_version: str | None = None
    hardware_encoders: list[str] = Field(default_factory=list)  # compiled into this ffmpeg
    error: str | None = None


class BackendProbe(BaseModel):
    name: str
    url: str
    reachable: bool
    status: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    loopback: bool = False  # served from this machine (e.g. a local ComfyUI on this GPU)
    # Configured to render (render_backends.yaml gives it a kind and a workflow); a server
    # named only by ANIME_PIPELINE_BACKENDS is probed and shown, never planned for.
    renderable: bool = True


class DiskInfo(BaseModel):
    path: str
    free_gb: float
    total_gb: float


class OsInfo(BaseModel):
    system: str
    release: str
    machine: str
    python: str
    hostname: str


class RuntimeProfile(BaseModel):
    version: str = "1.0"
    detected_at: float
    os: OsInfo
    cpu: CpuInfo
    memory: MemoryInfo
    gpu: GpuSummary
    software: SoftwareInfo
    backends: list[BackendProbe] = Field(default_factory=list)
    disk: DiskInfo | None = None
    profile_class: ProfileClass
    local_class: ProfileClass
    class_reasons: list[str] = Field(default_factory=list)

    # ----------------------------------------------------------------- convenience

    @property
    def gpus(self) -> list[GpuInfo]:
        return self.gpu.devices

    @property
    def gpu_count(self) -> int:
        return len(self.gpu.devices)

    @property
    def best_gpu(self) -> GpuInfo | None:
        return max(self.gpu.devices, key=lambda g: g.vram_total_mb, default=None)

    @property
    def nvenc_works(self) -> bool:
        return any(g.nvenc_works for g in self.gpu.devices)

    @property
    def reachable_backends(self) -> list[str]:
        """Backends that can render: configured, with at least one server that answered."""
        return list(dict.fromkeys(b.name for b in self.backends
                                  if b.reachable and b.renderable))

    # ----------------------------------------------------------------- detection

    @classmethod
    def detect(
        cls,
        storage_root: Path | None = None,
        remote_backends: Mapping[str, str | Sequence[str]] | None = None,
        *,
        probe_timeout_s: float = BACKEND_PROBE_TIMEOUT_S,
        test_nvenc: bool = True,
        renderable: Mapping[str, Sequence[str]] | None = None,
    ) -> RuntimeProfile:
        """``remote_backends``: servers to probe by backend name (default
        ``$ANIME_PIPELINE_BACKENDS``); ``renderable``: those configured to render (their
        ComfyUI servers are probed on ``/system_stats``)."""
        if remote_backends is None:
            remote_backends = backends_from_env()
        targets = _probe_targets(remote_backends, renderable or {})
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            backends_f = pool.submit(probe_backends, targets, probe_timeout_s)
            software_f = pool.submit(detect_software)
            gpu = detect_gpus(test_nvenc=test_nvenc)
            software = software_f.result()
            backends = backends_f.result()
        return cls.build(
            os=detect_os(),
            cpu=detect_cpu(),
            memory=detect_memory(),
            gpu=gpu,
            software=software,
            backends=backends,
            disk=detect_disk(storage_root if storage_root is not None else Path.cwd()),
        )

    @classmethod
    def build(
        cls,
        *,
        cpu: CpuInfo,
        memory: MemoryInfo,
        gpu: GpuSummary,
        software: SoftwareInfo,
        backends: list[BackendProbe] | None = None,
        disk: DiskInfo | None = None,
        os: OsInfo | None = None,
        detected_at: float | None = None,
    ) -> RuntimeProfile:
        """A profile from its parts; the class is always computed, never passed in."""
        backends = backends or []
        local_class, profile_class, reasons = classify(gpu.devices, backends)
        return cls(
            detected_at=time.time() if detected_at is None else detected_at,
            os=os or detect_os(),
            cpu=cpu,
            memory=memory,
            gpu=gpu,
            software=software,
            backends=backends,
            disk=disk,
            profile_class=profile_class,
            local_class=local_class,
            class_reasons=reasons,
        )

    # ----------------------------------------------------------------- persistence

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> RuntimeProfile:
        return cls.model_validate_json(text)

    def save(self, path: Path | str) -> Path:
        return atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: Path | str) -> RuntimeProfile:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- classification


def classify(
    gpus: list[GpuInfo], backends: list[BackendProbe]
) -> tuple[ProfileClass, ProfileClass, list[str]]:
    """(local_class, profile_class, reasons) — reasons are stable English sentences."""
    reasons: list[str] = []
    best = max(gpus, key=lambda g: g.vram_total_mb, default=None)
    if best is None:
        local = ProfileClass.LOCAL_CPU_ONLY
        reasons.append("no NVIDIA GPU was found")
    else:
        gib = best.vram_total_gib
        if gib >= VRAM_HIGH_GIB:
            local = ProfileClass.LOCAL_GPU_HIGH
            rule = f">= {VRAM_HIGH_GIB} GiB"
        elif gib >= VRAM_MID_GIB:
            local = ProfileClass.LOCAL_GPU_MID
            rule = f">= {VRAM_MID_GIB} GiB and < {VRAM_HIGH_GIB} GiB"
        elif gib >= VRAM_LOW_GIB:
            local = ProfileClass.LOCAL_GPU_LOW
            rule = f">= {VRAM_LOW_GIB} GiB and < {VRAM_MID_GIB} GiB"
        else:
            local = ProfileClass.LOCAL_CPU_ONLY
            rule = f"< {VRAM_LOW_GIB} GiB, too small for generative rendering"
        reasons.append(f"largest GPU {best.name} has {gib:.1f} GiB VRAM ({rule})")
    reachable = list(dict.fromkeys(b.name for b in backends if b.reachable and b.renderable))
    unconfigured = sorted({b.name for b in backends if b.reachable and not b.renderable}
                          - set(reachable))
    if unconfigured:
        reasons.append(
            f"render backend(s) {', '.join(unconfigured)} answered but are not configured to "
            "render (no render_backends.yaml entry): not planned for")
    if reachable and local != ProfileClass.LOCAL_GPU_HIGH:
        reasons.append(
            f"render backend(s) {', '.join(reachable)} configured and reachable; "
            "remote rendering outranks a local GPU below 16 GB"
        )
        return local, ProfileClass.CLOUD_HYBRID, reasons
    if reachable:
        reasons.append(
            f"render backend(s) {', '.join(reachable)} reachable, kept as fallback: "
            "a 16 GB local GPU takes precedence over CLOUD_HYBRID"
        )
    elif any(b.renderable for b in backends):
        names = ", ".join(dict.fromkeys(b.name for b in backends if b.renderable))
        reasons.append(f"configured backend(s) {names} did not answer")
    return local, local, reasons


# --------------------------------------------------------------------------- detectors


def detect_os() -> OsInfo:
    return OsInfo(
        system=platform.system(),
        release=platform.release(),
        machine=platform.machine(),
        python=sys.version.split()[0],
        hostname=platform.node(),
    )


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def detect_cpu() -> CpuInfo:
    threads = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or threads
    freq_mhz = max_mhz = None
    try:
        freq = psutil.cpu_freq()
        if freq is not None:
            freq_mhz = float(freq.current) or None
            max_mhz = float(freq.max) or None
    except Exception:  # not available in some containers / platforms
        pass
    ghz = (max_mhz or freq_mhz or 2500.0) / 1000.0
    return CpuInfo(
        model=_cpu_model(),
        physical_cores=int(physical),
        threads=int(threads),
        freq_mhz=freq_mhz,
        max_freq_mhz=max_mhz,
        score=round(physical * ghz, 1),
    )


def detect_memory() -> MemoryInfo:
    vm = psutil.virtual_memory()
    return MemoryInfo(total_gb=round(vm.total / GIB, 2), available_gb=round(vm.available / GIB, 2))


def detect_gpus(*, test_nvenc: bool = True) -> GpuSummary:
    report = nvml.query()
    devices = [
        GpuInfo(
            index=r.index,
            name=r.name,
            vram_total_mb=r.vram_total_mb,
            vram_used_mb=r.vram_used_mb,
            utilisation_pct=r.utilisation_pct,
        )
        for r in report.gpus
    ]
    if test_nvenc and devices:
        from anime_pipeline.media import ffmpeg

        for d in devices:
            try:
                d.nvenc_works = ffmpeg.nvenc_works(d.index)
            except Exception:
                d.nvenc_works = False
    reason = report.reason
    if report.available and not devices and reason is None:
        reason = "NVML is installed but reports no GPU"
    return GpuSummary(
        nvml_available=report.available,
        driver=report.driver,
        cuda_driver=report.cuda_driver,
        devices=devices,
        reason=reason,
    )


def detect_software() -> SoftwareInfo:
    from anime_pipeline.media import ffmpeg

    try:
        return SoftwareInfo(
            ffmpeg_path=ffmpeg.ffmpeg_binary(),
            ffmpeg_version=ffmpeg.ffmpeg_version(),
            hardware_encoders=ffmpeg.hardware_encoders(),
        )
    except Exception as e:
        return SoftwareInfo(error=f"ffmpeg not usable: {e}")


def detect_disk(root: Path) -> DiskInfo | None:
    """Free space at ``root``, or at its nearest existing parent when it does not exist yet."""
    path = Path(root).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return DiskInfo(
        path=str(Path(root).absolute()),
        free_gb=round(usage.free / GIB, 2),
        total_gb=round(usage.total / GIB, 2),
    )


def backends_from_env() -> dict[str, str]:
    """``ANIME_PIPELINE_BACKENDS="name=url,name=url"`` → ``{name: url}``."""
    raw = os.environ.get(BACKENDS_ENV, "").strip()
    out: dict[str, str] = {}
    for item in raw.split(","):
        if "=" in item:
            name, url = item.split("=", 1)
            if name.strip() and url.strip():
                out[name.strip()] = url.strip()
    return out


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


def _probe_targets(remote: Mapping[str, str | Sequence[str]],
                   renderable: Mapping[str, Sequence[str]]) -> list[tuple[str, str, str, bool]]:
    """(name, url, path, renderable) to probe: configured servers on /system_stats, the
    others on their URL."""
    out: list[tuple[str, str, str, bool]] = []
    seen: set[tuple[str, str]] = set()
    for name, urls in renderable.items():
        for url in urls:
            seen.add((name, url.rstrip("/")))
            out.append((name, url.rstrip("/"), "/system_stats", True))
    for name, value in remote.items():
        for url in ([value] if isinstance(value, str) else list(value)):
            if (name, url.rstrip("/")) not in seen:
                out.append((name, url, "", False))
    return out


def probe_backend(name: str, url: str, timeout_s: float = BACKEND_PROBE_TIMEOUT_S, *,
                  path: str = "", renderable: bool = True) -> BackendProbe:
    """GET ``url`` + ``path`` with a short timeout. Any HTTP answer below 500 means
    "reachable"."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return BackendProbe(name=name, url=url, reachable=False, error="not an http(s) URL")
    handlers: list[urllib.request.BaseHandler] = []
    if (parsed.hostname or "") in _LOOPBACK:
        handlers.append(urllib.request.ProxyHandler({}))  # never send loopback to a proxy
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url.rstrip("/") + path if path else url, method="GET",
                                     headers={"User-Agent": "anime-pipeline"})
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    try:
        with opener.open(request, timeout=timeout_s) as resp:
            status = int(resp.status)
            resp.read(1024)
    except urllib.error.HTTPError as e:
        status = int(e.code)
    except Exception as e:  # URLError, timeout, connection refused, bad TLS ...
        error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    latency = round((time.perf_counter() - started) * 1000, 1)
    reachable = status is not None and status < 500
    if status is not None and not reachable:
        error = f"HTTP {status}"
    return BackendProbe(
        name=name,
        url=url,
        reachable=reachable,
        status=status,
        latency_ms=latency,
        error=error,
        loopback=(parsed.hostname or "") in _LOOPBACK,
        renderable=renderable,
    )


def probe_backends(
    targets: Mapping[str, str] | Sequence[tuple[str, str, str, bool]],
    timeout_s: float = BACKEND_PROBE_TIMEOUT_S,
) -> list[BackendProbe]:
    """Probe ``{name: url}`` (renderable, on the URL itself) or (name, url, path, renderable)
    targets concurrently."""
    items = ([(n, u, "", True) for n, u in targets.items()] if isinstance(targets, Mapping)
             else list(targets))
    if not items:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        futures = [pool.submit(probe_backend, n, u, timeout_s, path=p, renderable=r)
                   for n, u, p, r in items]
        return [f.result() for f in futures]


# --------------------------------------------------------------------------- io


def atomic_write_text(path: Path, text: str) -> Path:
    """Write to a temp name in the same folder, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
