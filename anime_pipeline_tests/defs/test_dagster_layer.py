"""The Dagster layer: definitions, the inbox sensor, stage chaining, shared shot dimension."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

from anime_pipeline import steps
from anime_pipeline.cli import failure_reason
from anime_pipeline.definitions import defs
from anime_pipeline.defs.jobs import deliver_after_clips, episode_inbox_sensor, render_after_plan
from anime_pipeline.defs.partitions import clip_range_tags, register_partitions
from anime_pipeline.defs.resources import LocalStorageResource
from anime_pipeline.storage import EpisodeKeys, LocalStore
from anime_pipeline_tests.conftest import minimal_episode

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture
def instance(tmp_path: Path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


def _planned_episode(tmp_path: Path, instance: dg.DagsterInstance,
                     monkeypatch: pytest.MonkeyPatch) -> tuple[LocalStore, str, dg.Definitions]:
    """The two-shot test episode registered and planned; its storage, key and definitions."""
    monkeypatch.setenv("ANIME_PIPELINE_STORAGE", str(tmp_path / "artifacts"))
    folder = minimal_episode(tmp_path / "ep99")
    store = LocalStore(tmp_path / "artifacts")
    key = steps.register_episode(store, folder).episode.key
    register_partitions(instance, key, ["S01", "S02"])
    d = defs()
    assert d.resolve_job_def("plan_episode").execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET).success
    return store, key, d


def test_definitions_graph() -> None:
    d = defs()
    graph = d.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"shot_plan", "audio_event_manifest", "shot_compute_budget_plan", "clips",
            "composite", "package_zip", "runtime_profile"} <= keys
    clips = graph.get(dg.AssetKey("clips"))
    assert isinstance(clips.partitions_def, dg.MultiPartitionsDefinition)
    assert clips.backfill_policy == dg.BackfillPolicy.single_run()
    composite = graph.get(dg.AssetKey("composite"))
    assert dg.AssetKey("clips") in composite.parent_keys
    assert {j.name for j in d.resolve_all_job_defs()} >= {
        "plan_episode", "render_clips", "deliver_episode"}
    checks = {k.name for k in graph.asset_check_keys}
    assert {"plan_within_budget", "package_checksums_match"} <= checks


def test_inbox_sensor_registers_and_plans_once(tmp_path: Path, instance: dg.DagsterInstance,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    inbox = tmp_path / "inbox"
    minimal_episode(inbox / "ep99")
    bad = minimal_episode(inbox / "broken")
    (bad / "episode.yaml").write_text("tenant_id: [", encoding="utf-8")
    monkeypatch.setenv("ANIME_PIPELINE_INBOX", str(inbox))
    storage = LocalStorageResource(root=str(tmp_path / "artifacts"))
    ctx = dg.build_sensor_context(instance=instance, resources={"storage": storage})
    result = episode_inbox_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    assert [r.partition_key for r in result.run_requests or []] == [
        "studio-a/moonlit-courier/ep99"]
    added = {req.partitions_def_name: list(req.partition_keys)  # type: ignore[union-attr]
             for req in result.dynamic_partitions_requests or []}
    assert added == {"episodes": ["studio-a/moonlit-courier/ep99"], "shots": ["S01", "S02"]}
    entry = steps.catalog_entry(storage.store(), "studio-a/moonlit-courier/ep99")
    assert entry["episode_dir"] == str((inbox / "ep99").resolve())
    # Unchanged folders are not planned again; the broken one is remembered, not retried.
    again = episode_inbox_sensor(dg.build_sensor_context(
        instance=instance, resources={"storage": storage}, cursor=result.cursor))
    assert not again.run_requests  # type: ignore[union-attr]
    assert set(json.loads(result.cursor or "{}")) == {str(inbox / "ep99"), str(bad)}


def test_stages_chain_and_absent_shot(tmp_path: Path, instance: dg.DagsterInstance,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """plan run -> render_after_plan asks for one clips run over the episode's shots ->
    deliver_after_clips asks for delivery. A shot id of another episode is recorded absent."""
    monkeypatch.setenv("ANIME_PIPELINE_STORAGE", str(tmp_path / "artifacts"))
    folder = minimal_episode(tmp_path / "ep99")
    store = LocalStore(tmp_path / "artifacts")
    bundle = steps.register_episode(store, folder)
    key = bundle.episode.key
    register_partitions(instance, key, ["S01", "S02"])
    register_partitions(instance, "studio-a/other/ep01", ["S03"])  # shared shot dimension
    d = defs()
    plan_run = d.resolve_job_def("plan_episode").execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET)
    assert plan_run.success
    storage = LocalStorageResource(root=str(tmp_path / "artifacts"))

    def success_ctx(run_id: str) -> dg.RunStatusSensorContext:
        event = next(iter(instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)))
        return dg.build_run_status_sensor_context(
            sensor_name="s", dagster_event=event.dagster_event,  # type: ignore[arg-type]
            dagster_instance=instance, dagster_run=instance.get_run_by_id(run_id),  # type: ignore[arg-type]
            resources={"storage": storage})

    request = render_after_plan(success_ctx(plan_run.run_id))
    assert isinstance(request, dg.RunRequest)
    assert request.tags == clip_range_tags(key, ["S01", "S02"])

    # Render the range plus a pair that does not exist in this episode.
    clips_run = d.resolve_job_def("render_clips").execute_in_process(
        instance=instance, run_config=QUIET,
        tags={"dagster/asset_partition_range_start": f"{key}|S01",
              "dagster/asset_partition_range_end": f"{key}|S03"})
    assert clips_run.success
    mats = {r.partition_key: r.asset_materialization for r in
            instance.fetch_materializations(dg.AssetKey("clips"), limit=10).records}
    assert mats[f"{key}|S03"].metadata["in_episode"].value is False  # type: ignore[union-attr]
    assert not store.exists(EpisodeKeys(key).clip("S03"))
    assert store.exists(EpisodeKeys(key).clip("S02"))

    deliver = deliver_after_clips(success_ctx(clips_run.run_id))
    assert isinstance(deliver, dg.RunRequest) and deliver.partition_key == key
    result = d.resolve_job_def("deliver_episode").execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET)
    assert result.success


def test_unregistered_episode_fails_with_a_clear_reason(tmp_path: Path,
                                                        instance: dg.DagsterInstance) -> None:
    register_partitions(instance, "studio-a/x/ep404", ["S01"])
    result = defs().resolve_job_def("plan_episode").execute_in_process(
        instance=instance, partition_key="studio-a/x/ep404", run_config=QUIET,
        raise_on_error=False)
    assert not result.success
    reason = failure_reason(result)
    assert reason.startswith("shot_plan: LookupError: episode 'studio-a/x/ep404' is not "
                             "registered"), reason


def test_burned_in_subtitles_reencode(tmp_path: Path, instance: dg.DagsterInstance,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from anime_pipeline.cli import render_episode
    from anime_pipeline.media.ffmpeg import probe

    monkeypatch.setenv("ANIME_PIPELINE_BURN_SUBTITLES", "1")
    folder = minimal_episode(tmp_path / "ep99")
    doc = yaml.safe_load((folder / "episode.yaml").read_text("utf-8"))
    assert doc["shots"][0]["dialogue"]
    result = render_episode(folder, quiet=True, instance=instance)
    info = probe(result["composite"], count_frames=True)
    assert info.first("subtitle") is None  # drawn into the picture instead
    assert info.video_frames == 36
    comp = instance.fetch_materializations(dg.AssetKey("composite"), limit=1).records[0]
    md = comp.asset_materialization.metadata  # type: ignore[union-attr]
    assert md["subtitles_burned_in"].value is True and md["video_copied"].value is False


def test_clips_wait_for_a_gpu_pool_slot(tmp_path: Path, instance: dg.DagsterInstance,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the one `gpu` slot held by another run, a clips run waits; it renders once the
    slot is free."""
    import threading
    import time

    store, key, d = _planned_episode(tmp_path, instance, monkeypatch)
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    instance.event_log_storage.claim_concurrency_slot("gpu", "another-run", "clips")
    done: list[bool] = []
    worker = threading.Thread(daemon=True, target=lambda: done.append(
        d.resolve_job_def("render_clips").execute_in_process(
            instance=instance, run_config=QUIET, tags=clip_range_tags(key, ["S01", "S02"])
        ).success))
    worker.start()
    time.sleep(6)
    assert done == [] and not store.exists(EpisodeKeys(key).clip("S01"))
    instance.event_log_storage.free_concurrency_slots_for_run("another-run")
    worker.join(120)
    assert done == [True] and store.exists(EpisodeKeys(key).clip("S02"))


