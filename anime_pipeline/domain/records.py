"""The typed records that cross module boundaries: every artifact and hand-off of the pipeline.

Plain pydantic, no Dagster. Each JSON file the pipeline writes under storage is one of these
models (``model_dump_json``) and is read back through it (``model_validate_json``), so a field
is spelled once and a reader never guesses at string keys:

=========================  =====================================================  ==========
record                     stored at (``tenant/project/episode/...``)             written by
=========================  =====================================================  ==========
:class:`CatalogEntry`      ``_catalog/episodes/<episode key>.json``               catalog
:class:`ShotPlanRecord`    ``plan/shot_plan.json``                                planning
:class:`AudioManifest`     ``plan/audio_event_manifest.json``                     planning
``ComputePlan``            ``plan/shot_compute_budget_plan.json`` (budget.plan)   planning
:class:`ClipRecord`        ``clips/<shot>.json``                                  clips
:class:`MixRecord`         ``composite/mix.json`` (beside ``mix.m4a``)            delivery
:class:`CompositeRecord`   ``composite/composite.json``                           delivery
:class:`PackageManifest`   ``manifest.json`` inside the delivery ZIP              delivery
=========================  =====================================================  ==========

:class:`ClipMetadata` is what the Dagster UI shows for one clip partition. It has one writer
(:meth:`ClipMetadata.of`) and one reader (:meth:`ClipMetadata.from_values`); the cost history
of the budgeter and the runtime monitor's failure rate both read clip materializations through
it. A reused clip is no new materialization: :class:`ClipsReused` reports the reused shots of
an episode in one observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Record(BaseModel):
    """Base of every stored record: frozen, unknown keys refused (a typo is an error)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode("utf-8")


def utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- catalog


class CatalogEntry(Record):
    """Where a registered episode's folder is, and its shot ids at registration."""

    episode_key: str
    episode_dir: str
    shots: list[str]
    registered_at: datetime = Field(default_factory=utc_now)


# --------------------------------------------------------------------------- planning


class TimelineEntry(Record):
    shot_id: str
    start_ms: int
    end_ms: int


class ShotPlanRecord(Record):
    """``shot_plan``: the validated episode (contract fields only) and its timeline."""

    version: Literal["1.0"] = "1.0"
    episode_key: str
    episode_dir: str
    duration_ms: int
    episode: dict[str, Any]
    creative_control: dict[str, Any]
    timeline: list[TimelineEntry]
    warnings: list[str] = Field(default_factory=list)


class ShotAudio(Record):
    shot_id: str
    start_ms: int = Field(ge=0)
    end_ms: int = Field(gt=0)
    onset_count: int = Field(ge=0)
    beat_count: int = Field(ge=0)
    event_density: float = Field(ge=0)
    peak_energy: float = Field(ge=0, le=1)
    mean_energy: float = Field(ge=0, le=1)


class EnergyCurve(Record):
    hop_ms: int = Field(gt=0)
    values: list[float]


class AudioManifest(Record):
    """``audio_event_manifest``: onsets, tempo/beats and energy of the mix, per shot."""

    version: Literal["1.0"] = "1.0"
    episode_key: str
    source: str
    sample_rate: int = Field(gt=0)
    duration_ms: int = Field(ge=0)
    episode_duration_ms: int = Field(ge=0)
    tempo_bpm: float | None
    beats_ms: list[int]
    onsets_ms: list[int]
    energy: EnergyCurve
    shots: list[ShotAudio]
    # sha256 of what the manifest was made from (the mix's bytes, the shot timeline, the
    # analysis code and rate): the same inputs reuse it as it is. None: not reusable.
    inputs_sha256: str | None = None

    def shot(self, shot_id: str) -> ShotAudio | None:
        return next((s for s in self.shots if s.shot_id == shot_id), None)


class PolicyRecord(Record):
    """The runtime policy a plan or a clip was made under."""

    name: str
    profile_class: str
    degraded: bool = False
    degrade_level: int = 0
    reasons: list[str] = Field(default_factory=list)
    encoder: str
    render_concurrency: int


# --------------------------------------------------------------------------- clips


class ClipStatus(StrEnum):
    """What a clip is: rendered as planned, rendered lower down its ladder, or a slate."""

    ok = "ok"
    degraded = "degraded"
    placeholder = "placeholder"


class _ClipState:
    """What a clip's ``status`` means (shared by the stored record and the UI metadata)."""

    status: ClipStatus

    @property
    def degraded(self) -> bool:
        return self.status is not ClipStatus.ok

    @property
    def placeholder(self) -> bool:
        return self.status is ClipStatus.placeholder


