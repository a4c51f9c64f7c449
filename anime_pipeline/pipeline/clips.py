"""Rendering an episode's shots: which encoder and how many at once, which shots to (re)render,
the backends, and a verified clip plus its record for every shot.

A shot's clip is reused only when it was rendered as planned (status ``ok``) from exactly the
same inputs (the fingerprint). Degraded clips and placeholder slates are rendered again on the
next run: they are what a retry exists for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from anime_pipeline.backends import AnimaticBackend, SlateBackend, SourceClipBackend
from anime_pipeline.backends.comfyui.backend import ComfyBackend
from anime_pipeline.backends.comfyui.farm import Farm
from anime_pipeline.backends.comfyui.templates import load_template
from anime_pipeline.backends.config import BackendsConfig
from anime_pipeline.budget import ComputePlan, ShotPlan, get_ladder
from anime_pipeline.budget.sla import PRIORITY_RANK
from anime_pipeline.domain.contracts import LOCAL_BACKENDS, NVENC_ENCODER, SOFTWARE_ENCODER
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.package import sha256_file
from anime_pipeline.domain.records import ClipRecord, ClipStatus, PolicyRecord, Retake
from anime_pipeline.domain.rendering import (
    RenderBackend,
    RenderInfo,
    RenderSpec,
    ShotJob,
    SlateRenderer,
    clip_fingerprint,
    render_shot,
)
from anime_pipeline.ledger import DEFAULT_PRICES, BudgetStatus, Ledger, PriceTable
from anime_pipeline.media.ffmpeg import ClipProbe, timeout_for, verify_clip
from anime_pipeline.media.render import Delivery
from anime_pipeline.media.slate import short_reason
from anime_pipeline.pipeline.scheduling import (
    MAX_CONCURRENCY,
    ClipStats,
    LiveConcurrency,
    PlanHolder,
    Slots,
    Throttled,
)
from anime_pipeline.pipeline.spend import Spend
from anime_pipeline.runtime.policy import ExecutionPolicy, policy_record
from anime_pipeline.storage import EpisodeKeys, RecordError, Storage, get_record, put_record

log = logging.getLogger("anime_pipeline.progress")  # the run's Dagster log, and the CLI
# The per-shot lines of shots rendered on this machine: the CLI prints them, the run's event
# log does not hold them (each line would be one more stored event, written under the event
# log's lock while the next render waits to start; the clip's materialization and check say
# it there). Shots on a farm, minutes each, keep their lines in the run's log.
shot_log = logging.getLogger("anime_pipeline.shots")

NVENC_VRAM_MB = 400  # what one NVENC encode session needs, roughly (checked before GPU encodes)
# The plan values that shape a render: a change to any of them renders the shot again.
FINGERPRINT_FIELDS = ("target_fps", "target_resolution", "backend_preference", "retry_budget",
                      "degrade_ladder_profile", "segment_policy")


Stage = Literal["preview", "final"]


class ShotsNotPlanned(LookupError):
    """Shots asked for that the episode's compute plan does not hold (plan out of date)."""


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class RenderEnvironment:
    """How this run renders: the concurrency setting (remote work), the policy's cap on local
    work, the encoder, the policy in force, and why anything was changed."""

    concurrency: int
    local_concurrency: int
    encoder: str
    policy: PolicyRecord
    notes: tuple[str, ...] = ()


def render_environment(
    policy: ExecutionPolicy, *, requested_concurrency: int,
    nvenc_fits: Callable[[int], bool],
) -> RenderEnvironment:
    """The concurrency setting (1..6) bounds shots waiting on a farm; the policy caps what
    runs on this machine (ffmpeg), and picks the encoder: an NVENC encoder is kept only when
    its sessions fit in free VRAM (``nvenc_fits(mb)``), else software."""
    concurrency = max(1, min(requested_concurrency, MAX_CONCURRENCY))
    local = max(1, min(concurrency, policy.render_concurrency))
    encoder: str = policy.encoder
    notes: list[str] = []
    if encoder == NVENC_ENCODER and not nvenc_fits(NVENC_VRAM_MB * local):
        notes.append(f"not enough free VRAM for {local} NVENC session(s) "
                     f"({NVENC_VRAM_MB} MiB each): encoding this run in software")
        encoder = SOFTWARE_ENCODER
    return RenderEnvironment(concurrency, local, encoder, policy_record(policy), tuple(notes))


