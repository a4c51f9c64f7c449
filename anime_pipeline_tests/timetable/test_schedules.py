"""Schedules as data: validation, which tick is due (time zones, missed ticks), the CLI, and
``schedules_sensor`` firing each tick once — also after a daemon outage and a cursor reset."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest
from pydantic import ValidationError

from anime_pipeline.cli import main
from anime_pipeline.defs.partitions import register_partitions
from anime_pipeline.defs.schedules import schedules_tick
from anime_pipeline.ledger import default_url
from anime_pipeline.pipeline import catalog
from anime_pipeline.storage import LocalStore
from anime_pipeline.timetable import Schedule, ScheduleStore
from anime_pipeline_tests.conftest import minimal_episode

UTC = dt.UTC
CREATED = dt.datetime(2026, 11, 30, 12, tzinfo=UTC)


def test_a_schedule_is_validated_with_the_field_named() -> None:
    for field, kw in (("cron", {"cron": "61 * * * *"}), ("cron", {"cron": "@reboot"}),
                      ("timezone", {"timezone": "Mars/Olympus"}),
                      ("target", {"target": "studio-a"}), ("target", {"target": "a/../b"}),
                      ("action", {"action": "bake"})):
        with pytest.raises(ValidationError) as e:
            Schedule.model_validate({"cron": "0 2 * * *", "target": "studio-a/p",
                                     "action": "plan", **kw})
        assert e.value.errors()[0]["loc"] == (field,)


def test_the_latest_tick_is_due_once_and_missed_ones_are_skipped() -> None:
    s = Schedule(cron="0 2 * * *", timezone="Asia/Tokyo", target="studio-a/p", action="render",
                 created_at=CREATED)
    tokyo_2am = dt.datetime(2026, 11, 30, 17, tzinfo=UTC)  # 02:00 JST on Dec 1
    assert s.due(tokyo_2am - dt.timedelta(minutes=1)) is None  # created after the last tick
    assert s.due(tokyo_2am) == tokyo_2am
    fired = s.model_copy(update={"last_fired_tick": tokyo_2am})
    assert fired.due(tokyo_2am + dt.timedelta(hours=23)) is None
    # Down for three nights: only the latest missed tick fires.
    later = tokyo_2am + dt.timedelta(days=3, hours=5)
    assert fired.due(later) == tokyo_2am + dt.timedelta(days=3)
    assert s.next_tick(tokyo_2am) == tokyo_2am + dt.timedelta(days=1)
    ny = Schedule(cron="30 1 * * *", timezone="America/New_York", target="a/b", action="plan",
                  created_at=dt.datetime(2026, 10, 30, tzinfo=UTC))
    # 01:30 in New York is 05:30 UTC in summer time and 06:30 UTC after it (Nov 1, 2026).
    assert ny.due(dt.datetime(2026, 10, 31, 12, tzinfo=UTC)) == dt.datetime(
        2026, 10, 31, 5, 30, tzinfo=UTC)
    assert ny.due(dt.datetime(2026, 11, 2, 12, tzinfo=UTC)) == dt.datetime(
        2026, 11, 2, 6, 30, tzinfo=UTC)


def test_the_sensor_fires_each_tick_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "artifacts")
    url = default_url(tmp_path)
    table = ScheduleStore(url)
    eps = []
    for ep_id in ("ep01", "ep02"):
        bundle = catalog.register(store, minimal_episode(tmp_path / ep_id, episode_id=ep_id))
        eps.append(bundle.episode.key)
    render = table.add(Schedule(cron="0 * * * *", target="studio-a/moonlit-courier",
                                action="render", created_at=CREATED))
    plan = table.add(Schedule(cron="*/15 * * * *", target=eps[0], action="plan",
                              created_at=CREATED))
    table.add(Schedule(cron="* * * * *", target=eps[1], action="deliver", enabled=False,
                       created_at=CREATED))
    with dg.instance_for_test() as instance:
        for key in eps:
            register_partitions(instance, key, ["S01", "S02"])

        def tick(now: dt.datetime, cursor: str | None) -> dg.SensorResult:
            ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
            return schedules_tick(ctx, store, url, now=now)

        t1 = dt.datetime(2026, 12, 1, 10, 5, tzinfo=UTC)
        first = tick(t1, None)
        keys = sorted(r.run_key or "" for r in first.run_requests or [])
        assert keys == sorted([f"schedule:{plan.id}:20261201T100000Z:{eps[0]}",
                               f"schedule:{render.id}:20261201T100000Z:{eps[0]}",
                               f"schedule:{render.id}:20261201T100000Z:{eps[1]}"])
        by_job = {(r.job_name, r.partition_key) for r in first.run_requests or []}
        assert ("plan_episode", eps[0]) in by_job and ("render_clips", None) in by_job
        renders = [r for r in first.run_requests or [] if r.job_name == "render_clips"]
        assert {r.tags["dagster/asset_partition_range_end"] for r in renders} == {
            f"{k}/S02" for k in eps}
        assert tick(t1 + dt.timedelta(minutes=5), first.cursor).run_requests == []
        # The daemon was down from 10:05 to 13:20: the 13:00 and 13:15 ticks are the latest.
        after = tick(dt.datetime(2026, 12, 1, 13, 20, tzinfo=UTC), first.cursor)
        assert sorted(r.run_key or "" for r in after.run_requests or []) == sorted([
            f"schedule:{plan.id}:20261201T131500Z:{eps[0]}",
            f"schedule:{render.id}:20261201T130000Z:{eps[0]}",
            f"schedule:{render.id}:20261201T130000Z:{eps[1]}"])
        # A cursor reset asks for the latest tick again under the same run keys, which
        # Dagster drops as already requested.
        reset = tick(dt.datetime(2026, 12, 1, 13, 20, tzinfo=UTC), None)
        assert {r.run_key for r in reset.run_requests or []} == {
            r.run_key for r in after.run_requests or []}
        assert json.loads(after.cursor or "{}")[render.id] == "2026-12-01T13:00:00+00:00"
    assert table.get(render.id).last_fired_tick == dt.datetime(2026, 12, 1, 13, tzinfo=UTC)  # type: ignore[union-attr]


def test_the_schedule_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(tmp_path)]
    assert main(["schedule", "add", "--cron", "0 2 * * *", "--timezone", "Asia/Tokyo",
                 "--target", "studio-b/glass-harbor", "--action", "render", *home]) == 0
    sid = capsys.readouterr().out.split()[1].rstrip(":")
    assert main(["schedule", "add", "--cron", "0 25 * * *", "--target", "a/b", "--action",
                 "plan", *home]) == 2
    assert "schedule cron:" in capsys.readouterr().err
    assert main(["schedule", "disable", sid, *home]) == 0
    assert capsys.readouterr().out.strip().endswith(": off")
    assert main(["schedule", "list", "--json", *home]) == 0
    [item] = json.loads(capsys.readouterr().out)
    assert (item["id"], item["enabled"], item["timezone"]) == (sid, False, "Asia/Tokyo")
    assert main(["schedule", "rm", sid, *home]) == 0
    assert main(["schedule", "rm", sid, *home]) == 1
