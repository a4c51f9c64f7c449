"""The usage ledger on SQLite and on the real PostgreSQL at 127.0.0.1:5432: idempotent usage,
summaries and filters, budgets per period, notification claims, prices, a clip's usage."""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from anime_pipeline.domain.records import ClipRecord, ClipStatus, RenderAttempt, Usage
from anime_pipeline.ledger import (
    Ledger,
    PriceTable,
    PriceTableError,
    ProjectBudget,
    UsageEntry,
    UsageFilter,
    budget_verdict,
    clip_usage,
    default_url,
    load_prices,
    period_start,
)

T0 = dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.UTC)
PG = {"host": os.environ.get("PGHOST", "127.0.0.1"), "port": 5432, "user": "postgres"}


def entry(shot: str = "S01", *, run: str = "r1", attempt: int = 1, call: int = 0,
          unit: str = "gpu_sec", amount: float = 60.0, provider: str = "comfyui_i2v",
          at: dt.datetime = T0, user: str = "aki", project: str = "glass-harbor",
          episode: str = "ep01") -> UsageEntry:
    return UsageEntry(tenant="studio-b", project=project, episode=episode, shot=shot,
                      run_id=run, attempt=attempt, call=call, provider=provider,
                      unit=unit, amount=amount, cost=amount * 0.001, user=user,
                      at=at)  # type: ignore[arg-type]


@pytest.fixture
def pg_url() -> Iterator[str]:
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(dbname="test", connect_timeout=3, **PG)
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL on {PG['host']}:5432: {e}")
    admin.autocommit = True
    name = f"ledger_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        from anime_pipeline.ledger.store import _ENGINES

        for url in [u for u in _ENGINES if u.endswith(name)]:
            _ENGINES.pop(url).dispose()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    if request.param == "sqlite":
        return Ledger(default_url(tmp_path))
    return Ledger(request.getfixturevalue("pg_url"))


def test_usage_is_recorded_once_per_run_shot_attempt_call_and_unit(ledger: Ledger) -> None:
    batch = [entry(), entry(unit="frames", amount=24), entry(attempt=2), entry(call=1)]
    assert ledger.record(batch) == 4
    assert ledger.record(batch) == 0  # a retried or resumed step reports the same calls
    assert ledger.record([entry(run="r2")]) == 1  # another run is other spending
    assert len(ledger.entries()) == 5
    assert ledger.spent_gpu_sec("studio-b", "glass-harbor", None) == 240.0


