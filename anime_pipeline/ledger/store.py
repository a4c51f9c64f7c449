"""The ledger database (SQLAlchemy Core): usage, project budgets and sent notifications.

SQLite under the pipeline home by default (``<home>/ledger.sqlite``), PostgreSQL (or any
SQLAlchemy URL) by ``$ANIME_PIPELINE_LEDGER_URL`` / the ``ledger`` resource. Tables are created
when missing. Every write is idempotent:

* ``usage``: unique on ``(run_id, episode key, shot, attempt, call, unit)`` — a retried or
  resumed step that reports the same calls again adds nothing (one run may hold shots of
  several episodes: a shot id is unique only within its episode);
* ``budgets``: one row per ``(tenant, project)``, replaced by ``budget set``;
* ``notifications``: unique on ``key`` — an alert is claimed before it is sent, so two
  processes (a daemon and a CLI, or a daemon restarted) never send it twice.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from anime_pipeline.ledger.records import (
    BudgetStatus,
    GroupBy,
    ProjectBudget,
    UsageEntry,
    UsageFilter,
    UsageSummaryRow,
)

LEDGER_URL_ENV = "ANIME_PIPELINE_LEDGER_URL"
LEDGER_FILE = "ledger.sqlite"

metadata = sa.MetaData()

usage = sa.Table(
    "usage", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("project", sa.String(64), nullable=False),
    sa.Column("episode", sa.String(64), nullable=False),
    sa.Column("shot", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("call", sa.Integer, nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("server", sa.String(255)),
    sa.Column("prompt_id", sa.String(128)),
    sa.Column("unit", sa.String(16), nullable=False),
    sa.Column("amount", sa.Float, nullable=False),
    sa.Column("cost", sa.Float, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("day", sa.String(10), nullable=False),  # YYYY-MM-DD (UTC), for --by day
    sa.UniqueConstraint("run_id", "tenant", "project", "episode", "shot", "attempt", "call",
                        "unit", name="usage_once"),
    sa.Index("usage_project_at", "tenant", "project", "at"),
)

budgets = sa.Table(
    "budgets", metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(64), primary_key=True),
    sa.Column("gpu_minutes", sa.Float, nullable=False),
    sa.Column("period", sa.String(8), nullable=False),
    sa.Column("on_exceed", sa.String(8), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

notifications = sa.Table(
    "notifications", metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("tries", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
)

_ENGINES: dict[str, sa.Engine] = {}
_LOCK = threading.Lock()


def default_url(home: Path) -> str:
    return f"sqlite:///{(home / LEDGER_FILE).absolute()}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def engine_for(url: str) -> sa.Engine:
    """One engine per URL per process; the tables exist once it returns."""
    with _LOCK:
        engine = _ENGINES.get(url)
        if engine is not None:
            return engine
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, connect_args={"timeout": 30})
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        metadata.create_all(engine)
        _ENGINES[url] = engine
        return engine


def period_start(period: str, now: dt.datetime) -> tuple[dt.datetime | None, str]:
    """The start (UTC) of the budget period holding ``now``, and its label."""
    now = now.astimezone(dt.UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day.strftime("%Y-%m-%d")
    if period == "week":
        start = day - dt.timedelta(days=day.weekday())
        year, week, _ = start.isocalendar()
        return start, f"{year}-W{week:02d}"
    if period == "month":
        start = day.replace(day=1)
        return start, start.strftime("%Y-%m")
    return None, "total"


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class Ledger:
    """Usage, budgets and notifications in one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)

    @classmethod
    def at_home(cls, home: Path, url: str | None = None) -> Ledger:
        return cls(url or default_url(home))

    def _insert(self, table: sa.Table) -> Any:
        name = self.engine.dialect.name
        if name == "postgresql":
            return postgresql.insert(table)
        if name == "sqlite":
            return sqlite.insert(table)
        raise RuntimeError(f"ledger: unsupported database {name!r} (SQLite or PostgreSQL)")

    # ----------------------------------------------------------------- usage

    def record(self, entries: Iterable[UsageEntry]) -> int:
        """Store ``entries``; those already stored are skipped. The number added."""
        rows = [{**e.model_dump(), "at": _aware(e.at),
                 "day": _aware(e.at).astimezone(dt.UTC).strftime("%Y-%m-%d")}
                for e in entries]
        if not rows:
            return 0
        stmt = self._insert(usage).on_conflict_do_nothing()  # the usage_once constraint
        with self.engine.begin() as conn:
            result = conn.execute(stmt, rows)
        return max(0, result.rowcount) if result.rowcount is not None else 0

    def _where(self, f: UsageFilter) -> list[Any]:
        c = usage.c
        out: list[Any] = []
        for col, value in ((c.tenant, f.tenant), (c.project, f.project), (c.episode, f.episode),
                           (c.user, f.user), (c.provider, f.provider)):
            if value is not None:
                out.append(col == value)
        if f.since is not None:
            out.append(c.at >= _aware(f.since))
        if f.until is not None:
            out.append(c.at < _aware(f.until))
        return out

    def entries(self, f: UsageFilter | None = None, limit: int = 10_000) -> list[UsageEntry]:
        f = f or UsageFilter()
        cols = [usage.c[k] for k in UsageEntry.model_fields]
        q = sa.select(*cols).where(*self._where(f)).order_by(usage.c.at, usage.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [UsageEntry.model_validate({**row._mapping, "at": _aware(row.at)})
                    for row in conn.execute(q)]

    def summary(self, f: UsageFilter | None = None, by: GroupBy = "provider"
                ) -> list[UsageSummaryRow]:
        """Amounts per unit, cost and calls, grouped ``by`` day, episode, provider, user or
        project (``tenant/project``; an episode is ``tenant/project/episode``)."""
        f = f or UsageFilter()
        c = usage.c
        sep = sa.literal("/")
        group: Any = {
            "day": c.day, "provider": c.provider, "user": c.user,
            "project": c.tenant + sep + c.project,
            "episode": c.tenant + sep + c.project + sep + c.episode,
        }[by].label("grp")
        call_id = (c.run_id + sep + c.tenant + sep + c.project + sep + c.episode + sep
                   + c.shot + sep + sa.cast(c.attempt, sa.String) + sep
                   + sa.cast(c.call, sa.String))
        q = (sa.select(group, c.unit, c.currency, sa.func.sum(c.amount), sa.func.sum(c.cost))
             .where(*self._where(f)).group_by(group, c.unit, c.currency).order_by(group))
        per_call = (sa.select(group, sa.func.count(sa.distinct(call_id)))
                    .where(*self._where(f)).group_by(group))
        out: dict[tuple[str, str], dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for grp, unit, currency, amount, cost in conn.execute(q):
                row = out.setdefault((grp, currency), {"amounts": {}, "cost": 0.0, "calls": 0})
                row["amounts"][unit] = round(float(amount or 0.0), 3)
                row["cost"] += float(cost or 0.0)
            counts: dict[str, int] = {g: n for g, n in conn.execute(per_call)}
        return [UsageSummaryRow(group=str(grp), amounts=v["amounts"], cost=round(v["cost"], 4),
                                currency=currency, calls=int(counts.get(grp, 0)))
                for (grp, currency), v in sorted(out.items())]

    def totals(self) -> list[tuple[str, str, str, str, float]]:
        """``(tenant, project, provider, unit, amount)`` over all time (the metrics)."""
        c = usage.c
        q = (sa.select(c.tenant, c.project, c.provider, c.unit, sa.func.sum(c.amount))
             .group_by(c.tenant, c.project, c.provider, c.unit))
        with self.engine.connect() as conn:
            return [(t, p, pr, u, float(a or 0.0)) for t, p, pr, u, a in conn.execute(q)]

    def usage_since(self, after_id: int, limit: int = 1000
                    ) -> list[tuple[int, str, str, str, str, float]]:
        """``(id, tenant, project, provider, unit, amount)`` of the rows whose id is above
        ``after_id``, in id order, at most ``limit``: what the metrics add up incrementally
        (rows are only ever added, never changed or removed)."""
        c = usage.c
        q = (sa.select(c.id, c.tenant, c.project, c.provider, c.unit, c.amount)
             .where(c.id > after_id).order_by(c.id).limit(limit))
        with self.engine.connect() as conn:
            return [(int(i), t, p, pr, u, float(a)) for i, t, p, pr, u, a in conn.execute(q)]

    def spent_gpu_sec(self, tenant: str, project: str, since: dt.datetime | None) -> float:
        c = usage.c
        where = [c.tenant == tenant, c.project == project, c.unit == "gpu_sec"]
        if since is not None:
            where.append(c.at >= _aware(since))
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.sum(c.amount)).where(*where)).scalar()
        return float(value or 0.0)

    # ----------------------------------------------------------------- budgets

    def set_budget(self, budget: ProjectBudget, now: dt.datetime | None = None) -> None:
        row = {**budget.model_dump(), "updated_at": now or dt.datetime.now(dt.UTC)}
        stmt = self._insert(budgets)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant", "project"],
            set_={k: stmt.excluded[k] for k in ("gpu_minutes", "period", "on_exceed",
                                                "updated_at")})
        with self.engine.begin() as conn:
            conn.execute(stmt, row)

    def remove_budget(self, tenant: str, project: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(budgets.delete().where(budgets.c.tenant == tenant,
                                                         budgets.c.project == project))
        return bool(result.rowcount)

    def budget(self, tenant: str, project: str) -> ProjectBudget | None:
        q = sa.select(budgets).where(budgets.c.tenant == tenant, budgets.c.project == project)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else _budget(row)

    def all_budgets(self, tenant: str | None = None) -> list[ProjectBudget]:
        q = sa.select(budgets).order_by(budgets.c.tenant, budgets.c.project)
        if tenant is not None:
            q = q.where(budgets.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [_budget(row) for row in conn.execute(q)]

    def status(self, budget: ProjectBudget, now: dt.datetime | None = None) -> BudgetStatus:
        start, label = period_start(budget.period, now or dt.datetime.now(dt.UTC))
        return BudgetStatus(budget=budget, period_start=start, period_label=label,
                            spent_gpu_sec=self.spent_gpu_sec(budget.tenant, budget.project,
                                                             start))

    def budget_status(self, tenant: str, project: str, now: dt.datetime | None = None
                      ) -> BudgetStatus | None:
        budget = self.budget(tenant, project)
        return None if budget is None else self.status(budget, now)

    # ----------------------------------------------------------------- notifications

    def claim_notification(self, key: str, kind: str, text: str,
                           now: dt.datetime | None = None) -> bool:
        """Claim ``key`` for sending: True the first time anywhere, False ever after."""
        stmt = self._insert(notifications).on_conflict_do_nothing(index_elements=["key"])
        with self.engine.begin() as conn:
            result = conn.execute(stmt, {"key": key, "kind": kind, "text": text, "tries": 0,
                                         "created_at": now or dt.datetime.now(dt.UTC)})
        return bool(result.rowcount)

    def notification_done(self, key: str, *, error: str | None = None,
                          now: dt.datetime | None = None) -> None:
        """Record a send: its time when it went out, else the error (kept for a retry)."""
        values: dict[str, Any] = {"tries": notifications.c.tries + 1, "error": error}
        if error is None:
            values["sent_at"] = now or dt.datetime.now(dt.UTC)
        with self.engine.begin() as conn:
            conn.execute(notifications.update().where(notifications.c.key == key)
                         .values(**values))

    def unsent_notifications(self, max_tries: int = 5) -> list[tuple[str, str, str]]:
        """``(key, kind, text)`` of claimed notifications whose send failed (to retry)."""
        n = notifications.c
        q = (sa.select(n.key, n.kind, n.text).where(n.sent_at.is_(None), n.tries < max_tries,
                                                    n.tries > 0).order_by(n.created_at))
        with self.engine.connect() as conn:
            return [(k, kd, t) for k, kd, t in conn.execute(q)]

    def has_notification(self, key: str) -> bool:
        """Whether ``key`` was claimed (a cheap read before a claim that is likely taken)."""
        q = sa.select(notifications.c.key).where(notifications.c.key == key)
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def notifications_to_retry(self, max_tries: int = 5, *, abandoned_after_s: float = 600.0,
                               now: dt.datetime | None = None
                               ) -> list[tuple[str, str, str, int, str | None]]:
        """``(key, kind, text, tries, error)`` of claimed notifications not sent yet: those whose
        send failed (fewer than ``max_tries`` tries), and those claimed more than
        ``abandoned_after_s`` ago whose sender never reported (it died between the claim and
        the send). Take one with :meth:`take_notification` before sending it again."""
        n = notifications.c
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(seconds=abandoned_after_s)
        q = (sa.select(n.key, n.kind, n.text, n.tries, n.error, n.created_at)
             .where(n.sent_at.is_(None), n.tries < max_tries).order_by(n.created_at))
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
        return [(r.key, r.kind, r.text, int(r.tries), r.error) for r in rows
                if r.tries > 0 or r.error is not None or _aware(r.created_at) < cutoff]

    def take_notification(self, key: str, *, tries: int, error: str | None, mark: str) -> bool:
        """Take an unsent notification for one more try, as last read (``tries``, ``error``):
        True for exactly one caller, which finds ``mark`` in ``error`` until it reports with
        :meth:`notification_done` (a compare-and-set, so two retriers never send it twice)."""
        n = notifications.c
        same_error = n.error.is_(None) if error is None else n.error == error
        with self.engine.begin() as conn:
            result = conn.execute(notifications.update()
                                  .where(n.key == key, n.sent_at.is_(None), n.tries == tries,
                                         same_error).values(error=mark))
        return bool(result.rowcount)

    def sent_notifications(self, kind: str | None = None) -> Sequence[Any]:
        q = sa.select(notifications).order_by(notifications.c.created_at)
        if kind is not None:
            q = q.where(notifications.c.kind == kind)
        with self.engine.connect() as conn:
            return list(conn.execute(q))


def _budget(row: Any) -> ProjectBudget:
    return ProjectBudget(tenant=row.tenant, project=row.project, gpu_minutes=row.gpu_minutes,
                         period=row.period, on_exceed=row.on_exceed)
