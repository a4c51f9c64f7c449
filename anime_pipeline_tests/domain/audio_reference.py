"""The audio analysis as it was before it streamed: the reference the streaming one is tested
against (``test_audio_streaming.py``). A verbatim copy of ``anime_pipeline/domain/audio.py`` at
commit d0c7141 (its analysis functions) and of ``decode_audio`` from ``media/audio_io.py``: the
whole mix decoded into one array, then analysed in one go. Not used by the product; do not
"fix" it — it is the yardstick.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from anime_pipeline.domain.audio import AudioAnalysis
from anime_pipeline.media.ffmpeg import input_args, run_stdout

ENERGY_HOP_MS = 50
MIN_BPM = 60.0
MAX_BPM = 200.0
PRIOR_BPM = 120.0
_GATE_DB = -55.0
_MIN_PERIODICITY = 0.12
_MIN_ONSETS_FOR_TEMPO = 4
_MIN_RISE_DB = 6.0


def decode_audio(path: str | Path, sample_rate: int = 22050, *, timeout: float = 300.0
                 ) -> np.ndarray:
    """The whole mix as one mono float32 array (the old ``decode_audio``, errors aside)."""
    args = [
        "-v", "error", *input_args(Path(path)), "-map", "0:a:0", "-vn", "-sn", "-dn",
        "-f", "f32le", "-acodec", "pcm_f32le", "-ac", "1", "-ar", str(int(sample_rate)), "-",
    ]  # fmt: skip
    raw = run_stdout(args, timeout=timeout)
    usable = len(raw) - len(raw) % 4
    samples = np.frombuffer(raw[:usable], dtype="<f4").astype(np.float32, copy=True)
    np.nan_to_num(samples, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(samples, -1.0, 1.0, out=samples)
    return samples


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
