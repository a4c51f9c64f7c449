"""Rendering an episode's shots: which encoder and how many at once, which shots to (re)render,
the backends, and a verified clip plus its record for every shot.

A shot's clip is reused only when it was rendered as planned (status ``ok``) from exactly the
same inputs (the fingerprint). Degraded clips and placeholder slates are rendered again on the
next run: they are what a retry exists for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anime_pipeline.backends import AnimaticBackend, SlateBackend, SourceClipBackend
from anime_pipeline.budget import ComputePlan, ShotPlan, get_ladder
from anime_pipeline.budget.sla import PRIORITY_RANK
from anime_pipeline.domain.contracts import NVENC_ENCODER, SOFTWARE_ENCODER
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.package import sha256_file
from anime_pipeline.domain.records import ClipRecord, ClipStatus, PolicyRecord
from anime_pipeline.domain.rendering import (
    RenderBackend,
    RenderSpec,
    ShotJob,
    SlateRenderer,
    clip_fingerprint,
    render_shot,
)
from anime_pipeline.media.ffmpeg import ClipProbe, timeout_for, verify_clip
from anime_pipeline.media.render import Delivery
from anime_pipeline.media.slate import short_reason
from anime_pipeline.runtime.policy import ExecutionPolicy, policy_record
from anime_pipeline.storage import EpisodeKeys, RecordError, Storage, get_record, put_record

log = logging.getLogger("anime_pipeline.progress")

NVENC_VRAM_MB = 400  # what one NVENC encode session needs, roughly (checked before GPU encodes)
# The plan values that shape a render: a change to any of them renders the shot again.
FINGERPRINT_FIELDS = ("target_fps", "target_resolution", "backend_preference", "retry_budget",
                      "degrade_ladder_profile", "segment_policy")


class ShotsNotPlanned(LookupError):
    """Shots asked for that the episode's compute plan does not hold (plan out of date)."""


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class RenderEnvironment:
    """How this run renders: shots at once, encoder, the policy in force, and why."""

    concurrency: int
    encoder: str
    policy: PolicyRecord
    notes: tuple[str, ...] = ()


def render_environment(
    policy: ExecutionPolicy, *, requested_concurrency: int,
    nvenc_fits: Callable[[int], bool],
) -> RenderEnvironment:
    """The policy caps the shots rendered at once and picks the encoder; an NVENC encoder is
    kept only when its sessions fit in free VRAM (``nvenc_fits(mb)``), else software."""
    concurrency = max(1, min(requested_concurrency, policy.render_concurrency))
    encoder: str = policy.encoder
    notes: list[str] = []
    if encoder == NVENC_ENCODER and not nvenc_fits(NVENC_VRAM_MB * concurrency):
        notes.append(f"not enough free VRAM for {concurrency} NVENC session(s) "
                     f"({NVENC_VRAM_MB} MiB each): encoding this run in software")
        encoder = SOFTWARE_ENCODER
    return RenderEnvironment(concurrency, encoder, policy_record(policy), tuple(notes))


@dataclass(frozen=True)
class Backends:
    """The renderers a run may use, by name, and the slate that ends every ladder."""

    renderers: Mapping[str, RenderBackend]
    slate: SlateRenderer


def local_backends() -> Backends:
    """The backends every machine has: animatic, source clip, and the placeholder slate."""
    return Backends({b.name: b for b in (AnimaticBackend(), SourceClipBackend())},
                    SlateBackend())


# --------------------------------------------------------------------------- one shot


@dataclass
class ClipOutcome:
    """One shot's clip after a run: its record, whether it was reused, its preview."""

    record: ClipRecord
    cached: bool
    thumbnail_jpeg: bytes | None = field(default=None, repr=False)

    @property
    def shot_id(self) -> str:
        return self.record.shot_id

    @property
    def status(self) -> ClipStatus:
        return self.record.status


def plan_fields(entry: ShotPlan) -> dict[str, object]:
    return entry.model_dump(mode="json", include=set(FINGERPRINT_FIELDS))


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