@dataclass
class Backends:
    """The renderers a run may use, by name, and the slate that ends every ladder."""

    renderers: Mapping[str, RenderBackend]
    slate: SlateRenderer
    farms: list[Farm] = field(default_factory=list)

    @property
    def generative(self) -> set[str]:
        return {name for name, b in self.renderers.items() if isinstance(b, ComfyBackend)}

    def close(self) -> None:
        for farm in self.farms:
            farm.close()


class _Local:
    """A local backend that takes a local slot while it renders (re-entrant per thread)."""

    def __init__(self, backend: RenderBackend, slots: Slots | None) -> None:
        self.backend, self.slots = backend, slots
        self.name = backend.name

    def render(self, job: ShotJob, out: Path) -> RenderInfo | None:
        if self.slots is None:
            return self.backend.render(job, out)
        with self.slots.local.slot(job.cancel):
            return self.backend.render(job, out)


def local_backends(slots: Slots | None = None) -> Backends:
    """The backends every machine has: animatic, source clip, and the placeholder slate."""
    return Backends({b.name: _Local(b, slots) for b in (AnimaticBackend(), SourceClipBackend())},
                    SlateBackend())


def build_backends(config: BackendsConfig | None, slots: Slots | None = None) -> Backends:
    """The local backends plus every generative backend of ``render_backends.yaml``."""
    backends = local_backends(slots)
    if config is None or not config.backends:
        return backends
    base = Path(config.source).parent if config.source else None
    renderers = dict(backends.renderers)
    farms: list[Farm] = []
    for name, cfg in config.backends.items():
        template = load_template(cfg.workflow, relative_to=base)
        farm = Farm.create(name, cfg)
        farms.append(farm)
        renderers[name] = ComfyBackend(
            name, farm, template, prompt_timeout_s=cfg.timeout_s,
            local_slot=(lambda cancel: slots.local.slot(cancel)) if slots else None)
    return Backends(renderers, backends.slate, farms)


# --------------------------------------------------------------------------- one shot


@dataclass
class ClipOutcome:
    """One shot's clip after a run: its record, whether it was reused, its preview."""

    record: ClipRecord
    cached: bool
    thumbnail_jpeg: bytes | None = field(default=None, repr=False)
    parallel_slot: int = 0

    @property
    def shot_id(self) -> str:
        return self.record.shot_id

    @property
    def status(self) -> ClipStatus:
        return self.record.status


def plan_fields(entry: ShotPlan, retake: Retake | None = None) -> dict[str, object]:
    """What of the plan (and of a retake) shapes the shot's render: its fingerprint's part."""
    fields = entry.model_dump(mode="json", include=set(FINGERPRINT_FIELDS))
    if retake is not None:
        fields["retake"] = {"take": retake.take, "note": retake.note}
    return fields


def read_retake(storage: Storage, keys: EpisodeKeys, shot_id: str) -> Retake | None:
    """The shot's retake after a rejection in review, if it has one."""
    if not storage.exists(keys.retake(shot_id)):
        return None
    try:
        return get_record(storage, keys.retake(shot_id), Retake)
    except RecordError:
        return None


def retaken(entry: ShotPlan, retake: Retake | None,
            generative: set[str] | frozenset[str] | None = None) -> ShotPlan:
    """The plan entry of a retake: a shot on a local backend moves to the plan's next local
    candidate (``take`` steps along them, round the list); a generative one keeps its tier (its
    new seed and the note make the new take)."""
    if retake is None or entry.backend_preference[0] not in LOCAL_BACKENDS:
        return entry  # a generative shot: its new seed and the note make the new take
    local = [c for c in entry.candidates if c.backend in LOCAL_BACKENDS]
    if len(local) < 2:
        return entry
    here = next((i for i, c in enumerate(local) if (c.fps, c.resolution, c.backend) == (
        entry.target_fps, entry.target_resolution, entry.backend_preference[0])), 0)
    c = local[(here + retake.take) % len(local)]
    prefs = [c.backend] + [b for b in entry.backend_preference if b != c.backend]
    return entry.model_copy(update={"target_fps": c.fps, "target_resolution": c.resolution,
                                    "backend_preference": prefs})


