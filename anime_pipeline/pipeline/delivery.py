"""Delivering an episode: the composite MP4 (with subtitles and a contact sheet) and the
delivery ZIP with its manifest and lineage.

Nothing is made twice. The mix is encoded to AAC once per episode (:func:`episode_mix`,
stored beside the composite) and copied into every composite, so a composite of clips made
with one encoder is a pure stream copy. The composite and the package each carry a
fingerprint of their exact inputs (:func:`composite_fingerprint`,
:func:`package_fingerprint`); while it matches the stored one, they are reused as they are
(``reused`` in the outcome) -- an unchanged episode redoes neither, and a changed shot re-cuts
the composite (a copy: seconds) and rebuilds the ZIP (its media stored, not deflated: a file
copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any

from anime_pipeline.domain.episode import EpisodeBundle, PackageParts
from anime_pipeline.domain.package import PackageEntry, build_package, sha256_file
from anime_pipeline.domain.records import (
    ClipRecord,
    ClipRef,
    CompositeRecord,
    Lineage,
    MixRecord,
    PackageRecord,
    StreamRecord,
)
from anime_pipeline.domain.subtitles import cues_for, to_ass, to_srt, track_language
from anime_pipeline.media.composite import (
    AUDIO_BITRATE,
    AUDIO_CODEC,
    AUDIO_SAMPLE_RATE,
    compose,
    encode_mix,
)
from anime_pipeline.media.contact_sheet import contact_sheet
from anime_pipeline.media.ffmpeg import ffmpeg_version, timeout_for
from anime_pipeline.media.render import Delivery
from anime_pipeline.pipeline.clips import read_clip_records
from anime_pipeline.storage import EpisodeKeys, RecordError, Storage, get_record, put_record

log = logging.getLogger(__name__)

CODE_VERSION_ENV = "ANIME_PIPELINE_CODE_VERSION"
#: Bumped when the same inputs would make a different mix, composite or package.
MIX_VERSION = "1"
COMPOSITE_VERSION = "3"
CONTACT_SHEET_VERSION = "1"
PACKAGE_VERSION = "2"


class ClipsMissing(FileNotFoundError):
    """Shots of the episode that have no rendered clip yet."""


@dataclass
class CompositeOutcome:
    record: CompositeRecord
    contact_sheet_jpeg: bytes | None = field(default=None, repr=False)
    reused: bool = False  # the stored composite was current: nothing was made
    mix_reused: bool | None = None  # the stored encoded mix was current (None: not needed)


@dataclass
class PackageOutcome:
    record: PackageRecord
    reused: bool = False  # the stored ZIP was current: nothing was built


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


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str,
                                     ensure_ascii=False).encode("utf-8")).hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the mix


def mix_fingerprint(source_sha256: str, duration_ms: int) -> str:
    """What determines the encoded mix: the source's bytes, the episode's length, the
    encoding settings and the ffmpeg that encodes (not the code version: a new commit does
    not change an AAC encode, and :data:`MIX_VERSION` is bumped when this code does)."""
    return _digest({"mix": MIX_VERSION, "source": source_sha256, "duration_ms": duration_ms,
                    "codec": AUDIO_CODEC, "bitrate": AUDIO_BITRATE,
                    "sample_rate": AUDIO_SAMPLE_RATE, "ffmpeg": ffmpeg_version()})


def current_mix(storage: Storage, keys: EpisodeKeys, fingerprint: str) -> MixRecord | None:
    """The stored encoded mix when it is current for ``fingerprint``, else None."""
    if not storage.exists(keys.mix_record) or not storage.exists(keys.mix):
        return None
    try:
        record = get_record(storage, keys.mix_record, MixRecord)
    except RecordError:
        return None
    if record.fingerprint != fingerprint or storage.size(keys.mix) != record.size_bytes:
        return None
    return record


def episode_mix(storage: Storage, bundle: EpisodeBundle, *, work_dir: Path,
                source_sha256: str | None = None) -> tuple[MixRecord, bool]:
    """The episode's mix as its composites carry it, and whether the stored one was reused.

    Encoded once (:func:`~anime_pipeline.media.composite.encode_mix`: AAC 48 kHz, padded and
    cut to the episode, verified by decoding it), stored at ``composite/mix.m4a`` with its
    :class:`MixRecord`, and reused while the source's bytes, the episode's length and the
    settings are unchanged."""
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    source = bundle.path(ep.audio)
    source_sha = source_sha256 or sha256_file(source)
    fingerprint = mix_fingerprint(source_sha, ep.duration_ms)
    record = current_mix(storage, keys, fingerprint)
    if record is not None:
        return record, True
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / "mix.m4a"
    result = encode_mix(source, out, duration_ms=ep.duration_ms,
                        timeout=timeout_for(ep.duration_ms / 1000))
    digest = sha256_file(out)
    uri = storage.put_file(out, keys.mix)
    record = MixRecord(
        episode_key=ep.key, fingerprint=fingerprint, source_sha256=source_sha,
        duration_ms=ep.duration_ms, codec=AUDIO_CODEC, bitrate=AUDIO_BITRATE,
        sample_rate=AUDIO_SAMPLE_RATE, sha256=digest, size_bytes=result.size_bytes, uri=uri,
        encode_seconds=result.seconds)
    put_record(storage, keys.mix_record, record)  # last: the file under it exists
    return record, False


# --------------------------------------------------------------------------- composite


def contact_sheet_fingerprint(tiles: Sequence[tuple[str, str]], *, code: str) -> str:
    """What the contact sheet is drawn from: each tile's shot id and thumbnail sha256, in
    order, the code and the ffmpeg version."""
    return _digest({"sheet": CONTACT_SHEET_VERSION, "code": code, "ffmpeg": ffmpeg_version(),
                    "tiles": [list(t) for t in tiles]})


def composite_fingerprint(
    bundle: EpisodeBundle, clips: Sequence[ClipRecord], *, mix_fingerprint: str, srt: str,
    ass: str, language: str, burn: bool, preview: bool, sheet: str | None, code: str,
) -> str:
    """Everything a composite is made from: each clip's sha256 (and status and stage,
    which its record reports), the mix, the subtitles (SRT and ASS as written), the
    delivery format and length, burned or soft, preview or final, the contact sheet's
    fingerprint, the code version and the ffmpeg version."""
    ep = bundle.episode
    return _digest({
        "composite": COMPOSITE_VERSION, "code": code, "ffmpeg": ffmpeg_version(),
        "episode": ep.key, "title": ep.title, "duration_ms": ep.duration_ms,
        "format": ep.format.model_dump(mode="json"), "mix": mix_fingerprint,
        "srt": _text_digest(srt), "ass": _text_digest(ass), "language": language,
        "burn": burn, "preview": preview, "sheet": sheet,
        "clips": [[c.shot_id, c.sha256, c.size_bytes, c.status.value, c.stage, c.encoder]
                  for c in clips],
    })


def _current_composite(storage: Storage, keys: EpisodeKeys, fingerprint: str, *,
                       preview: bool, sheet: bool) -> CompositeRecord | None:
    """The stored composite when it is current for ``fingerprint`` and every file it
    delivers is in place, else None."""
    record_key = keys.preview_record if preview else keys.composite_record
    video = keys.preview_composite if preview else keys.composite
    if not storage.exists(record_key) or not storage.exists(video):
        return None
    try:
        record = get_record(storage, record_key, CompositeRecord)
    except RecordError:
        return None
    if record.fingerprint != fingerprint or storage.size(video) != record.size_bytes:
        return None
    if not preview:
        wanted = [keys.subtitles_srt, keys.subtitles_ass] + ([keys.contact_sheet] if sheet
                                                              else [])
        if not all(storage.exists(k) for k in wanted):
            return None
    return record


def _current_sheet(storage: Storage, keys: EpisodeKeys, fingerprint: str) -> bool:
    """Whether the stored contact sheet was drawn from these very tiles."""
    if not storage.exists(keys.contact_sheet) or not storage.exists(keys.composite_record):
        return False
    try:
        record = get_record(storage, keys.composite_record, CompositeRecord)
    except RecordError:
        return False
    return record.contact_sheet_fingerprint == fingerprint


def write_composite(
    storage: Storage, bundle: EpisodeBundle, *, work_dir: Path, burn_subtitles: bool = False,
    preview: bool = False, force: bool = False,
) -> CompositeOutcome:
    """Concatenate the clips in episode order (a stream copy when they share one encoder),
    add the encoded mix (copied) and the subtitles, verify the result, and make a contact
    sheet with one labelled tile per shot from the clips' thumbnails. ``preview``: the
    preview cut of a staged plan (its own file, marked as such, no sheet, the final
    composite untouched).

    The stored composite is reused when its fingerprint is current, and so is the contact
    sheet when its tiles are (``force``: make both anyway; the encoded mix is its own
    artifact, reused while current). The clips' files are checked against their records'
    sha256: when they are the files verified at render, the copied composite is verified by
    reading its packets rather than decoding it (see
    :func:`~anime_pipeline.media.composite.compose`)."""
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    clips = episode_clips(storage, bundle)
    t0 = time.perf_counter()
    cues = cues_for(ep)
    language = track_language(cues)
    srt_text = to_srt(cues)
    ass_text = to_ass(cues, width=ep.format.width, height=ep.format.height, title=ep.title)
    burn = bool(burn_subtitles and cues)
    encoders = sorted({c.encoder for c in clips})
    source_sha = sha256_file(bundle.path(ep.audio))
    code = code_version()
    thumbnails = [] if preview else [(c.shot_id, storage.fetch(keys.thumbnail(c.shot_id)))
                                     for c in clips if storage.exists(keys.thumbnail(c.shot_id))]
    sheet_fp = contact_sheet_fingerprint(
        [(shot_id, sha256_file(path)) for shot_id, path in thumbnails],
        code=code) if thumbnails else None
    fingerprint = composite_fingerprint(
        bundle, clips, mix_fingerprint=mix_fingerprint(source_sha, ep.duration_ms),
        srt=srt_text, ass=ass_text, language=language, burn=burn, preview=preview,
        sheet=sheet_fp, code=code)
    if not force:
        current = _current_composite(storage, keys, fingerprint, preview=preview,
                                     sheet=sheet_fp is not None)
        if current is not None:
            sheet_jpeg = storage.get_bytes(keys.contact_sheet) if sheet_fp else None
            return CompositeOutcome(current, sheet_jpeg, reused=True)

    work_dir.mkdir(parents=True, exist_ok=True)
    mix, mix_reused = episode_mix(storage, bundle, work_dir=work_dir, source_sha256=source_sha)
    clip_paths = [storage.fetch(keys.clip(c.shot_id)) for c in clips]
    changed = [c.shot_id for c, path in zip(clips, clip_paths, strict=True)
               if sha256_file(path) != c.sha256]
    if changed:
        log.warning("%s: the clip files of %s are not the ones their records describe; the "
                    "composite is verified by decoding it", ep.key, changed[:10])
    srt = work_dir / f"{ep.episode_id}.srt"
    ass = work_dir / f"{ep.episode_id}.ass"
    srt.write_text(srt_text, encoding="utf-8")
    ass.write_text(ass_text, encoding="utf-8")
    reencode = burn or len(encoders) > 1
    out = work_dir / f"{ep.episode_id}.mp4"
    delivery = Delivery(ep.format.width, ep.format.height, ep.format.fps)
    seconds = ep.duration_ms / 1000
    # A stream copy is fast; a re-encode is a whole render of the episode.
    timeout = timeout_for(seconds) * (4 if reencode else 1)
    sheet = work_dir / "contact_sheet.jpg"
    sheet_jpeg = None
    build_sheet = sheet_fp is not None and (force or not _current_sheet(storage, keys, sheet_fp))
    with ThreadPoolExecutor(1, thread_name_prefix="contact-sheet") as pool:
        # the sheet (from the thumbnails, never the composite) is drawn while the clips
        # are joined: two small ffmpeg runs beside one that mostly waits on the disk
        drawn = pool.submit(contact_sheet, thumbnails, sheet, work_dir=work_dir / "sheet",
                            timeout=timeout_for(len(thumbnails) * 0.2)) if build_sheet else None
        result = compose(
            clip_paths, storage.fetch(keys.mix), out, work_dir=work_dir,
            duration_ms=ep.duration_ms, delivery=delivery,
            srt=srt if cues and not burn else None, burn_in_ass=ass if burn else None,
            subtitle_language=language, title=ep.title, reencode=reencode, timeout=timeout,
            audio_encoded=True, clips_verified=not changed,
        )
        if drawn is not None:
            drawn.result()
            sheet_jpeg = sheet.read_bytes()
    if sheet_fp is not None and sheet_jpeg is None:
        sheet_jpeg = storage.get_bytes(keys.contact_sheet)  # current: kept as it is
    size = out.stat().st_size
    digest = sha256_file(out)
    if preview:
        uri = storage.put_file(out, keys.preview_composite)
    else:
        storage.put_file(srt, keys.subtitles_srt)
        storage.put_file(ass, keys.subtitles_ass)
        if build_sheet and sheet_jpeg is not None:
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
        fingerprint=fingerprint, mix_sha256=mix.sha256, audio_copied=result.audio_copied,
        verified_by=result.verified_by, contact_sheet_fingerprint=sheet_fp,
    )
    # last: every file it describes is in place (a crash before leaves the old record,
    # whose fingerprint no longer matches: the next run makes it again)
    put_record(storage, keys.preview_record if preview else keys.composite_record, record)
    return CompositeOutcome(record, sheet_jpeg, reused=False, mix_reused=mix_reused)


def read_composite(storage: Storage, episode_key: str) -> CompositeRecord:
    return get_record(storage, EpisodeKeys(episode_key).composite_record, CompositeRecord)


def package_fingerprint(entries: Sequence[tuple[str, str, str]], *, episode_key: str,
                        title: str, code: str) -> str:
    """What a package is made from: every file's name, kind and sha256, the episode and
    the code version (not the run: a later run over the same files delivers the same ZIP,
    and its lineage names the run that built it)."""
    return _digest({"package": PACKAGE_VERSION, "episode": episode_key, "title": title,
                    "code": code, "files": [list(e) for e in entries]})


def _current_package(storage: Storage, keys: EpisodeKeys,
                     fingerprint: str) -> PackageRecord | None:
    if not storage.exists(keys.package_record) or not storage.exists(keys.package):
        return None
    try:
        record = get_record(storage, keys.package_record, PackageRecord)
    except RecordError:
        return None
    if record.fingerprint != fingerprint or storage.size(keys.package) != record.size_bytes:
        return None
    return record


def write_package(
    storage: Storage, bundle: EpisodeBundle, *, work_dir: Path, lineage: Mapping[str, str | None],
    force: bool = False, parts: PackageParts | None = None, review_report: bytes | None = None,
) -> PackageOutcome:
    """The delivery ZIP: the ``parts`` asked for (default :class:`PackageParts`: composite,
    subtitles, the three plan manifests, every clip, the keyframes and ``review_report``, the
    decision per shot, when given; the preview composite when asked and there is one),
    streamed in with their sha256, and ``manifest.json`` with the lineage.

    Reused when its fingerprint is current (``force``: build it anyway). Built again from
    the files otherwise: the media entries are stored, not deflated, so that is a copy, and
    every sha256 in the manifest is computed from the bytes written, never taken from a
    record."""
    ep = bundle.episode
    keys = EpisodeKeys(ep.key)
    clips = episode_clips(storage, bundle)
    t0 = time.perf_counter()
    composite = read_composite(storage, ep.key)
    code = lineage.get("code_version") or code_version()
    parts = parts or PackageParts()
    work_dir.mkdir(parents=True, exist_ok=True)
    entries: list[PackageEntry] = []
    if parts.composite:
        entries.append(PackageEntry(f"{ep.episode_id}.mp4", storage.fetch(keys.composite),
                                    "composite"))
    if parts.preview_composite and storage.exists(keys.preview_composite):
        entries.append(PackageEntry(f"{ep.episode_id}_preview.mp4",
                                    storage.fetch(keys.preview_composite), "preview"))
    if parts.subtitles:
        entries += [PackageEntry(f"subtitles/{ep.episode_id}.srt",
                                 storage.fetch(keys.subtitles_srt), "subtitles"),
                    PackageEntry(f"subtitles/{ep.episode_id}.ass",
                                 storage.fetch(keys.subtitles_ass), "subtitles")]
    if parts.manifests:
        for name, key in (("shot_plan.json", keys.shot_plan),
                          ("audio_event_manifest.json", keys.audio_manifest),
                          ("shot_compute_budget_plan.json", keys.compute_plan)):
            entries.append(PackageEntry(f"manifests/{name}", storage.fetch(key), "manifest"))
    if parts.clips:
        entries += [PackageEntry(f"clips/{c.shot_id}.mp4", storage.fetch(keys.clip(c.shot_id)),
                                 "clip") for c in clips]
    if parts.keyframes:
        for rel in dict.fromkeys(s.keyframe for s in ep.shots if s.keyframe):
            # As they sit in the episode folder (validated relative paths held to it).
            entries.append(PackageEntry(PurePosixPath(rel).as_posix(), bundle.root / rel,
                                        "keyframe"))
    if parts.review_report and review_report is not None:
        report = work_dir / "review_report.json"
        report.write_bytes(review_report)
        entries.append(PackageEntry("review_report.json", report, "report"))
    if not entries:
        raise ValueError(f"{ep.key}: the package parts leave nothing to deliver")
    # The media's sha256 come from their records (the composite's and clips' files are
    # checked by size); the small files are hashed.
    known = {f"{ep.episode_id}.mp4": composite.sha256}
    known.update({f"clips/{c.shot_id}.mp4": c.sha256 for c in clips})
    fingerprint = package_fingerprint(
        [(e.arcname, e.kind, known.get(e.arcname) or sha256_file(e.path)) for e in entries],
        episode_key=ep.key, title=ep.title, code=code)
    if not force:
        current = _current_package(storage, keys, fingerprint)
        if current is not None:
            return PackageOutcome(current, reused=True)
    out = work_dir / f"{ep.episode_id}_delivery.zip"
    manifest = build_package(out, entries, Lineage(
        episode_key=ep.key, title=ep.title, run_id=lineage.get("run_id"),
        partition=lineage.get("partition"), code_version=code))
    size = out.stat().st_size
    digest = sha256_file(out)
    uri = storage.put_file(out, keys.package)
    record = PackageRecord(episode_key=ep.key, uri=uri, size_bytes=size,
                           files=len(manifest.files) + 1, sha256=digest, manifest=manifest,
                           fingerprint=fingerprint,
                           build_seconds=round(time.perf_counter() - t0, 3))
    put_record(storage, keys.package_record, record)  # last: the ZIP under it exists
    return PackageOutcome(record, reused=False)


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
