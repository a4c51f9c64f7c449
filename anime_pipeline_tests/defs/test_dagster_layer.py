"""The Dagster layer: definitions, honest per-episode partitions, the inbox sensor, the episode
flow after any run, per-shot checks, the rerender job, pool waits and dead runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from anime_pipeline.cli.render import SILENT_LOGS, failure_reason
from anime_pipeline.definitions import defs
from anime_pipeline.defs.clips import clips as clips_asset
from anime_pipeline.defs.delivery_assets import composite
from anime_pipeline.defs.metadata import read_reused
from anime_pipeline.defs.partitions import (
    CLIPS,
    clip_range_tags,
    episode_clip_keys,
    register_partitions,
)
from anime_pipeline.defs.planning_assets import (
    audio_event_manifest,
    shot_compute_budget_plan,
    shot_plan,
)
from anime_pipeline.defs.resources import pipeline_resources
from anime_pipeline.defs.runtime import clip_render_stats, run_clips
from anime_pipeline.defs.sensors import episode_flow_sensor, episode_inbox_sensor
from anime_pipeline.instance import (
    WORKER_HOST_TAG,
    WORKER_PID_TAG,
    pool_wait_report,
    reap_dead_runs,
)
from anime_pipeline.pipeline import catalog
from anime_pipeline.settings import PipelineConfig
from anime_pipeline.storage import EpisodeKeys, LocalStore
from anime_pipeline_tests.conftest import minimal_episode, tiny_png

EP = "studio-a/moonlit-courier/ep99"


@pytest.fixture
def instance(tmp_path: Path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


@pytest.fixture
def config(tmp_path: Path) -> PipelineConfig:
    return PipelineConfig(home=tmp_path / "home", storage_root=tmp_path / "artifacts",
                          inbox=(tmp_path / "inbox",))


class Run:
    """A finished run; truthy ``success``, and ``why`` it failed when it did."""

    def __init__(self, result: dg.ExecuteInProcessResult) -> None:
        self.result = result
        self.run_id = result.run_id
        self.success = result.success
        self.why = "" if result.success else failure_reason(result)

    def __repr__(self) -> str:
        return f"Run({self.run_id[:8]}, success={self.success}, why={self.why!r})"


def _run(d: dg.Definitions, job: str, instance: dg.DagsterInstance, config: PipelineConfig,
         **kwargs: object) -> Run:
    return Run(d.resolve_job_def(job).execute_in_process(
        instance=instance, run_config=kwargs.pop("run_config", SILENT_LOGS),
        resources=pipeline_resources(config), raise_on_error=False, **kwargs))  # type: ignore[arg-type]


def _planned(tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig,
             **overrides: object) -> tuple[LocalStore, dg.Definitions]:
    folder = minimal_episode(tmp_path / "ep99", **overrides)
    store = LocalStore(config.artifacts)
    bundle = catalog.register(store, folder)
    register_partitions(instance, EP, [s.id for s in bundle.episode.shots])
    d = defs()
    assert (r := _run(d, "plan_episode", instance, config, partition_key=EP)).success, r
    return store, d


def test_definitions_graph() -> None:
    d = defs()
    graph = d.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"shot_plan", "audio_event_manifest", "shot_compute_budget_plan", "clips",
            "composite", "package_zip", "runtime_profile"} <= keys
    clips = graph.get(dg.AssetKey("clips"))
    assert isinstance(clips.partitions_def, dg.DynamicPartitionsDefinition)
    assert clips.partitions_def.name == CLIPS
    assert clips.backfill_policy == dg.BackfillPolicy.single_run()
    assert dg.AssetKey("clips") in graph.get(dg.AssetKey("composite")).parent_keys
    assert {j.name for j in d.resolve_all_job_defs()} >= {
        "plan_episode", "render_clips", "rerender_shots", "deliver_episode"}
    specs = {s.key.name: s for s in graph.asset_check_keys and
             [graph.get_check_spec(k) for k in graph.asset_check_keys]}
    assert set(specs) == {"plan_within_budget", "every_shot_planned_once",
                          "critical_shots_at_floor", "clip_rendered_as_planned",
                          "composite_matches_episode", "package_checksums_match"}
    for spec in specs.values():
        assert spec.description and spec.partitions_def is not None, spec.key
    sensors = {s.name: s for s in d.sensors or []}
    assert sensors["episode_flow_sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    assert {"episode_inbox_sensor", "dead_run_reaper", "runtime_monitor_sensor"} <= set(sensors)


def test_each_episode_has_exactly_its_own_shots(instance: dg.DagsterInstance) -> None:
    register_partitions(instance, "a/b/ep01", ["S01", "S02"])
    register_partitions(instance, "a/b/ep02", ["S01", "S02", "S03", "S40"])
    assert episode_clip_keys(instance, "a/b/ep01") == ["a/b/ep01/S01", "a/b/ep01/S02"]
    assert len(instance.get_dynamic_partitions(CLIPS)) == 6  # nothing that cannot be rendered
    # A shot inserted into ep01 after ep02 registered: ep01's keys stay one ordered range.
    register_partitions(instance, "a/b/ep01", ["S01", "S01B", "S02"])
    keys = instance.get_dynamic_partitions(CLIPS)
    mine = [k for k in keys if k.startswith("a/b/ep01/")]
    assert mine == ["a/b/ep01/S01", "a/b/ep01/S01B", "a/b/ep01/S02"]
    assert keys[keys.index(mine[0]):keys.index(mine[-1]) + 1] == mine
    # A removed shot's partition is gone.
    register_partitions(instance, "a/b/ep02", ["S01", "S02"])
    assert episode_clip_keys(instance, "a/b/ep02") == ["a/b/ep02/S01", "a/b/ep02/S02"]


@pytest.mark.slow
def test_inserted_shot_renders_and_delivers_and_history_survives(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig
) -> None:
    store, d = _planned(tmp_path, instance, config)
    register_partitions(instance, "studio-a/other/ep01", ["S01"])  # another episode between
    assert (r := _run(d, "render_clips", instance, config, tags=clip_range_tags(EP, ["S01", "S02"])
                )).success, r
    folder = tmp_path / "ep99"
    (folder / "keyframes" / "S01B.png").write_bytes(tiny_png(64, 36, b"\x00\xff\x00"))
    doc = yaml.safe_load((folder / "episode.yaml").read_text("utf-8"))
    doc["shots"].insert(1, {"id": "S01B", "type": "insert", "duration_ms": 500,
                            "keyframe": "keyframes/S01B.png"})
    (folder / "episode.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    catalog.register(store, folder)
    assert (r := _run(d, "plan_episode", instance, config, partition_key=EP)).success, r
    shots = ["S01", "S01B", "S02"]
    run = _run(d, "render_clips", instance, config, tags=clip_range_tags(EP, shots))
    assert run.success
    mats = instance.fetch_materializations(dg.AssetKey("clips"), limit=10).records
    assert {r.partition_key for r in mats} == {f"{EP}/{s}" for s in shots}
    status = instance.get_status_by_partition(
        dg.AssetKey("clips"), episode_clip_keys(instance, EP),
        dg.DynamicPartitionsDefinition(name=CLIPS))
    assert set((status or {}).values()) == {dg.AssetPartitionStatus.MATERIALIZED}
    assert (r := _run(d, "deliver_episode", instance, config, partition_key=EP)).success, r


def test_a_second_delivery_of_an_unchanged_episode_reports_reused(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig
) -> None:
    """Both assets still materialize (and pass their checks), marked reused; the ZIP is the
    very file the first run built."""
    store, d = _planned(tmp_path, instance, config)
    assert (r := _run(d, "render_clips", instance, config,
                      tags=clip_range_tags(EP, ["S01", "S02"]))).success, r
    runs = [_run(d, "deliver_episode", instance, config, partition_key=EP) for _ in range(2)]
    assert all(r.success for r in runs), runs
    for key in ("composite", "package_zip"):
        mats = instance.fetch_materializations(dg.AssetKey(key), limit=2).records
        reused = [m.asset_materialization.metadata["reused"].value  # type: ignore[union-attr]
                  for m in reversed(mats)]
        assert reused == [False, True], key
    package = instance.fetch_materializations(dg.AssetKey("package_zip"), limit=1).records[0]
    lineage = package.asset_materialization.metadata["lineage"].value  # type: ignore[union-attr]
    assert lineage["run_id"] == runs[0].run_id  # type: ignore[index]
    latest = instance.fetch_materializations(dg.AssetKey("composite"), limit=1).records[0]
    assert latest.run_id == runs[1].run_id  # the second run did report the composite


@pytest.mark.slow
def test_a_clips_run_over_current_clips_reports_them_reused_once(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig
) -> None:
    """The UI's Materialize over an episode whose clips are all current: nothing renders, no
    materialization or check evaluation per shot; one observation lists the reused shots;
    every partition keeps the materialization of the run that rendered it, and its check is
    evaluated again on it (the run planned it: not evaluated, it would show as skipped); the
    monitor counts no render and no failure; the episode flows on to delivery."""
    _, d = _planned(tmp_path, instance, config)
    tags = clip_range_tags(EP, ["S01", "S02"])
    first = _run(d, "render_clips", instance, config, tags=tags)
    assert first.success, first
    again = _run(d, "render_clips", instance, config, tags=tags)
    assert again.success, again
    kinds = [e.event_type_value for e in again.result.all_events]
    assert "ASSET_MATERIALIZATION" not in kinds
    assert kinds.count("ASSET_CHECK_EVALUATION") == 2  # the checks it planned: evaluated
    reports = [read_reused(e.event_specific_data.asset_observation.metadata)  # type: ignore[union-attr]
               for e in again.result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    assert [r.shot_ids for r in reports if r is not None] == [["S01", "S02"]]
    latest = {r.partition_key: r.run_id for r in
              instance.fetch_materializations(dg.AssetKey("clips"), limit=10).records}
    assert latest == {f"{EP}/S01": first.run_id, f"{EP}/S02": first.run_id}
    status = instance.get_status_by_partition(
        dg.AssetKey("clips"), episode_clip_keys(instance, EP),
        dg.DynamicPartitionsDefinition(name=CLIPS))
    assert set((status or {}).values()) == {dg.AssetPartitionStatus.MATERIALIZED}
    key = dg.AssetCheckKey(dg.AssetKey("clips"), "clip_rendered_as_planned")
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
    latest_checks = {h.partition: h for h in reversed(history)}  # newest last
    assert {p: (h.run_id, h.status.value) for p, h in latest_checks.items()} == {
        f"{EP}/{s}": (again.run_id, "SUCCEEDED") for s in ("S01", "S02")}
    seen = run_clips(instance, again.run_id)
    assert seen.reused == {f"{EP}/S01", f"{EP}/S02"} and not seen.unmaterialized
    stats = clip_render_stats(instance, since=0)
    assert stats.runs == 2 and stats.succeeded == 2 and stats.failed == 0
    [deliver] = _flow(instance, config, again.run_id)
    assert deliver.job_name == "deliver_episode" and deliver.partition_key == EP


def test_a_planning_run_parses_the_episode_once(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registering and the three planning assets each load the episode: one parse."""
    from anime_pipeline.domain import episode as episode_module

    parsed: list[str] = []
    real = episode_module.load_yaml
    monkeypatch.setattr(episode_module, "_PARSED", type(episode_module._PARSED)())
    monkeypatch.setattr(episode_module, "load_yaml",
                        lambda text, **kw: parsed.append(text) or real(text, **kw))
    _planned(tmp_path, instance, config)
    assert parsed == [(tmp_path / "ep99" / "episode.yaml").read_text("utf-8")]


