"""Delivering an episode: the composite MP4 (with subtitles and a contact sheet) and the
delivery ZIP with its manifest and lineage."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.package import PackageEntry, build_package, sha256_file
from anime_pipeline.domain.records import (
    ClipRecord,
    ClipRef,
    CompositeRecord,
    Lineage,
    PackageRecord,
    StreamRecord,
)
from anime_pipeline.domain.subtitles import cues_for, to_ass, to_srt, track_language
from anime_pipeline.media.composite import compose
from anime_pipeline.media.contact_sheet import contact_sheet
from anime_pipeline.media.ffmpeg import timeout_for
from anime_pipeline.media.render import Delivery
from anime_pipeline.pipeline.clips import read_clip_records
from anime_pipeline.storage import EpisodeKeys, Storage, get_record, put_record

CODE_VERSION_ENV = "ANIME_PIPELINE_CODE_VERSION"


class ClipsMissing(FileNotFoundError):
    """Shots of the episode that have no rendered clip yet."""


@dataclass
class CompositeOutcome:
    record: CompositeRecord
    contact_sheet_jpeg: bytes | None = field(default=None, repr=False)


def episode_clips(storage: Storage, bundle: EpisodeBundle) -> list[ClipRecord]:
    """The clip record of every shot, in the episode's order; raise naming the missing ones."""
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    records = read_clip_records(storage, bundle)
    missing = [s.id for s in ep.shots
               if s.id not in records or not storage.exists(keys.clip(s.id))]
    if missing:
        raise ClipsMissing(
            f"{len(missing)} clip(s) of {ep.key} not rendered yet: {missing[:10]}; "
            "materialize `clips` for this episode first"
        )
    return [records[s.id] for s in ep.shots]


def write_composite(
    storage: Storage, bundle: EpisodeBundle, *, work_dir: Path, burn_subtitles: bool = False,
    preview: bool = False,
) -> CompositeOutcome:
    """Concatenate the clips in episode order (a stream copy when they share one encoder),
    mux the mix cut or padded to the episode, add the subtitles, verify the result, and make
    a contact sheet with one labelled tile per shot. ``preview``: the preview cut of a
    staged plan (its own file, marked as such, no sheet, the final composite untouched)."""
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    clips = episode_clips(storage, bundle)
    t0 = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    clip_paths = [storage.fetch(keys.clip(c.shot_id)) for c in clips]
    encoders = sorted({c.encoder for c in clips})
    cues = cues_for(ep)
    language = track_language(cues)
    srt = work_dir / f"{ep.episode_id}.srt"
    ass = work_dir / f"{ep.episode_id}.ass"
    srt.write_text(to_srt(cues), encoding="utf-8")
    ass.write_text(to_ass(cues, width=ep.format.width, height=ep.format.height, title=ep.title),
                   encoding="utf-8")
    burn = bool(burn_subtitles and cues)
    reencode = burn or len(encoders) > 1
    out = work_dir / f"{ep.episode_id}.mp4"
    delivery = Delivery(ep.format.width, ep.format.height, ep.format.fps)
    seconds = ep.duration_ms / 1000
    # A stream copy is fast; a re-encode is a whole render of the episode.
    timeout = timeout_for(seconds) * (4 if reencode else 1)
    result = compose(
        clip_paths, bundle.path(ep.audio), out, work_dir=work_dir, duration_ms=ep.duration_ms,
        delivery=delivery, srt=srt if cues and not burn else None,
        burn_in_ass=ass if burn else None, subtitle_language=language, title=ep.title,
        reencode=reencode, timeout=timeout,
    )
    sheet = work_dir / "contact_sheet.jpg"
    tiles = [(c.shot_id, storage.fetch(keys.thumbnail(c.shot_id))) for c in clips
             if storage.exists(keys.thumbnail(c.shot_id))]
    sheet_jpeg = None
    if tiles and not preview:
        contact_sheet(tiles, sheet, work_dir=work_dir / "sheet",
                      timeout=timeout_for(len(tiles) * 0.2))
        sheet_jpeg = sheet.read_bytes()
    size = out.stat().st_size
    digest = sha256_file(out)
    if preview:
        uri = storage.put_file(out, keys.preview_composite)
    else:
        storage.put_file(srt, keys.subtitles_srt)
        storage.put_file(ass, keys.subtitles_ass)
        if sheet_jpeg is not None:
            storage.put_bytes(keys.contact_sheet, sheet_jpeg)
        uri = storage.put_file(out, keys.composite)
    record = CompositeRecord(
        episode_key=ep.key, uri=uri, sha256=digest, size_bytes=size,
        duration_ms=ep.duration_ms, probed_duration_s=result.duration_s,
        video_frames=result.video_frames, expected_frames=delivery.frames_for(ep.duration_ms),
        width=ep.format.width, height=ep.format.height, fps=ep.format.fps,
        streams=[StreamRecord(kind=s.kind, codec=s.codec, width=s.width, height=s.height,
                              fps=s.fps, sample_rate=s.sample_rate, language=s.language)
                 for s in result.streams],
        subtitle_cues=len(cues), subtitle_language=language, burned_in=burn,
        video_copied=result.video_copied, clip_encoders=encoders,
        clips=[ClipRef(shot_id=c.shot_id, sha256=c.sha256, status=c.status, stage=c.stage)
               for c in clips],
        compose_seconds=round(time.perf_counter() - t0, 3), preview=preview,
    )
    put_record(storage, keys.preview_record if preview else keys.composite_record, record)
    return CompositeOutcome(record, sheet_jpeg)


