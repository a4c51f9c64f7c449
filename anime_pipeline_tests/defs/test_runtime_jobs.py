"""The runtime control jobs (degrade, restore, re-detect) of the code location, run in process
against a real instance and a state folder the CLI then reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from anime_pipeline.cli.render import SILENT_LOGS, failure_reason
from anime_pipeline.definitions import defs
from anime_pipeline.defs.resources import RuntimePolicyResource
from anime_pipeline.runtime.cli import main
from anime_pipeline.runtime.monitor import (
    MetricSnapshot,
    MonitorState,
    StateStore,
    Thresholds,
    evaluate,
)
from anime_pipeline.runtime.profile import RuntimeProfile
from anime_pipeline.runtime.testing import make_profile

RUNTIME_PROFILE = dg.AssetKey("runtime_profile")
SAMPLE = MetricSnapshot(  # within the thresholds (25 % failures is under 30 %)
    taken_at=1_800_000_000.0, vram_used_frac=0.5, vram_used_frac_per_gpu=[0.5],
    mem_available_gb=20.0, cpu_percent=37.0, recent_failure_rate=0.25, failure_samples=4,
    failures=1)


@pytest.fixture(scope="module")
def code_location() -> dg.Definitions:
    return defs()


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A state folder with an 8 GB GPU profile and one monitor sample already taken."""
    home = tmp_path / "state"
    home.mkdir()
    make_profile(vram_gib=[8.0]).save(home / "runtime_profile.json")
    StateStore(home).save(evaluate(SAMPLE, MonitorState(), Thresholds()).state)
    return home


