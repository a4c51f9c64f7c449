"""pipeline.scheduling: live concurrency, slots, clip_stats, re-planning, render order."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from anime_pipeline.domain.records import ClipRecord, ClipStatus, RenderAttempt
from anime_pipeline.pipeline import scheduling
from anime_pipeline.pipeline.clips import render_order
from anime_pipeline.pipeline.scheduling import (
    ClipStats,
    Limiter,
    LiveConcurrency,
    PlanHolder,
    Slots,
    write_concurrency,
)
from anime_pipeline_tests.pipeline.conftest import POLICY, Planned


def test_the_setting_is_read_live_and_bounded(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduling, "POLL_S", 0.0)
    live = LiveConcurrency(tmp_path, 4)
    assert live() == 4  # no file: the default
    write_concurrency(tmp_path, 2)
    assert live() == 2
    (tmp_path / "render_settings.json").write_text('{"concurrency": 99}', encoding="utf-8")
    assert live() == 6
    (tmp_path / "render_settings.json").write_text("not json", encoding="utf-8")
    assert live() == 4
    with pytest.raises(ValueError, match="1..6"):
        write_concurrency(tmp_path, 7)
    assert LiveConcurrency(None, 9)() == 6


def test_a_limit_that_changes_while_holders_wait() -> None:
    limit = [1]
    limiter = Limiter("remote", lambda: limit[0])
    inside = []
    release = threading.Event()

    def hold() -> None:
        with limiter.slot() as n:
            inside.append(n)
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert len(inside) == 1
    limit[0] = 3  # seen at the waiters' next look (within a second)
    deadline = time.monotonic() + 5
    while len(inside) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(inside) == [1, 2, 3] and limiter.peak == 3
    release.set()
    for t in threads:
        t.join()


def test_a_slot_is_reentrant_per_thread_and_a_stop_ends_the_wait() -> None:
    limiter = Limiter("local", lambda: 1)
    with limiter.slot() as outer, limiter.slot() as inner:
        assert outer == inner == 1
        cancel = threading.Event()
        cancel.set()
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                with limiter.slot(cancel):
                    pass
            except InterruptedError as e:
                errors.append(e)

        t = threading.Thread(target=wait)
        t.start()
        t.join(5)
        assert errors and "cancelled" in str(errors[0])


def test_local_work_is_capped_by_the_policy_and_remote_work_is_not() -> None:
    slots = Slots.create(lambda: 5, lambda: 2)
    assert slots.local.limit() == 2 and slots.remote.limit() == 5


def _record(shot: str, status: ClipStatus, seconds: float, backend: str,
            server: str | None, failed: int = 0) -> ClipRecord:
    attempts = [RenderAttempt(backend=backend, fps=8, resolution="240p", encoder="libx264",
                              ok=False, seconds=1) for _ in range(failed)]
    attempts.append(RenderAttempt(backend=backend, fps=8, resolution="240p",
                                  encoder="libx264", ok=True, seconds=seconds, server=server))
    return ClipRecord(
        episode_key="t/p/e", shot_id=shot, status=status, fingerprint="f", backend=backend,
        fps=8, resolution="240p", encoder="libx264", attempts=attempts,
        render_seconds=seconds, frames=24, width=320, height=180, delivery_fps=24,
        size_bytes=1, sha256="0" * 64, uri="x", duration_ms=1000, shot_type="action",
        segment_policy="single", segments=1, runtime_policy=POLICY, server=server)


def test_clip_stats_sum_up_a_run_by_backend_and_server() -> None:
    stats = ClipStats()
    for i in range(19):
        stats.add(_record(f"S{i:02d}", ClipStatus.ok, 1.0 + i, "comfyui_i2v",
                          "http://a" if i % 2 else "http://b"), cached=False)
    stats.add(_record("S19", ClipStatus.degraded, 50.0, "animatic", None, failed=2),
              cached=False)
    stats.add(_record("S20", ClipStatus.ok, 1.0, "animatic", None), cached=True)
    got = stats.as_dict()
    assert got["clips"] == 20 and got["cached"] == 1
    assert got["max_s"] == 50.0 and got["p95_s"] == 19.0
    assert got["mean_s"] == pytest.approx((sum(range(1, 20)) + 50) / 20, abs=1e-3)
    assert got["failed_attempts"] == 2 and got["degraded"] == 1 and got["placeholders"] == 0
    assert got["by_backend"]["animatic"]["degraded"] == 1
    assert got["by_server"]["http://a"]["clips"] == 9
    assert got["by_server"]["local"]["clips"] == 1


def test_a_revision_change_replans_once_and_only_then() -> None:
    rev = [0]
    made: list[str] = []

    class Plan:
        def __init__(self, name: str) -> None:
            self.name = name

        def shot(self, shot_id: str) -> Any:
            return (self.name, shot_id)

    def replan() -> Plan:
        made.append("new")
        return Plan("new")

    holder = PlanHolder(Plan("old"), revision=lambda: rev[0], replan=replan, poll_s=0.0)
    assert holder.entry("S01") == ("old", "S01")
    rev[0] = 1
    assert holder.entry("S02") == ("new", "S02")
    assert holder.entry("S03") == ("new", "S03")
    assert made == ["new"] and [p.name for p in holder.drain()] == ["new"]
    assert holder.drain() == []


def test_critical_and_opening_shots_render_first(planned: Planned) -> None:
    order = render_order(planned.plan, planned.shot_ids)
    assert [e.shot_id for e in order] == ["S02", "S01"]  # S02 is critical
    assert order[0].render_priority == "critical"


def test_a_throttled_limit_is_read_at_most_once_per_window() -> None:
    from anime_pipeline.pipeline.scheduling import Throttled

    reads = [0]

    def read() -> int:
        reads[0] += 1
        return reads[0]

    limit = Throttled(read, every_s=0.2)
    assert [limit() for _ in range(50)] == [1] * 50 and reads == [1]
    time.sleep(0.25)
    assert limit() == 2 and reads == [2]
