"""pipeline.delivery and pipeline.catalog: composite in shot order, inserted shots, package."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from anime_pipeline.domain.episode import EpisodeValidationError
from anime_pipeline.domain.package import verify_package
from anime_pipeline.domain.records import ClipStatus, PackageManifest
from anime_pipeline.media.ffmpeg import probe
from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.clips import local_backends, render_episode_clips
from anime_pipeline.pipeline.delivery import ClipsMissing, write_composite, write_package
from anime_pipeline.storage import EpisodeKeys, LocalStore
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
    return Path(comp.record.uri), Path(pkg.uri)


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
