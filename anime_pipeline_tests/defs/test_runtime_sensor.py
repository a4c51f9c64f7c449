"""The runtime monitor sensor against a real Dagster instance with real failed runs."""

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from anime_pipeline.defs.resources import GpuResource, InsufficientVramError, RuntimePolicyResource
from anime_pipeline.defs.runtime import (
    build_runtime_monitor_sensor,
    clip_render_stats,
    runtime_monitor_sensor,
    runtime_profile,
)
from anime_pipeline.domain.records import ClipMetadata, ClipStatus
from anime_pipeline.runtime import nvml
from anime_pipeline.runtime.monitor import StateStore, Thresholds
from anime_pipeline.runtime.testing import make_profile

NO_GPU = not nvml.query().gpus
SHOTS = dg.StaticPartitionsDefinition([f"S{i:02d}" for i in range(1, 9)])


SINGLE_RUN = dg.BackfillPolicy.single_run()


def clips_asset(key: str, outcome: str) -> dg.AssetsDefinition:
    """Like the pipeline's `clips`: per-shot partitions, an episode's shots in one run.

    ``outcome``: "fail" (the step raises), "ok", or "placeholder" (slates stood in).
    """

    @dg.asset(key=key, partitions_def=SHOTS, backfill_policy=SINGLE_RUN)
    def _clips(context: dg.AssetExecutionContext) -> None:
        if outcome == "fail":
            raise RuntimeError(f"render of {context.partition_keys} failed: out of memory")
        status = ClipStatus.placeholder if outcome == "placeholder" else ClipStatus.ok
        for k in context.partition_keys:
            meta = ClipMetadata(
                episode_key="a/b/c", shot_id=k, status=status, cached=False,
                backend="placeholder" if outcome == "placeholder" else "animatic",
                shot_type="action", duration_ms=1000, fps=12, resolution="540p",
                encoder="libx264", frames=24, size_bytes=1000, render_seconds=1.0, attempts=1)
            context.add_asset_metadata(meta.values(), partition_key=k)

    return _clips


failing_clips = clips_asset("clips", "fail")
good_clips = clips_asset("clips", "ok")


def render(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, first: str, last: str) -> None:
    """One run that renders shots ``first..last`` (as a single-run backfill would)."""
    tags = {
        "dagster/asset_partition_range_start": first,
        "dagster/asset_partition_range_end": last,
    }
    dg.materialize([asset], instance=instance, tags=tags, raise_on_error=False)


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    # one instance for the module (it is slow to create); each test uses its own asset key
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def home(tmp_path: Path) -> Path:
    # a saved profile so ticks do not re-detect (the sensor re-detects when it is stale)
    make_profile(threads=2).save(tmp_path / "runtime_profile.json")
    return tmp_path


THRESHOLDS = Thresholds(degrade_after=2, restore_after=3, min_failure_samples=4)


def tick(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None
) -> dg.SensorResult:
    # The sensors under test are built with their own state folder (state_dir_), which wins
    # over the `runtime` resource's.
    unused = RuntimePolicyResource(state_dir="/nonexistent/unused")
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"runtime": unused})
    result = sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def test_degrade_then_restore_with_hysteresis(instance: dg.DagsterInstance, home: Path) -> None:
    sensor = build_runtime_monitor_sensor(state_dir_=home, thresholds=THRESHOLDS)
    assert sensor.minimum_interval_seconds == 30

    # healthy first tick: the state is reported once, the gpu pool follows the GPU count
    r = tick(sensor, instance, None)
    assert len(r.asset_events) == 1
    first = r.asset_events[0]
    assert isinstance(first, dg.AssetMaterialization)
    assert first.asset_key == dg.AssetKey("runtime_profile")
    assert "What was found" in str(first.metadata["explanation"].value)
    assert first.metadata["degraded"].value is False
    slots = instance.event_log_storage.get_concurrency_info("gpu").slot_count
    assert slots == max(1, len(nvml.query().gpus))
    r = tick(sensor, instance, r.cursor)
    assert r.asset_events == []  # nothing changed, nothing reported

    # 3 of 5 renders fail: 60% > 30%, from real run records
    render(instance, failing_clips, "S01", "S03")
    render(instance, good_clips, "S04", "S05")
    stats = clip_render_stats(instance, since=0)
    assert (stats.failed, stats.succeeded, stats.runs) == (3, 2, 2)

    r = tick(sensor, instance, r.cursor)  # first breach: hysteresis holds
    assert r.asset_events == []
    assert StateStore(home).load().breach_streak == 1
    assert not current_policy(home).degraded

    r = tick(sensor, instance, r.cursor)  # second consecutive breach: degrade
    [ev] = r.asset_events
    assert ev.metadata["degraded"].value is True
    assert ev.metadata["monitor_action"].value == "degrade"
    assert ev.metadata["clip_failure_rate"].value == pytest.approx(0.6)
    assert "failure rate 60%" in str(ev.metadata["explanation"].value)
    # why, what restores it, the sample it acted on and what would help: as the jobs report
    assert "| 1 | failure_rate | monitor |" in str(ev.metadata["degrade_steps"].value)
    assert ev.metadata["manual_hold"].value is False
    assert ev.metadata["restore_after_healthy_samples"].value == 3
    snap = StateStore(home).load().last_snapshot
    assert snap is not None and ev.metadata["last_sample_at"].value == snap.taken_at
    assert "An NVIDIA GPU" in str(ev.metadata["recommendations"].value)
    policy = current_policy(home)
    assert policy.degraded and policy.degrade_level == 1
    assert "failure rate 60% (3/5)" in policy.reasons[0]
    assert json.loads(r.cursor or "{}")["state"]["steps"][0]["kind"] == "failure_rate"

    # renders go well again; failures before the degrade no longer count
    render(instance, good_clips, "S01", "S04")
    r = tick(sensor, instance, r.cursor)
    r = tick(sensor, instance, r.cursor)
    assert r.asset_events == [] and current_policy(home).degraded  # 2 healthy: not yet
    r = tick(sensor, instance, r.cursor)  # third healthy sample in a row: restore
    [ev] = r.asset_events
    assert ev.metadata["monitor_action"].value == "restore"
    assert ev.metadata["degraded"].value is False
    assert not current_policy(home).degraded
    rs = RuntimePolicyResource(state_dir=str(home)).resource_state(queue_depth=2)
    assert rs.policy_degraded is False and rs.gpu_queue_depth == 2


