"""The user's contract, end to end: ``render_backends.yaml`` in the pipeline home names a farm
of two ComfyUI servers (doubles), and ``anime-pipeline render EP --json`` generates the
episode's shots on it, through Dagster, with the servers, usage and ``clip_stats`` recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from anime_pipeline.domain.records import ClipRecord
from anime_pipeline.media.ffmpeg import verify_clip
from anime_pipeline.storage import EpisodeKeys, LocalStore, get_record
from anime_pipeline_tests.conftest import minimal_episode
from anime_pipeline_tests.support.comfyui_double import ComfyDouble
from anime_pipeline_tests.support.farm import render_backends_yaml

pytestmark = pytest.mark.slow

EP = "studio-a/moonlit-courier/ep99"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DAGSTER_HOME=str(tmp_path / "dagster_home"),
               ANIME_PIPELINE_HOME=str(tmp_path / "home"),
               ANIME_PIPELINE_STORAGE=str(tmp_path / "artifacts"), **extra)
    return env


def _cli(*args: str, env: dict[str, str], timeout: float = 300
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anime_pipeline.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_render_generates_the_shots_on_the_farm_of_render_backends_yaml(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    home = tmp_path / "home"
    home.mkdir()
    with ComfyDouble(work_dir=tmp_path / "a", node_latency_s=0.05) as a, \
            ComfyDouble(work_dir=tmp_path / "b", node_latency_s=0.05) as b:
        (home / "render_backends.yaml").write_text(
            "comfyui_i2v:\n  kind: comfyui\n  workflow: weightfree_i2v\n  servers:\n"
            f"    - url: {a.url}\n      max_inflight: 2\n    - url: {b.url}\n"
            "  requests_per_second: 5\n", encoding="utf-8")
        env = _env(tmp_path, ANIME_PIPELINE_LOG_FORMAT="json")

        profile = _cli("profile", "--json", env=env)
        assert profile.returncode == 0, profile.stderr
        detected = json.loads(profile.stdout)
        assert detected["profile_class"] == "CLOUD_HYBRID"
        assert {(x["name"], x["url"], x["renderable"]) for x in detected["backends"]} == {
            ("comfyui_i2v", a.url, True), ("comfyui_i2v", b.url, True)}

        done = _cli("render", str(folder), "--json", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        prompts = a.prompts + b.prompts

    assert {c["backend"] for c in report["clips"]} == {"comfyui_i2v"}
    assert {c["status"] for c in report["clips"]} == {"ok"}
    assert {c["server"] for c in report["clips"]} <= {a.url, b.url}
    assert report["clip_stats"]["clips"] == 2 and report["clip_stats"]["placeholders"] == 0
    assert len(prompts) == 2  # one prompt per shot (each fits in one segment)

    store = LocalStore(tmp_path / "artifacts")
    keys = EpisodeKeys(EP)
    for shot, frames in (("S01", 24), ("S02", 12)):
        record = get_record(store, keys.clip_record(shot), ClipRecord)
        assert record.server in (a.url, b.url)
        [usage] = record.usage
        assert usage.prompt_id in {p["prompt_id"] for p in prompts}
        assert usage.server == record.server and usage.gpu_sec is not None
        probe = verify_clip(store.path(keys.clip(shot)), expected_frames=frames,
                            width=320, height=180, fps=24, timeout=60)
        assert probe.frames == frames

    # Logs carry the task, its status and its slot; with JSON asked for, as JSON lines.
    lines = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    tasks = [x for x in lines if x.get("clip_task_id") == f"{EP}/S01"]
    assert {x["clip_status"] for x in tasks} >= {"started", "ok"}
    assert all(isinstance(x["parallel_slot"], int) for x in tasks)

    # Dagster saw it: the run's clip_stats tag, the clips observation, each shot's server.
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        run = instance.get_run_by_id(report["run_ids"]["render_clips"])
        assert run is not None
        assert json.loads(run.tags["anime_pipeline/clip_stats"])["clips"] == 2
        [obs] = instance.fetch_observations(dg.AssetKey("clips"), limit=1).records
        event = obs.asset_observation
        assert event is not None
        stats = event.metadata["clip_stats"].value
        assert set(stats["by_server"]) <= {a.url, b.url}  # type: ignore[index]
        farms = event.metadata["farms"].value
        assert sum(s["shots_ok"] for s in farms["comfyui_i2v"].values()) == 2  # type: ignore[index]
        mats = instance.fetch_materializations(dg.AssetKey("clips"), limit=10).records
        servers = {m.asset_materialization.metadata["server"].value  # type: ignore[union-attr]
                   for m in mats}
        assert servers <= {a.url, b.url}


def test_stopping_a_render_interrupts_and_dequeues_its_prompts(tmp_path: Path) -> None:
    import signal
    import time

    import httpx

    folder = minimal_episode(tmp_path / "ep")
    home = tmp_path / "home"
    home.mkdir()
    with ComfyDouble(work_dir=tmp_path / "a", gen_seconds_per_frame=3.0) as a:
        (home / "render_backends.yaml").write_text(render_backends_yaml(a, max_inflight=2),
                                                   encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-m", "anime_pipeline.cli", "render",
                                 str(folder)], env=_env(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not (len(a.prompts) == 2 and a.executed) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(a.prompts) == 2 and a.executed, "the render never reached the farm"
            proc.send_signal(signal.SIGINT)  # what terminating the run does to its worker
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode != 0
        ours = {p["prompt_id"] for p in a.prompts}
        running = a.executed[0]
        deadline = time.monotonic() + 15
        while running not in a.interrupted and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running in a.interrupted, err[-2000:]
        # Nothing of ours is left on the server: the other prompt never ran or was stopped.
        assert set(a.executed) <= set(a.interrupted) and set(a.executed) <= ours
        queue = httpx.get(f"{a.url}/queue", timeout=5).json()
        assert queue == {"queue_running": [], "queue_pending": []}
