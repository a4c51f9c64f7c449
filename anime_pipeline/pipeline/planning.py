"""Planning an episode: the shot plan, the audio event manifest, the compute plan."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from contextlib import closing
from pathlib import Path

from anime_pipeline.budget import ComputePlan, CostHistory, build_compute_plan, validate_plan
from anime_pipeline.domain.audio import (
    MANIFEST_VERSION,
    AudioAnalysis,
    analyze_stream,
    build_manifest,
)
from anime_pipeline.domain.contracts import ResourceState
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.filehash import FILE_HASHES
from anime_pipeline.domain.playlists import manifest_kind, read_text_prefix
from anime_pipeline.domain.records import (
    AudioManifest,
    PolicyRecord,
    ShotPlanRecord,
    TimelineEntry,
)
from anime_pipeline.media.audio_io import stream_audio
from anime_pipeline.media.ffmpeg import timeout_for
from anime_pipeline.storage import EpisodeKeys, RecordError, Storage, get_record, put_record

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


# The code an audio manifest is made by: a change to it makes every manifest stale.
_ANALYSIS_MODULES = ("anime_pipeline.domain.audio", "anime_pipeline.media.audio_io")


@functools.cache
def _analysis_code() -> str:
    h = hashlib.sha256()
    for name in _ANALYSIS_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        h.update(name.encode() + b"\0" + (Path(origin).read_bytes() if origin else b"?"))
    return h.hexdigest()


def audio_inputs(bundle: EpisodeBundle) -> str | None:
    """sha256 of everything an audio manifest is made from: the mix's bytes (hashed once per
    process while the file is unchanged), the shot timeline, the analysis code, its sample
    rate and the manifest version. None when the mix cannot be fingerprinted by its own bytes
    (missing, or an HLS playlist, whose segments are other files): never reused then."""
    ep = bundle.episode
    mix = bundle.path(ep.audio)
    try:
        if manifest_kind(read_text_prefix(mix)) is not None:
            return None
    except OSError:
        return None
    digest = FILE_HASHES.sha256(mix)
    if digest is None:
        return None
    return hashlib.sha256(json.dumps({
        "mix": digest, "source": ep.audio, "episode": ep.key,
        "shots": [[s.id, s.duration_ms] for s in ep.shots],
        "sample_rate": AUDIO_SAMPLE_RATE, "version": MANIFEST_VERSION,
        "code": _analysis_code(),
    }, sort_keys=True).encode()).hexdigest()


def current_audio_manifest(storage: Storage, bundle: EpisodeBundle,
                           inputs: str | None) -> AudioManifest | None:
    """The stored manifest when it was made from exactly ``inputs``, else None."""
    key = EpisodeKeys(bundle.episode.key).audio_manifest
    if inputs is None or not storage.exists(key):
        return None
    try:
        stored = get_record(storage, key, AudioManifest)
    except RecordError:
        return None
    return stored if stored.inputs_sha256 == inputs else None


def write_audio_manifest(storage: Storage, bundle: EpisodeBundle) -> AudioManifest:
    """``audio_event_manifest``: decode the mix once, analyse it, lay it over the shots.
    A stored manifest made from the same inputs (:func:`audio_inputs`) is reused as it is:
    an unchanged mix is not decoded and analysed again on every render."""
    inputs = audio_inputs(bundle)
    reused = current_audio_manifest(storage, bundle, inputs)
    if reused is not None:
        return reused
    manifest = _analyse_audio(bundle).model_copy(update={"inputs_sha256": inputs})
    put_record(storage, EpisodeKeys(bundle.episode.key).audio_manifest, manifest)
    return manifest


def _analyse_audio(bundle: EpisodeBundle) -> AudioManifest:
    ep = bundle.episode
    # The mix may be longer than the episode; decoding and analysis run far faster than real
    # time.
    timeout = timeout_for(max(ep.duration_ms / 1000, 60.0))
    analysis = analyze_audio_file(bundle.path(ep.audio), timeout=timeout)
    return build_manifest(analysis, ep, ep.audio)


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