class Usage(Record):
    """One billable call to a backend (a generative prompt, say), as the backend reports it."""

    provider: str  # the backend name
    server: str | None = None
    prompt_id: str | None = None
    frames: int = 0
    video_sec: float = 0.0
    wall_sec: float = 0.0
    gpu_sec: float | None = None  # the server's own execution time, when it reports one
    # ok: the call delivered; failed / lost / interrupted: it ran (and may have cost) but
    # delivered nothing (frames and video_sec are then 0).
    outcome: Literal["ok", "failed", "lost", "interrupted"] = "ok"


class Retake(Record):
    """``review/<shot>.retake.json``: the shot was rejected in review and renders again as
    take ``take`` — a new seed and the reviewer's ``note`` in the prompt on generative
    backends, the plan's next candidate on local ones. Part of the clip's fingerprint."""

    shot_id: str
    take: int = Field(ge=1)
    note: str | None = Field(default=None, max_length=2000)
    requested_by: str | None = None


class RenderAttempt(Record):
    backend: str
    fps: float
    resolution: str
    encoder: str
    ok: bool
    seconds: float
    step: str = "initial"  # initial | retry N | software_encoder | <ladder action> | placeholder
    error: str | None = None
    server: str | None = None  # which server rendered it (generative backends)
    usage: list[Usage] = Field(default_factory=list)


class ClipRecord(_ClipState, Record):
    """``clips/<shot>.json``: one rendered, verified clip and how it came to be."""

    version: Literal["2"] = "2"
    episode_key: str
    shot_id: str
    status: ClipStatus
    fingerprint: str
    backend: str
    fps: float  # generation fps (the delivery fps for a slate)
    resolution: str  # generation tier, "delivery" for a slate
    encoder: str
    reason: str | None = None  # the full reason when not ok
    summary: str | None = None  # the same, short, in words a producer reads
    attempts: list[RenderAttempt] = Field(default_factory=list)
    render_seconds: float = 0.0
    # What verification found in the file (decoded, not read from the container header).
    frames: int = Field(gt=0)
    width: int
    height: int
    delivery_fps: float
    size_bytes: int = Field(gt=0)
    sha256: str
    uri: str
    thumbnail_uri: str | None = None
    # The plan and shot it was made for.
    shot_type: str
    duration_ms: int
    segment_policy: str | None = None
    segments: int = 1
    server: str | None = None  # the server of the attempt that made the clip
    stage: Literal["preview", "final"] = "final"  # preview: a staged shot's preview tier
    runtime_policy: PolicyRecord | None = None
    run_id: str | None = None
    rendered_at: datetime = Field(default_factory=utc_now)

    @property
    def usage(self) -> list[Usage]:
        """Every billable call of every attempt (failed ones cost too)."""
        return [u for a in self.attempts for u in a.usage]

    @property
    def reusable(self) -> bool:
        """Only a clip rendered as planned is reused; degraded ones and slates are retried."""
        return self.status is ClipStatus.ok


class ClipMetadata(_ClipState, Record):
    """The metadata of one ``clips`` partition in the Dagster UI (flat scalar values)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    episode_key: str
    shot_id: str
    status: ClipStatus
    cached: bool
    backend: str
    shot_type: str
    duration_ms: int
    fps: float
    resolution: str
    encoder: str
    frames: int
    size_bytes: int
    render_seconds: float
    attempts: int
    reason: str = ""  # short, as on the slate
    full_reason: str = ""  # every word of the last failure
    segment_policy: str = ""
    stage: str = "final"
    server: str = ""
    gpu_sec: float = 0.0  # what the backends reported for this render, all attempts
    runtime_policy: str = ""
    policy_degraded: bool = False
    uri: str = ""

    @classmethod
    def of(cls, record: ClipRecord, *, cached: bool) -> ClipMetadata:
        policy = record.runtime_policy
        return cls(
            episode_key=record.episode_key, shot_id=record.shot_id, status=record.status,
            cached=cached, backend=record.backend, shot_type=record.shot_type,
            duration_ms=record.duration_ms, fps=record.fps, resolution=record.resolution,
            encoder=record.encoder, frames=record.frames, size_bytes=record.size_bytes,
            render_seconds=round(record.render_seconds, 3), attempts=len(record.attempts),
            reason=record.summary or "", full_reason=record.reason or "",
            segment_policy=record.segment_policy or "", stage=record.stage,
            server=record.server or "",
            gpu_sec=round(sum(u.gpu_sec or 0.0 for u in record.usage), 3),
            runtime_policy=policy.name if policy else "",
            policy_degraded=bool(policy and policy.degraded), uri=record.uri,
        )  # fmt: skip

    @property
    def rendered(self) -> bool:
        """A real render happened for this materialization (not a reused clip)."""
        return not self.cached

    def values(self) -> dict[str, str | int | float | bool]:
        return self.model_dump(mode="json")

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> ClipMetadata | None:
        """The metadata of a materialization, or None when it is not a clip's (older format)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError:
            return None


