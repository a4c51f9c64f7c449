"""pipeline.delivery and pipeline.catalog: composite in shot order, inserted shots, package."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from anime_pipeline.domain.episode import EpisodeValidationError
from anime_pipeline.domain.package import verify_package
from anime_pipeline.domain.records import (
    ClipRecord,
    ClipStatus,
    CompositeRecord,
    MixRecord,
    PackageManifest,
)
from anime_pipeline.media.ffmpeg import probe, run, run_stdout
from anime_pipeline.media.mp4 import read_movie
from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.clips import local_backends, render_episode_clips
from anime_pipeline.pipeline.delivery import ClipsMissing, write_composite, write_package
from anime_pipeline.storage import EpisodeKeys, LocalStore, get_record
from anime_pipeline_tests.conftest import minimal_episode, tiny_png
from anime_pipeline_tests.pipeline.conftest import ENV, Planned

pytestmark = pytest.mark.slow


def _render_all(p: Planned) -> None:
    with p.store.scratch() as work:
        render_episode_clips(p.store, p.bundle, p.plan, p.shot_ids, backends=local_backends(),
                             env=ENV, work_dir=work)


def _deliver(p: Planned) -> tuple[Path, Path]:
    with p.store.scratch() as work:
        comp = write_composite(p.store, p.bundle, work_dir=work)
        pkg = write_package(p.store, p.bundle, work_dir=work,
                            lineage={"run_id": "r1", "partition": p.bundle.episode.key})
    return Path(comp.record.uri), Path(pkg.record.uri)


def test_composite_needs_every_clip(planned: Planned) -> None:
    with planned.store.scratch() as work, pytest.raises(ClipsMissing, match="S01"):
        write_composite(planned.store, planned.bundle, work_dir=work)


def test_inserted_shot_is_rendered_and_delivered(planned: Planned) -> None:
    """An episode rendered once, then a shot inserted between S01 and S02: the composite and
    the package hold all three, in the new order."""
    _render_all(planned)
    _deliver(planned)
    folder = planned.folder
    (folder / "keyframes" / "S01B.png").write_bytes(tiny_png(64, 36, b"\x00\xff\x00"))
    doc = yaml.safe_load((folder / "episode.yaml").read_text("utf-8"))
    doc["shots"].insert(1, {"id": "S01B", "type": "insert", "duration_ms": 500,
                            "keyframe": "keyframes/S01B.png"})
    (folder / "episode.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    again = planned.replan()
    assert again.shot_ids == ["S01", "S01B", "S02"]
    _render_all(again)
    composite, package = _deliver(again)
    info = probe(composite, count_frames=True, timeout=60)
    assert info.video_frames == round((1000 + 500 + 500) * 24 / 1000)
    with zipfile.ZipFile(package) as zf:
        manifest = PackageManifest.model_validate_json(zf.read("manifest.json"))
    clips = [f.path for f in manifest.files if f.kind == "clip"]
    assert clips == ["clips/S01.mp4", "clips/S01B.mp4", "clips/S02.mp4"]
    assert verify_package(package) == []
    record = again.store.get_bytes(EpisodeKeys(again.bundle.episode.key).composite_record)
    assert b'"S01B"' in record


def test_contact_sheet_and_record(planned: Planned) -> None:
    _render_all(planned)
    with planned.store.scratch() as work:
        out = write_composite(planned.store, planned.bundle, work_dir=work)
    rec = out.record
    assert rec.video_frames == rec.expected_frames == 36
    assert [c.shot_id for c in rec.clips] == ["S01", "S02"]
    assert all(c.status is ClipStatus.ok for c in rec.clips) and not rec.placeholder_shots
    assert out.contact_sheet_jpeg and out.contact_sheet_jpeg[:3] == b"\xff\xd8\xff"


def test_catalog(tmp_path: Path, make_planned: Callable[..., Planned]) -> None:
    store = LocalStore(tmp_path / "store")
    bad = minimal_episode(tmp_path / "bad")
    (bad / "episode.yaml").write_text("tenant_id: [", "utf-8")
    with pytest.raises(EpisodeValidationError):
        catalog.register(store, bad)
    assert store.list_keys("") == []  # refused: nothing written
    good = catalog.register(store, minimal_episode(tmp_path / "good"))
    assert catalog.registered_keys(store) == [good.episode.key]
    assert catalog.load_registered(store, good.episode.key).episode == good.episode
    with pytest.raises(catalog.NotRegistered, match="not registered"):
        catalog.entry(store, "studio-a/x/ep404")


def test_unknown_keys_never_reach_the_delivery(make_planned: Callable[..., Planned]) -> None:
    """A key the contract does not know (here a secret) is warned about, never copied."""
    p = make_planned("secret", secret_api_key="sk-live-0123456789")
    assert any("secret_api_key" in str(w) for w in p.bundle.warnings)
    _render_all(p)
    _, package = _deliver(p)
    with zipfile.ZipFile(package) as zf:
        for name in zf.namelist():
            assert b"sk-live-0123456789" not in zf.read(name), name


# --------------------------------------------------------------------------- reuse


class FfmpegCalls:
    """Every ffmpeg command the media layer runs, recorded (a spy on its one runner)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from anime_pipeline.media import ffmpeg as ff

        self.commands: list[list[str]] = []
        real = ff._exec

        def spy(cmd: Sequence[str], **kw: Any) -> tuple[int, bytes, str]:
            self.commands.append(list(cmd))
            return real(cmd, **kw)

        monkeypatch.setattr(ff, "_exec", spy)

    def clear(self) -> None:
        self.commands.clear()

    def encoding_audio(self) -> list[list[str]]:
        return [c for c in self.commands if "-c:a" in c and c[c.index("-c:a") + 1] == "aac"]


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _artifacts(p: Planned) -> dict[str, Path]:
    keys = EpisodeKeys(p.bundle.episode.key)
    return {name: p.store.path(getattr(keys, name)) for name in (
        "composite", "composite_record", "contact_sheet", "subtitles_srt", "subtitles_ass",
        "mix", "mix_record", "package", "package_record")}


