"""Runtime profile: real detection on this machine, real HTTP probes on loopback, JSON, texts."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from anime_pipeline.media import ffmpeg
from anime_pipeline.runtime import nvml
from anime_pipeline.runtime.explain import explain_profile, recommendations
from anime_pipeline.runtime.profile import (
    ProfileClass,
    RuntimeProfile,
    backends_from_env,
    detect_gpus,
    probe_backend,
)
from anime_pipeline.runtime.testing import make_profile


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        code = 500 if self.path.startswith("/broken") else 200
        body = b'{"system": "ok"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def http_backend() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def here(tmp_path_factory: pytest.TempPathFactory) -> RuntimeProfile:
    root = tmp_path_factory.mktemp("storage") / "not" / "yet"
    return RuntimeProfile.detect(storage_root=root, remote_backends={})


def _machine_has_nvidia_gpu() -> bool:
    return bool(nvml.query().gpus)


# --------------------------------------------------------------------------- real detection


def test_detects_this_machine_for_real(here: RuntimeProfile) -> None:
    assert here.cpu.threads >= 1
    assert 1 <= here.cpu.physical_cores <= here.cpu.threads
    assert here.cpu.score > 0
    assert 0 < here.memory.available_gb <= here.memory.total_gb
    assert here.software.ffmpeg_path and Path(here.software.ffmpeg_path).exists()
    assert here.software.ffmpeg_path == ffmpeg.ffmpeg_binary()
    assert here.software.ffmpeg_version and here.software.ffmpeg_version != "unknown"
    assert set(here.software.hardware_encoders) <= set(ffmpeg.encoders())
    assert here.disk is not None and here.disk.free_gb > 0  # nearest existing parent measured
    assert here.os.system and here.os.python.startswith("3.")
    assert here.backends == []


@pytest.mark.skipif(_machine_has_nvidia_gpu(), reason="this machine has an NVIDIA GPU")
def test_machine_without_driver_is_cpu_only_not_an_error(here: RuntimeProfile) -> None:
    report = nvml.query()  # the real NVML path: library missing → a report, not an exception
    assert report.available is False and report.gpus == [] and report.reason
    summary = detect_gpus()
    assert summary.devices == [] and summary.reason
    assert here.gpu_count == 0
    assert here.profile_class == ProfileClass.LOCAL_CPU_ONLY
    assert here.local_class == ProfileClass.LOCAL_CPU_ONLY
    assert ffmpeg.nvenc_works() is False  # compiled in maybe, but no device to encode on


@pytest.mark.skipif(not _machine_has_nvidia_gpu(), reason="needs an NVIDIA GPU and driver")
def test_gpu_machine_is_detected_through_nvml(here: RuntimeProfile) -> None:
    assert here.gpu_count >= 1 and here.gpu.driver
    g = here.gpus[0]
    assert g.vram_total_mb > 0 and 0 <= g.vram_used_mb <= g.vram_total_mb
    assert g.nvenc_works is not None
    assert here.local_class in (
        ProfileClass.LOCAL_GPU_HIGH,
        ProfileClass.LOCAL_GPU_MID,
        ProfileClass.LOCAL_GPU_LOW,
        ProfileClass.LOCAL_CPU_ONLY,
    )


# --------------------------------------------------------------------------- backends


def test_reachable_backend_on_loopback_makes_cloud_hybrid(http_backend: str) -> None:
    """A configured backend (render_backends.yaml) is probed on its servers' /system_stats."""
    profile = RuntimeProfile.detect(
        remote_backends={}, renderable={"comfyui_i2v": [http_backend]}, test_nvenc=False
    )
    [probe] = profile.backends
    assert probe.url == http_backend and probe.renderable
    assert probe.reachable and probe.status == 200 and probe.loopback
    assert probe.latency_ms is not None and probe.latency_ms >= 0
    if profile.local_class != ProfileClass.LOCAL_GPU_HIGH:
        assert profile.profile_class == ProfileClass.CLOUD_HYBRID
    assert profile.reachable_backends == ["comfyui_i2v"]


def test_unreachable_and_broken_backends_do_not_count(http_backend: str) -> None:
    closed = probe_backend("wan_i2v", f"http://127.0.0.1:{_closed_port()}/", timeout_s=1.0)
    assert not closed.reachable and closed.status is None and closed.error
    broken = probe_backend("comfyui_i2v", f"{http_backend}/broken")
    assert not broken.reachable and broken.status == 500
    not_http = probe_backend("x", "ftp://example.org/")
    assert not not_http.reachable
    profile = make_profile(backends={"wan_i2v": False})
    assert profile.profile_class == ProfileClass.LOCAL_CPU_ONLY
    assert any("did not answer" in r for r in profile.class_reasons)