def launch(d: dg.Definitions, job: str, instance: dg.DagsterInstance, home: Path,
           config: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
    return d.resolve_job_def(job).execute_in_process(
        instance=instance, run_config={**SILENT_LOGS, **(config or {})},
        resources={"runtime": RuntimePolicyResource(state_dir=str(home))}, raise_on_error=False)


def degrade_config(reason: str) -> dict[str, Any]:
    return {"ops": {"degrade_policy": {"config": {"reason": reason}}}}


def cli_status(home: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["runtime", "status", "--json", "--state-dir", str(home)]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def latest(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    """The metadata values of runtime_profile's latest materialization, made by ``run_id``."""
    event = instance.get_latest_materialization_event(RUNTIME_PROFILE)
    assert event is not None and event.run_id == run_id
    assert event.asset_materialization is not None
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def messages(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(e.user_message for e in instance.all_logs(run_id))


def test_the_jobs_are_in_the_code_location(code_location: dg.Definitions) -> None:
    jobs = {j.name: j for j in code_location.resolve_all_job_defs()}
    assert {"runtime_degrade", "runtime_restore", "runtime_redetect"} <= set(jobs)
    assert [n.name for n in jobs["runtime_degrade"].nodes] == ["degrade_policy"]
    assert [n.name for n in jobs["runtime_restore"].nodes] == ["restore_policy"]
    assert jobs["runtime_redetect"].asset_layer.executable_asset_keys == {RUNTIME_PROFILE}


def test_degrade_then_restore_from_the_ui_is_what_the_cli_sees(
    code_location: dg.Definitions, instance: dg.DagsterInstance, home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_status(home, capsys)["policy"]["name"] == "LOCAL_GPU_MID/baseline"

    run = launch(code_location, "runtime_degrade", instance, home,
                 degrade_config("render farm maintenance"))
    assert run.success, failure_reason(run)
    state = StateStore(home).load()
    assert state.manual_hold and [s.reason for s in state.steps] == ["render farm maintenance"]
    assert state.last_snapshot == SAMPLE  # the monitor's sample is kept
    cli = cli_status(home, capsys)
    assert cli["policy"]["name"] == "LOCAL_GPU_MID/degraded-1"
    assert cli["policy"]["encoder"] == "libx264"  # GPU → CPU, as the CLI's own degrade does
    assert cli["monitor"]["steps"][0]["source"] == "manual"
    assert "DEGRADED (level 1): [manual] render farm maintenance" in messages(instance, run.run_id)

    meta = latest(instance, run.run_id)
    assert meta["profile_class"] == "LOCAL_GPU_MID"
    assert meta["policy"] == "LOCAL_GPU_MID/degraded-1"
    assert meta["degraded"] is True and meta["manual_hold"] is True
    assert meta["degrade_level"] == 1
    [step] = meta["degrade_steps_json"]["steps"]
    assert (step["kind"], step["source"], step["reason"]) == (
        "manual", "manual", "render farm maintenance")
    assert meta["degraded_since"] == pytest.approx(step["at"])
    assert "| 1 | manual | manual | render farm maintenance |" in meta["degrade_steps"]
    assert "runtime_restore" in meta["degrade_steps"]
    assert meta["policy_json"] == cli["policy"]
    assert meta["encoder"] == "libx264" and meta["render_concurrency"] >= 1
    # the last sample of the monitor, when it was taken
    assert meta["last_sample_at"] == SAMPLE.taken_at
    assert (meta["vram_used_frac"], meta["mem_available_gb"], meta["cpu_percent"]) == (
        0.5, 20.0, 37.0)
    assert meta["clip_failure_rate"] == 0.25 and meta["clip_renders_in_window"] == 4
    assert "VRAM 50%" in meta["last_sample"] and "clip failures 25% (1/4)" in meta["last_sample"]
    # the explanation (in force: degraded) and the recommendations, in both languages
    assert "DEGRADED (level 1)" in meta["explanation"] and "检测结果" in meta["explanation_zh"]
    assert meta["recommendations"].startswith("- A GPU with 16 GB or more")
    assert "16 GB" in meta["recommendations_zh"]

    run = launch(code_location, "runtime_restore", instance, home)
    assert run.success, failure_reason(run)
    state = StateStore(home).load()
    assert not state.degraded and not state.manual_hold
    assert cli_status(home, capsys)["policy"]["name"] == "LOCAL_GPU_MID/baseline"
    assert "restored to the baseline. Policy LOCAL_GPU_MID/baseline" in messages(
        instance, run.run_id)
    meta = latest(instance, run.run_id)
    assert meta["degraded"] is False and meta["manual_hold"] is False
    assert meta["degrade_steps"].startswith("Not degraded")
    assert meta["degrade_steps_json"] == {"steps": []} and "degraded_since" not in meta

    run = launch(code_location, "runtime_restore", instance, home)
    assert run.success and "already at the baseline" in messages(instance, run.run_id)


def test_a_degrade_needs_a_reason(
    code_location: dg.Definitions, instance: dg.DagsterInstance, home: Path
) -> None:
    before = StateStore(home).path.read_text()
    run = launch(code_location, "runtime_degrade", instance, home, degrade_config("   "))
    assert not run.success
    why = failure_reason(run)
    assert why.startswith("degrade_policy: Failure: the reason must not be empty"), why
    assert "set ops.degrade_policy.config.reason in the Launchpad" in why
    assert StateStore(home).path.read_text() == before  # nothing changed
    assert instance.get_latest_materialization_event(RUNTIME_PROFILE) is None
    with pytest.raises(dg.DagsterInvalidConfigError, match='required config entry "reason"'):
        launch(code_location, "runtime_degrade", instance, home,
               {"ops": {"degrade_policy": {"config": {}}}})


def test_redetect_rewrites_the_profile_and_keeps_the_monitors_degrade(
    code_location: dg.Definitions, instance: dg.DagsterInstance, home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the monitor degraded on two breaching samples; the folder's thresholds restore after 5
    (home / "thresholds.json").write_text('{"restore_after": 5}')
    t = Thresholds.load(home)
    hot = SAMPLE.model_copy(update={"mem_available_gb": 1.0})
    state = StateStore(home).load()
    for at in (1.0, 2.0):
        state = evaluate(hot.model_copy(update={"taken_at": SAMPLE.taken_at + at}), state, t).state
    assert state.degraded and not state.manual_hold
    StateStore(home).save(state)
    fake = RuntimeProfile.load(home / "runtime_profile.json")

    run = launch(code_location, "runtime_redetect", instance, home)
    assert run.success, failure_reason(run)
    real = RuntimeProfile.load(home / "runtime_profile.json")
    assert real.detected_at > fake.detected_at and real.cpu.model != "Test CPU"
    cli = cli_status(home, capsys)
    assert cli["profile_detected_at"] == real.detected_at
    assert cli["policy"]["degraded"] is True  # the steps are kept, on the new baseline
    meta = latest(instance, run.run_id)
    assert meta["profile_class"] == real.profile_class.value == cli["profile_class"]
    assert meta["profile_detected_at"] == pytest.approx(real.detected_at)
    assert meta["degraded"] is True and meta["manual_hold"] is False
    assert meta["degrade_steps_json"]["steps"][0]["kind"] == "memory"
    assert meta["restore_after_healthy_samples"] == 5 and meta["healthy_streak"] == 0
    assert "restores the baseline after 5 healthy samples" in meta["degrade_steps"]
    assert meta["mem_available_gb"] == 1.0  # the last sample's, not the detection's
    assert "re-detected" in messages(instance, run.run_id)
