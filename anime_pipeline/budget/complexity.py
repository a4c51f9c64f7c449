"""CB1, ``analyze_complexity``: per shot, motion complexity low/medium/high from the shot
type, the camera move, the audio action (the audio event manifest) and the duration; and
whether it is critical, degradable and part of the opening."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from anime_pipeline.budget.settings import PlanningError
from anime_pipeline.domain.episode import Episode, Shot
from anime_pipeline.domain.records import AudioManifest

TYPE_BASE = {"action": 0.45, "transition": 0.25, "establishing": 0.15, "insert": 0.10,
             "dialogue": 0.05}
CAMERA_WEIGHT = {"static": 0.0, "push_in": 0.10, "pull_out": 0.10, "pan_left": 0.12,
                 "pan_right": 0.12, "tilt_up": 0.12, "tilt_down": 0.12, "shake": 0.25}
DENSITY_SATURATION = 4.0  # onsets per second that count as "full" action
COMPLEXITY_THRESHOLDS = (0.30, 0.55)  # score < 0.30 low, < 0.55 medium, else high
OPENING_MIN_MS = 5000
OPENING_FRACTION = 0.10
OPENING_MAX_MS = 30000

# value weight of a shot: duration x importance x opening bonus
IMPORTANCE = {"low": 0.6, "normal": 1.0, "critical": 2.0}
OPENING_BONUS = 1.3

#: what the planner accepts as the audio event manifest
AudioManifestInput = AudioManifest | Mapping[str, Any] | None


@dataclass(frozen=True)
class ShotAnalysis:
    shot_id: str
    index: int
    shot_type: str
    duration_ms: int
    start_ms: int
    criticality: str
    complexity: str
    complexity_score: float
    critical: bool
    degradable: bool
    opening: bool
    render_priority: str
    has_source: bool
    has_keyframe: bool
    event_density: float
    peak_energy: float
    in_manifest: bool
    weight: float  # value weight: duration x importance x opening bonus


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


def _signals(density: Any, energy: Any) -> tuple[float, float]:
    return max(0.0, _num(density)), min(1.0, max(0.0, _num(energy)))


def manifest_signals(
    audio_manifest: AudioManifestInput,
    episode: Episode,
    warnings: list[str],
) -> dict[str, tuple[float, float]]:
    """``{shot_id: (event_density, peak_energy)}`` from an :class:`AudioManifest` or its
    JSON mapping, clamped to density >= 0 and energy in [0, 1]. A mapping is read
    tolerantly: a ``shots`` that is not a list, or entries without a string ``shot_id``,
    are treated as silence (with a warning for the former). Anything else is a
    :class:`PlanningError`."""
    if audio_manifest is None:
        warnings.append("no audio manifest: every shot treated as silence")
        return {}
    out: dict[str, tuple[float, float]] = {}
    if isinstance(audio_manifest, AudioManifest):
        key: Any = audio_manifest.episode_key
        for s in audio_manifest.shots:
            out[s.shot_id] = _signals(s.event_density, s.peak_energy)
    elif isinstance(audio_manifest, Mapping):
        key = audio_manifest.get("episode_key")
        shots = audio_manifest.get("shots", [])
        if not isinstance(shots, list):
            warnings.append("audio manifest `shots` is not a list: every shot treated as "
                            "silence")
            shots = []
        for entry in shots:
            if isinstance(entry, Mapping) and isinstance(entry.get("shot_id"), str):
                out[entry["shot_id"]] = _signals(entry.get("event_density"),
                                                 entry.get("peak_energy"))
    else:
        raise PlanningError("audio manifest must be an AudioManifest or a JSON object")
    if key is not None and key != episode.key:
        warnings.append(f"audio manifest is for {key!r}, not {episode.key!r}")
    unknown = sorted(set(out) - {s.id for s in episode.shots})
    if unknown:
        warnings.append(f"audio manifest has shots not in the episode: {unknown[:10]}")
    return out


def complexity_score(shot: Shot, event_density: float, peak_energy: float) -> float:
    """Motion complexity in [0, ~1.3]: shot type + camera move + audio action + duration."""
    score = TYPE_BASE.get(str(shot.type.value), 0.2)
    score += CAMERA_WEIGHT.get(str(shot.camera.move.value), 0.1) * (0.5 + shot.camera.strength)
    score += 0.25 * min(1.0, max(0.0, event_density) / DENSITY_SATURATION)
    score += 0.15 * min(1.0, max(0.0, peak_energy))
    if shot.duration_ms < 1500:
        score += 0.05  # quick cuts read as fast action
    elif shot.duration_ms > 8000:
        score -= 0.05  # long takes are usually calm
    return round(max(0.0, score), 4)


def complexity_level(score: float) -> str:
    low, medium = COMPLEXITY_THRESHOLDS
    return "low" if score < low else "medium" if score < medium else "high"


def analyze_complexity(
    episode: Episode,
    audio_manifest: AudioManifestInput,
    warnings: list[str] | None = None,
) -> list[ShotAnalysis]:
    """CB1: per shot, motion complexity low/medium/high; critical, degradable, opening."""
    warnings = warnings if warnings is not None else []
    ids = [s.id for s in episode.shots]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PlanningError(f"duplicate shot ids: {', '.join(dup)}")
    by_id = manifest_signals(audio_manifest, episode, warnings)
    total_ms = episode.duration_ms
    opening_ms = min(OPENING_MAX_MS, max(OPENING_MIN_MS, OPENING_FRACTION * total_ms))
    missing: list[str] = []
    out: list[ShotAnalysis] = []
    start = 0
    for i, shot in enumerate(episode.shots):
        entry = by_id.get(shot.id)
        if entry is None:
            missing.append(shot.id)
            density = energy = 0.0
        else:
            density, energy = entry
        score = complexity_score(shot, density, energy)
        crit = str(shot.criticality.value)
        critical = crit == "critical"
        opening = i == 0 or start < opening_ms
        priority = ("critical" if critical else "high" if opening
                    else "low" if crit == "low" else "normal")
        weight = shot.duration_ms / 1000.0 * IMPORTANCE[crit] * (OPENING_BONUS if opening else 1)
        out.append(ShotAnalysis(
            shot_id=shot.id, index=i, shot_type=str(shot.type.value),
            duration_ms=shot.duration_ms, start_ms=start, criticality=crit,
            complexity=complexity_level(score), complexity_score=score, critical=critical,
            degradable=not critical, opening=opening, render_priority=priority,
            has_source=shot.source is not None, has_keyframe=shot.keyframe is not None,
            event_density=round(density, 4), peak_energy=round(energy, 4),
            in_manifest=entry is not None, weight=weight,
        ))
        start += shot.duration_ms
    if missing and by_id:
        warnings.append(f"{len(missing)} shot(s) missing from the audio manifest, treated as "
                        f"silence: {missing[:10]}")
    return out