def read_composite(storage: Storage, episode_key: str) -> CompositeRecord:
    return get_record(storage, EpisodeKeys(episode_key).composite_record, CompositeRecord)


def write_package(
    storage: Storage, bundle: EpisodeBundle, *, work_dir: Path, lineage: Mapping[str, str | None],
) -> PackageRecord:
    """The delivery ZIP: composite, subtitles, the three plan manifests and every clip,
    streamed in with their sha256, and ``manifest.json`` with the lineage."""
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    clips = episode_clips(storage, bundle)
    entries = [
        PackageEntry(f"{ep.episode_id}.mp4", storage.fetch(keys.composite), "composite"),
        PackageEntry(f"subtitles/{ep.episode_id}.srt", storage.fetch(keys.subtitles_srt),
                     "subtitles"),
        PackageEntry(f"subtitles/{ep.episode_id}.ass", storage.fetch(keys.subtitles_ass),
                     "subtitles"),
    ]
    for name, key in (("shot_plan.json", keys.shot_plan),
                      ("audio_event_manifest.json", keys.audio_manifest),
                      ("shot_compute_budget_plan.json", keys.compute_plan)):
        entries.append(PackageEntry(f"manifests/{name}", storage.fetch(key), "manifest"))
    entries += [PackageEntry(f"clips/{c.shot_id}.mp4", storage.fetch(keys.clip(c.shot_id)),
                             "clip") for c in clips]
    out = work_dir / f"{ep.episode_id}_delivery.zip"
    manifest = build_package(out, entries, Lineage(
        episode_key=ep.key, title=ep.title, run_id=lineage.get("run_id"),
        partition=lineage.get("partition"),
        code_version=lineage.get("code_version") or code_version()))
    size = out.stat().st_size
    digest = sha256_file(out)
    uri = storage.put_file(out, keys.package)
    record = PackageRecord(episode_key=ep.key, uri=uri, size_bytes=size,
                           files=len(manifest.files) + 1, sha256=digest, manifest=manifest)
    put_record(storage, keys.package_record, record)
    return record


def code_version() -> str:
    """The code version recorded in lineage: $ANIME_PIPELINE_CODE_VERSION, else the package
    version plus the git revision of a checkout, else the package version."""
    rev = os.environ.get(CODE_VERSION_ENV)
    if rev:
        return rev
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return f"{version('anime-pipeline')}+g{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return version("anime-pipeline")