def reusable_record(storage: Storage, keys: EpisodeKeys, shot_id: str,
                    fingerprint: str) -> ClipRecord | None:
    """The stored record when its clip can be reused as it is, else None."""
    if not storage.exists(keys.clip_record(shot_id)) or not storage.exists(keys.clip(shot_id)):
        return None
    try:
        record = get_record(storage, keys.clip_record(shot_id), ClipRecord)
    except RecordError:
        return None  # an older or damaged record: render again
    if not record.reusable or record.fingerprint != fingerprint:
        return None
    if storage.size(keys.clip(shot_id)) != record.size_bytes:
        return None  # the file under the record is not the one it describes
    return record


def current_clip(storage: Storage, bundle: EpisodeBundle, entry: ShotPlan) -> bool:
    """Whether the shot's stored clip is current for ``entry`` (it would be reused)."""
    return entry.shot_id in reusable_clips(storage, bundle, [entry])


def reusable_clips(storage: Storage, bundle: EpisodeBundle,
                   entries: Iterable[ShotPlan]) -> dict[str, ClipRecord]:
    """The stored record of each entry whose clip is current for it, so reused as it is: one
    fingerprint (the shot's files hashed once per process while unchanged) and one record
    read per shot."""
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    shots = {s.id: s for s in ep.shots}
    out: dict[str, ClipRecord] = {}
    for entry in entries:
        retake = read_retake(storage, keys, entry.shot_id)  # a rejected shot's new take
        fp = clip_fingerprint(shots[entry.shot_id], bundle.root, ep.format,
                              plan_fields(retaken(entry, retake), retake))
        record = reusable_record(storage, keys, entry.shot_id, fp)
        if record is not None:
            out[entry.shot_id] = record
    return out


def render_span(shot_ids: Sequence[str], todo: Sequence[str]) -> list[str]:
    """The shots of ``shot_ids`` (an episode's, in order) from the first to the last of
    ``todo``: the one contiguous range that holds every shot to render (empty: none)."""
    wanted = set(todo)
    at = [i for i, s in enumerate(shot_ids) if s in wanted]
    return list(shot_ids[at[0]:at[-1] + 1]) if at else []


def shots_to_render(storage: Storage, bundle: EpisodeBundle, plan: ComputePlan,
                    shot_ids: Sequence[str]) -> tuple[list[str], dict[str, ClipRecord]]:
    """Which of ``shot_ids`` need a render under ``plan`` (in the given order), and the
    current record of every other one (reused as it is)."""
    reused = reusable_clips(storage, bundle, render_order(plan, shot_ids))
    return [s for s in dict.fromkeys(shot_ids) if s not in reused], reused


def preview_entry(entry: ShotPlan) -> ShotPlan:
    """A staged shot's preview render: its preview tier's fps, resolution and backend."""
    p = entry.preview
    if p is None:
        return entry
    prefs = [p.backend] + [b for b in entry.backend_preference if b != p.backend]
    return entry.model_copy(update={"target_fps": p.fps, "target_resolution": p.resolution,
                                    "backend_preference": prefs})


