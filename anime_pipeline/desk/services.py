"""What the desk does, under the routes and over the use cases: the episodes a scope sees,
one episode's page (its review status, history, links, usage and budget), decisions through
``pipeline.review.decide``, and which file a signed link may serve.

Every call takes the caller's :class:`~anime_pipeline.desk.auth.Grant` and checks its scope
first: an episode outside it is "not found", exactly like one that does not exist.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ConfigDict, ValidationError

from anime_pipeline.desk.auth import Grant, Scope
from anime_pipeline.desk.config import DeskSettings
from anime_pipeline.desk.signing import (
    LinkRefused,
    LinkSigner,
    artifact_keys,
    download_name,
    expiry,
    local_file,
)
from anime_pipeline.domain.episode import EpisodeBundle, EpisodeValidationError, PackageParts
from anime_pipeline.domain.records import ClipRecord, CompositeRecord, PackageRecord
from anime_pipeline.ledger import Ledger, UsageFilter
from anime_pipeline.ops.notify import UI_URL_ENV, validate_url
from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.clips import read_clip_records, read_retake
from anime_pipeline.pipeline.review import decide, episode_review, sync_versions
from anime_pipeline.review.machine import Decision, ReviewEvent, ReviewState, ReviewTransitionError
from anime_pipeline.review.store import ReviewStore
from anime_pipeline.storage import EpisodeKeys, LocalStore, RecordError, S3Store, get_record
from anime_pipeline.timetable import Schedule, ScheduleStore

mimetypes.add_type("application/x-subrip", ".srt")
mimetypes.add_type("text/x-ssa", ".ass")
INLINE = (".mp4", ".jpg", ".jpeg", ".png")


class DeskError(Exception):
    """A request the desk answers with ``status`` and a message for the reviewer."""

    status = 400


class NotFound(DeskError):
    status = 404


class Conflict(DeskError):
    """The state machine (or a changed clip) refuses the decision."""

    status = 409


class FileLink(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    key: str
    name: str  # the file name a download gets
    url: str  # signed; expires with the page's links
    size_bytes: int | None = None


class HistoryRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: str
    version: str  # the clip's sha256, short
    version_no: int  # 1 for the shot's first clip version, 2 for the next ...
    decision: str | None
    reason: str | None
    reviewer: str | None
    mode: str | None
    at: dt.datetime


class ShotCard(BaseModel):
    model_config = ConfigDict(frozen=True)

    shot_id: str
    shot_type: str
    duration_ms: int
    dialogue: list[str]
    state: str | None  # None: no clip yet
    clip_status: str | None  # ok | degraded | placeholder
    clip_summary: str | None  # why a clip is degraded or a slate
    sha256: str | None
    version: str | None
    version_no: int | None
    take: int | None  # the retake a rejection asked for (1, 2, ...), none before one
    decision: str | None
    reason: str | None
    reviewer: str | None
    can_decide: bool
    clip: FileLink | None
    thumbnail: FileLink | None
    ui_url: str | None  # the shot's partition of ``clips`` in the Dagster UI
    history: list[HistoryRow]


class UsageRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    provider: str
    calls: int
    gpu_minutes: float
    cost: float
    currency: str


class BudgetView(BaseModel):
    model_config = ConfigDict(frozen=True)

    gpu_minutes: float
    period: str
    period_label: str
    spent_gpu_minutes: float
    used_percent: float
    on_exceed: str
    exceeded: bool


class UsageView(BaseModel):
    model_config = ConfigDict(frozen=True)

    project: str
    rows: list[UsageRow]
    episode_cost: str | None
    budget: BudgetView | None


class EpisodeSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    episode_key: str
    shots: int
    counts: dict[str, int]
    url: str


class EpisodeView(BaseModel):
    """One episode as the desk shows it (and ``GET /api/episodes/T/P/E`` returns it)."""

    model_config = ConfigDict(frozen=True)

    episode_key: str
    tenant: str
    project: str
    episode: str
    title: str
    duration_ms: int
    format: str
    review_mode: str
    counts: dict[str, int]
    composite: FileLink | None
    composite_info: str | None
    composite_stale: list[str]  # shots whose clip changed since the composite was cut
    downloads: list[FileLink]
    shots: list[ShotCard]
    usage: UsageView | None
    links_expire_at: dt.datetime


def clips_partition_url(ui_url: str, episode_key: str, shot_id: str) -> str | None:
    """The Dagster UI's page of the shot's ``clips`` partition (its partitions view with
    the partition selected, as the UI's own ``assetDetailsPathForKey`` links it)."""
    if not ui_url:
        return None
    query = urlencode({"view": "partitions", "partition": f"{episode_key}/{shot_id}"},
                      quote_via=quote, safe="")
    return f"{ui_url.rstrip('/')}/assets/clips?{query}"


def _minutes(seconds: float) -> float:
    return round(seconds / 60.0, 2)


class ProjectView(BaseModel):
    """A project's settings page: review mode, package parts, schedules."""

    tenant: str
    project: str
    review_mode: str
    package: dict[str, bool]
    package_is_default: bool
    schedules: list[dict[str, Any]]
    episodes: list[str]


class DeskService:
    """The desk's work, for one storage and one ledger."""

    def __init__(self, settings: DeskSettings, secret: bytes,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.storage = settings.open_storage()
        self.reviews = ReviewStore(settings.ledger_url)
        self.ledger = Ledger(settings.ledger_url)
        self.signer = LinkSigner(secret)
        self.ui_url = validate_url(settings.ui_url, UI_URL_ENV)
        self.clock = clock
        # one process, many request threads: a page load sends new versions to review, and
        # two of them at once must not record the same version twice
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ scope

    def _bundle(self, grant: Grant, episode_key: str) -> EpisodeBundle:
        if not grant.scope.covers(episode_key):
            raise NotFound(f"no episode {episode_key}")
        try:
            return catalog.load_registered(self.storage, episode_key)
        except catalog.NotRegistered:
            raise NotFound(f"no episode {episode_key}") from None
        except (EpisodeValidationError, RecordError, ValueError, OSError) as e:
            raise Conflict(f"{episode_key}: its folder no longer loads: {e}") from None

    def episodes(self, grant: Grant) -> list[EpisodeSummary]:
        """The registered episodes in the grant's scope, with how many shots stand where."""
        out = []
        for key in catalog.registered_keys(self.storage):
            if not grant.scope.covers(key):
                continue
            try:
                shots = catalog.entry(self.storage, key).shots
            except (RecordError, OSError):
                continue
            counts: dict[str, int] = {}
            for event in self.reviews.latest(key).values():
                counts[event.state.value] = counts.get(event.state.value, 0) + 1
            out.append(EpisodeSummary(episode_key=key, shots=len(shots), counts=counts,
                                      url=f"/episodes/{key}"))
        return out

    # ------------------------------------------------------------------ links

    def link(self, scope: Scope, key: str, label: str, size: int | None = None,
             now: float | None = None) -> FileLink:
        """A signed link to ``key`` (which must lie in ``scope``): the desk's own for local
        storage, S3's presigned URL for S3."""
        at = self.clock() if now is None else now
        name = download_name(key)
        if isinstance(self.storage, S3Store):
            if not scope.covers("/".join(key.split("/")[:3])):
                raise LinkRefused(f"{key!r} is outside scope {scope}")
            url = self.storage.presigned_url(key, self.settings.link_ttl_s, filename=name,
                                             inline=key.endswith(INLINE))
        else:
            params = self.signer.params(key, scope, expiry(at, self.settings.link_ttl_s))
            url = f"/files/{quote(key)}?{urlencode(params)}"
        return FileLink(label=label, key=key, name=name, url=url, size_bytes=size)

    def resolve_file(self, key: str, *, exp: str | None, scope: str | None,
                     sig: str | None) -> tuple[Path, str, str]:
        """The file a signed link names, its download name and media type; every check of
        ``signing`` first, then the key must be one of its episode's artifacts. Reads no
        file (only the episode's catalog entry, once the signature holds)."""
        episode, _ = self.signer.verify(key, exp=exp, scope=scope, sig=sig, now=self.clock())
        if not isinstance(self.storage, LocalStore):
            raise LinkRefused("S3 links are S3's own")
        try:
            shots = catalog.entry(self.storage, episode).shots
        except (catalog.NotRegistered, RecordError, OSError):
            raise LinkRefused(f"{episode}: not a registered episode") from None
        if key not in artifact_keys(episode, shots):
            raise LinkRefused(f"{key!r} is not an artifact the desk hands out")
        path = local_file(self.storage.root, key)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return path, download_name(key), media

    # ------------------------------------------------------------------ the page

    def episode_view(self, grant: Grant, episode_key: str) -> EpisodeView:
        bundle = self._bundle(grant, episode_key)
        ep = bundle.episode
        keys = EpisodeKeys(ep.key)
        with self._lock:
            review = episode_review(self.storage, self.reviews, bundle)
        history = self.reviews.history(ep.key)
        records: dict[str, ClipRecord] = read_clip_records(self.storage, bundle)
        present = set(self.storage.list_keys(ep.key))
        now = self.clock()
        scope = grant.scope

        def link(key: str, label: str, size: int | None = None) -> FileLink | None:
            return self.link(scope, key, label, size, now) if key in present else None

        composite: CompositeRecord | None = None
        if keys.composite_record in present:
            try:
                composite = get_record(self.storage, keys.composite_record, CompositeRecord)
            except RecordError:
                composite = None
        package: PackageRecord | None = None
        if keys.package_record in present:
            try:
                package = get_record(self.storage, keys.package_record, PackageRecord)
            except RecordError:
                package = None
        composite_link = link(keys.composite, f"{ep.episode_id}.mp4",
                              composite.size_bytes if composite else None)
        downloads = [d for d in (
            composite_link,
            link(keys.subtitles_srt, "subtitles (SRT)"),
            link(keys.subtitles_ass, "subtitles (ASS)"),
            link(keys.shot_plan, "shot plan (JSON)"),
            link(keys.audio_manifest, "audio event manifest (JSON)"),
            link(keys.compute_plan, "compute plan (JSON)"),
            link(keys.contact_sheet, "contact sheet (JPEG)"),
            link(keys.package, "delivery ZIP", package.size_bytes if package else None),
        ) if d is not None]

        by_shot: dict[str, list[ReviewEvent]] = {}
        for event in history:
            by_shot.setdefault(event.shot_id, []).append(event)
        cards = []
        for shot, status in zip(ep.shots, review.shots, strict=True):
            events = by_shot.get(shot.id, [])
            # a version is the clip's bytes and what made them (a retake of the same picture
            # is a new version to review, as the state machine counts it)
            numbers: dict[tuple[str, str], int] = {}
            for event in events:
                numbers.setdefault((event.version.sha256, event.version.fingerprint),
                                   len(numbers) + 1)
            record = records.get(shot.id)
            retake = read_retake(self.storage, keys, shot.id) \
                if keys.retake(shot.id) in present else None
            rows = [HistoryRow(state=e.state.value, version=e.version.sha256[:12],
                               version_no=numbers[(e.version.sha256, e.version.fingerprint)],
                               decision=e.decision, reason=e.reason, reviewer=e.reviewer,
                               mode=e.mode, at=e.at)
                    for e in reversed(events)]
            sha = status.clip_sha256
            cards.append(ShotCard(
                shot_id=shot.id, shot_type=shot.type.value, duration_ms=shot.duration_ms,
                dialogue=[f"{line.speaker}: {line.text}" for line in shot.dialogue],
                state=status.state.value if status.state else None,
                clip_status=status.clip_status,
                clip_summary=record.summary if record and record.status.value != "ok" else None,
                sha256=sha, version=sha[:12] if sha else None,
                version_no=numbers.get((record.sha256, record.fingerprint)) if record else None,
                take=retake.take if retake else None,
                decision=status.decision, reason=status.reason, reviewer=status.reviewer,
                can_decide=status.state is ReviewState.in_review,
                clip=link(keys.clip(shot.id), f"{shot.id}.mp4",
                          record.size_bytes if record else None),
                thumbnail=link(keys.thumbnail(shot.id), f"{shot.id}.jpg"),
                ui_url=clips_partition_url(self.ui_url, ep.key, shot.id),
                history=rows))
        counts: dict[str, int] = {}
        for card in cards:
            state = card.state or "no clip"
            counts[state] = counts.get(state, 0) + 1
        info = None
        if composite is not None:
            info = (f"{composite.duration_ms / 1000:.1f} s, {composite.width}x{composite.height}"
                    f"@{composite.fps:g}, {composite.video_frames} frames, composed "
                    f"{composite.composed_at:%Y-%m-%d %H:%M} UTC")
            if composite.placeholder_shots:
                info += f"; placeholder slates: {', '.join(composite.placeholder_shots)}"
        cut = {c.shot_id: c.sha256 for c in composite.clips} if composite else {}
        stale = [c.shot_id for c in cards if composite is not None
                 and c.sha256 is not None and cut.get(c.shot_id) != c.sha256]
        return EpisodeView(
            episode_key=ep.key, tenant=ep.tenant_id, project=ep.project_id,
            episode=ep.episode_id, title=ep.title, duration_ms=ep.duration_ms,
            format=f"{ep.format.width}x{ep.format.height}@{ep.format.fps:g}",
            review_mode=self.reviews.review_mode(ep.tenant_id, ep.project_id), counts=counts,
            composite=composite_link, composite_info=info, composite_stale=stale,
            downloads=downloads, shots=cards,
            usage=self.usage(ep.tenant_id, ep.project_id, ep.episode_id),
            links_expire_at=dt.datetime.fromtimestamp(
                expiry(now, self.settings.link_ttl_s), dt.UTC))

    def usage(self, tenant: str, project: str, episode: str) -> UsageView | None:
        """The project's usage by provider, this episode's cost, and the budget (if set);
        None when the ledger holds neither usage nor a budget for the project."""
        rows = self.ledger.summary(UsageFilter(tenant=tenant, project=project), by="provider")
        ep_rows = self.ledger.summary(UsageFilter(tenant=tenant, project=project,
                                                  episode=episode), by="project")
        status = self.ledger.budget_status(tenant, project)
        if not rows and status is None:
            return None
        budget = None
        if status is not None:
            budget = BudgetView(
                gpu_minutes=status.budget.gpu_minutes, period=status.budget.period,
                period_label=status.period_label,
                spent_gpu_minutes=_minutes(status.spent_gpu_sec),
                used_percent=round(100 * status.used_fraction, 1),
                on_exceed=status.budget.on_exceed, exceeded=status.exceeded)
        return UsageView(
            project=f"{tenant}/{project}",
            rows=[UsageRow(provider=r.group, calls=r.calls,
                           gpu_minutes=_minutes(r.amounts.get("gpu_sec", 0.0)), cost=r.cost,
                           currency=r.currency) for r in rows],
            episode_cost=", ".join(f"{r.cost:.4f} {r.currency}" for r in ep_rows) or None,
            budget=budget)

    # ------------------------------------------------------------------ decisions

    def decide(self, grant: Grant, episode_key: str, shot_id: str, decision: Decision, *,
               reason: str | None = None, version: str | None = None) -> ReviewEvent:
        """Approve or reject the shot's clip through the use case, as the grant's reviewer.
        ``version``: the clip's sha256 the reviewer saw; a clip replaced since is refused."""
        bundle = self._bundle(grant, episode_key)
        if shot_id not in {s.id for s in bundle.episode.shots}:
            raise NotFound(f"{episode_key} has no shot {shot_id}")
        if decision == "rejected" and not (reason or "").strip():
            raise DeskError(f"{episode_key} {shot_id}: a rejection needs a reason (it goes to "
                            "the regeneration)")
        with self._lock:
            if version:
                sync_versions(self.storage, self.reviews, bundle)
                last = self.reviews.latest(episode_key).get(shot_id)
                if last is not None and last.version.sha256 != version:
                    raise Conflict(
                        f"{episode_key} {shot_id}: the clip changed since the page was loaded "
                        f"(now {last.version.sha256[:12]}, the page showed {version[:12]}): "
                        "reload and review the new version")
            try:
                return decide(self.storage, self.reviews, bundle, shot_id, decision,
                              reviewer=grant.reviewer, mode="human", reason=reason)
            except ReviewTransitionError as e:
                raise Conflict(str(e)) from None

    # ------------------------------------------------------------------ project settings

    def project_view(self, grant: Grant, tenant: str, project: str) -> ProjectView:
        if not grant.scope.covers_project(tenant, project):
            raise NotFound(f"no project {tenant}/{project}")
        parts = self.reviews.package_parts(tenant, project)
        table = ScheduleStore(self.settings.ledger_url)
        now = dt.datetime.now(dt.UTC)
        prefix = f"{tenant}/{project}"
        schedules = [{**s.model_dump(mode="json"), "next_tick": s.next_tick(now).isoformat()}
                     for s in table.all()
                     if s.target == prefix or s.target.startswith(prefix + "/")]
        episodes = [k for k in catalog.registered_keys(self.storage)
                    if k.startswith(prefix + "/")]
        return ProjectView(tenant=tenant, project=project,
                           review_mode=self.reviews.review_mode(tenant, project),
                           package=(parts or PackageParts()).model_dump(),
                           package_is_default=parts is None, schedules=schedules,
                           episodes=episodes)


    def save_project(self, grant: Grant, tenant: str, project: str, *,
                     review_mode: str, package: dict[str, bool]) -> None:
        if not grant.scope.covers_project(tenant, project):
            raise NotFound(f"no project {tenant}/{project}")
        if review_mode not in ("human", "ai", "human+ai"):
            raise DeskError(f"review mode {review_mode!r}: human, ai or human+ai")
        self.reviews.set_review_mode(tenant, project, review_mode)  # type: ignore[arg-type]
        self.reviews.set_package_parts(tenant, project, PackageParts.model_validate(package))


    def add_schedule(self, grant: Grant, tenant: str, project: str, *, cron: str,
                     timezone: str, target: str, action: str) -> Schedule:
        if not grant.scope.covers_project(tenant, project) or not (
                target == f"{tenant}/{project}" or grant.scope.covers(target)
                and target.startswith(f"{tenant}/{project}/")):
            raise NotFound(f"no project {tenant}/{project}")
        try:
            schedule = Schedule.model_validate({"cron": cron, "timezone": timezone or "UTC",
                                                "target": target, "action": action})
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            raise DeskError(f"schedule {'.'.join(str(p) for p in err['loc'])}: "
                            f"{err['msg'].removeprefix('Value error, ')}") from None
        return ScheduleStore(self.settings.ledger_url).add(schedule)


    def change_schedule(self, grant: Grant, tenant: str, project: str,
                        schedule_id: str, action: str) -> None:
        table = ScheduleStore(self.settings.ledger_url)
        schedule = table.get(schedule_id)
        prefix = f"{tenant}/{project}"
        if schedule is None or not grant.scope.covers_project(tenant, project) or not (
                schedule.target == prefix or schedule.target.startswith(prefix + "/")):
            raise NotFound(f"no schedule {schedule_id} in {prefix}")
        if action == "remove":
            table.remove(schedule_id)
        elif action in ("enable", "disable"):
            table.update(schedule_id, enabled=action == "enable")
        else:
            raise NotFound(f"no action {action!r}: enable, disable or remove")
