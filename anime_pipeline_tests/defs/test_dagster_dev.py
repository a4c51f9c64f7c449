"""`dagster dev` from the project folder loads the code location and serves the graph."""

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

ROOT = Path(__file__).resolve().parents[2]


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
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen([str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        nodes = None
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"dagster dev exited: {proc.stdout.read().decode()[-2000:]}")  # type: ignore[union-attr]
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
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