def render_clip(
    storage: Storage, bundle: EpisodeBundle, entry: ShotPlan | Callable[[], ShotPlan], *,
    backends: Backends, env: RenderEnvironment, work_dir: Path, force: bool = False,
    run_id: str | None = None, slots: Slots | None = None,
    cancel: threading.Event | None = None, stage: Stage = "final", spend: Spend | None = None,
) -> ClipOutcome:
    """Render one shot (or reuse its clip), verify it, store it and write its record.

    ``entry`` may be a callable: the plan entry is then read again when the shot really
    starts (a re-plan mid-run applies to shots not started yet). The shot holds a slot of the
    kind of work its first backend does for its whole render (remote for a farm, local for
    ffmpeg: its ``parallel_slot``); local work inside it takes a local slot as well.

    ``spend``: the project's budget is checked as the shot starts (a generative shot may be
    sent to the local backends, or the run stopped) and its usage recorded once it has a
    clip."""
    planned_entry = entry if callable(entry) else (lambda: entry)
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    retake = read_retake(storage, keys, planned_entry().shot_id)

    def current() -> ShotPlan:  # the plan entry in force, as a retake renders it
        return retaken(planned_entry(), retake, backends.generative)

    plan_entry = current()
    shot = ep.shot(plan_entry.shot_id)
    if not force:
        fingerprint = clip_fingerprint(shot, bundle.root, ep.format,
                                       plan_fields(plan_entry, retake))
        cached = reusable_record(storage, keys, shot.id, fingerprint)
        if cached is not None:
            preview = (storage.get_bytes(keys.thumbnail(shot.id))
                       if storage.exists(keys.thumbnail(shot.id)) else None)
            return ClipOutcome(cached, True, preview)

    delivery = Delivery(ep.format.width, ep.format.height, ep.format.fps)
    expected = delivery.frames_for(shot.duration_ms)
    probes: list[ClipProbe] = []

    def verify(path: Path) -> None:
        with slots.local.slot(cancel) if slots else nullcontext():
            probes.append(verify_clip(
                path, expected_frames=expected, width=ep.format.width,
                height=ep.format.height, fps=ep.format.fps,
                timeout=timeout_for(shot.duration_ms / 1000)))

    out = work_dir / f"{shot.id}.mp4"
    thumb = work_dir / f"{shot.id}.jpg"
    kind = slots.remote if slots and plan_entry.backend_preference[0] in backends.generative \
        else (slots.local if slots else None)
    with kind.slot(cancel) if kind else nullcontext(0) as parallel_slot:
        plan_entry = current()  # the plan in force now that the shot starts
        budget_note: str | None = None
        if spend is not None:
            planned = plan_entry
            plan_entry = spend.before_shot(plan_entry, backends.generative)
            if plan_entry is not planned and planned.backend_preference != \
                    plan_entry.backend_preference:
                budget_note = (f"budget: rendered on {plan_entry.backend_preference[0]} "
                               f"instead of {planned.backend_preference[0]} (the project's "
                               "GPU budget is spent; on_exceed: degrade)")
        fingerprint = clip_fingerprint(shot, bundle.root, ep.format,
                                       plan_fields(plan_entry, retake))
        prefs = list(plan_entry.backend_preference)
        job = ShotJob(shot, bundle.root, ep.format,
                      RenderSpec(prefs[0], float(plan_entry.target_fps),
                                 plan_entry.target_resolution, env.encoder),
                      thumbnail=thumb, segment_max_ms=plan_entry.segments.max_ms,
                      run_id=run_id or "", cancel=cancel,
                      take=retake.take if retake else 0, note=retake.note if retake else None)
        # The task id, status and slot travel as fields (JSON logs); the line stays short.
        (log if prefs[0] in backends.generative else shot_log).info(
            "%s starting on %s (slot %s)%s", shot.id, prefs[0], parallel_slot,
            " [preview tier]" if stage == "preview" else "", extra={
                "clip_task_id": f"{ep.key}/{shot.id}", "clip_status": "started",
                "parallel_slot": parallel_slot})
        try:
            outcome = render_shot(
                job, out, backends=backends.renderers, backend_preference=prefs,
                retry_budget=int(plan_entry.retry_budget),
                ladder=get_ladder(plan_entry.degrade_ladder_profile), slate=backends.slate,
                verify=verify,
            )
        except BaseException:
            if spend is not None:
                spend.release(shot.id)
            raise
    status, reason = outcome.status, outcome.reason
    if budget_note is not None and status is ClipStatus.ok:
        status, reason = ClipStatus.degraded, budget_note
    probe = probes[-1]
    size = out.stat().st_size
    digest = sha256_file(out)
    thumb_jpeg = thumb.read_bytes() if thumb.is_file() else None
    uri = storage.put_file(out, keys.clip(shot.id))
    thumb_uri = storage.put_bytes(keys.thumbnail(shot.id), thumb_jpeg) if thumb_jpeg else None
    final = next((a for a in reversed(outcome.attempts) if a.ok), None)
    record = ClipRecord(
        episode_key=ep.key, shot_id=shot.id, status=status, fingerprint=fingerprint,
        backend=outcome.backend, fps=outcome.spec.fps, resolution=outcome.spec.resolution,
        encoder=outcome.spec.encoder, reason=reason,
        summary=short_reason(reason) if reason else None,
        attempts=outcome.attempts, render_seconds=round(outcome.seconds, 3),
        frames=probe.frames, width=probe.width, height=probe.height, delivery_fps=probe.fps,
        size_bytes=size, sha256=digest, uri=uri, thumbnail_uri=thumb_uri,
        shot_type=shot.type.value, duration_ms=shot.duration_ms,
        segment_policy=plan_entry.segment_policy, segments=plan_entry.segments.count,
        server=final.server if final else None, stage=stage, runtime_policy=env.policy,
        run_id=run_id,
    )
    put_record(storage, keys.clip_record(shot.id), record)  # last: clip and preview exist
    if spend is not None:
        spend.record(record)
    return ClipOutcome(record, False, thumb_jpeg, parallel_slot)


