"""Audio analysis for the ``audio_event_manifest`` asset: onsets, tempo, beats, energy.

Plain numpy (no Dagster, no librosa). :func:`analyze` turns a mono float array into an
:class:`AudioAnalysis`; :func:`build_manifest` lays it over an episode's shots as the JSON
document the budgeter reads; :func:`manifest_problems` checks such a document.

Method, in short:

* **Onsets**: an STFT (Hann, ~46 ms window, ~11.6 ms hop), magnitudes pooled into
  log-spaced bands and log-compressed; the onset envelope is the half-wave-rectified spectral
  flux. Peaks are picked against a local maximum and a moving-average (adaptive) threshold,
  with a minimum gap and an absolute loudness gate so that silence and hiss give no onsets.
  Each onset is then refined in the time domain (the sharpest rise of a high-passed short-term
  energy near the frame) so it lands within a few milliseconds of the attack.
* **Tempo**: the autocorrelation of an accent envelope (the same flux, mildly compressed, so
  loud accents weigh more than soft off-beats), weighted by a log-normal prior around 120 BPM
  (one octave wide) inside 60–200 BPM, with an octave check (double tempo wins when every
  other pulse is as strong); the period is then refined from the peaks at its multiples.
  No clear periodicity (or fewer than four onsets) gives ``tempo_bpm = None``.
* **Beats**: dynamic programming à la Ellis (2007), "Beat tracking by dynamic programming":
  maximise onset strength at the beats minus a penalty on deviations from the tempo's period;
  beats are snapped to a detected onset when one lies very close.
* **Energy**: RMS over fixed 50 ms frames, normalised so the loudest frame is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anime_pipeline.domain.episode import Episode, EpisodeBundle
from anime_pipeline.domain.records import AudioManifest, EnergyCurve, ShotAudio

MANIFEST_VERSION = "1.0"
ENERGY_HOP_MS = 50
MIN_BPM = 60.0
MAX_BPM = 200.0
PRIOR_BPM = 120.0

# Absolute gate: frames quieter than this (dBFS, RMS) never carry an onset.
_GATE_DB = -55.0
# Periodicity below this (normalised autocorrelation at the chosen lag) means "no tempo".
_MIN_PERIODICITY = 0.12
_MIN_ONSETS_FOR_TEMPO = 4
# An attack must rise this much (dB, high-passed short-term energy) to be placed precisely.
_MIN_RISE_DB = 6.0


@dataclass(frozen=True)
class AudioAnalysis:
    """What :func:`analyze` finds. Times are seconds from the start of the audio."""

    sample_rate: int
    n_samples: int
    onset_times: np.ndarray
    tempo_bpm: float | None
    beat_times: np.ndarray
    energy: np.ndarray  # RMS per ENERGY_HOP_MS frame, normalised 0..1
    energy_hop_s: float = ENERGY_HOP_MS / 1000.0
    onset_envelope: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    envelope_rate: float = 0.0  # onset-envelope frames per second
    periodicity: float = 0.0  # 0..1, strength of the tempo's autocorrelation peak

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate if self.sample_rate else 0.0

    @property
    def duration_ms(self) -> int:
        return int(round(self.duration_s * 1000))


# --------------------------------------------------------------------------- STFT + envelope


def _stft_params(sample_rate: int) -> tuple[int, int]:
    n_fft = 1 << max(6, int(round(math.log2(sample_rate * 0.0464))))
    return n_fft, n_fft // 4


def _log_bands(n_fft: int, sample_rate: int, n_bands: int = 48) -> np.ndarray:
    """A (n_bins, n_bands) matrix of triangular filters spaced log-evenly 30 Hz .. 0.9 Nyquist."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lo, hi = 30.0, min(16000.0, 0.45 * sample_rate)
    edges = np.geomspace(lo, hi, n_bands + 2)
    fb = np.zeros((freqs.size, n_bands), dtype=np.float32)
    for b in range(n_bands):
        left, centre, right = edges[b], edges[b + 1], edges[b + 2]
        up = (freqs - left) / max(centre - left, 1e-9)
        down = (right - freqs) / max(right - centre, 1e-9)
        fb[:, b] = np.clip(np.minimum(up, down), 0.0, None)
        if not fb[:, b].any():  # very narrow low band: take the nearest bin
            fb[int(np.argmin(np.abs(freqs - centre))), b] = 1.0
    return fb


