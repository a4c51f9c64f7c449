"""Planning an episode: the shot plan, the audio event manifest, the compute plan."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from anime_pipeline.budget import ComputePlan, CostHistory, build_compute_plan, validate_plan
from anime_pipeline.domain.audio import AudioAnalysis, analyze_stream, build_manifest
from anime_pipeline.domain.contracts import ResourceState
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.records import (
    AudioManifest,
    PolicyRecord,
    ShotPlanRecord,
    TimelineEntry,
)
from anime_pipeline.media.audio_io import stream_audio
from anime_pipeline.media.ffmpeg import timeout_for
from anime_pipeline.storage import EpisodeKeys, Storage, get_record, put_record

AUDIO_SAMPLE_RATE = 22050  # analysis rate: onsets and beats need no more


def write_shot_plan(storage: Storage, bundle: EpisodeBundle) -> ShotPlanRecord:
    """``shot_plan``: the validated episode (contract fields only) on its timeline."""
    ep = bundle.episode
    starts = ep.shot_starts_ms()
    record = ShotPlanRecord(
        episode_key=ep.key,
        episode_dir=str(bundle.root.resolve()),
        duration_ms=ep.duration_ms,
        episode=ep.model_dump(mode="json"),
        creative_control=bundle.creative.model_dump(mode="json"),
        timeline=[TimelineEntry(shot_id=s.id, start_ms=starts[s.id],
                                end_ms=starts[s.id] + s.duration_ms) for s in ep.shots],
        warnings=[str(w) for w in bundle.warnings],
    )
    put_record(storage, EpisodeKeys(ep.key).shot_plan, record)
    return record


def analyze_audio_file(path: str | Path, *, timeout: float) -> AudioAnalysis:
    """Decode and analyse a mix as one stream: ffmpeg decodes pieces ahead while the analysis
    works on the last one, and neither holds more than a few pieces whatever the mix's length.
    ``timeout`` bounds the two together."""
    with closing(stream_audio(path, AUDIO_SAMPLE_RATE, timeout=timeout)) as pieces:
        return analyze_stream(pieces, AUDIO_SAMPLE_RATE)


def write_audio_manifest(storage: Storage, bundle: EpisodeBundle) -> AudioManifest:
    """``audio_event_manifest``: stream the mix once through the analysis, lay it over the
    shots."""
    ep = bundle.episode
    # The mix may be longer than the episode; decoding and analysis run far faster than real
    # time.
    timeout = timeout_for(max(ep.duration_ms / 1000, 60.0))
    analysis = analyze_audio_file(bundle.path(ep.audio), timeout=timeout)
    manifest = build_manifest(analysis, ep, ep.audio)
    put_record(storage, EpisodeKeys(ep.key).audio_manifest, manifest)
    return manifest


def read_audio_manifest(storage: Storage, episode_key: str) -> AudioManifest:
    return get_record(storage, EpisodeKeys(episode_key).audio_manifest, AudioManifest)


def write_compute_plan(
    storage: Storage, bundle: EpisodeBundle, *, resources: ResourceState,
    history: CostHistory | None, policy: PolicyRecord,
) -> ComputePlan:
    """``shot_compute_budget_plan`` under the runtime policy in force (recorded in the plan)."""
    audio = read_audio_manifest(storage, bundle.episode.key)
    plan = build_compute_plan(bundle.episode, bundle.creative, audio, resources=resources,
                              history=history)
    plan = plan.model_copy(update={"runtime_policy": policy})
    validate_plan(plan)
    put_record(storage, EpisodeKeys(bundle.episode.key).compute_plan, plan)
    return plan


def read_compute_plan(storage: Storage, episode_key: str) -> ComputePlan:
    return get_record(storage, EpisodeKeys(episode_key).compute_plan, ComputePlan)
