"""Thin, failure-proof access to NVIDIA GPUs through NVML (``nvidia-ml-py``, imported as pynvml).

A machine without the NVIDIA driver (no ``libnvidia-ml.so``), without the Python package, or
whose driver refuses to initialise is a *normal* case: every function here then reports zero
GPUs and a human-readable reason, and never raises to the caller.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

_LOCK = threading.Lock()


@dataclass
class GpuReading:
    index: int
    name: str
    uuid: str | None
    vram_total_mb: int
    vram_used_mb: int
    utilisation_pct: float | None
    memory_utilisation_pct: float | None
    temperature_c: float | None = None


@dataclass
class NvmlReport:
    available: bool
    driver: str | None = None
    cuda_driver: str | None = None
    gpus: list[GpuReading] = field(default_factory=list)
    reason: str | None = None  # why no GPU could be read, when available is False


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def query(indices: list[int] | None = None) -> NvmlReport:
    """Read every GPU (or only ``indices``). Never raises."""
    try:
        import pynvml
    except Exception as e:  # package missing or broken
        return NvmlReport(available=False, reason=f"nvidia-ml-py not importable: {e}")
    with _LOCK:
        try:
            pynvml.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return NvmlReport(available=False, reason=f"NVML unavailable: {e}")
        try:
            report = NvmlReport(available=True)
            try:
                report.driver = _text(pynvml.nvmlSystemGetDriverVersion())
            except Exception:
                report.driver = None
            try:
                v = int(pynvml.nvmlSystemGetCudaDriverVersion())
                report.cuda_driver = f"{v // 1000}.{(v % 1000) // 10}"
            except Exception:
                report.cuda_driver = None
            count = int(pynvml.nvmlDeviceGetCount())
            wanted = range(count) if indices is None else [i for i in indices if 0 <= i < count]
            for i in wanted:
                try:
                    report.gpus.append(_read_device(pynvml, i))
                except Exception as e:  # one broken device must not hide the others
                    report.reason = f"GPU {i} unreadable: {e}"
            return report
        except Exception as e:
            return NvmlReport(available=False, reason=f"NVML query failed: {e}")
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:
                pass


def _read_device(pynvml: Any, index: int) -> GpuReading:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    util: float | None
    mem_util: float | None
    try:
        rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
        util, mem_util = float(rates.gpu), float(rates.memory)
    except Exception:  # not supported on some (e.g. MIG) devices
        util = mem_util = None
    try:
        uuid: str | None = _text(pynvml.nvmlDeviceGetUUID(handle))
    except Exception:
        uuid = None
    try:
        temp: float | None = float(pynvml.nvmlDeviceGetTemperature(handle, 0))
    except Exception:
        temp = None
    return GpuReading(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        uuid=uuid,
        vram_total_mb=int(mem.total) // (1024 * 1024),
        vram_used_mb=int(mem.used) // (1024 * 1024),
        utilisation_pct=util,
        memory_utilisation_pct=mem_util,
        temperature_c=temp,
    )
