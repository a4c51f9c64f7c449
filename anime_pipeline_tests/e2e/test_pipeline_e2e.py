"""The sample episode rendered end to end through Dagster, outputs checked by decoding them."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from anime_pipeline.cli import main
from anime_pipeline.cli.render import render_episode
from anime_pipeline.defs.metadata import read_reused
from anime_pipeline.domain.package import sha256_file, verify_package
from anime_pipeline.domain.records import ClipRecord, ClipsReused, PackageManifest
from anime_pipeline.media.ffmpeg import probe
from anime_pipeline.sample import write_sample_episode
from anime_pipeline.settings import PipelineConfig
from anime_pipeline.storage import EpisodeKeys, LocalStore, get_json, get_record

EP = "studio-a/moonlit-courier/ep01"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Render the bundled sample once for the whole module (about 20 s on 2 cores)."""
    root = tmp_path_factory.mktemp("e2e")
    config = PipelineConfig(home=root / "home", storage_root=root / "artifacts")
    folder = write_sample_episode(root / "ep01")
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        result = render_episode(folder, config=config, instance=instance, concurrency=2)
        yield {"result": result, "instance": instance, "folder": folder, "config": config,
               "store": LocalStore(root / "artifacts"), "root": root}


@pytest.fixture
def module_env(rendered: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Point this test at the module's storage and home (the autouse fixture isolates)."""
    monkeypatch.setenv("ANIME_PIPELINE_STORAGE", str(rendered["root"] / "artifacts"))
    monkeypatch.setenv("ANIME_PIPELINE_HOME", str(rendered["root"] / "home"))
    return rendered


def reuse_reports(instance: dg.DagsterInstance) -> list[ClipsReused]:
    """Every reuse report of the clips asset on ``instance``, oldest first."""
    records = instance.fetch_observations(dg.AssetKey("clips"), limit=100).records
    found = [read_reused(r.asset_observation.metadata) for r in reversed(records)
             if r.asset_observation is not None]
    return [r for r in found if r is not None]


def test_render_reports_paths(rendered: dict[str, Any]) -> None:
    r = rendered["result"]
    assert r.episode_key == EP
    assert Path(r.composite).is_file() and Path(r.package).is_file()
    assert r.shots == 12 and r.placeholder_shots == [] and not r.delivered_with_placeholders
    assert set(r.run_ids) == {"plan_episode", "render_clips", "deliver_episode"}


def test_every_clip_is_exact_and_conformed(rendered: dict[str, Any]) -> None:
    store, folder = rendered["store"], rendered["folder"]
    plan = get_json(store, EpisodeKeys(EP).shot_plan)
    for shot in plan["episode"]["shots"]:
        info = probe(store.fetch(EpisodeKeys(EP).clip(shot["id"])), count_frames=True,
                     timeout=60)
        video = info.first("video")
        assert video is not None and (video.width, video.height) == (1280, 720)
        assert video.fps == 24
        expected = round(shot["duration_ms"] * 24 / 1000)
        assert abs((info.video_frames or 0) - expected) <= 1, shot["id"]
        assert info.first("audio") is None  # audio comes from the mix, at composite time
    assert folder.exists()


def test_clip_follows_its_plan(rendered: dict[str, Any]) -> None:
    store = rendered["store"]
    plan = {s["shot_id"]: s for s in get_json(store, EpisodeKeys(EP).compute_plan)["shots"]}
    for shot_id, entry in plan.items():
        rec = get_record(store, EpisodeKeys(EP).clip_record(shot_id), ClipRecord)
        assert rec.backend == entry["backend_preference"][0]
        assert rec.fps == float(entry["target_fps"])
        assert rec.resolution == entry["target_resolution"]
        assert rec.status == "ok" and not rec.degraded


def test_composite_duration_streams_and_subtitles(rendered: dict[str, Any]) -> None:
    info = probe(rendered["result"].composite, count_frames=True, timeout=120)
    assert info.video_frames == 60 * 24
    assert abs((info.duration_s or 0) - 60.0) < 0.05
    kinds = [s.kind for s in info.streams]
    assert kinds.count("video") == 1 and kinds.count("audio") == 1
    assert kinds.count("subtitle") == 1
    assert info.first("subtitle").codec == "mov_text"  # type: ignore[union-attr]
    assert info.first("audio").sample_rate == 48000  # type: ignore[union-attr]
    srt = Path(rendered["store"].fetch(EpisodeKeys(EP).subtitles_srt)).read_text("utf-8")
    assert "聞こえた" in srt and "Ben:" in srt  # Japanese and English lines


def test_package_checksums_match(rendered: dict[str, Any]) -> None:
    pkg = Path(rendered["result"].package)
    assert verify_package(pkg) == []
    with zipfile.ZipFile(pkg) as zf:
        manifest = PackageManifest.model_validate_json(zf.read("manifest.json"))
        names = set(zf.namelist())
    paths = {f.path for f in manifest.files}
    assert {"ep01.mp4", "subtitles/ep01.srt", "subtitles/ep01.ass",
            "manifests/shot_plan.json", "manifests/audio_event_manifest.json",
            "manifests/shot_compute_budget_plan.json"} <= paths
    assert sum(p.startswith("clips/") for p in paths) == 12
    assert names == paths | {"manifest.json"}
    lineage = manifest.lineage
    assert lineage.episode_key == EP
    assert lineage.run_id == rendered["result"].run_ids["deliver_episode"]
    assert lineage.code_version
    composite = next(f for f in manifest.files if f.path == "ep01.mp4")
    assert composite.sha256 == sha256_file(Path(rendered["result"].composite))


def test_materializations_per_shot_with_metadata(rendered: dict[str, Any]) -> None:
    instance: dg.DagsterInstance = rendered["instance"]
    records = instance.fetch_materializations(dg.AssetKey("clips"), limit=100).records
    by_partition = {r.partition_key: r.asset_materialization for r in records}
    assert len(by_partition) == 12
    mat = by_partition[f"{EP}/S01"]
    assert mat is not None
    md = mat.metadata
    assert md["backend"].value == "animatic"
    assert md["preview"].value.startswith("![S01](data:image/jpeg;base64,")
    assert md["status"].value == "ok" and md["cached"].value is False
    for key in ("shot_plan", "audio_event_manifest", "shot_compute_budget_plan", "composite",
                "package_zip"):
        recs = instance.fetch_materializations(dg.AssetKey(key), limit=5).records
        assert [r.partition_key for r in recs] == [EP], key
    comp = instance.fetch_materializations(dg.AssetKey("composite"), limit=1).records[0]
    assert comp.asset_materialization.metadata["subtitle_streams"].value == 1  # type: ignore[union-attr]
    assert "contact_sheet" in comp.asset_materialization.metadata  # type: ignore[union-attr]


def test_rerender_reuses_unchanged_clips(module_env: dict[str, Any]) -> None:
    """Re-running renders only the changed shot: the clips run plans and materializes its
    partition alone. Every current clip is reused as it is and reported once, in one
    observation; its partition keeps the materialization of the run that rendered it."""
    rendered = module_env
    instance = rendered["instance"]
    folder: Path = rendered["folder"]
    store = rendered["store"]
    clips = dg.AssetKey("clips")
    before = {s: store.fetch(EpisodeKeys(EP).clip(s)).stat().st_mtime_ns
              for s in ("S01", "S02")}
    doc = yaml.safe_load((folder / "episode.yaml").read_text("utf-8"))
    camera = doc["shots"][0].setdefault("camera", {"move": "static"})
    camera["strength"] = round(float(camera.get("strength", 0.3)) + 0.05, 2)
    (folder / "episode.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    report = render_episode(folder, config=rendered["config"], instance=instance, concurrency=2)
    run_id = report.run_ids["render_clips"]
    planned = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    assert [e.dagster_event.partition for e in planned  # type: ignore[union-attr]
            if e.dagster_event.asset_key == clips] == [f"{EP}/S01"]  # type: ignore[union-attr]
    mats = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    [mat] = [e.asset_materialization for e in mats]
    assert mat is not None and mat.partition == f"{EP}/S01"
    assert mat.metadata["cached"].value is False
    [reused] = reuse_reports(instance)
    assert reused.episode_key == EP
    assert reused.shot_ids == [f"S{i:02d}" for i in range(2, 13)]
    assert report.clip_stats["clips"] == 1 and report.clip_stats["cached"] == 11
    latest = {r.partition_key: r.run_id for r in
              instance.fetch_materializations(clips, limit=50).records}
    assert latest[f"{EP}/S02"] == rendered["result"].run_ids["render_clips"]  # still its own
    assert store.fetch(EpisodeKeys(EP).clip("S02")).stat().st_mtime_ns == before["S02"]
    assert store.fetch(EpisodeKeys(EP).clip("S01")).stat().st_mtime_ns != before["S01"]
    assert verify_package(Path(report.package)) == []


def test_cli_render_json(module_env: dict[str, Any], capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`render --json` prints one JSON object; runs land on the instance in $DAGSTER_HOME."""
    rendered = module_env
    home = rendered["root"] / "dagster_home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["render", str(rendered["folder"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episode_key"] == EP and out["composite"].endswith("composite/ep01.mp4")
    assert out["instance"] == str(home) and out["placeholder_shots"] == []
    # Every clip is current (rendered by the module's render): no clips run at all, and the
    # reuse of all 12 is reported in one observation.
    assert "render_clips" not in out["run_ids"]
    assert out["clip_stats"]["cached"] == 12 and out["clip_stats"]["clips"] == 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_runs_count() == 2
        runs = instance.get_runs()
        assert all(r.tags["anime_pipeline/driver"] == "cli" for r in runs)
        assert {r.job_name for r in runs} == {"plan_episode", "deliver_episode"}
        [reused] = reuse_reports(instance)
        assert len(reused.shot_ids) == 12
        assert not instance.fetch_materializations(dg.AssetKey("clips"), limit=5).records


def test_asset_checks_pass_and_are_recorded(rendered: dict[str, Any]) -> None:
    instance: dg.DagsterInstance = rendered["instance"]
    evaluations = {}
    for run_id in rendered["result"].run_ids.values():
        for rec in instance.all_logs(run_id,
                                     of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            data = rec.dagster_event.event_specific_data  # type: ignore[union-attr]
            evaluations[data.check_name] = (  # type: ignore[union-attr]
                evaluations.get(data.check_name, True) and data.passed)  # type: ignore[union-attr]
    assert evaluations == {
        "plan_within_budget": True, "every_shot_planned_once": True,
        "critical_shots_at_floor": True, "clip_rendered_as_planned": True,
        "composite_matches_episode": True, "package_checksums_match": True,
    }
    for run_id in rendered["result"].run_ids.values():
        for rec in instance.all_logs(run_id,
                                     of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            data = rec.dagster_event.event_specific_data  # type: ignore[union-attr]
            assert data.partition, data  # type: ignore[union-attr]
