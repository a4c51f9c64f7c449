"""The work of each pipeline step, as plain functions over a :class:`Storage`.

The Dagster assets in ``defs/assets.py`` call these and only add what Dagster needs
(partition keys, metadata, logs). The CLI, tests and benchmarks can call them directly.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from anime_pipeline.budget import build_compute_plan, validate_plan
from anime_pipeline.domain.audio import analyze, build_manifest
from anime_pipeline.domain.episode import EpisodeBundle, load_episode
from anime_pipeline.domain.package import PackageEntry, build_package, sha256_file
from anime_pipeline.domain.rendering import (
    ClipResult,
    RenderBackend,
    RenderSpec,
    ShotJob,
    SlateRenderer,
    clip_fingerprint,
    render_shot,
)
from anime_pipeline.domain.subtitles import cues_for, to_ass, to_srt, track_language
from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media import render as media
from anime_pipeline.media.audio_io import decode_audio
from anime_pipeline.storage import EpisodeKeys, Storage, get_json, put_json

log = logging.getLogger("anime_pipeline.progress")
AUDIO_SAMPLE_RATE = 22050  # analysis rate: onsets and beats need no more


# --------------------------------------------------------------------------- catalog


def register_episode(storage: Storage, folder: str | Path) -> EpisodeBundle:
    """Validate a folder and record where its episode lives (the catalog entry)."""
    bundle = load_episode(folder)
    keys = EpisodeKeys(bundle.episode.key)
    put_json(storage, keys.catalog_entry, {
        "episode_key": bundle.episode.key,
        "episode_dir": str(Path(folder).resolve()),
        "shots": [s.id for s in bundle.episode.shots],
        "registered_at": datetime.now(UTC).isoformat(),
    })
    return bundle


def catalog_entry(storage: Storage, episode_key: str) -> dict[str, Any]:
    keys = EpisodeKeys(episode_key)
    if not storage.exists(keys.catalog_entry):
        raise LookupError(
            f"episode {episode_key!r} is not registered: run `anime-pipeline render FOLDER` "
            "or drop its folder in the watched inbox"
        )
    entry: dict[str, Any] = get_json(storage, keys.catalog_entry)
    return entry


def load_registered(storage: Storage, episode_key: str) -> EpisodeBundle:
    bundle = load_episode(catalog_entry(storage, episode_key)["episode_dir"])
    if bundle.episode.key != episode_key:
        raise ValueError(
            f"folder now holds episode {bundle.episode.key!r}, not {episode_key!r}: "
            "its ids changed since it was registered; register it again"
        )
    return bundle


# --------------------------------------------------------------------------- plan steps


def write_shot_plan(storage: Storage, bundle: EpisodeBundle) -> dict[str, Any]:
    ep = bundle.episode
    starts = ep.shot_starts_ms()
    plan = {
        "version": "1.0",
        "episode_key": ep.key,
        "episode_dir": str(bundle.root.resolve()),
        "duration_ms": ep.duration_ms,
        "episode": ep.model_dump(mode="json"),
        "creative_control": bundle.creative.model_dump(mode="json"),
        "timeline": [
            {"shot_id": s.id, "start_ms": starts[s.id], "end_ms": starts[s.id] + s.duration_ms}
            for s in ep.shots
        ],
        "warnings": [str(w) for w in bundle.warnings],
    }
    put_json(storage, EpisodeKeys(ep.key).shot_plan, plan)
    return plan


def write_audio_manifest(storage: Storage, bundle: EpisodeBundle) -> dict[str, Any]:
    samples = decode_audio(bundle.path(bundle.episode.audio), AUDIO_SAMPLE_RATE)
    analysis = analyze(samples, AUDIO_SAMPLE_RATE)
    manifest: dict[str, Any] = build_manifest(analysis, bundle.episode, bundle.episode.audio)
    put_json(storage, EpisodeKeys(bundle.episode.key).audio_manifest, manifest)
    return manifest


def write_compute_plan(
    storage: Storage, bundle: EpisodeBundle, *, resources: Any = None, history: Any = None,
    policy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    keys = EpisodeKeys(bundle.episode.key)
    audio = get_json(storage, keys.audio_manifest)
    plan: dict[str, Any] = build_compute_plan(
        bundle.episode, bundle.creative, audio, resources=resources, history=history
    )
    if policy is not None:
        plan["runtime_policy"] = policy
    validate_plan(plan)
    put_json(storage, keys.compute_plan, plan)
    return plan


# --------------------------------------------------------------------------- clips


@dataclass
class RenderedClip:
    shot_id: str
    key: str
    result: dict[str, Any]
    cached: bool
    fingerprint: str
    thumbnail: Path | None = None
    size_bytes: int = 0

    @property
    def degraded(self) -> bool:
        return bool(self.result.get("degraded"))

    @property
    def placeholder(self) -> bool:
        return bool(self.result.get("placeholder"))


def plan_entries(compute_plan: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["shot_id"]: s for s in compute_plan["shots"]}


def render_clip(
    storage: Storage,
    bundle: EpisodeBundle,
    entry: Mapping[str, Any],
    *,
    backends: Mapping[str, RenderBackend],
    placeholder: SlateRenderer,
    ladder: Sequence[Any],
    work_dir: Path,
    force: bool = False,
    encoder: str = "libx264",
) -> RenderedClip:
    """Render one shot (or reuse its clip when nothing that determines it changed)."""
    ep = bundle.episode
    shot = ep.shot(entry["shot_id"])
    keys = EpisodeKeys(ep.key)
    fingerprint = clip_fingerprint(shot, bundle.root, ep.format, entry)
    if (not force and storage.exists(keys.clip_record(shot.id))
            and storage.exists(keys.clip(shot.id))):
        record = get_json(storage, keys.clip_record(shot.id))
        if record.get("fingerprint") == fingerprint:
            return RenderedClip(shot.id, keys.clip(shot.id), record["result"], True, fingerprint,
                                size_bytes=record.get("size_bytes", 0))
    out = work_dir / f"{shot.id}.mp4"
    thumb = work_dir / f"{shot.id}.jpg"
    prefs = list(entry["backend_preference"])
    job = ShotJob(shot, bundle.root, ep.format,
                  RenderSpec(prefs[0], float(entry["target_fps"]), entry["target_resolution"],
                             encoder),
                  thumbnail=thumb)
    result: ClipResult = render_shot(
        job, out, backends=backends, backend_preference=prefs,
        retry_budget=int(entry.get("retry_budget", 0)), ladder=ladder, placeholder=placeholder,
    )
    size = out.stat().st_size
    result_dict = result.to_dict()
    result_dict["path"] = storage.uri(keys.clip(shot.id))
    result_dict["sha256"] = sha256_file(out)
    storage.put_file(out, keys.clip(shot.id))
    put_json(storage, keys.clip_record(shot.id), {
        "shot_id": shot.id, "fingerprint": fingerprint, "size_bytes": size,
        "result": result_dict, "rendered_at": datetime.now(UTC).isoformat(),
    })
    return RenderedClip(shot.id, keys.clip(shot.id), result_dict, False, fingerprint,
                        thumb if thumb.exists() else None, size)


def render_clips(
    storage: Storage,
    bundle: EpisodeBundle,
    compute_plan: Mapping[str, Any],
    shot_ids: Iterable[str],
    *,
    backends: Mapping[str, RenderBackend],
    placeholder: SlateRenderer,
    get_ladder: Callable[[str], Sequence[Any]],
    concurrency: int = 4,
    work_dir: Path,
    force: bool = False,
    encoder: str = "libx264",
    on_done: Callable[[RenderedClip, int, int], None] | None = None,
) -> list[RenderedClip]:
    """Render shots concurrently, at most ``concurrency`` ffmpeg processes at a time.

    Threads suffice: each render is an ffmpeg subprocess, so the GIL is not in the way.
    """
    entries = plan_entries(compute_plan)
    ids = list(shot_ids)
    missing = [s for s in ids if s not in entries]
    if missing:
        raise KeyError(f"shots not in the compute plan of {bundle.episode.key}: {missing}")
    results: list[RenderedClip] = []
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {
            pool.submit(
                render_clip, storage, bundle, entries[sid], backends=backends,
                placeholder=placeholder, ladder=get_ladder(entries[sid]["degrade_ladder_profile"]),
                work_dir=work_dir, force=force, encoder=encoder,
            ): sid
            for sid in ids
        }
        for fut in as_completed(futures):
            clip = fut.result()
            done += 1
            results.append(clip)
            status = "cached" if clip.cached else (
                "PLACEHOLDER" if clip.placeholder else "degraded" if clip.degraded else "ok")
            log.info("[%d/%d] %s %s (%s, %.1fs)", done, len(ids), clip.shot_id, status,
                     clip.result.get("backend"), clip.result.get("seconds", 0.0))
            if on_done:
                on_done(clip, done, len(ids))
    order = {sid: i for i, sid in enumerate(ids)}
    return sorted(results, key=lambda c: order[c.shot_id])


# --------------------------------------------------------------------------- composite


def write_composite(
    storage: Storage, bundle: EpisodeBundle, *, work_dir: Path, burn_subtitles: bool = False,
) -> dict[str, Any]:
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    missing = [s.id for s in ep.shots if not storage.exists(keys.clip(s.id))]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} clip(s) of {ep.key} not rendered yet: {missing[:10]}; "
            "materialize `clips` for this episode first"
        )
    t0 = time.perf_counter()
    clip_paths = [storage.fetch(keys.clip(s.id)) for s in ep.shots]
    encoders = {get_json(storage, keys.clip_record(s.id))["result"].get("encoder", "libx264")
                for s in ep.shots}
    cues = cues_for(ep)
    srt = work_dir / f"{ep.episode_id}.srt"
    ass = work_dir / f"{ep.episode_id}.ass"
    srt.write_text(to_srt(cues), encoding="utf-8")
    ass.write_text(to_ass(cues, width=ep.format.width, height=ep.format.height, title=ep.title),
                   encoding="utf-8")
    list_file = work_dir / "concat.txt"
    media.concat_list(clip_paths, list_file)
    out = work_dir / f"{ep.episode_id}.mp4"
    delivery = media.Delivery(ep.format.width, ep.format.height, ep.format.fps)
    burn = bool(burn_subtitles and cues)
    media.render(media.composite_args(
        list_file, bundle.path(ep.audio), srt if cues and not burn else None, out,
        duration_ms=ep.duration_ms, delivery=delivery,
        burn_in_ass=ass if burn else None,
        subtitle_language=track_language(cues), title=ep.title, reencode=len(encoders) > 1,
    ))
    info = ff.probe(out)
    sheet = work_dir / "contact_sheet.jpg"
    media.render(media.contact_sheet_args(out, sheet, duration_s=ep.duration_ms / 1000))
    record = {
        "episode_key": ep.key,
        "duration_ms": ep.duration_ms,
        "probed_duration_s": info.duration_s,
        "streams": [s.__dict__ for s in info.streams],
        "subtitle_cues": len(cues),
        "subtitle_language": track_language(cues),
        "burned_in": bool(burn_subtitles and cues),
        "clip_encoders": sorted(encoders),
        "video_copied": not (burn_subtitles and cues) and len(encoders) == 1,
        "size_bytes": out.stat().st_size,
        "sha256": sha256_file(out),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    storage.put_file(srt, keys.subtitles_srt)
    storage.put_file(ass, keys.subtitles_ass)
    record["path"] = storage.put_file(out, keys.composite)
    put_json(storage, keys.composite_record, record)
    record["contact_sheet"] = sheet
    record["media_info"] = info
    return record


# --------------------------------------------------------------------------- package


def write_package(
    storage: Storage, bundle: EpisodeBundle, *, work_dir: Path, lineage: Mapping[str, Any],
) -> dict[str, Any]:
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    entries = [PackageEntry(f"{ep.episode_id}.mp4", storage.fetch(keys.composite), "composite")]
    entries += [
        PackageEntry(f"subtitles/{ep.episode_id}.srt", storage.fetch(keys.subtitles_srt),
                     "subtitles"),
        PackageEntry(f"subtitles/{ep.episode_id}.ass", storage.fetch(keys.subtitles_ass),
                     "subtitles"),
    ]
    for name, key in (("shot_plan.json", keys.shot_plan),
                      ("audio_event_manifest.json", keys.audio_manifest),
                      ("shot_compute_budget_plan.json", keys.compute_plan)):
        entries.append(PackageEntry(f"manifests/{name}", storage.fetch(key), "manifest"))
    entries += [PackageEntry(f"clips/{s.id}.mp4", storage.fetch(keys.clip(s.id)), "clip")
                for s in ep.shots]
    out = work_dir / f"{ep.episode_id}_delivery.zip"
    full_lineage = {"episode_key": ep.key, "title": ep.title, **lineage,
                    "packaged_at": datetime.now(UTC).isoformat()}
    manifest = build_package(out, entries, full_lineage)
    size = out.stat().st_size
    path = storage.put_file(out, keys.package)
    return {"path": path, "size_bytes": size, "files": len(manifest["files"]) + 1,
            "manifest": manifest}


def code_version() -> str:
    """The code version recorded in lineage: git describe when available, else the package."""
    from importlib.metadata import version

    rev = os.environ.get("ANIME_PIPELINE_CODE_VERSION")
    if rev:
        return rev
    try:
        import subprocess

        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return f"{version('anime-pipeline')}+g{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return version("anime-pipeline")
