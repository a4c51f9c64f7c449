"""Monitor rules: metric snapshots in, degrade / restore decisions out, state kept durably.

Rules (thresholds in :class:`Thresholds`, all configurable):

* VRAM: the most-used GPU above ``vram_max_frac`` (0.85) of its memory → degrade, kind ``vram``
  (GPU work moves off the GPU).
* Memory: available memory below ``min_mem_gb`` (2.0 GB) → degrade, kind ``memory``
  (concurrency down, remote backends preferred).
* Failures: more than ``failure_rate_max`` (30 %) of the recent clip renders failed, counted
  over ``failure_window_s`` and only once at least ``min_failure_samples`` renders ended → degrade,
  kind ``failure_rate``. Renders are counted since the last policy change at the earliest, so
  failures already answered by one degrade do not trigger the next.
* CPU: ``cpu_max_percent`` is off by default (CPU use is sampled and shown, not acted on).

Hysteresis, so the policy does not flap:

* degrade only after ``degrade_after`` (2) *consecutive* breaching samples, and not sooner than
  ``degrade_cooldown_s`` (60 s) after the previous change; one step per decision, at most
  ``max_degrade_level`` (4) steps;
* restore (straight back to the baseline) only after ``restore_after`` (3) consecutive *healthy*
  samples, where healthy means clear of every threshold by a margin: VRAM below
  ``vram_max_frac - vram_margin`` (0.75), memory above ``min_mem_gb + mem_margin_gb`` (3.0 GB),
  failure rate below ``failure_rate_max - failure_margin`` (15 %) or too few samples to judge;
* a sample in the band between "healthy" and "breaching" resets both streaks;
* a degrade within ``flap_window_s`` (600 s) of a restore counts as a flap; each flap doubles the
  healthy samples needed for the next restore (at most x8). The count clears once a restore has
  held for ``flap_window_s``;
* a manual degrade (CLI) sets ``manual_hold``: the monitor never restores it; only a manual
  restore does.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from anime_pipeline.runtime import nvml
from anime_pipeline.runtime.profile import atomic_write_text

log = logging.getLogger(__name__)

Action = Literal["none", "degrade", "restore"]
STATE_FILE = "runtime_state.json"
THRESHOLDS_FILE = "thresholds.json"


class MetricSnapshot(BaseModel):
    taken_at: float
    vram_used_frac: float | None = None  # the most-used GPU; None without a GPU
    vram_used_frac_per_gpu: list[float] = Field(default_factory=list)
    mem_available_gb: float
    cpu_percent: float | None = None
    recent_failure_rate: float | None = None  # None: no renders ended in the window
    failure_samples: int = 0  # renders that ended in the window
    failures: int = 0


class Thresholds(BaseModel):
    vram_max_frac: float = 0.85
    min_mem_gb: float = 2.0
    failure_rate_max: float = 0.30
    failure_window_s: float = 900.0
    min_failure_samples: int = 4
    cpu_max_percent: float | None = None
    degrade_after: int = 2
    restore_after: int = 3
    vram_margin: float = 0.10
    mem_margin_gb: float = 1.0
    failure_margin: float = 0.15
    degrade_cooldown_s: float = 60.0
    max_degrade_level: int = 4
    flap_window_s: float = 600.0

    @classmethod
    def load(cls, state_dir: Path | str | None) -> Thresholds:
        """``thresholds.json`` in the state folder (any subset of the fields), else defaults."""
        if state_dir is None:
            return cls()
        path = Path(state_dir) / THRESHOLDS_FILE
        if not path.is_file():
            return cls()
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


class PolicyDowngrade(BaseModel):
    """One step down the machine policy (the per-shot render ladder is budget.DegradeLadderStep)."""

    kind: str
    reason: str
    at: float
    source: Literal["monitor", "manual"] = "monitor"


class MonitorState(BaseModel):
    version: int = 1
    steps: list[PolicyDowngrade] = Field(default_factory=list)
    breach_streak: int = 0
    healthy_streak: int = 0
    samples_seen: int = 0
    last_sample_at: float | None = None
    last_change_at: float | None = None
    last_action: Action = "none"
    last_restore_at: float | None = None
    flaps: int = 0
    manual_hold: bool = False
    revision: int = 0  # +1 on every change of the policy in force
    last_snapshot: MetricSnapshot | None = None

    @property
    def level(self) -> int:
        return len(self.steps)

    @property
    def degraded(self) -> bool:
        return bool(self.steps)

    @property
    def reasons(self) -> list[str]:
        return [s.reason for s in self.steps]

    def step_pairs(self) -> list[tuple[str, str]]:
        return [(s.kind, s.reason) for s in self.steps]


class Decision(BaseModel):
    action: Action
    kind: str | None = None  # for a degrade: which rule
    reasons: list[str] = Field(default_factory=list)  # every rule breached by this sample
    healthy: bool
    state: MonitorState
    message: str


# --------------------------------------------------------------------------- rules


def breaches(s: MetricSnapshot, t: Thresholds) -> list[tuple[str, str]]:
    """(kind, reason) for each rule ``s`` breaches, in priority order."""
    out: list[tuple[str, str]] = []
    if s.vram_used_frac is not None and s.vram_used_frac > t.vram_max_frac:
        gpu = ""
        if s.vram_used_frac_per_gpu:
            gpu = f" on GPU {s.vram_used_frac_per_gpu.index(max(s.vram_used_frac_per_gpu))}"
        out.append(("vram", f"VRAM {s.vram_used_frac:.0%} used{gpu} > {t.vram_max_frac:.0%}"))
    if s.mem_available_gb < t.min_mem_gb:
        out.append(
            ("memory", f"available memory {s.mem_available_gb:.1f} GB < {t.min_mem_gb:.1f} GB")
        )
    if (
        s.recent_failure_rate is not None
        and s.failure_samples >= t.min_failure_samples
        and s.recent_failure_rate > t.failure_rate_max
    ):
        out.append(
            (
                "failure_rate",
                f"clip failure rate {s.recent_failure_rate:.0%} "
                f"({s.failures}/{s.failure_samples}) > {t.failure_rate_max:.0%}",
            )
        )
    if t.cpu_max_percent is not None and s.cpu_percent is not None:
        if s.cpu_percent > t.cpu_max_percent:
            out.append(("cpu", f"CPU {s.cpu_percent:.0f}% > {t.cpu_max_percent:.0f}%"))
    return out


def is_healthy(s: MetricSnapshot, t: Thresholds) -> bool:
    """Clear of every threshold by its margin (see module doc)."""
    if s.vram_used_frac is not None and s.vram_used_frac >= t.vram_max_frac - t.vram_margin:
        return False
    if s.mem_available_gb <= t.min_mem_gb + t.mem_margin_gb:
        return False
    if (
        s.recent_failure_rate is not None
        and s.failure_samples >= t.min_failure_samples
        and s.recent_failure_rate >= t.failure_rate_max - t.failure_margin
    ):
        return False
    if t.cpu_max_percent is not None and s.cpu_percent is not None:
        if s.cpu_percent >= t.cpu_max_percent - 10:
            return False
    return True


def restore_samples_needed(state: MonitorState, t: Thresholds) -> int:
    return int(t.restore_after * 2 ** min(state.flaps, 3))


def evaluate(snapshot: MetricSnapshot, state: MonitorState, thresholds: Thresholds) -> Decision:
    """Pure: the decision for one sample, with the next state. ``state`` is not modified."""
    t = thresholds
    now = snapshot.taken_at
    st = state.model_copy(deep=True)
    st.samples_seen += 1
    st.last_sample_at = now
    st.last_snapshot = snapshot
    found = breaches(snapshot, t)
    healthy = not found and is_healthy(snapshot, t)
    reasons = [r for _, r in found]

    # a restore that held through the flap window clears the flap count
    if st.flaps and not st.degraded and st.last_restore_at is not None:
        if now - st.last_restore_at >= t.flap_window_s:
            st.flaps = 0

    if found:
        st.breach_streak += 1
        st.healthy_streak = 0
        cooled = st.last_change_at is None or now - st.last_change_at >= t.degrade_cooldown_s
        if st.breach_streak < t.degrade_after:
            msg = f"breach {st.breach_streak}/{t.degrade_after}: {'; '.join(reasons)}"
            return Decision(action="none", reasons=reasons, healthy=False, state=st, message=msg)
        if st.level >= t.max_degrade_level:
            msg = f"still breaching at the lowest allowed level {st.level}: {'; '.join(reasons)}"
            return Decision(action="none", reasons=reasons, healthy=False, state=st, message=msg)
        if not cooled:
            why = "; ".join(reasons)
            msg = f"breaching, within the {t.degrade_cooldown_s:.0f}s cooldown: {why}"
            return Decision(action="none", reasons=reasons, healthy=False, state=st, message=msg)
        kind = found[0][0]
        reason = "; ".join(reasons)
        if st.last_restore_at is not None and now - st.last_restore_at < t.flap_window_s:
            st.flaps += 1
        st.steps.append(PolicyDowngrade(kind=kind, reason=reason, at=now))
        st.breach_streak = 0
        st.last_change_at = now
        st.last_action = "degrade"
        st.revision += 1
        msg = f"degrade to level {st.level} ({kind}): {reason}"
        return Decision(
            action="degrade", kind=kind, reasons=reasons, healthy=False, state=st, message=msg
        )

    if not healthy:
        st.breach_streak = 0
        st.healthy_streak = 0
        msg = "within thresholds but not clear by the restore margin; streaks reset"
        return Decision(action="none", healthy=False, state=st, message=msg)

    st.breach_streak = 0
    st.healthy_streak += 1
    if not st.degraded:
        return Decision(action="none", healthy=True, state=st, message="healthy")
    needed = restore_samples_needed(st, t)
    if st.manual_hold:
        msg = "healthy; degraded manually, held until a manual restore"
        return Decision(action="none", healthy=True, state=st, message=msg)
    if st.healthy_streak < needed:
        msg = f"healthy {st.healthy_streak}/{needed} before restore"
        return Decision(action="none", healthy=True, state=st, message=msg)
    was = st.level
    _to_baseline(st, now)
    msg = f"restore from level {was} to the baseline after {needed} healthy samples"
    return Decision(action="restore", healthy=True, state=st, message=msg)


def _to_baseline(st: MonitorState, now: float) -> None:
    st.steps = []
    st.healthy_streak = 0
    st.breach_streak = 0
    st.manual_hold = False
    st.last_change_at = now
    st.last_restore_at = now
    st.last_action = "restore"
    st.revision += 1


def manual_degrade(state: MonitorState, reason: str, now: float | None = None) -> MonitorState:
    st = state.model_copy(deep=True)
    now = time.time() if now is None else now
    st.steps.append(PolicyDowngrade(kind="manual", reason=reason, at=now, source="manual"))
    st.manual_hold = True
    st.breach_streak = st.healthy_streak = 0
    st.last_change_at = now
    st.last_action = "degrade"
    st.revision += 1
    return st


def manual_restore(state: MonitorState, now: float | None = None) -> MonitorState:
    st = state.model_copy(deep=True)
    _to_baseline(st, time.time() if now is None else now)
    st.flaps = 0
    return st


# --------------------------------------------------------------------------- durable state


class StateStore:
    """The monitor state as one JSON file, written atomically (temp name + ``os.replace``)."""

    def __init__(self, state_dir: Path | str, filename: str = STATE_FILE) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / filename

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> MonitorState:
        """The saved state; a fresh one when there is none. A corrupt file is set aside."""
        if not self.path.is_file():
            return MonitorState()
        text = self.path.read_text(encoding="utf-8")
        try:
            return MonitorState.model_validate_json(text)
        except (ValidationError, json.JSONDecodeError, ValueError) as e:
            bad = self.path.with_name(self.path.name + f".corrupt-{int(time.time())}")
            self.path.replace(bad)
            log.warning("runtime state %s unreadable (%s); moved to %s", self.path, e, bad)
            return MonitorState()

    def save(self, state: MonitorState) -> Path:
        return atomic_write_text(self.path, state.model_dump_json(indent=2))


# --------------------------------------------------------------------------- live sampling


def sample_metrics(
    failure_rate: float | None = None,
    samples: int = 0,
    failures: int | None = None,
    *,
    gpu_indices: list[int] | None = None,
    cpu_interval_s: float = 0.1,
) -> MetricSnapshot:
    """A live snapshot: VRAM through NVML (none without a GPU), memory and CPU through psutil."""
    import psutil

    report = nvml.query(gpu_indices)
    fracs = [round(g.vram_used_mb / g.vram_total_mb, 4) for g in report.gpus if g.vram_total_mb > 0]
    if failures is None and failure_rate is not None:
        failures = round(failure_rate * samples)
    return MetricSnapshot(
        taken_at=time.time(),
        vram_used_frac=max(fracs) if fracs else None,
        vram_used_frac_per_gpu=fracs,
        mem_available_gb=round(psutil.virtual_memory().available / 1024**3, 2),
        cpu_percent=psutil.cpu_percent(interval=cpu_interval_s),
        recent_failure_rate=failure_rate,
        failure_samples=samples,
        failures=failures or 0,
    )
