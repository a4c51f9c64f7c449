"""The notifying sensors and steps on a temporary instance, posting to a real HTTP receiver on
loopback: a failed run (through the daemon's sensor and through the CLI, once between them),
a delivery with placeholders naming its shots, budget alerts, and the monitor's degradations
(once each, across restarts)."""

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from anime_pipeline.cli.render import SILENT_LOGS, RenderFailed, render_episode
from anime_pipeline.definitions import defs
from anime_pipeline.defs.notifications import (
    budget_alert_sensor,
    degradation_notifier,
    episode_of_run,
    run_failure_notifier,
)
from anime_pipeline.defs.partitions import register_partitions
from anime_pipeline.defs.resources import NotifierResource, pipeline_resources
from anime_pipeline.defs.runtime import build_runtime_monitor_sensor
from anime_pipeline.ledger import Ledger, ProjectBudget, UsageEntry, default_url
from anime_pipeline.ops.notify import clean, slack_escape
from anime_pipeline.pipeline import catalog
from anime_pipeline.runtime.monitor import (
    MonitorState,
    PolicyDowngrade,
    StateStore,
    Thresholds,
    manual_degrade,
    manual_restore,
)
from anime_pipeline.runtime.testing import make_profile
from anime_pipeline.settings import PipelineConfig
from anime_pipeline.storage import LocalStore
from anime_pipeline_tests.conftest import minimal_episode, tiny_png
from anime_pipeline_tests.support.webhook import SECRET, Receiver

EP = "studio-a/moonlit-courier/ep99"
UI = "http://dagster.example:3000"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


@pytest.fixture
def config(tmp_path: Path) -> PipelineConfig:
    return PipelineConfig(home=tmp_path / "home", storage_root=tmp_path / "artifacts")


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def resources(config: PipelineConfig, hook: Receiver) -> dict[str, dg.ConfigurableResource]:
    return pipeline_resources(config, notifier=NotifierResource(
        webhook_url=hook.url, ui_base_url=UI, timeout_s=5))


def ledger(config: PipelineConfig) -> Ledger:
    return Ledger(default_url(config.home))


def bad_audio_episode(tmp_path: Path) -> Path:
    folder = minimal_episode(tmp_path / "ep99")
    (folder / "audio" / "mix.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    return folder


def failed_plan_run(tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig,
                    hook: Receiver) -> str:
    """A failed run of the location's plan_episode job (its audio does not decode)."""
    bundle = catalog.register(LocalStore(config.artifacts), bad_audio_episode(tmp_path))
    register_partitions(instance, EP, [s.id for s in bundle.episode.shots])
    result = defs().resolve_job_def("plan_episode").execute_in_process(
        instance=instance, run_config=SILENT_LOGS, resources=resources(config, hook),
        partition_key=EP, raise_on_error=False)
    assert not result.success
    return result.run_id


def failure_context(instance: dg.DagsterInstance, config: PipelineConfig, hook: Receiver,
                    run_id: str) -> dg.RunStatusSensorContext:
    event = next(iter(instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)))
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_notifier", dagster_event=event.dagster_event,  # type: ignore[arg-type]
        dagster_instance=instance, dagster_run=instance.get_run_by_id(run_id),  # type: ignore[arg-type]
        resources=resources(config, hook))


def run_log(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.message for e in instance.all_logs(run_id)]


def test_the_location_runs_the_notifying_sensors() -> None:
    d = defs()
    sensors = {s.name: s for s in d.sensors or []}
    for name in ("run_failure_notifier", "budget_alert_sensor", "degradation_notifier"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING, name
    assert "notifier" in (d.resources or {})
    env = {"ANIME_PIPELINE_WEBHOOK_URL": "https://hooks.example/services/x"}
    bound = pipeline_resources(PipelineConfig(home=Path("/tmp/h")), environ=env)["notifier"]
    assert isinstance(bound, NotifierResource)
    assert isinstance(bound.webhook_url, dg.EnvVar)  # the UI shows the variable, not the secret
    assert episode_of_run({"dagster/partition": EP}) == EP
    assert episode_of_run({"dagster/asset_partition_range_start": f"{EP}/S01"}) == EP
    assert episode_of_run({}) is None


def test_the_failure_sensor_notifies_a_failed_run_once(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig, hook: Receiver
) -> None:
    run_id = failed_plan_run(tmp_path, instance, config, hook)
    out = run_failure_notifier(failure_context(instance, config, hook, run_id))
    assert isinstance(out, dg.SkipReason) and "notified" in (out.skip_message or "")
    [text] = hook.texts()
    assert f"run failed: plan_episode for {EP} (run {run_id})" in text
    assert "audio_event_manifest" in text and "mix.wav" in text and "Traceback" not in text
    assert f"{UI}/runs/{run_id}" in text
    # The daemon restarted before it saved its cursor: the same run is seen again.
    again = run_failure_notifier(failure_context(instance, config, hook, run_id))
    assert "notified before" in (again.skip_message or "")  # type: ignore[union-attr]
    assert len(hook.posts) == 1
    [row] = ledger(config).sent_notifications("run_failed")
    assert row.key == f"run_failed:{run_id}" and row.sent_at is not None


def test_the_failure_sensor_through_its_cursor(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig, hook: Receiver
) -> None:
    """As the daemon evaluates it: the first tick starts from now; a run that fails later is
    notified; the saved cursor does not read it again; a lost cursor does not send it again."""
    res = resources(config, hook)
    first = run_failure_notifier.evaluate_tick(
        dg.build_sensor_context(instance=instance, resources=res))
    start = first.cursor
    run_id = failed_plan_run(tmp_path, instance, config, hook)
    tick = run_failure_notifier.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=start, resources=res))
    assert len(hook.posts) == 1 and run_id in hook.texts()[0]
    run_failure_notifier.evaluate_tick(
        dg.build_sensor_context(instance=instance, cursor=tick.cursor, resources=res))
    run_failure_notifier.evaluate_tick(  # the cursor of before the failure, as after a crash
        dg.build_sensor_context(instance=instance, cursor=start, resources=res))
    assert len(hook.posts) == 1


