"""How many shots render at once, and what each run's renders looked like.

Two limits: **remote** work (waiting on a farm) is bounded by the concurrency setting — 4 by
default, up to 6 — and **local** work (ffmpeg renders, conforming and verifying clips) by the
same setting capped by the runtime policy (the machine's cores and memory). The setting is read
live: a change in ``<pipeline home>/render_settings.json`` (``anime-pipeline concurrency N``)
takes effect in a running step within seconds. Every slot has a number (``parallel_slot`` in
the logs), and :class:`ClipStats` sums up a run: render times (mean, P95, max), failures,
degraded clips, placeholders and peak concurrency, per backend and per server.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anime_pipeline.domain.records import ClipRecord, ClipStatus

MAX_CONCURRENCY = 6
CLIP_STATS_TAG = "anime_pipeline/clip_stats"  # the run tag a clips run records its stats in
# What that tag holds (of ClipStats.as_dict()).
CLIP_STATS_KEYS = ("clips", "mean_s", "p95_s", "max_s", "failed_attempts", "degraded",
                   "placeholders", "cached")
SETTINGS_FILE = "render_settings.json"
POLL_S = 2.0


def settings_path(home: Path) -> Path:
    return home / SETTINGS_FILE


def write_concurrency(home: Path, concurrency: int) -> Path:
    """Set the live concurrency (1..6) for every running and future clips step."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, not {concurrency}")
    from anime_pipeline.runtime.profile import atomic_write_text

    return atomic_write_text(settings_path(home), json.dumps({"concurrency": concurrency}))


class LiveConcurrency:
    """The concurrency setting: ``render_settings.json`` when present, else ``default``;
    re-read at most every ``POLL_S`` seconds (cheap: a stat)."""

    def __init__(self, home: Path | None, default: int) -> None:
        self.path = settings_path(home) if home is not None else None
        self.default = max(1, min(MAX_CONCURRENCY, default))
        self._value = self.default
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        now = time.monotonic()
        with self._lock:
            if self.path is None or now - self._checked < POLL_S:
                return self._value
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                self._value, self._mtime = self.default, None
                return self._value
            if mtime != self._mtime:
                self._mtime = mtime
                try:
                    value = int(json.loads(self.path.read_text("utf-8"))["concurrency"])
                    self._value = max(1, min(MAX_CONCURRENCY, value))
                except (OSError, ValueError, KeyError, TypeError):
                    self._value = self.default
            return self._value


class Throttled:
    """``fn()``, called at most every ``every_s`` seconds; the last value in between. For
    limits read while holders wait (a file read must not run on every look)."""

    def __init__(self, fn: Callable[[], int], every_s: float = POLL_S) -> None:
        self.fn, self.every_s = fn, every_s
        self._value = fn()
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            if time.monotonic() - self._at >= self.every_s:
                self._value, self._at = self.fn(), time.monotonic()
            return self._value


class Limiter:
    """At most ``limit()`` holders at once (``limit`` may change while it runs); every holder
    gets a slot number, 1..limit. Re-entrant per thread: a thread holding a slot that asks
    again gets the same one. Records the peak number of holders."""

    def __init__(self, name: str, limit: Callable[[], int]) -> None:
        self.name = name
        self.limit = limit
        self.peak = 0
        self._active: set[int] = set()
        self._cond = threading.Condition()
        self._held = threading.local()

    @contextmanager
    def slot(self, cancel: threading.Event | None = None) -> Iterator[int]:
        mine = getattr(self._held, "number", None)
        if mine is not None:
            yield mine
            return
        with self._cond:
            while True:
                if cancel is not None and cancel.is_set():
                    raise InterruptedError(f"{self.name}: cancelled while waiting for a slot")
                if len(self._active) < self.limit():
                    number = min(set(range(1, len(self._active) + 2)) - self._active)
                    self._active.add(number)
                    self.peak = max(self.peak, len(self._active))
                    break
                self._cond.wait(timeout=1.0)
        self._held.number = number
        try:
            yield number
        finally:
            self._held.number = None
            with self._cond:
                self._active.discard(number)
                self._cond.notify_all()


@dataclass
class Slots:
    """The two limits of a clips step."""

    local: Limiter
    remote: Limiter

    @classmethod
    def create(cls, setting: Callable[[], int], local_cap: int | Callable[[], int]) -> Slots:
        cap = local_cap if callable(local_cap) else (lambda: local_cap)
        return cls(local=Limiter("local", lambda: max(1, min(setting(), cap()))),
                   remote=Limiter("remote", lambda: max(1, setting())))


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"mean_s": 0.0, "p95_s": 0.0, "max_s": 0.0}
    return {"mean_s": round(sum(seconds) / len(seconds), 3), "p95_s": round(_p95(seconds), 3),
            "max_s": round(max(seconds), 3)}


@dataclass
class ClipStats:
    """``clip_stats`` of a run: what its renders took, by backend and by server."""

    renders: list[ClipRecord] = field(default_factory=list)
    cached: int = 0
    peak_local: int = 0
    peak_remote: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: ClipRecord, *, cached: bool) -> None:
        with self._lock:
            if cached:
                self.cached += 1
            else:
                self.renders.append(record)

    def _group(self, key: Callable[[ClipRecord], str]) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[ClipRecord]] = defaultdict(list)
        for r in self.renders:
            groups[key(r)].append(r)
        return {name: self._numbers(rs) for name, rs in sorted(groups.items())}

    @staticmethod
    def _numbers(records: list[ClipRecord]) -> dict[str, Any]:
        return {
            "clips": len(records),
            **_summary([r.render_seconds for r in records]),
            "failed_attempts": sum(1 for r in records for a in r.attempts if not a.ok),
            "degraded": sum(r.status is ClipStatus.degraded for r in records),
            "placeholders": sum(r.status is ClipStatus.placeholder for r in records),
        }

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self._numbers(self.renders),
                "cached": self.cached,
                "peak_concurrency": {"local": self.peak_local, "remote": self.peak_remote},
                "by_backend": self._group(lambda r: r.backend),
                "by_server": self._group(lambda r: r.server or "local"),
            }



class PlanHolder:
    """The compute plan a clips step renders from, re-planned when the runtime policy changes
    mid-episode: a shot that has not started yet renders under the plan in force when it
    starts (lower tiers, other backends after a degrade), not the one the run began with.

    ``revision()`` is the monitor state's revision (it changes with every degrade and
    restore); it is read at most every ``poll_s`` seconds. ``replan()`` makes (and stores)
    the plan under the policy in force now."""

    def __init__(self, plan: Any, *, revision: Callable[[], int] | None = None,
                 replan: Callable[[], Any] | None = None, poll_s: float = 5.0) -> None:
        self.plan = plan
        self._revision = revision
        self._replan = replan
        self._rev = revision() if revision is not None else 0
        self._checked = time.monotonic()
        self.poll_s = poll_s
        self.replans: list[Any] = []  # plans made mid-run, oldest first (drained by the step)
        self._lock = threading.Lock()

    def entry(self, shot_id: str) -> Any:
        with self._lock:
            if (self._revision is not None and self._replan is not None
                    and time.monotonic() - self._checked >= self.poll_s):
                self._checked = time.monotonic()
                rev = self._revision()
                if rev != self._rev:
                    self._rev = rev
                    self.plan = self._replan()
                    self.replans.append(self.plan)
            return self.plan.shot(shot_id)

    def drain(self) -> list[Any]:
        with self._lock:
            out, self.replans = self.replans, []
            return out