def _frame_hashes(path: Path) -> list[str]:
    out = run_stdout(["-i", str(path), "-map", "0:v:0", "-f", "framemd5", "-"], timeout=60)
    return [line.rsplit(",", 1)[-1].strip() for line in out.decode().splitlines()
            if line and not line.startswith("#")]


def _manifest(package: Path) -> dict[str, str]:
    with zipfile.ZipFile(package) as zf:
        manifest = PackageManifest.model_validate_json(zf.read("manifest.json"))
        stored = {i.filename: i.compress_type for i in zf.infolist()}
    assert all(stored[f.path] == zipfile.ZIP_STORED for f in manifest.files
               if f.path.endswith(".mp4"))  # media are stored: rebuilding is a copy
    return {f.path: f.sha256 for f in manifest.files}


def test_a_composite_is_a_stream_copy_of_verified_clips_and_the_encoded_mix(
        planned: Planned) -> None:
    _render_all(planned)
    with planned.store.scratch() as work:
        out = write_composite(planned.store, planned.bundle, work_dir=work)
    rec = out.record
    assert not out.reused and out.mix_reused is False  # the first: the mix is encoded now
    assert rec.video_copied and rec.audio_copied and rec.verified_by == "packets"
    assert rec.video_frames == rec.expected_frames == 36
    assert [s.kind for s in rec.streams] == ["video", "audio", "subtitle"]
    composite = Path(rec.uri)
    movie = read_movie(composite)
    assert movie.first("audio").presented_s == 1.5  # type: ignore[union-attr]
    assert movie.first("subtitle") is not None
    # the picture is the clips' pictures, frame for frame, in shot order
    keys = EpisodeKeys(planned.bundle.episode.key)
    clips = [planned.store.path(keys.clip(s)) for s in planned.shot_ids]
    assert _frame_hashes(composite) == [h for c in clips for h in _frame_hashes(c)]
    mix = get_record(planned.store, keys.mix_record, MixRecord)
    assert mix.sha256 == rec.mix_sha256 and mix.duration_ms == 1500
    assert probe(planned.store.path(keys.mix), count_frames=False, timeout=60).first(
        "audio") is not None


