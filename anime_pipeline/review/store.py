"""Review events in SQL, in the ledger's database (append-only; history is never rewritten)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa

from anime_pipeline.domain.episode import PackageParts
from anime_pipeline.ledger.store import engine_for, metadata
from anime_pipeline.review.machine import (
    ClipVersion,
    ProjectReviewMode,
    ReviewEvent,
    ReviewState,
)
from anime_pipeline.review.qc import QcReport

review_events = sa.Table(
    "review_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("episode_key", sa.String(200), nullable=False),
    sa.Column("shot_id", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("clip_sha256", sa.String(64), nullable=False),
    sa.Column("clip_fingerprint", sa.String(128), nullable=False),
    sa.Column("decision", sa.String(16)),
    sa.Column("reason", sa.Text),
    sa.Column("reviewer", sa.String(200)),
    sa.Column("mode", sa.String(8)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("review_events_shot", "episode_key", "shot_id", "id"),
)


qc_reports = sa.Table(
    "qc_reports", metadata,
    sa.Column("episode_key", sa.String(200), primary_key=True),
    sa.Column("shot_id", sa.String(64), primary_key=True),
    # the clip's sha256, fingerprint (its inputs, the shot's dialogue included) and status:
    # everything the verdict depends on
    sa.Column("version_key", sa.String(255), primary_key=True),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("report", sa.Text, nullable=False),  # QcReport JSON
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

project_settings = sa.Table(
    "project_settings", metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(64), primary_key=True),
    sa.Column("review_mode", sa.String(8), nullable=False),
    sa.Column("package_parts", sa.Text),  # PackageParts JSON; NULL: the defaults
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class ReviewStore:
    """The review history of every shot."""

    def __init__(self, url: str) -> None:
        self.engine = engine_for(url)
        for table in (review_events, qc_reports, project_settings):
            table.create(self.engine, checkfirst=True)

    def append(self, events: Iterable[ReviewEvent]) -> None:
        rows = [{"episode_key": e.episode_key, "shot_id": e.shot_id, "state": e.state.value,
                 "clip_sha256": e.version.sha256, "clip_fingerprint": e.version.fingerprint,
                 "decision": e.decision, "reason": e.reason, "reviewer": e.reviewer,
                 "mode": e.mode, "at": _aware(e.at)} for e in events]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(review_events.insert(), rows)

    def history(self, episode_key: str, shot_id: str | None = None) -> list[ReviewEvent]:
        """Every event of the episode (or of one shot), oldest first."""
        t = review_events.c
        q = sa.select(review_events).where(t.episode_key == episode_key).order_by(t.id)
        if shot_id is not None:
            q = q.where(t.shot_id == shot_id)
        with self.engine.connect() as conn:
            return [_event(row) for row in conn.execute(q)]

    # ----------------------------------------------------------------- QC and settings

    def qc_report(self, episode_key: str, shot_id: str, version_key: str) -> QcReport | None:
        t = qc_reports.c
        q = sa.select(t.report).where(t.episode_key == episode_key, t.shot_id == shot_id,
                                      t.version_key == version_key)
        with self.engine.connect() as conn:
            raw = conn.execute(q).scalar()
        return None if raw is None else QcReport.model_validate_json(raw)

    def save_qc(self, episode_key: str, version_key: str, report: QcReport,
                now: dt.datetime | None = None) -> None:
        row = {"episode_key": episode_key, "shot_id": report.shot_id, "version_key": version_key,
               "passed": report.passed, "report": report.model_dump_json(),
               "at": now or dt.datetime.now(dt.UTC)}
        with self.engine.begin() as conn:
            if self.qc_report(episode_key, report.shot_id, version_key) is None:
                conn.execute(qc_reports.insert(), row)

    def review_mode(self, tenant: str, project: str) -> ProjectReviewMode:
        """The project's review mode (``human`` unless set)."""
        t = project_settings.c
        q = sa.select(t.review_mode).where(t.tenant == tenant, t.project == project)
        with self.engine.connect() as conn:
            value = conn.execute(q).scalar()
        return value or "human"  # type: ignore[return-value]

    def set_review_mode(self, tenant: str, project: str, mode: ProjectReviewMode) -> None:
        self._set_project(tenant, project, review_mode=mode)

    def package_parts(self, tenant: str, project: str) -> PackageParts | None:
        """The project's package parts, or None when it has not set them."""
        t = project_settings.c
        q = sa.select(t.package_parts).where(t.tenant == tenant, t.project == project)
        with self.engine.connect() as conn:
            raw = conn.execute(q).scalar()
        return None if raw is None else PackageParts.model_validate_json(raw)

    def set_package_parts(self, tenant: str, project: str, parts: PackageParts | None) -> None:
        self._set_project(tenant, project,
                          package_parts=None if parts is None else parts.model_dump_json())

    def _set_project(self, tenant: str, project: str, **values: object) -> None:
        t = project_settings.c
        where = (t.tenant == tenant, t.project == project)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(project_settings).where(*where)).first()
            current = {"review_mode": "human", "package_parts": None} if row is None else {
                "review_mode": row.review_mode, "package_parts": row.package_parts}
            conn.execute(project_settings.delete().where(*where))
            conn.execute(project_settings.insert(), {
                "tenant": tenant, "project": project, **current, **values,
                "updated_at": dt.datetime.now(dt.UTC)})

    def latest(self, episode_key: str) -> dict[str, ReviewEvent]:
        """The last event of each shot of the episode that has one."""
        out: dict[str, ReviewEvent] = {}
        for event in self.history(episode_key):
            out[event.shot_id] = event
        return out


def _event(row: sa.Row) -> ReviewEvent:  # type: ignore[type-arg]
    return ReviewEvent(
        episode_key=row.episode_key, shot_id=row.shot_id, state=ReviewState(row.state),
        version=ClipVersion(sha256=row.clip_sha256, fingerprint=row.clip_fingerprint),
        decision=row.decision, reason=row.reason, reviewer=row.reviewer, mode=row.mode,
        at=_aware(row.at))
