"""`dagster dev` from the project folder loads the code location, serves the graph, says which
instance it uses, and shows the runs `anime-pipeline render` made from another folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from anime_pipeline_tests.conftest import minimal_episode

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_dagster_dev_serves_the_asset_graph(tmp_path: Path) -> None:
    port = _free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1",
           "ANIME_PIPELINE_HOME": str(tmp_path / "home"),
           "ANIME_PIPELINE_STORAGE": str(tmp_path / "artifacts")}
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    dagster = Path(sys.executable).with_name("dagster")
    log = tmp_path / "dagster-dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 120
        nodes = None
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"dagster dev exited: {log.read_text()[-2000:]}")
            try:
                data = _graphql(port, "{ assetNodes { assetKey { path } isPartitioned "
                                      "dependencyKeys { path } } }")
                nodes = data.get("data", {}).get("assetNodes")
                if nodes:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert nodes, "the UI never served the asset graph"
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        assert {"shot_plan", "audio_event_manifest", "shot_compute_budget_plan", "clips",
                "composite", "package_zip"} <= set(by_key)
        assert by_key["clips"]["isPartitioned"]
        assert {"path": ["clips"]} in by_key["composite"]["dependencyKeys"]
        announce = f"anime_pipeline: instance {home}"
        until = time.time() + 60  # the code server's output reaches the log on its own pace
        while announce not in log.read_text() and time.time() < until:
            time.sleep(1)
        assert announce in log.read_text(), log.read_text()[-3000:]
        # A render started from another folder lands on the instance the UI shows.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        folder = minimal_episode(tmp_path / "ep99")
        cli = subprocess.run([sys.executable, "-m", "anime_pipeline.cli", "render",
                              str(folder)], cwd=elsewhere, env=env, capture_output=True,
                             text=True, timeout=300)
        assert cli.returncode == 0, cli.stderr[-2000:]
        assert f"instance: {home}" in cli.stderr
        runs = _graphql(port, "{ runsOrError { ... on Runs { results { jobName status } } } }")
        jobs = sorted(r["jobName"] for r in runs["data"]["runsOrError"]["results"])
        assert jobs == ["deliver_episode", "plan_episode", "render_clips"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
