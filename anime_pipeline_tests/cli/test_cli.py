"""The CLI as a user runs it: exit codes, one-line failures, placeholders reported, one
instance wherever it starts, and a render killed with -9 that the next render survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anime_pipeline.cli import main
from anime_pipeline.defs.metadata import read_reused
from anime_pipeline.settings import default_home, instance_home, project_root
from anime_pipeline_tests.conftest import minimal_episode

ROOT = Path(__file__).resolve().parents[2]
EP = "studio-a/moonlit-courier/ep99"


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DAGSTER_HOME=str(tmp_path / "dagster_home"),
               ANIME_PIPELINE_HOME=str(tmp_path / "home"),
               ANIME_PIPELINE_STORAGE=str(tmp_path / "artifacts"))
    return env


def _cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 300
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anime_pipeline.cli", *args], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_homes_are_the_projects_wherever_a_command_starts() -> None:
    assert project_root() == ROOT
    assert instance_home({}) == ROOT / ".dagster"
    assert default_home({}) == ROOT / ".anime_pipeline"
    assert instance_home({"DAGSTER_HOME": "/srv/dagster"}) == Path("/srv/dagster")


def test_usage_errors_exit_2() -> None:
    assert main(["render"]) == 2
    assert main(["no-such-command"]) == 2


@pytest.mark.slow
def test_placeholders_are_reported_every_time(tmp_path: Path) -> None:
    """A shot that cannot render is a placeholder: exit 3, named in --json, on every run."""
    folder = minimal_episode(tmp_path / "ep99")
    (folder / "keyframes" / "S02.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    env = _env(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    for _ in range(2):
        out = _cli("render", str(folder), "--json", env=env, cwd=other)
        assert out.returncode == 3, out.stderr
        report = json.loads(out.stdout)
        assert report["delivered_with_placeholders"] is True
        assert report["placeholder_shots"] == ["S02"]
        assert report["instance"] == env["DAGSTER_HOME"]
        assert Path(report["composite"]).is_file()
    human = _cli("render", str(folder), env=env, cwd=other)
    assert human.returncode == 3
    assert "DELIVERED WITH PLACEHOLDERS for 1 shot(s): S02" in human.stdout
    assert f"instance: {env['DAGSTER_HOME']}" in human.stderr


@pytest.mark.slow
def test_failures_are_one_line_without_stack_frames(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep99")
    (folder / "audio" / "mix.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    out = _cli("render", str(folder), env=_env(tmp_path), cwd=tmp_path)
    assert out.returncode == 1
    failure = [line for line in out.stderr.splitlines() if line.startswith("render failed")]
    assert failure and "audio_event_manifest" in failure[0] and "mix.wav" in failure[0]
    assert "Traceback" not in out.stderr and 'File "' not in out.stderr


@pytest.mark.slow
def test_kill_9_during_clips_then_the_next_render_finishes(tmp_path: Path) -> None:
    """kill -9 of a render while it holds the gpu slot: the next render frees the dead run's
    slot (saying so), reuses the clips already finished, reclaims the scratch, and delivers."""
    from anime_pipeline.sample import write_sample_episode

    folder = write_sample_episode(tmp_path / "ep01", n_shots=6, shot_ms=3000)
    env = _env(tmp_path)
    records = tmp_path / "artifacts" / "studio-a" / "moonlit-courier" / "ep01" / "clips"
    proc = subprocess.Popen(
        [sys.executable, "-m", "anime_pipeline.cli", "render", str(folder), "--concurrency",
         "1"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(records.glob("*.json")):
            assert proc.poll() is None, "the render ended before it could be killed"
            assert time.monotonic() < deadline, "no clip was rendered in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finished = {p.stem for p in records.glob("*.json")}
    assert 1 <= len(finished) < 6
    again = _cli("render", str(folder), "--json", env=env, cwd=tmp_path, timeout=400)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert len(report["reaped_runs"]) == 1 and report["placeholder_shots"] == []
    scratch = tmp_path / "artifacts" / ".scratch"
    assert not scratch.exists() or not any(scratch.iterdir())
    import dagster as dg

    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs()
        killed = [r for r in runs if r.run_id == report["reaped_runs"][0]]
        assert killed and killed[0].status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
        clips_run = report["run_ids"]["render_clips"]
        mats = [e for e in instance.all_logs(clips_run,
                                             of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)]
        rendered = {e.dagster_event.partition.rsplit("/", 1)[1]  # type: ignore[union-attr]
                    for e in mats}
        observed = instance.fetch_observations(dg.AssetKey("clips"), limit=20).records
        reports = [read_reused(r.asset_observation.metadata) for r in observed
                   if r.asset_observation is not None]
        reused = {s for r in reports if r is not None for s in r.shot_ids}
        # What finished before the kill is not rendered again: reported reused, once.
        assert finished <= reused and not finished & rendered
        assert reused | rendered == {f"S{i:02d}" for i in range(1, 7)}
        assert report["clip_stats"]["cached"] == len(reused)


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 600 KiB filesystem for the artifacts (root can mount a tmpfs; else skip)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_named_and_never_a_placeholder(tmp_path: Path, tiny_disk: Path) -> None:
    from anime_pipeline.sample import write_sample_episode

    folder = write_sample_episode(tmp_path / "ep01", n_shots=4, shot_ms=3000)
    env = {**_env(tmp_path), "ANIME_PIPELINE_STORAGE": str(tiny_disk)}
    out = _cli("render", str(folder), env=env, cwd=tmp_path)
    assert out.returncode == 1, out.stdout
    failure = next(line for line in out.stderr.splitlines() if line.startswith("render failed"))
    assert "DiskFullError" in failure and "no space left" in failure.lower(), failure
    records = list(tiny_disk.rglob("clips/*.json"))
    assert all(b'"placeholder"' not in p.read_bytes() for p in records)
