"""Audio analysis on synthetic signals with known truth, and decoding through real ffmpeg."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest

from anime_pipeline.domain.audio import (
    ENERGY_HOP_MS,
    AudioAnalysis,
    analyze,
    build_manifest,
    manifest_problems,
)
from anime_pipeline.domain.episode import Episode
from anime_pipeline.media.audio_io import AudioDecodeError, decode_audio

SR = 22050


def _hit(kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "click":  # a short noise burst
        n = int(0.01 * sr)
        return (rng.standard_normal(n) * np.exp(-np.arange(n) / (0.002 * sr)) * 0.8).astype(
            np.float32
        )
    n = int(0.15 * sr)  # a kick: falling pitch, exponential decay, faded tail
    t = np.arange(n) / sr
    freq = 50 + 100 * np.exp(-t / 0.03)
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.06) * np.linspace(1, 0, n)
    return (0.9 * body).astype(np.float32)


def click_track(
    times: np.ndarray, duration_s: float, *, kind: str = "click", sr: int = SR, gain: float = 1.0
) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.zeros(int(duration_s * sr), dtype=np.float32)
    hit = _hit(kind, sr, rng) * gain
    for t in times:
        i = int(round(t * sr))
        end = min(x.size, i + hit.size)
        x[i:end] += hit[: end - i]
    return x


def beat_times(bpm: float, duration_s: float, offset: float = 0.25) -> np.ndarray:
    return np.arange(offset, duration_s - 0.2, 60.0 / bpm)


def _nearest_error(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each true time, the distance to the nearest found time (seconds)."""
    if found.size == 0:
        return np.full(truth.shape, np.inf)
    return np.array([np.min(np.abs(found - t)) for t in truth])


@pytest.mark.parametrize("bpm", [90, 120, 150])
@pytest.mark.parametrize("kind", ["click", "kick"])
def test_click_track_tempo_onsets_and_beats(bpm: int, kind: str) -> None:
    duration = 20.0
    truth = beat_times(bpm, duration)
    a = analyze(click_track(truth, duration, kind=kind), SR)

    assert a.tempo_bpm is not None
    assert abs(a.tempo_bpm - bpm) / bpm < 0.02, a.tempo_bpm

    # every click found within 30 ms, and nothing else
    assert np.max(_nearest_error(a.onset_times, truth)) < 0.030
    assert abs(a.onset_times.size - truth.size) <= 1
    assert np.all(np.diff(a.onset_times) > 0)

    # beats sit on the clicks and cover the track
    assert a.beat_times.size >= 0.9 * truth.size
    assert np.max(_nearest_error(truth, a.beat_times)) < 0.030
    ibi = np.median(np.diff(a.beat_times))
    assert abs(ibi - 60.0 / bpm) < 0.01


def test_tempo_octave_prefers_beat_with_eighth_note_hats() -> None:
    """Strong kicks on the beat and weak hats between them: the tempo is the kicks'."""
    duration, bpm = 20.0, 90
    kicks = beat_times(bpm, duration)
    hats = kicks[:-1] + 30.0 / bpm
    x = click_track(kicks, duration, kind="kick") + click_track(hats, duration, gain=0.25)
    a = analyze(x, SR)
    assert a.tempo_bpm is not None and abs(a.tempo_bpm - bpm) / bpm < 0.02
    assert np.max(_nearest_error(a.onset_times, np.sort(np.r_[kicks, hats]))) < 0.030


def test_silence_has_no_tempo_no_onsets_and_zero_energy() -> None:
    a = analyze(np.zeros(10 * SR, dtype=np.float32), SR)
    assert a.tempo_bpm is None
    assert a.onset_times.size == 0 and a.beat_times.size == 0
    assert a.energy.size == math.ceil(10_000 / ENERGY_HOP_MS)
    assert not a.energy.any()
    assert a.duration_ms == 10_000


def test_white_noise_and_faint_hiss_have_no_tempo() -> None:
    rng = np.random.default_rng(3)
    noise = (0.3 * rng.standard_normal(20 * SR)).astype(np.float32)
    assert analyze(noise, SR).tempo_bpm is None
    hiss = (1e-5 * rng.standard_normal(5 * SR)).astype(np.float32)
    a = analyze(hiss, SR)
    assert a.tempo_bpm is None and a.onset_times.size == 0