def test_an_unchanged_episode_redoes_nothing(planned: Planned,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _render_all(planned)
    _deliver(planned)
    before = {name: _stamp(path) for name, path in _artifacts(planned).items()}
    calls = FfmpegCalls(monkeypatch)
    with planned.store.scratch() as work:
        comp = write_composite(planned.store, planned.bundle, work_dir=work)
        pkg = write_package(planned.store, planned.bundle, work_dir=work,
                            lineage={"run_id": "r2", "partition": planned.bundle.episode.key})
    assert comp.reused and pkg.reused
    assert comp.contact_sheet_jpeg and comp.contact_sheet_jpeg[:3] == b"\xff\xd8\xff"
    assert pkg.record.manifest.lineage.run_id == "r1"  # the run that built it
    assert calls.commands == []  # not one ffmpeg run
    assert {name: _stamp(path) for name, path in _artifacts(planned).items()} == before
    # force: made again, from the same inputs (the mix is its own artifact: still reused)
    with planned.store.scratch() as work:
        again = write_composite(planned.store, planned.bundle, work_dir=work, force=True)
    assert not again.reused and again.mix_reused is True and not calls.encoding_audio()
    assert _stamp(_artifacts(planned)["mix"]) == before["mix"]


def test_a_changed_shot_recuts_the_composite_and_rebuilds_the_zip(
        planned: Planned, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _render_all(planned)
    _, package = _deliver(planned)
    keys = EpisodeKeys(planned.bundle.episode.key)
    old_frames = _frame_hashes(planned.store.path(keys.composite))
    old_manifest = _manifest(package)
    mix_stamp = _stamp(planned.store.path(keys.mix))

    (planned.folder / "keyframes" / "S01.png").write_bytes(tiny_png(64, 36, b"\xff\xff\x00"))
    _render_all(planned)  # S01 only: S02's inputs are unchanged
    calls = FfmpegCalls(monkeypatch)
    composite, package = _deliver(planned)
    assert not calls.encoding_audio()  # the mix was not encoded again...
    assert _stamp(planned.store.path(keys.mix)) == mix_stamp  # ...nor written
    record = get_record(planned.store, keys.composite_record, CompositeRecord)
    assert record.video_copied and record.verified_by == "packets"
    frames = _frame_hashes(composite)
    assert len(frames) == len(old_frames) == 36
    assert all(a != b for a, b in zip(frames[:24], old_frames[:24], strict=True))  # S01
    assert frames[24:] == old_frames[24:]  # S02, untouched
    manifest = _manifest(package)
    clip_s01 = get_record(planned.store, keys.clip_record("S01"), ClipRecord)
    assert manifest["clips/S01.mp4"] == clip_s01.sha256 != old_manifest["clips/S01.mp4"]
    assert manifest["clips/S02.mp4"] == old_manifest["clips/S02.mp4"]
    assert manifest["ep99.mp4"] == record.sha256 != old_manifest["ep99.mp4"]
    assert verify_package(package) == []


def test_burned_in_subtitles_reencode_and_toggle_back(planned: Planned) -> None:
    _render_all(planned)
    with planned.store.scratch() as work:
        burned = write_composite(planned.store, planned.bundle, work_dir=work,
                                 burn_subtitles=True).record
    assert burned.burned_in and not burned.video_copied and burned.verified_by == "decode"
    assert burned.audio_copied and burned.video_frames == 36
    assert [s.kind for s in burned.streams] == ["video", "audio"]
    with planned.store.scratch() as work:
        soft = write_composite(planned.store, planned.bundle, work_dir=work)
    assert not soft.reused and not soft.record.burned_in and soft.record.video_copied
    assert [s.kind for s in soft.record.streams] == ["video", "audio", "subtitle"]


def test_the_contact_sheet_is_drawn_from_the_thumbnails(
        planned: Planned, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """S01's thumbnail replaced by a red picture: the sheet's first tile is red (the clip
    and the composite never are), and no ffmpeg run of the sheet reads a video."""
    from anime_pipeline.media.contact_sheet import sheet_layout
    from anime_pipeline.pipeline import delivery

    _render_all(planned)
    keys = EpisodeKeys(planned.bundle.episode.key)
    red = tmp_path / "red.jpg"
    run(["-f", "lavfi", "-i", "color=c=red:s=320x180", "-frames:v", "1", "-update", "1",
         str(red)], timeout=60)
    planned.store.put_bytes(keys.thumbnail("S01"), red.read_bytes())
    drawn: list[list[Path]] = []
    real = delivery.contact_sheet

    def sheet(tiles: Sequence[tuple[str, Path]], *args: Any, **kw: Any) -> Path:
        drawn.append([path for _, path in tiles])
        return real(tiles, *args, **kw)

    monkeypatch.setattr(delivery, "contact_sheet", sheet)
    calls = FfmpegCalls(monkeypatch)
    with planned.store.scratch() as work:
        out = write_composite(planned.store, planned.bundle, work_dir=work)
    assert drawn == [[planned.store.path(keys.thumbnail(s)) for s in planned.shot_ids]]
    sheet_runs = [c for c in calls.commands if any("contact-sheet" in a for a in c)]
    assert sheet_runs and not any(a.endswith(".mp4") for c in sheet_runs for a in c)
    jpeg = tmp_path / "sheet.jpg"
    jpeg.write_bytes(out.contact_sheet_jpeg or b"")
    info = probe(jpeg, timeout=60).first("video")
    assert info is not None and info.width and info.height
    rgb = np.frombuffer(run_stdout(["-i", str(jpeg), "-f", "rawvideo", "-pix_fmt", "rgb24",
                                    "-"], timeout=60), dtype=np.uint8)
    rgb = rgb.reshape(info.height, info.width, 3)
    layout = sheet_layout(2, image_size=(320, 180))
    x, y, w, h = layout.image_box(0)
    r, g, b = (int(v) for v in rgb[y + h // 2, x + w // 2])
    assert r > 200 and g < 60 and b < 60, (r, g, b)


def test_a_clip_file_unlike_its_record_is_decoded(planned: Planned, tmp_path: Path) -> None:
    """The same pictures remuxed (other bytes than the record's sha256): the composite is
    still made, but verified by decoding it -- the packets are not the verified ones."""
    _render_all(planned)
    keys = EpisodeKeys(planned.bundle.episode.key)
    remuxed = tmp_path / "S01.mp4"
    run(["-i", str(planned.store.path(keys.clip("S01"))), "-c", "copy", "-metadata",
         "comment=remuxed", "-video_track_timescale", "90000", "-movflags", "+faststart",
         str(remuxed)], timeout=60)
    planned.store.put_file(remuxed, keys.clip("S01"))
    with planned.store.scratch() as work:
        record = write_composite(planned.store, planned.bundle, work_dir=work).record
    assert record.verified_by == "decode" and record.video_frames == 36