def test_a_cli_render_that_fails_notifies_once_with_the_sensor(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig, hook: Receiver
) -> None:
    """No daemon sees a CLI render's runs; the CLI notifies; a daemon's sensor that does see
    the run (same instance) sends nothing more."""
    notifier = NotifierResource(webhook_url=hook.url, timeout_s=5)
    with pytest.raises(RenderFailed) as e:
        render_episode(bad_audio_episode(tmp_path), config=config, instance=instance,
                       notifier=notifier)
    run_id = e.value.run_id
    [text] = hook.texts()
    assert f"run failed: plan_episode for {EP} (run {run_id})" in text
    assert slack_escape(clean(e.value.reason)[:400]) in text  # cut to one line of 500
    logged = run_log(instance, run_id)
    assert any(m.startswith("[run_failed] anime_pipeline: run failed") for m in logged)
    assert any("posted to http://127.0.0.1" in m for m in logged)
    assert not any(SECRET in m for m in logged)
    run_failure_notifier(failure_context(instance, config, hook, run_id))
    assert len(hook.posts) == 1


def test_a_webhook_that_is_not_http_refuses_the_render(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig
) -> None:
    with pytest.raises(ValueError, match="must be an http:// or https:// URL"):
        render_episode(minimal_episode(tmp_path / "ep99"), config=config, instance=instance,
                       notifier=NotifierResource(webhook_url="file:///etc/s3cr3t"))
    assert instance.get_runs() == []  # refused before any work


@pytest.mark.slow
def test_the_cli_reads_the_webhook_from_the_environment(tmp_path: Path, hook: Receiver) -> None:
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "dagster_home"),
               ANIME_PIPELINE_HOME=str(tmp_path / "home"),
               ANIME_PIPELINE_STORAGE=str(tmp_path / "artifacts"),
               ANIME_PIPELINE_WEBHOOK_URL=hook.url, PYTHONPATH=str(ROOT))
    folder = bad_audio_episode(tmp_path)

    def cli() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "anime_pipeline.cli", "render",
                               str(folder)], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    out = cli()
    assert out.returncode == 1, out.stderr
    [text] = hook.texts()
    assert f"run failed: plan_episode for {EP}" in text and "mix.wav" in text
    assert SECRET not in out.stderr + out.stdout
    env["ANIME_PIPELINE_WEBHOOK_URL"] = "ftp://hooks.example/" + SECRET
    out = cli()
    assert out.returncode == 1
    line = next(x for x in out.stderr.splitlines() if x.startswith("render failed"))
    assert "ANIME_PIPELINE_WEBHOOK_URL: must be an http:// or https:// URL" in line
    assert SECRET not in out.stderr and len(hook.posts) == 1