def test_inbox_sensor_registers_and_plans_once(tmp_path: Path, instance: dg.DagsterInstance,
                                               config: PipelineConfig) -> None:
    inbox = config.inbox[0]
    minimal_episode(inbox / "ep99")
    bad = minimal_episode(inbox / "broken")
    (bad / "episode.yaml").write_text("tenant_id: [", encoding="utf-8")
    resources = pipeline_resources(config)
    ctx = dg.build_sensor_context(instance=instance, resources=resources)
    result = episode_inbox_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    assert [r.partition_key for r in result.run_requests or []] == [EP]
    assert episode_clip_keys(instance, EP) == [f"{EP}/S01", f"{EP}/S02"]
    entry = catalog.entry(LocalStore(config.artifacts), EP)
    assert entry.episode_dir == str((inbox / "ep99").resolve())
    again = episode_inbox_sensor(dg.build_sensor_context(
        instance=instance, resources=resources, cursor=result.cursor))
    assert not again.run_requests  # type: ignore[union-attr]
    assert set(json.loads(result.cursor or "{}")) == {str(inbox / "ep99"), str(bad)}


def _flow(instance: dg.DagsterInstance, config: PipelineConfig,
          run_id: str) -> list[dg.RunRequest]:
    event = next(iter(instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)))
    ctx = dg.build_run_status_sensor_context(
        sensor_name="episode_flow_sensor", dagster_event=event.dagster_event,  # type: ignore[arg-type]
        dagster_instance=instance, dagster_run=instance.get_run_by_id(run_id),  # type: ignore[arg-type]
        resources=pipeline_resources(config))
    out = episode_flow_sensor(ctx)
    return out if isinstance(out, list) else []