def test_state_survives_a_restart(instance: dg.DagsterInstance, home: Path) -> None:
    key = dg.AssetKey("clips_restart")
    sensor = build_runtime_monitor_sensor(state_dir_=home, thresholds=THRESHOLDS, clips_key=key)
    render(instance, clips_asset("clips_restart", "fail"), "S01", "S04")
    r = tick(sensor, instance, None)
    assert StateStore(home).load().breach_streak == 1
    # `dagster dev` restarted: a new sensor object, the cursor lost — the file remembers
    restarted = build_runtime_monitor_sensor(state_dir_=home, thresholds=THRESHOLDS, clips_key=key)
    r = tick(restarted, instance, None)
    assert current_policy(home).degraded
    # the state file lost instead: the sensor cursor remembers
    cursor = r.cursor
    StateStore(home).path.unlink()
    r = tick(restarted, instance, cursor)
    assert current_policy(home).degrade_level == 1


def test_placeholder_slates_count_as_failed_renders(instance: dg.DagsterInstance) -> None:
    key = dg.AssetKey("clips_slates")
    render(instance, clips_asset("clips_slates", "placeholder"), "S01", "S02")
    render(instance, clips_asset("clips_slates", "ok"), "S03", "S03")
    stats = clip_render_stats(instance, since=0, asset_key=key)
    assert (stats.failed, stats.succeeded) == (2, 1)
    assert stats.rate == pytest.approx(2 / 3)
    assert clip_render_stats(instance, since=0, asset_key=dg.AssetKey("other")).total == 0


def current_policy(home: Path):  # type: ignore[no-untyped-def]
    return RuntimePolicyResource(state_dir=str(home)).policy()


def test_runtime_profile_asset(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    runtime = RuntimePolicyResource(state_dir=str(tmp_path))
    result = dg.materialize([runtime_profile], instance=instance,
                            resources={"runtime": runtime})
    assert result.success
    [mat] = result.asset_materializations_for_node("runtime_profile")
    assert "检测结果" in str(mat.metadata["explanation_zh"].value)
    assert int(str(mat.metadata["cpu_threads"].value)) >= 1
    assert (tmp_path / "runtime_profile.json").is_file()
    assert current_policy(tmp_path).profile_class.value == mat.metadata["profile_class"].value


def test_definitions_load() -> None:
    from anime_pipeline.definitions import defs as load

    defs = load()
    sensor = runtime_monitor_sensor
    assert sensor.name == "runtime_monitor_sensor" and sensor.minimum_interval_seconds == 30
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_assets_def("runtime_profile") is not None
    assert isinstance((defs.resources or {})["gpu"], GpuResource)
    assert isinstance((defs.resources or {})["runtime"], RuntimePolicyResource)
    fast = build_runtime_monitor_sensor(name="fast_monitor", minimum_interval_seconds=5)
    assert fast.minimum_interval_seconds == 5


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU")
def test_gpu_resource_without_a_gpu() -> None:
    gpu = GpuResource(device_index=0)
    assert gpu.available() is False and gpu.free_vram_mb() is None
    assert gpu.vram_check(512) is False
    with pytest.raises(InsufficientVramError, match="no NVIDIA GPU"):
        gpu.vram_check(512, raise_on_insufficient=True)
    assert gpu.utilisation() == {"available": False, "device_index": 0}


@pytest.mark.skipif(NO_GPU, reason="needs an NVIDIA GPU and driver")
def test_gpu_resource_on_a_gpu() -> None:
    gpu = GpuResource(device_index=0)
    u = gpu.utilisation()
    assert u["available"] and u["vram_total_mb"] > 0
    assert gpu.vram_check(1) is True
    assert gpu.vram_check(10**9) is False
