"""Schedules as data: what to run when, kept in SQL (the ledger's database) rather than in
code. Plain Python (croniter, SQLAlchemy); the Dagster sensor that fires what is due lives in
``defs/schedules.py``.

A schedule is a cron expression in a time zone, a target — one episode
(``tenant/project/episode``) or every episode of a project (``tenant/project``) — and an action
(``plan``, ``render``, ``deliver``, ``qc``). Ticks missed while nothing evaluated schedules
(the daemon was down) are not replayed one by one: the latest missed tick fires once, the
older ones are skipped (a night of outage does not start eight renders at once).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Sequence
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from anime_pipeline.ledger.store import engine_for, metadata

Action = Literal["plan", "render", "deliver", "qc"]
ACTIONS: tuple[Action, ...] = ("plan", "render", "deliver", "qc")
_SLUG = r"[a-z0-9][a-z0-9-]{0,62}"
TARGET = re.compile(rf"^{_SLUG}/{_SLUG}(/{_SLUG})?$")


class Schedule(BaseModel):
    """One schedule, as stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:10], pattern=r"^[a-z0-9]{4,32}$")
    cron: str
    timezone: str = "UTC"
    target: str  # tenant/project/episode, or tenant/project (every episode of the project)
    action: Action
    enabled: bool = True
    created_at: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    last_fired_tick: dt.datetime | None = None  # the last tick that fired (UTC)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        v = " ".join(v.split())
        if len(v.split()) != 5 or not croniter.is_valid(v):
            raise ValueError(f"{v!r} is not a 5-field cron expression (e.g. '0 2 * * *')")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not an IANA time zone (e.g. Asia/Tokyo)") from None
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if not TARGET.match(v):
            raise ValueError(f"{v!r}: a target is tenant/project/episode or tenant/project")
        return v

    @property
    def whole_project(self) -> bool:
        return self.target.count("/") == 1

    def targets(self, episode_keys: Sequence[str]) -> list[str]:
        """The registered episodes it runs on."""
        if not self.whole_project:
            return [self.target] if self.target in episode_keys else []
        return [k for k in episode_keys if k.startswith(self.target + "/")]

    def due(self, now: dt.datetime) -> dt.datetime | None:
        """The tick to fire now, if any: the latest cron time at or before ``now`` (in the
        schedule's zone) that is after the last fired tick and after the schedule's creation.
        Older missed ticks are skipped."""
        zone = ZoneInfo(self.timezone)
        local_now = now.astimezone(zone)
        tick = croniter(self.cron, local_now + dt.timedelta(seconds=1)).get_prev(dt.datetime)
        tick_utc = tick.astimezone(dt.UTC)
        floor = max(self.created_at, self.last_fired_tick or self.created_at)
        return tick_utc if tick_utc > floor else None

    def next_tick(self, now: dt.datetime) -> dt.datetime:
        zone = ZoneInfo(self.timezone)
        return croniter(self.cron, now.astimezone(zone)).get_next(dt.datetime).astimezone(dt.UTC)


schedules = sa.Table(
    "schedules", metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("cron", sa.String(100), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("action", sa.String(8), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_fired_tick", sa.DateTime(timezone=True)),
)


def _aware(v: dt.datetime | None) -> dt.datetime | None:
    return None if v is None else (v if v.tzinfo else v.replace(tzinfo=dt.UTC))


class ScheduleStore:
    """The schedules table."""

    def __init__(self, url: str) -> None:
        self.engine = engine_for(url)
        schedules.create(self.engine, checkfirst=True)

    def add(self, schedule: Schedule) -> Schedule:
        with self.engine.begin() as conn:
            conn.execute(schedules.insert(), schedule.model_dump())
        return schedule

    def all(self) -> list[Schedule]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(schedules).order_by(schedules.c.created_at))
            return [Schedule.model_validate({
                **row._mapping, "created_at": _aware(row.created_at),
                "last_fired_tick": _aware(row.last_fired_tick)}) for row in rows]

    def get(self, schedule_id: str) -> Schedule | None:
        return next((s for s in self.all() if s.id == schedule_id), None)

    def update(self, schedule_id: str, **changes: object) -> Schedule:
        """Change fields (validated as a whole); LookupError when there is no such id."""
        current = self.get(schedule_id)
        if current is None:
            raise LookupError(f"no schedule {schedule_id!r}")
        new = Schedule.model_validate({**current.model_dump(), **changes})
        with self.engine.begin() as conn:
            conn.execute(schedules.update().where(schedules.c.id == schedule_id).values(
                **{k: v for k, v in new.model_dump().items() if k != "id"}))
        return new

    def remove(self, schedule_id: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(schedules.delete().where(
                schedules.c.id == schedule_id)).rowcount)

    def mark_fired(self, schedule_id: str, tick: dt.datetime) -> None:
        """Remember ``tick`` as fired — only forward (a slower evaluator never moves it back)."""
        t = schedules.c
        with self.engine.begin() as conn:
            conn.execute(schedules.update().where(
                t.id == schedule_id,
                sa.or_(t.last_fired_tick.is_(None), t.last_fired_tick < tick)).values(
                last_fired_tick=tick))