@pytest.mark.slow
def test_deliveries_notify_and_name_their_placeholder_shots(
    tmp_path: Path, instance: dg.DagsterInstance, config: PipelineConfig, hook: Receiver
) -> None:
    """Through the CLI's in-process runs (no daemon): a shot whose keyframe does not decode
    is a placeholder slate, named in the message; fixed, the next delivery is clean."""
    folder = minimal_episode(tmp_path / "ep99")
    (folder / "keyframes" / "S02.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    notifier = NotifierResource(webhook_url=hook.url, ui_base_url=UI, timeout_s=5)
    report = render_episode(folder, config=config, instance=instance, notifier=notifier)
    assert report.placeholder_shots == ["S02"]
    [text] = hook.texts()
    deliver = report.run_ids["deliver_episode"]
    assert text.startswith(f"anime_pipeline: delivered WITH PLACEHOLDERS: {EP} (テスト): "
                           "1 of 2 shot(s) are placeholder slates: S02\n")
    assert f"{UI}/runs/{deliver}" in text and report.package in text
    assert any(m.startswith("[delivered_with_placeholders] ")
               for m in run_log(instance, deliver))  # in the step's Dagster log
    (folder / "keyframes" / "S02.png").write_bytes(tiny_png(64, 36))
    again = render_episode(folder, config=config, instance=instance, notifier=notifier)
    assert again.placeholder_shots == []
    assert len(hook.texts()) == 2
    assert hook.texts()[1].startswith(f"anime_pipeline: delivered: {EP} (テスト): 2 shot(s)")
    kinds = [r.kind for r in ledger(config).sent_notifications()]
    assert kinds == ["delivered_with_placeholders", "delivered"]


def test_the_budget_sensor_alerts_and_resends(
    instance: dg.DagsterInstance, config: PipelineConfig, hook: Receiver
) -> None:
    book = ledger(config)
    book.set_budget(ProjectBudget(tenant="studio-a", project="moonlit-courier",
                                  gpu_minutes=10))
    book.record([UsageEntry(tenant="studio-a", project="moonlit-courier", episode="ep99",
                            shot="S01", run_id="r1", attempt=1, provider="comfyui",
                            unit="gpu_sec", amount=8.5 * 60, at=dt.datetime.now(dt.UTC))])
    book.claim_notification("run_failed:old", "run_failed", "an old failure")
    book.notification_done("run_failed:old", error="HTTP 502")
    ctx = dg.build_sensor_context(instance=instance, resources=resources(config, hook))
    out = budget_alert_sensor(ctx)
    assert isinstance(out, dg.SkipReason)
    assert out.skip_message == "1 budget alert(s) sent, 1 resent"
    assert "budget 80% used: studio-a/moonlit-courier" in hook.texts()[0]
    assert hook.texts()[1] == "an old failure"
    budget_alert_sensor(dg.build_sensor_context(instance=instance,
                                                resources=resources(config, hook)))
    assert len(hook.posts) == 2


def degradation_tick(instance: dg.DagsterInstance, config: PipelineConfig, hook: Receiver,
                     cursor: str | None) -> dg.SensorResult:
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources=resources(config, hook))
    out = degradation_notifier(ctx)
    assert isinstance(out, dg.SensorResult)
    return out


def test_each_degradation_is_notified_once(
    instance: dg.DagsterInstance, config: PipelineConfig, hook: Receiver
) -> None:
    store = StateStore(config.state_dir)
    assert degradation_tick(instance, config, hook, None).cursor
    now = time.time()
    state = MonitorState(steps=[PolicyDowngrade(kind="vram", reason="VRAM 91% used > 85%",
                                                at=now - 60)], revision=1,
                         last_action="degrade")
    store.save(state)
    r = degradation_tick(instance, config, hook, None)
    [text] = hook.texts()
    assert "runtime degraded to level 1 on " in text and "(vram): VRAM 91% used &gt; 85%" in text
    assert degradation_tick(instance, config, hook, r.cursor).skip_reason
    degradation_tick(instance, config, hook, None)  # a restart that lost its cursor
    assert len(hook.posts) == 1
    store.save(manual_degrade(state, "maintenance <!here>", now=now))
    r = degradation_tick(instance, config, hook, r.cursor)
    assert len(hook.posts) == 2
    assert "degraded manually to level 2" in hook.texts()[1]
    assert "&lt;!here&gt;" in hook.texts()[1] and "runtime restore" in hook.texts()[1]
    store.save(manual_restore(store.load(), now=now + 1))
    r = degradation_tick(instance, config, hook, r.cursor)
    assert len(hook.posts) == 2
    store.save(manual_degrade(store.load(), "again", now=now + 2))
    degradation_tick(instance, config, hook, r.cursor)
    assert len(hook.posts) == 3 and "level 1" in hook.texts()[2]


SHOTS = dg.StaticPartitionsDefinition([f"S{i:02d}" for i in range(1, 9)])


@dg.asset(key="clips", partitions_def=SHOTS, backfill_policy=dg.BackfillPolicy.single_run())
def failing_clips(context: dg.AssetExecutionContext) -> None:
    raise RuntimeError(f"render of {context.partition_keys} failed: out of memory")


def test_a_degradation_by_the_monitor_is_notified_once(
    instance: dg.DagsterInstance, config: PipelineConfig, hook: Receiver
) -> None:
    """The real monitor sensor degrades on real failed renders; the notifier reports that
    step once, however many times the monitor ticks after it."""
    home = config.state_dir
    home.mkdir(parents=True, exist_ok=True)
    make_profile(threads=2).save(home / "runtime_profile.json")
    monitor = build_runtime_monitor_sensor(state_dir_=home, thresholds=Thresholds(
        degrade_after=1, min_failure_samples=4))
    dg.materialize([failing_clips], instance=instance, raise_on_error=False, tags={
        "dagster/asset_partition_range_start": "S01",
        "dagster/asset_partition_range_end": "S04"})
    cursor = None
    for _ in range(3):
        tick = monitor(dg.build_sensor_context(instance=instance, cursor=cursor,
                                               resources=resources(config, hook)))
        cursor = tick.cursor  # type: ignore[union-attr]
        degradation_tick(instance, config, hook, None)
    state = StateStore(home).load()
    assert state.degraded
    assert len(hook.posts) == len(state.steps)
    assert state.steps[0].kind in hook.texts()[0]
    assert json.loads(hook.posts[0]["raw"])["text"] == hook.texts()[0]