class ClipsReused(Record):
    """A report of the ``clips`` asset (an observation, not a materialization): these shots of
    one episode had a current clip, which was reused as it is. The partition keeps the
    materialization (and check) of the run that rendered it; the readers of render history
    (monitor, metrics) count these shots as reused, never as renders or failures. One writer
    and one reader (``defs.metadata``)."""

    episode_key: str
    shot_ids: list[str]


# --------------------------------------------------------------------------- delivery


class StreamRecord(Record):
    kind: str
    codec: str
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None
    language: str | None = None


class ClipRef(Record):
    shot_id: str
    sha256: str
    status: ClipStatus
    stage: str = "final"


class MixRecord(Record):
    """``composite/mix.json``: the episode's mix encoded once for its composites
    (``composite/mix.m4a``: AAC, padded and cut to the episode), reused while its
    ``fingerprint`` (the source's sha256, the episode's length, the encoding settings and
    the ffmpeg version) is unchanged."""

    version: Literal["1"] = "1"
    episode_key: str
    fingerprint: str
    source_sha256: str
    duration_ms: int
    codec: str
    bitrate: str
    sample_rate: int
    sha256: str
    size_bytes: int = Field(gt=0)
    uri: str
    encode_seconds: float
    encoded_at: datetime = Field(default_factory=utc_now)


class CompositeRecord(Record):
    """``composite/composite.json``: the episode MP4 as verified after it was made.

    ``fingerprint`` hashes everything it was made from (see
    :func:`anime_pipeline.pipeline.delivery.composite_fingerprint`): while it matches, the
    composite is current and is not made again."""

    version: Literal["2"] = "2"
    episode_key: str
    uri: str
    sha256: str
    size_bytes: int
    duration_ms: int  # the episode's length
    probed_duration_s: float | None
    video_frames: int  # decoded from the video stream
    expected_frames: int
    width: int
    height: int
    fps: float
    streams: list[StreamRecord]
    subtitle_cues: int
    subtitle_language: str
    burned_in: bool
    video_copied: bool
    clip_encoders: list[str]
    clips: list[ClipRef]
    compose_seconds: float
    preview: bool = False  # a staged plan's preview cut, before the final stage replaces it
    composed_at: datetime = Field(default_factory=utc_now)
    fingerprint: str | None = None  # None: made before fingerprints, never reused
    mix_sha256: str | None = None  # the encoded mix copied in (MixRecord.sha256)
    audio_copied: bool = False
    verified_by: str = "decode"  # "decode": video decoded in full; "packets": read in full
    contact_sheet_fingerprint: str | None = None  # of its tiles: the thumbnails, in order

    @property
    def placeholder_shots(self) -> list[str]:
        return [c.shot_id for c in self.clips if c.status is ClipStatus.placeholder]

    @property
    def degraded_shots(self) -> list[str]:
        return [c.shot_id for c in self.clips if c.status is ClipStatus.degraded]


class PackageFile(Record):
    path: str
    kind: str  # composite | clip | subtitles | manifest | keyframe | preview | report
    size: int
    sha256: str


class Lineage(Record):
    episode_key: str
    title: str
    run_id: str | None = None
    partition: str | None = None
    code_version: str
    packaged_at: datetime = Field(default_factory=utc_now)


class PackageManifest(Record):
    """``manifest.json`` inside the delivery ZIP: every file's size and sha256, and lineage."""

    version: Literal["1.0"] = "1.0"
    lineage: Lineage
    files: list[PackageFile]


class PackageRecord(Record):
    """What ``package_zip`` reports of the ZIP it wrote. ``fingerprint`` hashes what went
    in (every file's sha256, the lineage's episode and code version): while it matches, the
    ZIP is current and is not built again."""

    episode_key: str
    uri: str
    size_bytes: int
    files: int
    sha256: str
    manifest: PackageManifest
    fingerprint: str | None = None
    build_seconds: float = 0.0