def test_nvenc_policy_falls_back_to_software_without_vram(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A saved GPU profile makes the policy ask for NVENC; this machine has no GPU, so the
    VRAM check fails and the run encodes in software, saying so, and records the policy."""
    from anime_pipeline.runtime.state import profile_path
    from anime_pipeline.runtime.testing import make_profile

    home = tmp_path / "home"
    monkeypatch.setenv("ANIME_PIPELINE_HOME", str(home))
    make_profile(vram_gib=[24.0], nvenc=True).save(profile_path(home))
    store, key, d = _planned_episode(tmp_path, instance, monkeypatch)
    plan = json.loads(store.get_bytes(EpisodeKeys(key).compute_plan))
    assert plan["runtime_policy"]["encoder"] == "h264_nvenc"
    assert plan["runtime_policy"]["profile_class"] == "LOCAL_GPU_HIGH"
    run = d.resolve_job_def("render_clips").execute_in_process(
        instance=instance, run_config=QUIET, tags=clip_range_tags(key, ["S01", "S02"]))
    assert run.success
    logs = [e.user_message for e in instance.all_logs(run.run_id)]
    assert any("encoding this run in software" in m for m in logs)
    mat = instance.fetch_materializations(dg.AssetKey("clips"), limit=1).records[0]
    md = mat.asset_materialization.metadata  # type: ignore[union-attr]
    assert md["encoder"].value == "libx264"
    assert md["runtime_policy"].value.startswith("LOCAL_GPU_HIGH")