def _onset_envelope(
    x: np.ndarray, sample_rate: int, n_fft: int, hop: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two spectral-flux envelopes and the per-frame RMS (dBFS), one value per hop (centred).

    The first is strongly log-compressed (nearly level-invariant: a soft hat counts as much
    as a kick) and finds onsets; the second is only mildly compressed, so loud accents weigh
    more, and drives tempo and beat tracking.
    """
    n_frames = 1 + x.size // hop
    padded = np.concatenate(
        [np.zeros(n_fft // 2, np.float32), x, np.zeros(n_fft // 2 + hop, np.float32)]
    )
    frames_all = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
    fb = _log_bands(n_fft, sample_rate)
    scale = 2.0 / window.sum()
    bands = np.empty((n_frames, fb.shape[1]), dtype=np.float32)
    rms_db = np.empty(n_frames, dtype=np.float32)
    block = 2048
    for start in range(0, n_frames, block):
        fr = frames_all[start : start + block]
        mag = np.abs(np.fft.rfft(fr * window, axis=1)).astype(np.float32) * scale
        bands[start : start + block] = mag @ fb
        ms = np.mean(np.square(fr[:, n_fft // 4 : 3 * n_fft // 4], dtype=np.float32), axis=1)
        rms_db[start : start + block] = 10.0 * np.log10(ms + 1e-12)
    return _flux(bands, 1000.0), _flux(bands, 10.0), rms_db


def _flux(bands: np.ndarray, gamma: float) -> np.ndarray:
    """Half-wave-rectified spectral flux of ``log(1 + gamma * bands)``, averaged over bands."""
    logspec = np.log1p(gamma * bands)
    flux = np.zeros(bands.shape[0], dtype=np.float32)
    if bands.shape[0] > 1:
        flux[1:] = np.maximum(logspec[1:] - logspec[:-1], 0.0).mean(axis=1)
    return flux


# --------------------------------------------------------------------------- onsets


def _moving(fn: str, a: np.ndarray, before: int, after: int) -> np.ndarray:
    padded = np.pad(a, (before, after), mode="edge")
    win = np.lib.stride_tricks.sliding_window_view(padded, before + after + 1)
    out: np.ndarray = win.max(axis=1) if fn == "max" else win.mean(axis=1)
    return out


def _pick_peaks(env: np.ndarray, rms_db: np.ndarray, rate: float) -> np.ndarray:
    """Frame indices of onset peaks: local max, above an adaptive threshold, loud enough."""
    if env.size < 3 or float(env.max()) <= 0.0:
        return np.zeros(0, dtype=np.int64)
    norm = env / float(env.max())
    pre_max = post_max = max(1, int(round(0.03 * rate)))
    pre_avg = max(1, int(round(0.10 * rate)))
    post_avg = max(1, int(round(0.07 * rate)))
    wait = max(1, int(round(0.045 * rate)))
    local_max = _moving("max", norm, pre_max, post_max)
    local_avg = _moving("mean", norm, pre_avg, post_avg)
    # The loudness near the peak (the attack can sit a frame or two after the flux peak).
    loud = _moving("max", rms_db, 0, 2) > _GATE_DB
    cand = np.flatnonzero((norm >= local_max) & (norm >= local_avg + 0.06) & (norm > 0.03) & loud)
    picked: list[int] = []
    for i in cand:
        if picked and i - picked[-1] <= wait:
            continue
        picked.append(int(i))
    return np.asarray(picked, dtype=np.int64)


def _refine_onsets(
    x: np.ndarray, frames: np.ndarray, hop: int, n_fft: int, sample_rate: int
) -> np.ndarray:
    """Move each onset to the sharpest energy rise of the high-passed signal near its frame.

    Energy is taken over ~6 ms windows (longer than a period of the low notes, so sustained
    tones read as steady) every ~1.5 ms; the attack is where a window is loudest relative to
    the window just before it. When nothing rises clearly (a soft or masked onset), the flux
    frame is kept, corrected for its typical lead of about one hop.
    """
    if frames.size == 0:
        return np.zeros(0, dtype=np.float64)
    win = max(16, int(round(sample_rate * 0.006)))
    step = max(4, win // 4)
    hp = np.empty(x.size + 1, dtype=np.float64)
    hp[0] = 0.0
    hp[1] = 0.0
    hp[2:] = x[1:] - 0.95 * x[:-1]
    csum = np.cumsum(np.square(hp))  # csum[i] = energy of hp[:i]
    out = np.empty(frames.size, dtype=np.float64)
    half = n_fft // 2
    for k, f in enumerate(frames):
        centre = int(f) * hop
        # The log-compressed flux peaks as soon as its window reaches the attack, up to half
        # a window early; so search mostly after the frame's centre.
        first = max(win, centre - half // 2)
        last = min(x.size - win, centre + half + win)
        starts = np.arange(first, last, step)
        if starts.size < 2:
            out[k] = (centre + hop) / sample_rate
            continue
        now = csum[starts + win] - csum[starts]
        before = csum[starts] - csum[starts - win]
        level = 10.0 * np.log10(now / win + 1e-12)
        rise = level - 10.0 * np.log10(before / win + 1e-12)
        rise[level < level.max() - 10.0] = -np.inf  # the attack reaches the segment's peak
        best = int(np.argmax(rise))
        if rise[best] < _MIN_RISE_DB:
            out[k] = (centre + hop) / sample_rate
        else:
            out[k] = (starts[best] + step / 2) / sample_rate
    return out


# --------------------------------------------------------------------------- tempo


def _autocorr(env: np.ndarray, max_lag: int) -> np.ndarray:
    e = env - env.mean()
    n = e.size
    size = 1 << int(math.ceil(math.log2(max(2, 2 * n))))
    spec = np.fft.rfft(e, size)
    ac = np.fft.irfft(spec * np.conj(spec), size)[: min(n, max_lag + 1)]
    return np.asarray(ac, dtype=np.float64)


def _parabolic(ac: np.ndarray, i: int) -> float:
    if 0 < i < ac.size - 1:
        a, b, c = ac[i - 1], ac[i], ac[i + 1]
        den = a - 2 * b + c
        if den < 0:
            return i + 0.5 * (a - c) / den
    return float(i)


def _estimate_period(env: np.ndarray, rate: float) -> tuple[float | None, float]:
    """The beat period in envelope frames (fractional) and its periodicity 0..1."""
    min_lag = int(math.floor(rate * 60.0 / MAX_BPM))
    max_lag = int(math.ceil(rate * 60.0 / MIN_BPM))
    if env.size < 4 * max_lag // 2 or float(env.max()) <= 0.0:
        return None, 0.0
    # Smooth the envelope a little so that a period falling between two frames still
    # correlates as strongly as one landing on a frame.
    g = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
    smooth = np.convolve(env, g / g.sum(), mode="same")
    ac = _autocorr(smooth, 9 * max_lag)
    if ac[0] <= 0:
        return None, 0.0
    acn = ac / ac[0]
    lags = np.arange(min_lag, min(max_lag, acn.size - 2) + 1)
    if lags.size == 0:
        return None, 0.0
    bpm = 60.0 * rate / lags
    prior = np.exp(-0.5 * np.log2(bpm / PRIOR_BPM) ** 2)
    vals = acn[lags]
    is_peak = (vals >= acn[lags - 1]) & (vals >= acn[lags + 1]) & (vals > 0)
    if not is_peak.any():
        return None, 0.0
    scored = np.where(is_peak, vals * prior, -np.inf)
    best = int(lags[int(np.argmax(scored))])
    # Octave check: when the half period (double tempo) is still in range and correlates
    # almost as strongly, every other pulse is as strong as the beat: the pulse is faster.
    half = int(round(_parabolic(acn, best) / 2))
    if half >= min_lag:
        j = half - 1 + int(np.argmax(acn[half - 1 : half + 2]))
        if acn[j] >= 0.85 * acn[best]:
            best = j
    strength = float(acn[best])
    # White noise correlates at about 1/sqrt(n) per lag; ask for well above that.
    if strength < max(_MIN_PERIODICITY, 5.0 / math.sqrt(env.size)):
        return None, strength
    # Refine from the peaks at multiples of the period: P = sum(k * p_k) / sum(k^2).
    num = den = 0.0
    period = _parabolic(acn, best)
    for k in range(1, 9):
        guess = k * period
        tol = max(2, int(round(0.04 * guess)))
        lo, hi = int(guess) - tol, int(guess) + tol + 1
        if lo < 1 or hi >= acn.size:
            break
        j = lo + int(np.argmax(acn[lo:hi]))
        if not (acn[j] >= acn[j - 1] and acn[j] >= acn[j + 1]) or acn[j] < 0.5 * strength:
            break
        pk = _parabolic(acn, j)
        num += k * pk
        den += k * k
        period = num / den
    return period, strength


# --------------------------------------------------------------------------- beats


def _track_beats(env: np.ndarray, period: float, tightness: float = 100.0) -> np.ndarray:
    """Ellis (2007) dynamic-programming beat tracker; returns beat frame indices."""
    n = env.size
    sd = float(env.std())
    if n == 0 or sd <= 0:
        return np.zeros(0, dtype=np.int64)
    onset = env / sd
    half = int(round(period))
    g = np.exp(-0.5 * (np.arange(-half, half + 1) * 32.0 / period) ** 2)
    local = np.convolve(onset, g, mode="same")
    d_min = max(1, int(round(period / 2)))
    d_max = max(d_min + 1, int(round(2 * period)))
    offsets = np.arange(d_max, d_min - 1, -1)  # prev = i - offset, oldest first
    txcost = -tightness * np.log(offsets / period) ** 2
    cum = np.zeros(n, dtype=np.float64)
    back = np.full(n, -1, dtype=np.int64)
    first = True
    thresh = 0.01 * float(local.max())
    for i in range(n):
        lo = i - d_max
        if i - d_min < 0:
            cum[i] = local[i]
            continue
        if lo >= 0:
            cand = cum[lo : i - d_min + 1] + txcost
            start = lo
        else:
            cand = cum[0 : i - d_min + 1] + txcost[-lo:]
            start = 0
        j = int(np.argmax(cand))
        cum[i] = local[i] + cand[j]
        back[i] = start + j
        if first and local[i] < thresh:
            back[i] = -1
            cum[i] = local[i]
        else:
            first = False
    # Last beat: the last local maximum of the cumulative score that is a credible ending.
    is_max = np.zeros(n, dtype=bool)
    if n >= 3:
        is_max[1:-1] = (cum[1:-1] > cum[:-2]) & (cum[1:-1] >= cum[2:])
    is_max[-1] = n >= 2 and cum[-1] > cum[-2]
    peaks = np.flatnonzero(is_max)
    if peaks.size == 0:
        return np.zeros(0, dtype=np.int64)
    med = float(np.median(cum[peaks]))
    good = peaks[cum[peaks] >= 0.5 * med]
    i = int(good[-1]) if good.size else int(peaks[-1])
    beats: list[int] = []
    while i >= 0:
        beats.append(i)
        i = int(back[i])
    out = np.asarray(beats[::-1], dtype=np.int64)
    # Trim weak beats at both ends (lead-in/fade-out), as librosa does.
    if out.size:
        strength = local[out]
        limit = 0.5 * math.sqrt(float(np.mean(strength**2)))
        keep = np.flatnonzero(strength >= limit)
        if keep.size:
            out = out[keep[0] : keep[-1] + 1]
    return out


# --------------------------------------------------------------------------- energy


def energy_curve(
    x: np.ndarray, sample_rate: int, hop_s: float = ENERGY_HOP_MS / 1000
) -> np.ndarray:
    """RMS per ``hop_s`` frame, normalised so the loudest frame is 1 (all zeros for silence)."""
    step = sample_rate * hop_s
    n = int(math.ceil(x.size / step)) if x.size else 0
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    bounds = np.minimum(np.round(np.arange(n) * step).astype(np.int64), x.size - 1)
    sq = np.square(x, dtype=np.float64)
    sums = np.add.reduceat(sq, bounds)
    counts = np.diff(np.append(bounds, x.size)).astype(np.float64)
    rms = np.sqrt(sums / np.maximum(counts, 1.0))
    peak = float(rms.max())
    if peak < 1e-6:
        return np.zeros(n, dtype=np.float32)
    return (rms / peak).astype(np.float32)


# --------------------------------------------------------------------------- analyze


def analyze(samples: np.ndarray, sample_rate: int) -> AudioAnalysis:
    """Onsets, tempo, beats and the energy curve of a mono signal in [-1, 1]."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:  # (n, channels) or (channels, n): downmix
        x = x.mean(axis=1 if x.shape[0] > x.shape[1] else 0).astype(np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples, got an array of shape {x.shape}")
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    n_fft, hop = _stft_params(sample_rate)
    rate = sample_rate / hop
    energy = energy_curve(x, sample_rate)
    empty = np.zeros(0, dtype=np.float64)
    if x.size < n_fft:
        return AudioAnalysis(sample_rate, int(x.size), empty, None, empty, energy,
                             envelope_rate=rate)  # fmt: skip
    env, accent, rms_db = _onset_envelope(x, sample_rate, n_fft, hop)
    peaks = _pick_peaks(env, rms_db, rate)
    onsets = _refine_onsets(x, peaks, hop, n_fft, sample_rate)
    tempo: float | None = None
    beats = empty
    strength = 0.0
    if onsets.size >= _MIN_ONSETS_FOR_TEMPO:
        period, strength = _estimate_period(accent, rate)
        if period is not None:
            tempo = 60.0 * rate / period
            beat_frames = _track_beats(accent, period)
            beats = (beat_frames + 1) * (hop / sample_rate)  # the flux leads by ~1 hop
            beats = _snap(beats, onsets, tol=min(0.05, 0.2 * period / rate))
    return AudioAnalysis(
        sample_rate=sample_rate,
        n_samples=int(x.size),
        onset_times=onsets,
        tempo_bpm=tempo,
        beat_times=beats,
        energy=energy,
        onset_envelope=env,
        envelope_rate=rate,
        periodicity=strength,
    )


def _snap(beats: np.ndarray, onsets: np.ndarray, tol: float) -> np.ndarray:
    """Move each beat to the nearest onset when it is within ``tol`` seconds."""
    if beats.size == 0 or onsets.size == 0:
        return beats
    idx = np.clip(np.searchsorted(onsets, beats), 1, onsets.size - 1) if onsets.size > 1 else None
    if idx is None:
        nearest = np.full(beats.shape, onsets[0])
    else:
        left, right = onsets[idx - 1], onsets[idx]
        nearest = np.where(np.abs(beats - left) <= np.abs(right - beats), left, right)
    out = np.where(np.abs(nearest - beats) <= tol, nearest, beats)
    return np.asarray(np.maximum.accumulate(out), dtype=np.float64)


# --------------------------------------------------------------------------- manifest


def build_manifest(
    analysis: AudioAnalysis, episode: Episode | EpisodeBundle, source: str
) -> AudioManifest:
    """The ``audio_event_manifest`` (contract version 1.0) for ``episode``."""
    ep = episode.episode if isinstance(episode, EpisodeBundle) else episode
    onsets_ms = np.round(np.asarray(analysis.onset_times) * 1000).astype(np.int64)
    beats_ms = np.round(np.asarray(analysis.beat_times) * 1000).astype(np.int64)
    energy = np.asarray(analysis.energy, dtype=np.float64)
    hop_ms = int(round(analysis.energy_hop_s * 1000))
    frame_start = np.arange(energy.size) * hop_ms
    starts = ep.shot_starts_ms()
    shots = []
    for shot in ep.shots:
        start = starts[shot.id]
        end = start + shot.duration_ms
        n_on = int(np.count_nonzero((onsets_ms >= start) & (onsets_ms < end)))
        n_beat = int(np.count_nonzero((beats_ms >= start) & (beats_ms < end)))
        in_shot = energy[(frame_start >= start) & (frame_start < end)]
        shots.append(ShotAudio(
            shot_id=shot.id,
            start_ms=start,
            end_ms=end,
            onset_count=n_on,
            beat_count=n_beat,
            event_density=round(n_on / (shot.duration_ms / 1000.0), 3),
            peak_energy=round(float(in_shot.max()), 4) if in_shot.size else 0.0,
            mean_energy=round(float(in_shot.mean()), 4) if in_shot.size else 0.0,
        ))
    return AudioManifest(
        version=MANIFEST_VERSION,
        episode_key=ep.key,
        source=source,
        sample_rate=int(analysis.sample_rate),
        duration_ms=analysis.duration_ms,
        episode_duration_ms=ep.duration_ms,
        tempo_bpm=None if analysis.tempo_bpm is None else round(float(analysis.tempo_bpm), 2),
        beats_ms=[int(v) for v in beats_ms],
        onsets_ms=[int(v) for v in onsets_ms],
        energy=EnergyCurve(hop_ms=hop_ms, values=[round(float(v), 4) for v in energy]),
        shots=shots,
    )


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def manifest_problems(manifest: Any) -> list[str]:
    """Everything wrong with an audio event manifest (empty list: it follows the contract)."""
    if not isinstance(manifest, dict):
        return ["manifest: must be a JSON object"]
    p: list[str] = []
    required = {
        "version": str, "episode_key": str, "source": str, "sample_rate": int,
        "duration_ms": int, "episode_duration_ms": int, "beats_ms": list, "onsets_ms": list,
        "energy": dict, "shots": list,
    }  # fmt: skip
    for key, typ in required.items():
        if key not in manifest:
            p.append(f"{key}: required field is missing")
        elif not isinstance(manifest[key], typ) or isinstance(manifest[key], bool):
            p.append(f"{key}: must be {typ.__name__}")
    if "tempo_bpm" not in manifest:
        p.append("tempo_bpm: required field is missing (null when there is no tempo)")
    elif manifest["tempo_bpm"] is not None and not (
        _is_num(manifest["tempo_bpm"]) and MIN_BPM <= manifest["tempo_bpm"] <= MAX_BPM
    ):
        p.append(f"tempo_bpm: must be null or a number in {MIN_BPM:g}..{MAX_BPM:g}")
    if p:
        return p
    if manifest["version"] != MANIFEST_VERSION:
        p.append(f"version: expected {MANIFEST_VERSION!r}, got {manifest['version']!r}")
    if manifest["sample_rate"] <= 0:
        p.append("sample_rate: must be positive")
    duration = manifest["duration_ms"]
    if duration < 0:
        p.append("duration_ms: must not be negative")
    for key in ("beats_ms", "onsets_ms"):
        values = manifest[key]
        if not all(_is_int(v) for v in values):
            p.append(f"{key}: must hold integers")
            continue
        if any(b < a for a, b in zip(values, values[1:], strict=False)):
            p.append(f"{key}: must be sorted ascending")
        if values and (values[0] < 0 or values[-1] > duration):
            p.append(f"{key}: values must lie within 0..duration_ms ({duration})")
    energy = manifest["energy"]
    hop = energy.get("hop_ms")
    vals = energy.get("values")
    if not _is_int(hop) or hop <= 0:
        p.append("energy.hop_ms: must be a positive integer")
    if not isinstance(vals, list) or not all(_is_num(v) and 0.0 <= v <= 1.0 for v in vals):
        p.append("energy.values: must be a list of numbers in 0..1")
    elif _is_int(hop) and hop > 0 and len(vals) != math.ceil(duration / hop):
        p.append(f"energy.values: expected {math.ceil(duration / hop)} values, got {len(vals)}")
    expect_start = 0
    seen: set[str] = set()
    for i, shot in enumerate(manifest["shots"]):
        where = f"shots[{i}]"
        if not isinstance(shot, dict):
            p.append(f"{where}: must be an object")
            continue
        sid = shot.get("shot_id")
        if not isinstance(sid, str) or not sid:
            p.append(f"{where}.shot_id: must be a non-empty string")
        elif sid in seen:
            p.append(f"{where}.shot_id: duplicate {sid!r}")
        else:
            seen.add(sid)
        for key in ("start_ms", "end_ms", "onset_count", "beat_count"):
            if not _is_int(shot.get(key)) or shot[key] < 0:
                p.append(f"{where}.{key}: must be a non-negative integer")
        for key in ("event_density", "peak_energy", "mean_energy"):
            if not _is_num(shot.get(key)) or shot[key] < 0:
                p.append(f"{where}.{key}: must be a non-negative number")
        for key in ("peak_energy", "mean_energy"):
            if _is_num(shot.get(key)) and shot[key] > 1:
                p.append(f"{where}.{key}: must be at most 1")
        start, end = shot.get("start_ms"), shot.get("end_ms")
        if isinstance(start, int) and isinstance(end, int):
            if start != expect_start:
                p.append(f"{where}.start_ms: expected {expect_start} (shots play back to back)")
            if end <= start:
                p.append(f"{where}.end_ms: must be after start_ms")
            expect_start = end
            if (
                _is_num(shot.get("mean_energy"))
                and _is_num(shot.get("peak_energy"))
                and shot["mean_energy"] > shot["peak_energy"] + 1e-9
            ):
                p.append(f"{where}.mean_energy: exceeds peak_energy")
    if manifest["shots"] and expect_start != manifest["episode_duration_ms"]:
        p.append(
            f"shots: end at {expect_start} ms but episode_duration_ms is "
            f"{manifest['episode_duration_ms']}"
        )
    return p
