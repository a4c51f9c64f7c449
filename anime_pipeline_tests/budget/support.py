"""Builders shared by the budgeter tests (no tests here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from anime_pipeline.domain.contracts import ResourceState
from anime_pipeline.domain.episode import CreativeControl, Episode
from anime_pipeline.domain.records import AudioManifest, EnergyCurve, ShotAudio

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ALL_BACKENDS = ("animatic", "source_clip", "wan_i2v", "comfyui_i2v")
GPU = ResourceState(gpu_count=1, vram_free_mb=24_000, workers_available=2,
                    available_backends=ALL_BACKENDS)


def shot(sid: str, type_: str = "establishing", ms: int = 3000, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": sid, "type": type_, "duration_ms": ms}
    if "source" not in kw:
        out["keyframe"] = f"keyframes/{sid}.png"
    out.update(kw)
    return out


def episode(shots: list[dict[str, Any]], fps: float = 24, height: int = 720) -> Episode:
    return Episode.model_validate({
        "tenant_id": "studio-a", "project_id": "moonlit-courier", "episode_id": "ep01",
        "format": {"width": height * 16 // 9 // 2 * 2, "height": height, "fps": fps},
        "audio": "audio/mix.wav", "shots": shots,
    })


def creative(**kw: Any) -> CreativeControl:
    return CreativeControl.model_validate(kw)


def manifest(entries: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """{shot_id: (event_density, peak_energy)} -> an audio manifest."""
    return {
        "version": "1.0", "episode_key": "studio-a/moonlit-courier/ep01",
        "shots": [{"shot_id": k, "event_density": d, "peak_energy": e, "mean_energy": e / 2}
                  for k, (d, e) in entries.items()],
    }


def sample() -> tuple[Episode, dict[str, Any]]:
    """A 12-shot, ~50 s episode with every shot type, a critical shot, a source shot."""
    shots = [
        shot("S01", "establishing", 4000, camera={"move": "push_in", "strength": 0.4}),
        shot("S02", "dialogue", 5000),
        shot("S03", "action", 2500, camera={"move": "shake", "strength": 0.9}),
        shot("S04", "insert", 1500),
        shot("S05", "action", 3000, criticality="critical",
             camera={"move": "pan_left", "strength": 0.7}),
        shot("S06", "dialogue", 6000, criticality="low"),
        shot("S07", "transition", 1200),
        shot("S08", "action", 4000, camera={"move": "shake", "strength": 0.5}),
        shot("S09", "establishing", 5000, source={"uri": "footage/take3.mp4", "in_ms": 0}),
        shot("S10", "dialogue", 4500),
        shot("S11", "action", 2000, camera={"move": "tilt_up", "strength": 0.6}),
        shot("S12", "establishing", 6000, criticality="critical"),
    ]
    audio = manifest({
        "S01": (1.0, 0.3), "S02": (0.5, 0.2), "S03": (5.0, 0.95), "S04": (1.0, 0.4),
        "S05": (4.0, 0.9), "S06": (0.2, 0.1), "S07": (2.0, 0.5), "S08": (3.5, 0.8),
        "S09": (1.0, 0.3), "S10": (0.8, 0.3), "S11": (3.0, 0.7), "S12": (0.5, 0.4),
    })
    return episode(shots), audio


def audio_record(ep: Episode, entries: dict[str, tuple[float, float]]) -> AudioManifest:
    """{shot_id: (event_density, peak_energy)} -> a typed audio manifest of ``ep``."""
    starts, t = {}, 0
    for s in ep.shots:
        starts[s.id], t = t, t + s.duration_ms
    shots = [
        ShotAudio(shot_id=s.id, start_ms=starts[s.id], end_ms=starts[s.id] + s.duration_ms,
                  onset_count=round(entries[s.id][0] * s.duration_ms / 1000), beat_count=0,
                  event_density=entries[s.id][0], peak_energy=entries[s.id][1],
                  mean_energy=entries[s.id][1] / 2)
        for s in ep.shots if s.id in entries
    ]
    return AudioManifest(
        episode_key=ep.key, source="audio/mix.wav", sample_rate=22_050,
        duration_ms=ep.duration_ms, episode_duration_ms=ep.duration_ms, tempo_bpm=None,
        beats_ms=[], onsets_ms=[], energy=EnergyCurve(hop_ms=50, values=[]), shots=shots,
    )