@pytest.mark.slow
def test_every_way_of_materializing_flows_downstream(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig
) -> None:
    """Materializing only shot_plan (as from the asset catalog) asks for the rest of the plan;
    a plan asks for the episode's clips; clips ask for delivery; a composite for the package."""
    folder = minimal_episode(tmp_path / "ep99")
    catalog.register(LocalStore(config.artifacts), folder)
    register_partitions(instance, EP, ["S01", "S02"])
    d = defs()
    only_plan = dg.materialize(
        [shot_plan], instance=instance, partition_key=EP,
        resources=pipeline_resources(config), run_config=SILENT_LOGS)
    [req] = _flow(instance, config, only_plan.run_id)
    assert req.job_name == "plan_episode" and req.partition_key == EP
    assert req.asset_selection == [dg.AssetKey("audio_event_manifest"),
                                   dg.AssetKey("shot_compute_budget_plan")]
    plan_run = dg.materialize(
        [audio_event_manifest, shot_compute_budget_plan], instance=instance, partition_key=EP,
        resources=pipeline_resources(config), run_config=SILENT_LOGS)
    [clips_req] = _flow(instance, config, plan_run.run_id)
    assert clips_req.job_name == "render_clips"
    assert clips_req.tags == clip_range_tags(EP, ["S01", "S02"])
    clips_run = _run(d, "render_clips", instance, config, tags=clips_req.tags)
    [deliver] = _flow(instance, config, clips_run.run_id)
    assert deliver.job_name == "deliver_episode" and deliver.partition_key == EP
    comp_only = dg.materialize([composite], instance=instance, partition_key=EP,
                               resources=pipeline_resources(config), run_config=SILENT_LOGS)
    [package] = _flow(instance, config, comp_only.run_id)
    assert package.asset_selection == [dg.AssetKey("package_zip")]
    # A run the CLI drives chains itself: the sensor leaves it alone.
    cli_run = _run(d, "plan_episode", instance, config, partition_key=EP,
                   tags={"anime_pipeline/driver": "cli"})
    assert _flow(instance, config, cli_run.run_id) == []