def test_tiny_and_empty_inputs() -> None:
    for n in (0, 1, 100):
        a = analyze(np.zeros(n, dtype=np.float32), SR)
        assert a.tempo_bpm is None and a.onset_times.size == 0
    with pytest.raises(ValueError):
        analyze(np.zeros(100), 0)


def test_energy_curve_is_normalised_and_follows_loudness() -> None:
    t = np.arange(4 * SR) / SR
    x = np.sin(2 * np.pi * 220 * t).astype(np.float32)
    x[: 2 * SR] *= 0.1  # quiet first half
    e = analyze(x, SR).energy
    assert e.size == 80
    assert e.dtype == np.float32
    assert float(e.max()) == pytest.approx(1.0)
    assert float(e.min()) >= 0.0
    assert np.allclose(e[:38], 0.1, atol=0.01)
    assert np.allclose(e[42:], 1.0, atol=0.01)
    assert analyze(x * 0.5, SR).energy == pytest.approx(e, abs=1e-4)  # level-independent


def test_stereo_input_is_downmixed() -> None:
    truth = beat_times(120, 10.0)
    mono = click_track(truth, 10.0)
    a = analyze(np.stack([mono, mono], axis=1), SR)
    assert a.tempo_bpm is not None and abs(a.tempo_bpm - 120) < 2.4


def test_sixty_seconds_of_kicks_have_their_tempo() -> None:
    # (how fast: benchmarks/audio.py; tests assert no timings)
    truth = beat_times(120, 60.0)
    a = analyze(click_track(truth, 60.0, kind="kick"), SR)
    assert a.tempo_bpm is not None and abs(a.tempo_bpm - 120) < 1.2


# --------------------------------------------------------------------------- manifest


def _episode(durations: list[int]) -> Episode:
    return Episode.model_validate(
        {
            "tenant_id": "studio-a",
            "project_id": "moonlit-courier",
            "episode_id": "ep01",
            "format": {"width": 1280, "height": 720, "fps": 24},
            "audio": "audio/mix.wav",
            "shots": [
                {"id": f"S{i + 1:02d}", "type": "action", "duration_ms": d,
                 "keyframe": f"keyframes/S{i + 1:02d}.png"}
                for i, d in enumerate(durations)
            ],  # fmt: skip
        }
    )


def test_manifest_per_shot_counts_density_and_energy() -> None:
    # 0-4 s: a click every 0.5 s, quiet; 4-8 s: every 0.125 s, loud. Audio ends at 8 s;
    # the episode has a third shot 8-10 s past the end of the audio.
    sparse = np.arange(0.25, 4.0, 0.5)
    dense = np.arange(4.0625, 7.9, 0.125)
    x = click_track(sparse, 8.0, gain=0.3) + click_track(dense, 8.0, gain=1.0)
    a = analyze(x, SR)
    ep = _episode([4000, 4000, 2000])
    m = build_manifest(a, ep, "audio/mix.wav").model_dump(mode="json")

    assert manifest_problems(m) == []
    assert list(m) == [
        "version", "episode_key", "source", "sample_rate", "duration_ms",
        "episode_duration_ms", "tempo_bpm", "beats_ms", "onsets_ms", "energy", "shots",
        "inputs_sha256",  # what it was made from (set by the planning use case)
    ]  # fmt: skip
    assert m["version"] == "1.0"
    assert m["episode_key"] == "studio-a/moonlit-courier/ep01"
    assert m["source"] == "audio/mix.wav"
    assert m["sample_rate"] == SR
    assert m["duration_ms"] == 8000 and m["episode_duration_ms"] == 10_000
    assert m["energy"]["hop_ms"] == 50 and len(m["energy"]["values"]) == 160
    assert all(v == round(v, 4) and 0 <= v <= 1 for v in m["energy"]["values"])
    assert all(isinstance(v, int) for v in m["onsets_ms"] + m["beats_ms"])
    json.dumps(m)  # plain JSON types only

    s1, s2, s3 = m["shots"]
    assert (s1["start_ms"], s1["end_ms"], s2["start_ms"], s3["end_ms"]) == (0, 4000, 4000, 10_000)
    assert s1["onset_count"] == sparse.size and s2["onset_count"] == dense.size
    assert s1["event_density"] == pytest.approx(sparse.size / 4.0, abs=1e-3)
    assert s2["event_density"] > 3 * s1["event_density"]
    assert s2["peak_energy"] > s1["peak_energy"]
    assert s2["mean_energy"] > s1["mean_energy"]
    assert s1["mean_energy"] <= s1["peak_energy"]
    assert s3 == {
        "shot_id": "S03", "start_ms": 8000, "end_ms": 10_000, "onset_count": 0,
        "beat_count": 0, "event_density": 0.0, "peak_energy": 0.0, "mean_energy": 0.0,
    }  # fmt: skip
    # onsets are counted in exactly one shot each
    assert sum(s["onset_count"] for s in m["shots"]) == len(m["onsets_ms"])