# --------------------------------------------------------------------------- many shots


@dataclass(frozen=True)
class ReusedClips:
    """Yielded first by :func:`render_clips` (when there are any): the shots whose stored
    clip is current, reused as they are; nothing renders for them."""

    episode_key: str
    outcomes: tuple[ClipOutcome, ...]

    @property
    def shot_ids(self) -> list[str]:
        return [o.shot_id for o in self.outcomes]


@dataclass(frozen=True)
class PreviewReady:
    """Yielded between the stages of a staged plan: every shot of the preview stage has a
    clip (secondary shots at their preview tier); the final stage renders next."""

    episode_key: str
    shots: tuple[str, ...]


def render_order(plan: ComputePlan, shot_ids: Sequence[str]) -> list[ShotPlan]:
    """The plan entries of ``shot_ids``, critical and opening shots first, then in order."""
    entries = {s.shot_id: s for s in plan.shots}
    missing = [s for s in shot_ids if s not in entries]
    if missing:
        raise ShotsNotPlanned(
            f"{len(missing)} shot(s) of {plan.episode_key} are not in its compute plan: "
            f"{missing[:10]}; the episode changed since it was planned: materialize "
            "shot_compute_budget_plan (or run `anime-pipeline render`) first"
        )
    position = {sid: i for i, sid in enumerate(shot_ids)}
    return sorted((entries[s] for s in dict.fromkeys(shot_ids)),
                  key=lambda e: (PRIORITY_RANK.get(e.render_priority, 9), position[e.shot_id]))


def stage_phases(plan: ComputePlan, shot_ids: Sequence[str],
                 final_current: Callable[[ShotPlan], bool] = lambda e: False,
                 ) -> list[tuple[Stage, list[ShotPlan]]]:
    """What to render in which order. A staged plan (CB4 under SLA pressure) renders its
    preview stage first — critical and opening shots at their final tier, secondary shots at
    their preview tier — then the final stage's secondary shots at their final tier. A
    secondary shot whose final clip is already current needs no preview."""
    queue = render_order(plan, shot_ids)
    later = [e for e in queue
             if e.preview is not None and "final" in e.stages and not final_current(e)]
    if not later:
        return [("final", queue)]
    return [("preview", [preview_entry(e) if e in later else e for e in queue]),
            ("final", later)]