def test_backends_from_env(monkeypatch: pytest.MonkeyPatch, http_backend: str) -> None:
    """ANIME_PIPELINE_BACKENDS alone names servers to probe, never servers to plan for: a
    reachable one without a render_backends.yaml entry is shown, and said to be unused."""
    monkeypatch.setenv("ANIME_PIPELINE_BACKENDS", f"comfyui_i2v={http_backend}/, ,bad,wan_i2v=")
    assert backends_from_env() == {"comfyui_i2v": f"{http_backend}/"}
    profile = RuntimeProfile.detect(test_nvenc=False)
    [probe] = profile.backends
    assert probe.reachable and not probe.renderable
    assert profile.reachable_backends == []
    assert profile.profile_class != ProfileClass.CLOUD_HYBRID
    assert any("not configured to render" in r for r in profile.class_reasons)


# --------------------------------------------------------------------------- classes


@pytest.mark.parametrize(
    ("vram", "expected"),
    [
        ([24.0], ProfileClass.LOCAL_GPU_HIGH),
        ([15.99], ProfileClass.LOCAL_GPU_HIGH),  # a "16 GB" card as NVML reports it
        ([8.0], ProfileClass.LOCAL_GPU_MID),
        ([7.6], ProfileClass.LOCAL_GPU_MID),
        ([6.0], ProfileClass.LOCAL_GPU_LOW),
        ([4.0], ProfileClass.LOCAL_GPU_LOW),
        ([2.0], ProfileClass.LOCAL_CPU_ONLY),
        ([], ProfileClass.LOCAL_CPU_ONLY),
        ([4.0, 12.0], ProfileClass.LOCAL_GPU_MID),  # the largest GPU decides
    ],
)
def test_class_thresholds(vram: list[float], expected: ProfileClass) -> None:
    p = make_profile(vram_gib=vram)
    assert p.profile_class == expected == p.local_class
    assert p.class_reasons


def test_cloud_hybrid_precedence() -> None:
    for vram in ([], [6.0], [8.0]):
        p = make_profile(vram_gib=vram, backends={"comfyui_i2v": True})
        assert p.profile_class == ProfileClass.CLOUD_HYBRID
        assert p.local_class != ProfileClass.CLOUD_HYBRID
    high = make_profile(vram_gib=[24.0], backends={"comfyui_i2v": True})
    assert high.profile_class == ProfileClass.LOCAL_GPU_HIGH
    assert any("fallback" in r for r in high.class_reasons)


# --------------------------------------------------------------------------- persistence


def test_json_round_trip_and_atomic_save(here: RuntimeProfile, tmp_path: Path) -> None:
    again = RuntimeProfile.from_json(here.to_json())
    assert again == here
    data = json.loads(here.to_json())
    assert data["profile_class"] == "LOCAL_CPU_ONLY" or here.gpu_count
    target = tmp_path / "deep" / "profile.json"
    here.save(target)
    here.save(target)  # overwrite in place
    assert RuntimeProfile.load(target) == here
    assert [p.name for p in target.parent.iterdir()] == ["profile.json"]  # no temp left behind
    gpu = make_profile(vram_gib=[8.0], backends={"wan_i2v": True})
    assert RuntimeProfile.from_json(gpu.to_json()) == gpu


# --------------------------------------------------------------------------- explanations


def test_explain_in_english_and_chinese(here: RuntimeProfile) -> None:
    en = explain_profile(here, "en")
    for head in ("What was found", "Class", "Why", "What it limits", "What would improve it"):
        assert f"{head}:" in en
    assert here.profile_class.value in en and "ffmpeg" in en
    zh = explain_profile(here, "zh")
    for head in ("检测结果", "等级", "原因", "限制", "改进建议"):
        assert f"{head}：" in zh
    assert here.profile_class.value in zh
    assert explain_profile(here, "zh-CN") == zh
    with pytest.raises(ValueError):
        explain_profile(here, "fr")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_explain_every_class(lang: str) -> None:
    for p in (
        make_profile(vram_gib=[24.0]),
        make_profile(vram_gib=[8.0], nvenc=False),
        make_profile(vram_gib=[6.0], mem_total_gb=4.0, disk_free_gb=3.0),
        make_profile(),
        make_profile(backends={"comfyui_i2v": True, "wan_i2v": False}),
    ):
        text = explain_profile(p, lang)
        assert p.profile_class.value in text
        assert len(text.splitlines()) >= 12
    cpu_zh = explain_profile(make_profile(), "zh")
    assert "NVIDIA" in cpu_zh and "render_backends.yaml" in cpu_zh
    assert "NVENC" in explain_profile(make_profile(vram_gib=[8.0], nvenc=False), lang)


def test_recommendations_are_the_explanations_last_section() -> None:
    mid = make_profile(vram_gib=[8.0], nvenc=False, mem_total_gb=4.0)
    en = recommendations(mid, "en")
    assert en[0].startswith("A GPU with 16 GB or more")  # what moves it up a class
    assert any("NVENC does not work" in r for r in en) and any("More memory" in r for r in en)
    text = explain_profile(mid, "en")
    assert text.endswith("".join(f"  - {r}\n" for r in en))
    assert "改进建议" in explain_profile(mid, "zh") and len(recommendations(mid, "zh")) == len(en)
    with pytest.raises(ValueError):
        recommendations(mid, "fr")