def test_concurrent_writers_of_the_same_calls_count_them_once(ledger: Ledger) -> None:
    batch = [entry(shot=f"S{i:02d}") for i in range(20)]
    threads = [threading.Thread(target=ledger.record, args=(batch,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(ledger.entries()) == 20


def test_summaries_group_and_filter(ledger: Ledger) -> None:
    day2 = T0 + dt.timedelta(hours=2)  # the next UTC day
    ledger.record([
        entry("S01", amount=30), entry("S01", unit="frames", amount=24),
        entry("S02", amount=90, at=day2, user="mei"),
        entry("S03", amount=6, provider="animatic", episode="ep02"),
        entry("S01", amount=12, project="other"),  # same run and shot id, another episode
    ])
    by_provider = {r.group: r for r in ledger.summary(by="provider")}
    assert by_provider["comfyui_i2v"].amounts == {"gpu_sec": 132.0, "frames": 24.0}
    assert by_provider["comfyui_i2v"].calls == 3 and by_provider["animatic"].calls == 1
    assert by_provider["comfyui_i2v"].cost == pytest.approx(0.132 + 0.024)
    by_day = {r.group: r.amounts["gpu_sec"] for r in ledger.summary(by="day")}
    assert by_day == {"2026-11-30": 48.0, "2026-12-01": 90.0}
    by_user = {r.group for r in ledger.summary(by="user")}
    assert by_user == {"aki", "mei"}
    by_episode = {r.group for r in ledger.summary(UsageFilter(project="glass-harbor"),
                                                  by="episode")}
    assert by_episode == {"studio-b/glass-harbor/ep01", "studio-b/glass-harbor/ep02"}
    since = ledger.summary(UsageFilter(since=day2 - dt.timedelta(minutes=1)), by="provider")
    assert [(r.group, r.amounts["gpu_sec"]) for r in since] == [("comfyui_i2v", 90.0)]
    until = ledger.summary(UsageFilter(until=day2, user="aki"), by="project")
    assert {r.group: r.amounts["gpu_sec"] for r in until} == {
        "studio-b/glass-harbor": 36.0, "studio-b/other": 12.0}
    totals = {(t, p, pr, u): a for t, p, pr, u, a in ledger.totals()}
    assert totals[("studio-b", "glass-harbor", "comfyui_i2v", "gpu_sec")] == 120.0


def test_budgets_are_set_replaced_and_counted_in_their_period(ledger: Ledger) -> None:
    ledger.record([entry(amount=600, at=T0),  # November
                   entry("S02", amount=120, at=T0 + dt.timedelta(hours=2))])  # December
    ledger.set_budget(ProjectBudget(tenant="studio-b", project="glass-harbor", gpu_minutes=5))
    ledger.set_budget(ProjectBudget(tenant="studio-b", project="glass-harbor", gpu_minutes=4,
                                    on_exceed="refuse"))
    [budget] = ledger.all_budgets()
    assert budget.gpu_minutes == 4 and budget.on_exceed == "refuse"
    now = T0 + dt.timedelta(hours=3)
    status = ledger.status(budget, now)
    assert status.period_label == "2026-12" and status.spent_gpu_sec == 120.0
    assert status.used_fraction == 0.5 and not status.exceeded
    total = ledger.status(budget.model_copy(update={"period": "total"}), now)
    assert total.spent_gpu_sec == 720.0 and total.exceeded
    assert budget_verdict(status, 60).verdict == "render"
    refused = budget_verdict(status, 121, what="ep01")
    assert refused.verdict == "refuse" and "2 of 4 GPU minutes spent" in refused.message
    assert ledger.remove_budget("studio-b", "glass-harbor")
    assert not ledger.remove_budget("studio-b", "glass-harbor")
    assert ledger.budget_status("studio-b", "glass-harbor") is None


def test_periods_start_in_utc() -> None:
    now = dt.datetime(2026, 12, 3, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert period_start("month", now) == (dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "2026-12")
    assert period_start("day", now) == (dt.datetime(2026, 12, 2, tzinfo=dt.UTC), "2026-12-02")
    assert period_start("week", now) == (dt.datetime(2026, 11, 30, tzinfo=dt.UTC), "2026-W49")
    assert period_start("total", now) == (None, "total")


def test_a_notification_is_claimed_once_and_a_failed_send_is_kept_for_a_retry(
        ledger: Ledger) -> None:
    assert ledger.claim_notification("run_failed:r1", "run_failed", "run r1 failed")
    assert not ledger.claim_notification("run_failed:r1", "run_failed", "run r1 failed")
    assert ledger.unsent_notifications() == []  # claimed, not yet tried
    ledger.notification_done("run_failed:r1", error="HTTP 500")
    assert ledger.unsent_notifications() == [("run_failed:r1", "run_failed", "run r1 failed")]
    ledger.notification_done("run_failed:r1")
    assert ledger.unsent_notifications() == []
    [row] = ledger.sent_notifications("run_failed")
    assert row.tries == 2 and row.sent_at is not None and row.error is None


def _record(attempts: list[RenderAttempt], status: ClipStatus = ClipStatus.ok) -> ClipRecord:
    return ClipRecord(
        episode_key="studio-b/glass-harbor/ep01", shot_id="S01", status=status,
        fingerprint="f", backend=attempts[-1].backend, fps=24, resolution="720p",
        encoder="libx264", attempts=attempts, render_seconds=9.0, frames=48, width=320,
        height=180, delivery_fps=24, size_bytes=1, sha256="0" * 64, uri="u",
        shot_type="action", duration_ms=2000, segment_policy="single", segments=2)


def test_a_clip_records_its_generative_calls_and_its_local_render_seconds() -> None:
    gen = RenderAttempt(backend="comfyui_i2v", fps=24, resolution="720p", encoder="libx264",
                        ok=False, seconds=40.0, server="http://a", usage=[
                            Usage(provider="comfyui_i2v", server="http://a", prompt_id="p1",
                                  frames=24, video_sec=1.0, wall_sec=21.0, gpu_sec=18.5),
                            Usage(provider="comfyui_i2v", server="http://a", prompt_id="p2",
                                  wall_sec=9.0, outcome="lost")])
    unreachable = RenderAttempt(backend="comfyui_i2v", fps=24, resolution="720p",
                                encoder="libx264", ok=False, seconds=3.0)
    local = RenderAttempt(backend="animatic", fps=12, resolution="720p", encoder="libx264",
                          ok=True, seconds=1.25, step="next_backend")
    rows = clip_usage(_record([gen, unreachable, local], ClipStatus.degraded), run_id="r9",
                      user="mei", prices=PriceTable(prices={"*": {"gpu_sec": 0.001}}))
    got = {(r.attempt, r.call, r.provider, r.unit): (r.amount, r.outcome) for r in rows}
    assert got == {
        (1, 0, "comfyui_i2v", "gpu_sec"): (18.5, "ok"),  # the server's own execution time
        (1, 0, "comfyui_i2v", "frames"): (24.0, "ok"),
        (1, 0, "comfyui_i2v", "video_sec"): (1.0, "ok"),
        (1, 1, "comfyui_i2v", "gpu_sec"): (9.0, "lost"),  # ran, delivered nothing: wall time
        (3, 0, "animatic", "gpu_sec"): (1.25, "ok"),  # the attempt never reached a server: 0
        (3, 0, "animatic", "frames"): (48.0, "ok"),
        (3, 0, "animatic", "video_sec"): (2.0, "ok"),
    }
    costs = {(r.attempt, r.call, r.unit): r.cost for r in rows}
    assert costs[(1, 0, "gpu_sec")] == pytest.approx(0.0185) and costs[(1, 0, "frames")] == 0
    assert {r.user for r in rows} == {"mei"} and {r.run_id for r in rows} == {"r9"}


def test_the_price_table_is_read_from_the_home_and_refused_with_the_field_named(
        tmp_path: Path) -> None:
    assert load_prices(tmp_path).price("wan_i2v", "gpu_sec") == 0.0006  # the defaults
    (tmp_path / "prices.yaml").write_text(
        "currency: EUR\nprices:\n  '*': {gpu_sec: 0.001}\n  animatic: {gpu_sec: 0}\n",
        encoding="utf-8")
    table = load_prices(tmp_path)
    assert table.currency == "EUR" and table.cost("wan_i2v", "gpu_sec", 30) == 0.03
    assert table.price("animatic", "gpu_sec") == 0.0 and table.price("wan_i2v", "frames") == 0
    for text, field in (("currency: euros\n", "currency"),
                        ("prices:\n  x: {gpu_hours: 1}\n", "gpu_hours"),
                        ("prices:\n  x: {gpu_sec: -1}\n", "prices.x.gpu_sec"),
                        ("a: &a [*a]\n", "prices.yaml")):
        (tmp_path / "prices.yaml").write_text(text, encoding="utf-8")
        with pytest.raises(PriceTableError, match=field):
            load_prices(tmp_path)


def test_nothing_to_render_is_never_refused(ledger: Ledger) -> None:
    ledger.record([entry(amount=600)])
    budget = ProjectBudget(tenant="studio-b", project="glass-harbor", gpu_minutes=1,
                           on_exceed="refuse")
    ledger.set_budget(budget)
    status = ledger.status(budget, T0)
    assert status.exceeded
    assert budget_verdict(status, 0.0).verdict == "render"  # every clip reused: no spend
    assert budget_verdict(status, 0.5).verdict == "refuse"