def render_clips(
    storage: Storage, bundle: EpisodeBundle, plan: ComputePlan | PlanHolder,
    shot_ids: Sequence[str], *, backends: Backends, env: RenderEnvironment, work_dir: Path,
    force: bool = False, run_id: str | None = None, slots: Slots | None = None,
    cancel: threading.Event | None = None, stats: ClipStats | None = None,
    spend: Spend | None = None, reused: Mapping[str, ClipRecord] | None = None,
) -> Iterator[ClipOutcome | PreviewReady | ReusedClips]:
    """Render ``shot_ids``, critical and opening shots first; yield each clip as it finishes
    (and :class:`PreviewReady` between the stages of a staged plan). Without ``slots``,
    ``env.local_concurrency`` shots at a time.

    Unless ``force``, the shots whose clip is current are found first (``reused``, when the
    caller already knows them: :func:`reusable_clips`) and yielded at once as one
    :class:`ReusedClips`; only the others render. (A staged shot whose final clip is current
    needs no preview either.)

    Threads suffice: every render is a subprocess or a wait on a server. A fatal error (disk
    full) or a stop of the caller sets ``cancel``: what has not started never starts, and
    prompts on a farm are interrupted and taken off its queue.
    """
    holder = plan if isinstance(plan, PlanHolder) else PlanHolder(plan)
    queue = render_order(holder.plan, shot_ids)  # refuses shots the plan does not hold
    if force:
        reused = {}
    elif reused is None:
        reused = reusable_clips(storage, bundle, queue)
    total = len(queue)
    done = 0
    if reused:
        outcomes = tuple(ClipOutcome(reused[s], True) for s in dict.fromkeys(shot_ids)
                         if s in reused)  # in the episode's order
        for outcome in outcomes:
            if stats is not None:
                stats.add(outcome.record, cached=True)
        done = len(outcomes)
        _log_reused(bundle.episode.key, outcomes, total)
        yield ReusedClips(bundle.episode.key, outcomes)
    phases = stage_phases(holder.plan, [e.shot_id for e in queue if e.shot_id not in reused])
    total = done + sum(len(entries) for _, entries in phases)
    cancel = cancel or threading.Event()
    workers = MAX_CONCURRENCY if slots else env.local_concurrency
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip") as pool:
        for number, (stage, entries) in enumerate(phases):
            fixed = {e.shot_id for e in entries if stage == "preview" and e.preview}

            def current(e: ShotPlan, fixed: set[str] = fixed) -> Callable[[], ShotPlan]:
                if e.shot_id in fixed:
                    return lambda: e  # a preview tier is what the plan staged: fixed
                return lambda: holder.entry(e.shot_id)

            pending: set[Future[ClipOutcome]] = {
                pool.submit(render_clip, storage, bundle, current(e), backends=backends,
                            env=env, work_dir=work_dir, force=force, run_id=run_id,
                            slots=slots, cancel=cancel, spend=spend,
                            stage="preview" if e.shot_id in fixed else "final")
                for e in entries
            }
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        outcome = fut.result()  # raises the render's fatal error, if any
                        done += 1
                        if stats is not None:
                            stats.add(outcome.record, cached=outcome.cached)
                        _log_outcome(outcome, done, total)
                        yield outcome
            finally:
                if pending:
                    cancel.set()
                for fut in pending:
                    fut.cancel()
            if number + 1 < len(phases):
                yield PreviewReady(bundle.episode.key, tuple(e.shot_id for e in entries))
    if stats is not None and slots is not None:
        stats.peak_local = max(stats.peak_local, slots.local.peak)
        stats.peak_remote = max(stats.peak_remote, slots.remote.peak)


def _log_outcome(outcome: ClipOutcome, done: int, total: int) -> None:
    status = "cached" if outcome.cached else outcome.status.value
    rec = outcome.record
    where = f", {rec.server}" if rec.server and not outcome.cached else ""
    stage = " [preview tier]" if rec.stage == "preview" else ""
    (log if rec.server else shot_log).info(
        "[%d/%d] %s %s%s (%s%s, %.1fs)", done, total, outcome.shot_id, status, stage,
        rec.backend, where, rec.render_seconds, extra={
            "clip_task_id": f"{rec.episode_key}/{rec.shot_id}", "clip_status": status,
            "parallel_slot": outcome.parallel_slot})


def _log_reused(episode_key: str, outcomes: Sequence[ClipOutcome], total: int,
                shown: int = 12) -> None:
    """One line for every reused clip (not one per shot: a re-render of 2,000 current shots
    says so once)."""
    ids = [o.shot_id for o in outcomes]
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    log.info("[%d/%d] %d current clip(s) reused: %s%s", len(ids), total, len(ids),
             ", ".join(ids[:shown]), more, extra={
                 "clip_task_id": f"{episode_key}/*", "clip_status": "cached",
                 "parallel_slot": 0})


def render_episode_clips(
    storage: Storage, bundle: EpisodeBundle, plan: ComputePlan, shot_ids: Sequence[str],
    **kwargs: Any,
) -> list[ClipOutcome]:
    """:func:`render_clips` to the end; each shot's last clip, in the episode's order."""
    order = {s.id: i for i, s in enumerate(bundle.episode.shots)}
    last: dict[str, ClipOutcome] = {}
    for item in render_clips(storage, bundle, plan, shot_ids, **kwargs):
        if isinstance(item, ClipOutcome):
            last[item.shot_id] = item
        elif isinstance(item, ReusedClips):
            last.update((o.shot_id, o) for o in item.outcomes)
    return sorted(last.values(), key=lambda o: order.get(o.shot_id, len(order)))


