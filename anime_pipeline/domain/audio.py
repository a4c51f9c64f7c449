"""Audio analysis for the ``audio_event_manifest`` asset: onsets, tempo, beats, energy.

Plain numpy (no Dagster, no librosa). :class:`AudioAnalyzer` takes a mono signal in pieces
of any size (:meth:`~AudioAnalyzer.feed`, then :meth:`~AudioAnalyzer.finish`) and gives an
:class:`AudioAnalysis`; :func:`analyze_stream` runs it over an iterable of pieces (the
pipeline's: ffmpeg's decode, see :func:`anime_pipeline.media.audio_io.stream_audio`),
:func:`analyze` over one array. :func:`build_manifest` lays the result over an episode's
shots as the JSON document the budgeter reads; :func:`manifest_problems` checks such a
document.

Streaming: every per-sample step (the STFT, the loudness of each frame, the 50 ms energy
frames, the placing of each onset candidate in the time domain) runs on the piece at hand
plus a tail of about 120 ms, vectorised over blocks of frames; what is kept per
envelope frame (11.6 ms) is three float32 and per 50 ms one float64, what tempo and beat
tracking need whole. The result does not depend on how the signal was cut (the tests check
it bit for bit) and equals that of the whole-array analysis it replaced up to float
rounding (``anime_pipeline_tests/domain/test_audio_streaming.py``).

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
from collections.abc import Iterable
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
    back = np.full(n, -1, dtype=np.int64)
    thresh = 0.01 * float(local.max())
    # Frames before d_min, and every frame before the first strong one after them, start a
    # path of their own (cum = local, no predecessor).
    strong = np.flatnonzero(local[d_min:] >= thresh)
    i0 = d_min + int(strong[0]) if strong.size else n
    # From i0 on: cum[i] = local[i] + max over prev in i-d_max..i-d_min of cum[prev] +
    # txcost. The d_min frames from a on look only at frames before a, so they are done
    # together: row i of the sliding view is cum[i-d_max : i-d_min+1] (-inf before frame 0,
    # so argmax picks, as the one-frame loop did, the oldest of equal scores).
    padded = np.full(n + d_max, -np.inf, dtype=np.float64)
    cum = padded[d_max:]  # the scores, with -inf before frame 0
    cum[:i0] = local[:i0]
    rows = np.lib.stride_tricks.sliding_window_view(padded, d_max - d_min + 1)
    cand = np.empty((d_min, d_max - d_min + 1), dtype=np.float64)
    ar = np.arange(d_min)
    for a in range(i0, n, d_min):
        b = min(n, a + d_min)
        c, k = cand[: b - a], ar[: b - a]
        np.add(rows[a:b], txcost, out=c)
        j = c.argmax(axis=1)
        np.add(local[a:b], c[k, j], out=cum[a:b])
        back[a:b] = (a - d_max) + k + j
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


# --------------------------------------------------------------------------- streaming state

#: STFT frames transformed together: bounded temporaries (about 3 MB), few numpy calls.
_BLOCK_FRAMES = 256
#: :meth:`AudioAnalyzer.feed` takes longer pieces this many samples at a time.
_FEED_SAMPLES = 1 << 18


class _Series:
    """A growing 1-D array (capacity doubles): what the analysis keeps per envelope frame."""

    __slots__ = ("_a", "n")

    def __init__(self, dtype: type, capacity: int = 1024) -> None:
        self._a: np.ndarray = np.empty(capacity, dtype=dtype)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.n + values.size
        if need > self._a.size:
            grown = np.empty(max(need, 2 * self._a.size), dtype=self._a.dtype)
            grown[: self.n] = self._a[: self.n]
            self._a = grown
        self._a[self.n : need] = values
        self.n = need

    @property
    def values(self) -> np.ndarray:
        return self._a[: self.n]

    @property
    def nbytes(self) -> int:
        return int(self._a.nbytes)


class _Bands:
    """The log-spaced triangular band energies of magnitude spectra, without a matrix product.

    Equal to ``mag @ _log_bands(n_fft, sample_rate)`` (up to rounding): the band edges split
    the bins into segments; bin k in segment s weighs ``u_k`` (its position in the segment,
    0..1) in band s (rising slope) and ``1 - u_k`` in band s - 1 (falling slope), so with the
    segment sums T_s = sum m_k and R_s = sum u_k m_k, band b = R_b + T_{b+1} - R_{b+1}. Two
    ``reduceat`` calls over contiguous bins instead of a BLAS product, which is single-threaded
    and so never waits on a BLAS thread that shares its core with ffmpeg.
    """

    def __init__(self, n_fft: int, sample_rate: int, n_bands: int = 48) -> None:
        freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
        lo, hi = 30.0, min(16000.0, 0.45 * sample_rate)
        if hi <= lo:
            raise ValueError(f"sample_rate {sample_rate} Hz is too low for the analysis")
        edges = np.geomspace(lo, hi, n_bands + 2)
        bounds = np.searchsorted(freqs, edges, side="left")  # segment s: bins bounds[s]..[s+1]
        self.end = int(bounds[-1])
        self.n_bands = n_bands
        seg = np.searchsorted(bounds, np.arange(self.end), side="right") - 1
        u = np.zeros(self.end, dtype=np.float64)
        inside = seg >= 0
        s = seg[inside]
        u[inside] = (freqs[: self.end][inside] - edges[s]) / (edges[s + 1] - edges[s])
        self.u = u
        self.empty_segments = np.flatnonzero(bounds[1:] <= bounds[:-1])
        self.starts = np.minimum(bounds[:-1], max(self.end - 1, 0))
        # A band with no bin inside its triangle takes its nearest bin (as _log_bands does).
        fb = _log_bands(n_fft, sample_rate)
        single = [b for b in range(n_bands) if np.count_nonzero(fb[:, b]) == 1
                  and not ((freqs > edges[b]) & (freqs < edges[b + 2])).any()]
        self.fallback_bands = np.asarray(single, dtype=np.int64)
        self.fallback_bins = np.asarray([int(np.argmax(fb[:, b])) for b in single],
                                        dtype=np.int64)

    def __call__(self, mag: np.ndarray) -> np.ndarray:
        nb = self.n_bands
        m = mag[:, : self.end]
        totals = np.add.reduceat(m, self.starts, axis=1)
        rising = np.add.reduceat(m * self.u, self.starts, axis=1)
        totals[:, self.empty_segments] = 0.0
        rising[:, self.empty_segments] = 0.0
        out = rising[:, :nb] + totals[:, 1 : nb + 1] - rising[:, 1 : nb + 1]
        if self.fallback_bands.size:
            out[:, self.fallback_bands] = mag[:, self.fallback_bins]
        return out


def _window_reduce(fn: str, a: np.ndarray, start: int, stop: int, before: int, after: int,
                   ) -> np.ndarray:
    """``_moving(fn, a, before, after)[start:stop]`` reading only ``a[start-before:stop+after]``
    (edge-padded at the ends of ``a``): the same windows, on the frames at hand (float64)."""
    lo, hi = max(0, start - before), min(a.size, stop + after)
    seg = np.pad(a[lo:hi].astype(np.float64), (before - (start - lo), after - (hi - stop)),
                 mode="edge")
    n, width = stop - start, before + after + 1
    if fn == "max":
        out = seg[:n].copy()
        for i in range(1, width):
            np.maximum(out, seg[i : i + n], out=out)
        return out
    csum = np.concatenate((np.zeros(1), np.cumsum(seg)))
    mean: np.ndarray = (csum[width:] - csum[:-width]) / width
    return mean


class AudioAnalyzer:
    """The analysis of a mono signal fed in pieces of any size: :meth:`feed`, then
    :meth:`finish` once. The result is that of the whole signal, whatever the pieces.

    What it holds does not grow with the signal's samples: between two feeds a tail of at
    most about 120 ms (under three STFT windows: :attr:`retained_samples`), while feeding
    the piece and the STFT's block temporaries (a few MB); and per envelope frame (every
    ``hop`` samples, 11.6 ms) three float32 (the onset and accent envelopes and the frame
    loudness), plus the 50 ms energy frames and the onset candidates: about 1 KB per second
    of audio (:attr:`series_bytes`), a hundredth of the samples' own size; they are what
    tempo and beat tracking need whole.
    """

    def __init__(self, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = int(sample_rate)
        n_fft, hop = _stft_params(self.sample_rate)
        self._n_fft, self._hop = n_fft, hop
        self.rate = self.sample_rate / hop
        self._pad = n_fft // 2
        window = np.hanning(n_fft + 1)[:-1].astype(np.float32)
        self._window = window
        self._scale = float(2.0 / window.sum())
        self._bands = _Bands(n_fft, self.sample_rate)
        self._t64 = np.empty((_BLOCK_FRAMES, n_fft), dtype=np.float64)
        self._spec = np.empty((_BLOCK_FRAMES, n_fft // 2 + 1), dtype=np.complex128)
        self._mag = np.empty((_BLOCK_FRAMES, n_fft // 2 + 1), dtype=np.float64)
        # the zero-padded signal (n_fft/2 zeros first), held from padded index _p0 on
        self._buf = np.zeros(self._pad, dtype=np.float32)
        self._p0 = 0
        self._n = 0  # samples fed
        self._frames = 0  # STFT frames done
        self._prev_logs: tuple[np.ndarray, np.ndarray] | None = None
        self._env = _Series(np.float32)
        self._accent = _Series(np.float32)
        self._rms_db = _Series(np.float32)
        self._env_max = 0.0
        # peak picking's windows (as in _pick_peaks) and the onset refinement's geometry
        self._pre_max = max(1, int(round(0.03 * self.rate)))
        self._pre_avg = max(1, int(round(0.10 * self.rate)))
        self._post_avg = max(1, int(round(0.07 * self.rate)))
        self._lookahead = max(self._pre_max, self._post_avg, 2)
        self._win = max(16, int(round(self.sample_rate * 0.006)))
        self._step = max(4, self._win // 4)
        half = n_fft // 2
        # the most search windows a frame has (those near the start have fewer), and the
        # samples its refinement reads past its first search window's start
        self._max_starts = -(-(half // 2 + half + self._win) // self._step)
        self._reach = self._win + (self._max_starts - 1) * self._step + 1
        self._classified = 0  # frames whose candidacy is decided
        self._pending = np.zeros(0, dtype=np.int64)  # candidates waiting for their samples
        self._cand_frames = _Series(np.int64)
        self._cand_times = _Series(np.float64)
        # the energy curve's frames
        self._energy_step = self.sample_rate * (ENERGY_HOP_MS / 1000)
        self._energy_frames = 0
        self._rms = _Series(np.float64)
        self._finished = False

    # ------------------------------------------------------------------ public

    @property
    def retained_samples(self) -> int:
        """Samples held between two :meth:`feed` calls (bounded by construction)."""
        return int(self._buf.size)

    @property
    def series_bytes(self) -> int:
        """Bytes of the per-frame series (they grow with the duration, ~1 KB per second)."""
        return sum(s.nbytes for s in (self._env, self._accent, self._rms_db, self._rms,
                                      self._cand_frames, self._cand_times))

    def feed(self, samples: np.ndarray) -> None:
        """Analyse the next samples (mono, [-1, 1]; NaN and infinities count as silence)."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"expected mono samples, got an array of shape {x.shape}")
        for i in range(0, x.size, _FEED_SAMPLES):
            part = x[i : i + _FEED_SAMPLES]
            if not np.isfinite(part).all():
                part = np.nan_to_num(part, nan=0.0, posinf=0.0, neginf=0.0)
            self._buf = np.concatenate((self._buf, part))
            self._n += part.size
            self._advance(final=False)
            self._trim()

    def finish(self) -> AudioAnalysis:
        """The analysis of everything fed (:func:`analyze`'s result for the whole signal)."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        n, n_fft, hop = self._n, self._n_fft, self._hop
        energy = self._finish_energy()
        empty = np.zeros(0, dtype=np.float64)
        if n < n_fft:
            return AudioAnalysis(self.sample_rate, n, empty, None, empty, energy,
                                 envelope_rate=self.rate)  # fmt: skip
        tail = np.zeros(self._pad + hop + self._reach, dtype=np.float32)  # the last windows
        self._buf = np.concatenate((self._buf, tail))
        self._advance(final=True)
        env, accent = self._env.values, self._accent.values
        peaks = _pick_peaks(env, self._rms_db.values, self.rate)
        onsets = self._onset_times(peaks)
        tempo: float | None = None
        beats = empty
        strength = 0.0
        if onsets.size >= _MIN_ONSETS_FOR_TEMPO:
            period, strength = _estimate_period(accent, self.rate)
            if period is not None:
                tempo = 60.0 * self.rate / period
                beat_frames = _track_beats(accent, period)
                beats = (beat_frames + 1) * (hop / self.sample_rate)  # the flux leads by ~1 hop
                beats = _snap(beats, onsets, tol=min(0.05, 0.2 * period / self.rate))
        return AudioAnalysis(
            sample_rate=self.sample_rate,
            n_samples=n,
            onset_times=onsets,
            tempo_bpm=tempo,
            beat_times=beats,
            energy=energy,
            onset_envelope=env.copy(),
            envelope_rate=self.rate,
            periodicity=strength,
        )

    # ------------------------------------------------------------------ stages

    def _x(self, i: int) -> int:
        """Position in the buffer of sample ``i`` of the signal."""
        return i + self._pad - self._p0

    def _advance(self, *, final: bool) -> None:
        hop, n_fft = self._hop, self._n_fft
        end = self._p0 + self._buf.size  # padded samples available
        last = 1 + self._n // hop if final else (end - n_fft) // hop + 1
        for a in range(self._frames, last, _BLOCK_FRAMES):
            b = min(last, a + _BLOCK_FRAMES)
            off = a * hop - self._p0
            seg = self._buf[off : off + (b - a - 1) * hop + n_fft]
            self._stft_block(np.lib.stride_tricks.sliding_window_view(seg, n_fft)[::hop])
        self._frames = max(self._frames, last)
        if not final:
            self._energy_block()
        self._classify(final=final)

    def _stft_block(self, frames: np.ndarray) -> None:
        """Onset and accent flux and loudness of STFT frames (as ``_onset_envelope``)."""
        k, n_fft = frames.shape[0], self._n_fft
        t64, spec, mag = self._t64[:k], self._spec[:k], self._mag[:k]
        np.multiply(frames, self._window, out=t64)  # the float32 product, kept in float64
        np.fft.rfft(t64, axis=1, out=spec)  # numpy's float64 FFT is 2-3x its float32 one
        np.abs(spec, out=mag)
        bands = (self._bands(mag) * self._scale).astype(np.float32)
        # log(1 + g b) as _flux's log1p(g b): float32 log is SIMD, log1p is not (5x)
        logs = (np.log(1000.0 * bands + 1.0), np.log(10.0 * bands + 1.0))
        fluxes = []
        for i, log in enumerate(logs):
            prev = self._prev_logs[i] if self._prev_logs is not None else None
            stacked = log if prev is None else np.concatenate((prev[None, :], log))
            flux = np.maximum(stacked[1:] - stacked[:-1], 0.0).mean(axis=1)
            fluxes.append(flux if prev is not None else np.concatenate(
                (np.zeros(1, dtype=np.float32), flux)))
        self._prev_logs = (logs[0][-1].copy(), logs[1][-1].copy())
        ms = np.mean(np.square(frames[:, n_fft // 4 : 3 * n_fft // 4], dtype=np.float32), axis=1)
        self._env.extend(fluxes[0])
        self._accent.extend(fluxes[1])
        self._rms_db.extend(10.0 * np.log10(ms + 1e-12))
        if fluxes[0].size:
            self._env_max = max(self._env_max, float(fluxes[0].max()))

    def _energy_block(self) -> None:
        """The 50 ms RMS frames wholly fed (as ``energy_curve``; the rest in _finish_energy)."""
        step, n = self._energy_step, self._n  # step >= 3: _Bands refuses lower rates
        if n == 0:
            return
        k0 = self._energy_frames
        k_hi = int((n - 1) / step) + 2
        ks = np.arange(k0, k_hi + 1)
        bounds = np.round(ks * step).astype(np.int64)
        complete = int(np.count_nonzero(bounds[1:] <= n - 1))  # frame k ends before sample n-1
        if complete == 0:
            return
        self._rms.extend(self._frame_rms(bounds[: complete + 1], int(bounds[complete])))
        self._energy_frames = k0 + complete

    def _frame_rms(self, bounds: np.ndarray, stop: int) -> np.ndarray:
        """RMS of the samples bounds[i]..bounds[i+1] (the last frame ends at ``stop``)."""
        first = int(bounds[0])
        seg = self._buf[self._x(first) : self._x(stop)]
        sums = np.add.reduceat(np.square(seg, dtype=np.float64), bounds[:-1] - first)
        counts = np.diff(bounds).astype(np.float64)
        rms: np.ndarray = np.sqrt(sums / np.maximum(counts, 1.0))
        return rms

    def _finish_energy(self) -> np.ndarray:
        n, step = self._n, self._energy_step
        total = int(math.ceil(n / step)) if n else 0
        if total == 0:
            return np.zeros(0, dtype=np.float32)
        k0 = self._energy_frames
        if k0 < total:
            bounds = np.minimum(np.round(np.arange(k0, total) * step).astype(np.int64), n - 1)
            self._rms.extend(self._frame_rms(np.append(bounds, n), n))
        rms = self._rms.values
        peak = float(rms.max())
        if peak < 1e-6:
            return np.zeros(total, dtype=np.float32)
        return (rms / peak).astype(np.float32)

    def _classify(self, *, final: bool) -> None:
        """Find the frames that may become onsets and place each one (``_refine_onsets``).

        Every frame :func:`_pick_peaks` can choose is kept: a local maximum of the onset
        envelope, loud enough, and (since the final maximum is at least the maximum so far)
        above the adaptive thresholds taken against the maximum so far, with margins far
        wider than float32 rounding. Only the frame chosen at the end needs its place, but
        it must be found while its samples are at hand.
        """
        n_frames = self._frames
        c0 = self._classified
        c1 = n_frames if final else n_frames - self._lookahead
        if c1 > c0:
            env, rms_db = self._env.values, self._rms_db.values
            e = env[c0:c1].astype(np.float64)
            local_max = _window_reduce("max", env, c0, c1, self._pre_max, self._pre_max)
            local_avg = _window_reduce("mean", env, c0, c1, self._pre_avg, self._post_avg)
            loud = _window_reduce("max", rms_db, c0, c1, 0, 2) > _GATE_DB
            top = self._env_max
            keep = ((e > 0.0) & (e >= (1.0 - 1e-6) * local_max) & loud
                    & (e > (0.03 - 1e-4) * top) & (e - local_avg >= (0.06 - 1e-4) * top))
            found = c0 + np.flatnonzero(keep)
            self._pending = np.concatenate((self._pending, found))
            self._classified = c1
        if self._pending.size:
            size = self._n if final else None
            if final:
                ready = self._pending.size
            else:  # the samples up to the end of the last search window must be here
                centre = self._pending * self._hop
                half = self._n_fft // 2
                first = np.maximum(self._win, centre - half // 2)
                need = np.maximum(centre + half + 2 * self._win, first + self._reach)
                ready = int(np.searchsorted(need, self._n, side="right"))
            if ready:
                frames = self._pending[:ready]
                self._cand_frames.extend(frames)
                self._cand_times.extend(self._refine(frames, size))
                self._pending = self._pending[ready:]

    def _refine(self, frames: np.ndarray, size: int | None) -> np.ndarray:
        """``_refine_onsets`` for many frames at once, on the samples in the buffer.

        Each frame's windows are laid in a row; the energies come from a running sum over
        the row (not over the whole signal: the same sums, rounded no worse).
        """
        hop, sr, half = self._hop, self.sample_rate, self._n_fft // 2
        win, step = self._win, self._step
        centre = frames * hop
        out = (centre + hop) / sr
        first = np.maximum(win, centre - half // 2)
        last = centre + half + win
        if size is not None:  # the end of the signal is known: the windows stop before it
            last = np.minimum(size - win, last)
        count = np.maximum(0, -(-(last - first) // step))
        ok = np.flatnonzero(count >= 2)
        if ok.size == 0:
            return out
        first, count = first[ok], count[ok]
        k = int(count.max())
        length = 2 * win + (k - 1) * step
        # row r holds x[m0 - 2 .. m0 + length - 2], m0 = first - win + 1 its first hp index
        windows = np.lib.stride_tricks.sliding_window_view(self._buf, length + 1)
        rows = windows[first - win - 1 + self._pad - self._p0]
        energy = np.square(rows[:, 1:] - 0.95 * rows[:, :-1], dtype=np.float64)
        energy[first - win + 1 < 2, 0] = 0.0  # hp[0] = hp[1] = 0: only m0 = 1 reaches them
        csum = np.zeros((ok.size, length + 1), dtype=np.float64)
        np.cumsum(energy, axis=1, out=csum[:, 1:])
        t = np.arange(k) * step
        now = csum[:, 2 * win + t] - csum[:, win + t]
        before = csum[:, win + t] - csum[:, t]
        valid = np.arange(k)[None, :] < count[:, None]
        level = np.where(valid, 10.0 * np.log10(now / win + 1e-12), -np.inf)
        rise = level - 10.0 * np.log10(before / win + 1e-12)
        peak = level.max(axis=1, keepdims=True)
        rise = np.where(valid & (level >= peak - 10.0), rise, -np.inf)
        best = np.argmax(rise, axis=1)
        sharp = rise[np.arange(ok.size), best] >= _MIN_RISE_DB
        placed = (first + best * step + step / 2) / sr
        out[ok] = np.where(sharp, placed, out[ok])
        return out

    def _onset_times(self, peaks: np.ndarray) -> np.ndarray:
        frames = self._cand_frames.values
        idx = np.searchsorted(frames, peaks)
        if peaks.size and (idx.max() >= frames.size or np.any(frames[idx] != peaks)):
            raise AssertionError("an onset was picked that was not kept as a candidate")
        return np.asarray(self._cand_times.values[idx], dtype=np.float64)

    def _trim(self) -> None:
        """Drop the samples nothing needs any more: kept are the next STFT frame's, the
        current energy frame's and the onset candidates' search windows."""
        hop, half, pad = self._hop, self._n_fft // 2, self._pad
        keep = self._frames * hop  # padded index of the next STFT frame's first sample
        keep = min(keep, int(round(self._energy_frames * self._energy_step)) + pad)
        earliest = int(self._pending[0]) if self._pending.size else self._classified
        keep = min(keep, max(self._win, earliest * hop - half // 2) - self._win - 2 + pad)
        cut = keep - self._p0
        if cut > 0:
            self._buf = self._buf[cut:].copy()
            self._p0 = keep


def analyze_stream(chunks: Iterable[np.ndarray], sample_rate: int) -> AudioAnalysis:
    """:func:`analyze` of the concatenation of ``chunks`` (mono pieces of any size), holding
    only a bounded part of them at a time (:class:`AudioAnalyzer`)."""
    analyzer = AudioAnalyzer(sample_rate)
    for chunk in chunks:
        analyzer.feed(chunk)
    return analyzer.finish()


def analyze(samples: np.ndarray, sample_rate: int) -> AudioAnalysis:
    """Onsets, tempo, beats and the energy curve of a mono signal in [-1, 1]."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:  # (n, channels) or (channels, n): downmix
        x = x.mean(axis=1 if x.shape[0] > x.shape[1] else 0).astype(np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples, got an array of shape {x.shape}")
    analyzer = AudioAnalyzer(sample_rate)
    analyzer.feed(x)
    return analyzer.finish()


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