def test_manifest_of_silence_has_null_tempo() -> None:
    a = analyze(np.zeros(3 * SR, dtype=np.float32), SR)
    m = build_manifest(a, _episode([3000]), "audio/mix.wav").model_dump(mode="json")
    assert m["tempo_bpm"] is None and m["onsets_ms"] == [] and m["beats_ms"] == []
    assert m["shots"][0]["peak_energy"] == 0.0
    assert manifest_problems(m) == []
    assert json.loads(json.dumps(m))["tempo_bpm"] is None


def test_manifest_problems_reports_broken_documents() -> None:
    a = AudioAnalysis(
        sample_rate=SR, n_samples=2 * SR, onset_times=np.array([0.5, 1.0]), tempo_bpm=120.0,
        beat_times=np.array([0.5, 1.0]), energy=np.linspace(0, 1, 40, dtype=np.float32),
    )  # fmt: skip
    good = build_manifest(a, _episode([1000, 1000]), "audio/mix.wav").model_dump(mode="json")
    assert manifest_problems(good) == []

    assert manifest_problems([]) == ["manifest: must be a JSON object"]
    missing = dict(good)
    del missing["shots"]
    assert any(p.startswith("shots:") for p in manifest_problems(missing))

    def broken(**changes: object) -> list[str]:
        return manifest_problems({**json.loads(json.dumps(good)), **changes})

    assert any("onsets_ms" in p for p in broken(onsets_ms=[1000, 500]))
    assert any("tempo_bpm" in p for p in broken(tempo_bpm=400))
    assert any("energy.values" in p for p in broken(energy={"hop_ms": 50, "values": [2.0]}))
    bad_shots = json.loads(json.dumps(good["shots"]))
    bad_shots[1]["start_ms"] = 1500
    assert any("shots[1].start_ms" in p for p in broken(shots=bad_shots))


# --------------------------------------------------------------------------- decoding


def _write_wav(path: Path, data: np.ndarray, sr: int) -> None:
    pcm = np.clip(np.round(data * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(pcm.shape[1] if pcm.ndim == 2 else 1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def test_decode_audio_reads_a_real_wav(tmp_path: Path) -> None:
    sr = 44100
    t = np.arange(int(1.5 * sr)) / sr
    tone = 0.5 * np.sin(2 * np.pi * 441 * t)
    path = tmp_path / "tone.wav"
    _write_wav(path, np.stack([tone, tone], axis=1), sr)

    x = decode_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(x.size - int(1.5 * SR)) <= 2
    assert float(np.abs(x).max()) <= 1.0
    assert 0.2 < float(np.abs(x[1000:-1000]).max()) < 0.75
    # 441 Hz survives resampling: zero crossings per second
    crossings = np.count_nonzero(np.diff(np.signbit(x[1000:-1000])))
    assert abs(crossings / ((x.size - 2000) / SR) - 882) < 10

    assert abs(decode_audio(path, sample_rate=8000).size - 12000) <= 2


def test_decode_then_analyze_round_trip(tmp_path: Path) -> None:
    sr = 48000
    truth = beat_times(150, 12.0)
    mono = click_track(truth, 12.0, kind="kick", sr=sr)
    path = tmp_path / "beat.wav"
    _write_wav(path, np.stack([mono, mono], axis=1) * 0.8, sr)
    a = analyze(decode_audio(path), SR)
    assert a.tempo_bpm is not None and abs(a.tempo_bpm - 150) / 150 < 0.02
    assert np.max(_nearest_error(a.onset_times, truth)) < 0.030


def test_decode_audio_refuses_non_audio_with_the_file_name(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio\n")
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(bogus)
    assert str(bogus) in str(info.value)

    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioDecodeError, match="missing.wav"):
        decode_audio(missing)
