from __future__ import annotations

import struct
import wave
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from anime_pipeline_tests.support.comfyui_double import ComfyDouble


def tiny_png(width: int = 2, height: int = 2, rgb: bytes = b"\xff\x40\x00") -> bytes:
    """A real PNG (8-bit RGB, one colour) built with zlib, so tiny folders need no ffmpeg."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + rgb * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_wav(path: Path, seconds: float = 2.0, rate: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = int(seconds * rate)
        w.writeframes(b"".join(struct.pack("<h", (i % 40 - 20) * 500) for i in range(frames)))


def minimal_episode(root: Path, **overrides: Any) -> Path:
    """A small valid episode folder: two shots, a tiny PNG and a WAV."""
    (root / "keyframes").mkdir(parents=True, exist_ok=True)
    (root / "keyframes" / "S01.png").write_bytes(tiny_png(64, 36))
    (root / "keyframes" / "S02.png").write_bytes(tiny_png(64, 36, b"\x10\x20\xc0"))
    write_wav(root / "audio" / "mix.wav")
    doc: dict[str, Any] = {
        "schema_version": "1.0",
        "tenant_id": "studio-a",
        "project_id": "moonlit-courier",
        "episode_id": "ep99",
        "title": "テスト",
        "format": {"width": 320, "height": 180, "fps": 24},
        "audio": "audio/mix.wav",
        "shots": [
            {"id": "S01", "type": "establishing", "duration_ms": 1000,
             "keyframe": "keyframes/S01.png", "camera": {"move": "push_in"},
             "dialogue": [{"speaker": "Aki", "text": "聞こえた?", "start_ms": 100,
                           "end_ms": 900}]},
            {"id": "S02", "type": "action", "duration_ms": 500, "criticality": "critical",
             "keyframe": "keyframes/S02.png", "camera": {"move": "shake", "strength": 0.8}},
        ],
    }
    doc.update(overrides)
    (root / "episode.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return root


@pytest.fixture
def doubles(tmp_path: Path) -> Iterator[Callable[..., ComfyDouble]]:
    """``doubles(**knobs)`` starts one more ComfyUI double; all are stopped at the end."""
    from anime_pipeline_tests.support.comfyui_double import ComfyDouble

    started: list[ComfyDouble] = []

    def start(**knobs: Any) -> ComfyDouble:
        d = ComfyDouble(work_dir=tmp_path / f"comfy{len(started)}", **knobs)
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def episode_dir(tmp_path: Path) -> Path:
    return minimal_episode(tmp_path / "ep")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own pipeline home, storage and instance home; no test touches the
    repo's (the variables stand for what a user would set; the code reads them, never writes)."""
    monkeypatch.setenv("ANIME_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ANIME_PIPELINE_STORAGE", str(tmp_path / "artifacts"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    for name in ("ANIME_PIPELINE_S3_BUCKET", "ANIME_PIPELINE_INBOX", "FFMPEG_BINARY",
                 "ANIME_PIPELINE_RENDER_CONCURRENCY", "ANIME_PIPELINE_BURN_SUBTITLES",
                 "ANIME_PIPELINE_WEBHOOK_URL", "ANIME_PIPELINE_UI_URL"):
        monkeypatch.delenv(name, raising=False)