def render_clip(
    storage: Storage, bundle: EpisodeBundle, entry: ShotPlan, *, backends: Backends,
    env: RenderEnvironment, work_dir: Path, force: bool = False, run_id: str | None = None,
) -> ClipOutcome:
    """Render one shot (or reuse its clip), verify it, store it and write its record."""
    ep = bundle.episode
    shot = ep.shot(entry.shot_id)
    keys = EpisodeKeys(ep.key)
    fingerprint = clip_fingerprint(shot, bundle.root, ep.format, plan_fields(entry))
    if not force:
        cached = reusable_record(storage, keys, shot.id, fingerprint)
        if cached is not None:
            preview = (storage.get_bytes(keys.thumbnail(shot.id))
                       if storage.exists(keys.thumbnail(shot.id)) else None)
            return ClipOutcome(cached, True, preview)

    delivery = Delivery(ep.format.width, ep.format.height, ep.format.fps)
    expected = delivery.frames_for(shot.duration_ms)
    probes: list[ClipProbe] = []

    def verify(path: Path) -> None:
        probes.append(verify_clip(
            path, expected_frames=expected, width=ep.format.width, height=ep.format.height,
            fps=ep.format.fps, timeout=timeout_for(shot.duration_ms / 1000)))

    out = work_dir / f"{shot.id}.mp4"
    thumb = work_dir / f"{shot.id}.jpg"
    prefs = list(entry.backend_preference)
    job = ShotJob(shot, bundle.root, ep.format,
                  RenderSpec(prefs[0], float(entry.target_fps), entry.target_resolution,
                             env.encoder), thumbnail=thumb)
    outcome = render_shot(
        job, out, backends=backends.renderers, backend_preference=prefs,
        retry_budget=int(entry.retry_budget), ladder=get_ladder(entry.degrade_ladder_profile),
        slate=backends.slate, verify=verify,
    )
    probe = probes[-1]
    size = out.stat().st_size
    digest = sha256_file(out)
    thumb_jpeg = thumb.read_bytes() if thumb.is_file() else None
    uri = storage.put_file(out, keys.clip(shot.id))
    thumb_uri = storage.put_bytes(keys.thumbnail(shot.id), thumb_jpeg) if thumb_jpeg else None
    record = ClipRecord(
        episode_key=ep.key, shot_id=shot.id, status=outcome.status, fingerprint=fingerprint,
        backend=outcome.backend, fps=outcome.spec.fps, resolution=outcome.spec.resolution,
        encoder=outcome.spec.encoder, reason=outcome.reason,
        summary=short_reason(outcome.reason) if outcome.reason else None,
        attempts=outcome.attempts, render_seconds=round(outcome.seconds, 3),
        frames=probe.frames, width=probe.width, height=probe.height, delivery_fps=probe.fps,
        size_bytes=size, sha256=digest, uri=uri, thumbnail_uri=thumb_uri,
        shot_type=shot.type.value, duration_ms=shot.duration_ms,
        segment_policy=entry.segment_policy, runtime_policy=env.policy, run_id=run_id,
    )
    put_record(storage, keys.clip_record(shot.id), record)  # last: clip and preview exist
    return ClipOutcome(record, False, thumb_jpeg)


# --------------------------------------------------------------------------- many shots


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


def render_clips(
    storage: Storage, bundle: EpisodeBundle, plan: ComputePlan, shot_ids: Sequence[str], *,
    backends: Backends, env: RenderEnvironment, work_dir: Path, force: bool = False,
    run_id: str | None = None,
) -> Iterator[ClipOutcome]:
    """Render ``shot_ids`` at most ``env.concurrency`` at a time, critical and opening shots
    first; yield each clip as it finishes.

    Threads suffice: each render is an ffmpeg subprocess, so the GIL is not in the way.
    A fatal error (disk full) cancels what has not started and is raised.
    """
    queue = render_order(plan, shot_ids)
    total = len(queue)
    done = 0
    with ThreadPoolExecutor(max_workers=env.concurrency, thread_name_prefix="clip") as pool:
        pending: set[Future[ClipOutcome]] = {
            pool.submit(render_clip, storage, bundle, entry, backends=backends, env=env,
                        work_dir=work_dir, force=force, run_id=run_id)
            for entry in queue
        }
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    outcome = fut.result()  # raises the render's fatal error, if any
                    done += 1
                    status = "cached" if outcome.cached else outcome.status.value
                    log.info("[%d/%d] %s %s (%s, %.1fs)", done, total, outcome.shot_id, status,
                             outcome.record.backend, outcome.record.render_seconds)
                    yield outcome
        finally:
            for fut in pending:
                fut.cancel()


def render_episode_clips(
    storage: Storage, bundle: EpisodeBundle, plan: ComputePlan, shot_ids: Sequence[str],
    **kwargs: Any,
) -> list[ClipOutcome]:
    """:func:`render_clips` to the end; the outcomes in the episode's shot order."""
    order = {s.id: i for i, s in enumerate(bundle.episode.shots)}
    return sorted(render_clips(storage, bundle, plan, shot_ids, **kwargs),
                  key=lambda o: order.get(o.shot_id, len(order)))


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