@dataclass
class ClipsRun:
    """Everything one clips step renders with: the environment, the live slots, the backends
    (farms included), a stop signal, and the run's ``clip_stats``."""

    env: RenderEnvironment
    slots: Slots
    backends: Backends
    run_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    stats: ClipStats = field(default_factory=ClipStats)
    revision: Callable[[], int] | None = None  # the runtime policy's revision, live
    replan_poll_s: float = 5.0  # how often the revision is looked at while shots start
    ledger: Ledger | None = None  # usage and project budgets (none: nothing is counted)
    user: str = "unknown"  # who launched the run (the ledger's user)
    prices: PriceTable = DEFAULT_PRICES
    on_recorded: Callable[[BudgetStatus | None], None] | None = None  # after each shot

    def render(self, storage: Storage, bundle: EpisodeBundle, plan: ComputePlan,
               shot_ids: Sequence[str], *, work_dir: Path, force: bool = False,
               replan: Callable[[], ComputePlan] | None = None,
               ) -> tuple[PlanHolder, Iterator[ClipOutcome | PreviewReady | ReusedClips]]:
        """The episode's renders (:func:`render_clips`: the reused clips first, as one
        :class:`ReusedClips`), and the plan holder (its ``drain()`` gives the plans made
        mid-run when the policy changed). With a ledger, the project's budget is checked
        first, for the shots that will render: :class:`~anime_pipeline.pipeline.spend.
        BudgetRefused` is raised here, before anything renders, when the project refuses."""
        reused = {} if force else reusable_clips(storage, bundle, render_order(plan, shot_ids))
        spend = None
        if self.ledger is not None:
            spend = Spend.for_episode(self.ledger, bundle.episode.key,
                                      run_id=self.run_id or "", user=self.user,
                                      prices=self.prices, on_recorded=self.on_recorded)
            spend.before_render(plan, shot_ids, reused=lambda e: e.shot_id in reused)
        holder = PlanHolder(plan, revision=self.revision, replan=replan,
                            poll_s=self.replan_poll_s)
        return holder, render_clips(
            storage, bundle, holder, shot_ids, backends=self.backends, env=self.env,
            work_dir=work_dir, force=force, run_id=self.run_id, slots=self.slots,
            cancel=self.cancel, stats=self.stats, spend=spend, reused=reused)

    def farm_stats(self) -> dict[str, dict[str, Any]]:
        return {farm.name: farm.stats() for farm in self.backends.farms}


@contextmanager
def clips_run(
    policy: ExecutionPolicy, *, concurrency: int, home: Path | None,
    backends_config: BackendsConfig | None, nvenc_fits: Callable[[int], bool],
    run_id: str | None = None, live_policy: Callable[[], ExecutionPolicy] | None = None,
    revision: Callable[[], int] | None = None, ledger: Ledger | None = None,
    user: str = "unknown", prices: PriceTable = DEFAULT_PRICES,
    on_recorded: Callable[[BudgetStatus | None], None] | None = None,
) -> Iterator[ClipsRun]:
    """Set up a clips step; on the way out (normally or not) stop what still runs.

    ``live_policy``: the policy in force now (the local cap follows it while the step runs,
    read at most every 2 s);
    ``revision``: the monitor state's revision (a change re-plans the shots not started);
    ``ledger``: where usage is written and the project budget read (``user`` and ``prices``
    for its entries; ``on_recorded`` is called with the budget's status after each shot)."""
    env = render_environment(policy, requested_concurrency=concurrency, nvenc_fits=nvenc_fits)
    if backends_config is not None and backends_config.notes:
        env = replace(env, notes=env.notes + backends_config.notes)
    for note in env.notes:
        log.warning(note)
    local_cap: Callable[[], int] = (
        Throttled(lambda: max(1, live_policy().render_concurrency)) if live_policy
        else (lambda: env.local_concurrency))
    slots = Slots.create(LiveConcurrency(home, env.concurrency), local_cap)
    backends = build_backends(backends_config, slots)
    run = ClipsRun(env, slots, backends, run_id, revision=revision, ledger=ledger, user=user,
                   prices=prices, on_recorded=on_recorded)
    try:
        yield run
    finally:
        run.cancel.set()
        backends.close()


def read_clip_records(storage: Storage, bundle: EpisodeBundle) -> dict[str, ClipRecord]:
    """The current record of every shot of the episode that has one."""
    keys = EpisodeKeys(bundle.episode.key)
    out: dict[str, ClipRecord] = {}
    for shot in bundle.episode.shots:
        if storage.exists(keys.clip_record(shot.id)):
            try:
                out[shot.id] = get_record(storage, keys.clip_record(shot.id), ClipRecord)
            except RecordError:
                continue
    return out