@pytest.mark.slow
def test_placeholder_clip_fails_its_partition_check_and_rerender_job(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig
) -> None:
    store, d = _planned(tmp_path, instance, config)
    # A keyframe that sniffs as PNG but does not decode: that shot ends as a slate.
    (tmp_path / "ep99" / "keyframes" / "S02.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert (r := _run(d, "plan_episode", instance, config, partition_key=EP)).success, r
    assert (r := _run(d, "render_clips", instance, config, tags=clip_range_tags(EP, ["S01", "S02"])
                )).success, r
    key = dg.AssetCheckKey(dg.AssetKey("clips"), "clip_rendered_as_planned")
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
    by_partition = {h.event.dagster_event.event_specific_data.partition: h  # type: ignore[union-attr]
                    for h in history if h.event and h.event.dagster_event}
    bad = by_partition[f"{EP}/S02"].event.dagster_event.event_specific_data  # type: ignore[union-attr]
    assert bad.passed is False and bad.severity == dg.AssetCheckSeverity.WARN
    assert "PLACEHOLDER" in (bad.description or "")
    good = by_partition[f"{EP}/S01"].event.dagster_event.event_specific_data  # type: ignore[union-attr]
    assert good.passed is True
    # The check alone (its Execute button in the UI) judges the stored clips, renders nothing.
    check_job = dg.define_asset_job("check_only", selection=dg.AssetSelection.checks(key))
    only = dg.Definitions(assets=[clips_asset, shot_compute_budget_plan], jobs=[check_job],
                          resources=pipeline_resources(config))
    before_mats = len(instance.fetch_materializations(dg.AssetKey("clips"), limit=50).records)
    run = only.resolve_job_def("check_only").execute_in_process(
        instance=instance, tags=clip_range_tags(EP, ["S01", "S02"]), run_config=SILENT_LOGS)
    assert run.success
    evals = [e.event_specific_data for e in run.all_events
             if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert sorted((e.partition, e.passed) for e in evals) == [  # type: ignore[union-attr]
        (f"{EP}/S01", True), (f"{EP}/S02", False)]
    assert len(instance.fetch_materializations(dg.AssetKey("clips"), limit=50).records
               ) == before_mats
    # rerender_shots renders one shot again although its clip is current.
    before = store.get_bytes(EpisodeKeys(EP).clip_record("S01"))
    # The job's own config (force: true) is what the UI's launchpad starts from.
    run = _run(d, "rerender_shots", instance, config, partition_key=f"{EP}/S01",
               run_config={**SILENT_LOGS, "ops": {"clips": {"config": {"force": True}}}})
    assert run.success
    mat = instance.fetch_materializations(dg.AssetKey("clips"), limit=1).records[0]
    assert mat.partition_key == f"{EP}/S01"
    assert mat.asset_materialization.metadata["cached"].value is False  # type: ignore[union-attr]
    assert store.get_bytes(EpisodeKeys(EP).clip_record("S01")) != before


def test_unregistered_episode_fails_with_a_clear_reason(
    instance: dg.DagsterInstance, config: PipelineConfig
) -> None:
    register_partitions(instance, "studio-a/x/ep404", ["S01"])
    result = _run(defs(), "plan_episode", instance, config, partition_key="studio-a/x/ep404")
    assert not result.success
    reason = result.why
    assert reason.startswith("shot_plan: NotRegistered: episode 'studio-a/x/ep404' is not "
                             "registered"), reason


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_a_dead_run_never_blocks_a_live_one(tmp_path: Path, instance: dg.DagsterInstance,
                                            config: PipelineConfig) -> None:
    """A run killed while holding the one gpu slot: the next clips run says what it waits for,
    the reaper fails the dead run and frees its slot, and the live run renders."""
    import threading
    import time

    store, d = _planned(tmp_path, instance, config)
    dead = instance.create_run_for_job(
        d.resolve_job_def("render_clips"), run_id="deadbeef-0000-0000-0000-000000000000",
        tags={WORKER_PID_TAG: str(_dead_pid()), WORKER_HOST_TAG: os.uname().nodename})
    instance.handle_run_event(dead.run_id, dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.RUN_START.value, job_name=dead.job_name))
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    instance.event_log_storage.claim_concurrency_slot("gpu", dead.run_id, "clips")
    done: list[bool] = []
    run_id = "11111111-0000-0000-0000-000000000000"
    worker = threading.Thread(daemon=True, target=lambda: done.append(
        _run(d, "render_clips", instance, config, run_id=run_id,
             tags=clip_range_tags(EP, ["S01", "S02"])).success))
    worker.start()
    report = None
    for _ in range(50):
        report = pool_wait_report(instance, run_id)
        if report:
            break
        time.sleep(0.2)
    assert report and "deadbeef" in report and "gpu" in report
    assert not store.exists(EpisodeKeys(EP).clip("S01"))
    reaped = reap_dead_runs(instance)
    assert [r.run_id for r in reaped] == [dead.run_id]
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
    worker.join(120)
    assert done == [True] and store.exists(EpisodeKeys(EP).clip("S02"))


@pytest.mark.slow
def test_nvenc_policy_falls_back_to_software_without_vram(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig
) -> None:
    """A saved GPU profile makes the policy ask for NVENC; this machine has no GPU, so the
    VRAM check fails and the run encodes in software, saying so, and records the policy."""
    from anime_pipeline.budget import ComputePlan
    from anime_pipeline.runtime.state import profile_path
    from anime_pipeline.runtime.testing import make_profile

    make_profile(vram_gib=[24.0], nvenc=True).save(profile_path(config.home))
    store, d = _planned(tmp_path, instance, config)
    plan = ComputePlan.model_validate_json(store.get_bytes(EpisodeKeys(EP).compute_plan))
    assert plan.runtime_policy is not None and plan.runtime_policy.encoder == "h264_nvenc"
    run = _run(d, "render_clips", instance, config, tags=clip_range_tags(EP, ["S01", "S02"]))
    assert run.success
    logs = [e.user_message for e in instance.all_logs(run.run_id)]
    assert any("encoding this run in software" in m for m in logs)
    mat = instance.fetch_materializations(dg.AssetKey("clips"), limit=1).records[0]
    md = mat.asset_materialization.metadata  # type: ignore[union-attr]
    assert md["encoder"].value == "libx264"
    assert md["runtime_policy"].value.startswith("LOCAL_GPU_HIGH")


@pytest.mark.slow
def test_a_staged_plan_on_a_farm_shows_its_preview_cut_then_the_final_clips(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig
) -> None:
    from datetime import UTC, datetime

    from anime_pipeline.budget import build_compute_plan
    from anime_pipeline.domain.contracts import ResourceState
    from anime_pipeline.pipeline import planning
    from anime_pipeline.storage import put_record
    from anime_pipeline_tests.support.comfyui_double import ComfyDouble
    from anime_pipeline_tests.support.farm import render_backends_yaml

    shots = [{"id": f"S{i:02d}", "type": "action" if i % 2 else "establishing",
              "duration_ms": 1000, "keyframe": "keyframes/S01.png",
              **({"criticality": "critical"} if i == 3 else {})} for i in range(1, 7)]
    store, d = _planned(tmp_path, instance, config, shots=shots,
                        format={"width": 640, "height": 360, "fps": 24})
    (tmp_path / "ep99" / "creative_control.yaml").write_text(
        "global_profile: HIGH\nsla:\n  deadline: '2026-12-01T12:00:12Z'\n", encoding="utf-8")
    bundle = catalog.register(store, tmp_path / "ep99")
    farm = ResourceState(available_backends=("animatic", "source_clip", "comfyui_i2v"),
                         workers_available=4)
    plan = build_compute_plan(bundle.episode, bundle.creative,
                              planning.read_audio_manifest(store, EP), resources=farm,
                              now=datetime(2026, 12, 1, 12, tzinfo=UTC))
    assert [s.shot_id for s in plan.shots if "final" in s.stages] == ["S06"]
    put_record(store, EpisodeKeys(EP).compute_plan, plan)  # a plan a tight deadline staged
    with ComfyDouble(work_dir=tmp_path / "comfy") as server:
        config.home.mkdir(parents=True, exist_ok=True)
        (config.home / "render_backends.yaml").write_text(
            render_backends_yaml(server, max_inflight=2), encoding="utf-8")
        run = _run(d, "render_clips", instance, config,
                   tags=clip_range_tags(EP, [s["id"] for s in shots]))
    assert run.success, run
    [cut] = [e for e in instance.fetch_observations(dg.AssetKey("composite"), limit=5).records]
    meta = cut.asset_observation.metadata  # type: ignore[union-attr]
    assert meta["preview"].value is True and meta["preview_tier_shots"].value == "S06"
    assert cut.partition_key == EP and store.exists(EpisodeKeys(EP).preview_composite)
    mats = instance.fetch_materializations(dg.AssetKey("clips"), limit=20).records
    s06 = [m.asset_materialization for m in mats if m.partition_key == f"{EP}/S06"]
    assert len(s06) == 2  # its preview-tier clip, then its final clip
    stages = sorted(m.metadata["stage"].value for m in s06)  # type: ignore[union-attr]
    assert stages == ["final", "preview"]
    assert len(server.prompts) >= 6  # the farm generated the final tiers
