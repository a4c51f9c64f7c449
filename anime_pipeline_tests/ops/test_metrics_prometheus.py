"""A real Prometheus scrapes ``anime-pipeline metrics serve``: it sees the clips and usage on
the instance and the ledger, what another process writes while it runs, and the same values
with no counter reset after the server restarts; every dashboard query is valid PromQL to it."""

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from anime_pipeline.instance import open_instance
from anime_pipeline.ledger import Ledger, UsageEntry, default_url
from anime_pipeline_tests.ops.test_metrics import clip, report
from anime_pipeline_tests.ops.test_metrics_deploy import DASHBOARD, dashboard_queries

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="the prometheus binary is not installed "
                       "(Debian package prometheus; .ci/system-deps installs it)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(what: str, probe: Callable[[], Any], timeout: float, log: Path | None = None) -> Any:
    """``probe()`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as e:  # not listening yet
            last = e
        if last:
            return last
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})\n{tail}")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            pytest.fail(f"process {proc.pid} ignored SIGTERM for {timeout:.0f} s")
    return int(proc.returncode)


@contextmanager
def _started(args: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _query(prom_port: int, expr: str) -> dict[str, Any]:
    url = (f"http://127.0.0.1:{prom_port}/api/v1/query?"
           + urllib.parse.urlencode({"query": expr}))
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as e:  # a bad query: 400 with the error in the body
        return dict(json.loads(e.read()))


def _values(prom_port: int, expr: str, label: str) -> dict[str, float]:
    body = _query(prom_port, expr)
    assert body["status"] == "success", body
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in body["data"]["result"]}


def test_a_real_prometheus_scrapes_the_metrics_server(tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    dagster_home, home = tmp_path / "dagster_home", tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "ANIME_PIPELINE_LEDGER_URL"}
    env.update(DAGSTER_HOME=str(dagster_home), ANIME_PIPELINE_HOME=str(home),
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    ledger = Ledger(default_url(home))

    def usage(shot: str, gpu_sec: float) -> UsageEntry:
        return UsageEntry(tenant="studio-a", project="moonlit", episode="ep01", shot=shot,
                          run_id="r1", attempt=1, provider="comfyui", unit="gpu_sec",
                          amount=gpu_sec, at=dt.datetime.now(dt.UTC))

    with open_instance(dagster_home) as instance:  # history before the server starts
        report(instance, clip("S01", seconds=1.5))
        report(instance, clip("S02", seconds=4.0))
        report(instance, clip("S03", "placeholder", backend="placeholder", seconds=0.3))
    ledger.record([usage("S01", 30.0), usage("S02", 12.5)])

    port, prom_port = _free_port(), _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: anime-pipeline\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n", encoding="utf-8")
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "config", str(config)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
    serve = [sys.executable, "-m", "anime_pipeline.cli", "metrics", "serve",
             "--host", "127.0.0.1", "--port", str(port)]
    server_log, prom_log = tmp_path / "metrics.log", tmp_path / "prometheus.log"

    def listening() -> bool:
        return f"serving http://127.0.0.1:{port}/metrics" in server_log.read_text()

    with _started(serve, server_log, env) as server, \
            _started([PROMETHEUS, f"--config.file={config}",
                      f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                     prom_log, env) as prometheus:
        _until("the metrics server to listen", listening, 120, server_log)
        _until("prometheus to answer", lambda: _query(prom_port, "1")["status"] == "success",
               60, prom_log)

        def clips() -> dict[str, float]:
            return _values(prom_port, "anime_pipeline_clips_total", "status")

        got = _until("prometheus to see the clips",
                     lambda: (v := clips()) and v.get("ok") == 2 and v, 60, prom_log)
        assert got == {"ok": 2, "degraded": 0, "placeholder": 1, "failed": 0}
        print("\nanime_pipeline_clips_total:",
              json.dumps(_query(prom_port, "anime_pipeline_clips_total"), indent=1))
        assert _values(prom_port, "anime_pipeline_usage_total", "provider") == {"comfyui": 42.5}

        # another process writes while the server runs: the next scrape has it
        with open_instance(dagster_home) as instance:
            report(instance, clip("S04", "degraded", seconds=45.0))
        ledger.record([usage("S04", 7.5)])
        _until("the degraded clip", lambda: clips().get("degraded") == 1, 60, prom_log)
        _until("the new usage", lambda: _values(
            prom_port, "anime_pipeline_usage_total", "provider") == {"comfyui": 50.0}, 60)
        p95 = _values(prom_port, "histogram_quantile(0.95, sum by (le, backend) "
                      "(anime_pipeline_clip_render_seconds_bucket))", "backend")
        assert 2.5 < p95["animatic"] <= 60.0

        # every dashboard query is valid PromQL, and the dashboard's values are there
        for q in dashboard_queries(json.loads(DASHBOARD.read_text(encoding="utf-8"))):
            expr = (q.replace("$__rate_interval", "1m").replace("$__range", "5m")
                    .replace("$tenant", ".*").replace("$project", ".*"))
            body = _query(prom_port, expr)
            assert body["status"] == "success", (expr, body)
        assert _values(prom_port, "anime_pipeline_queue_backlog", "kind") == {"runs": 0,
                                                                              "shots": 0}

        # a restart changes nothing Prometheus sees: same values, no counter reset
        assert _stop(server) == 0
        assert "metrics: stopped" in server_log.read_text()
        restarted_at = time.time()
        with _started(serve, server_log, env) as again:
            _until("the restarted server", lambda: server_log.read_text().count(
                f"serving http://127.0.0.1:{port}/metrics") == 2, 120, server_log)
            _until("a scrape of the restarted server", lambda: _values(
                prom_port, 'timestamp(anime_pipeline_clips_total{status="ok"})', "status")
                .get("ok", 0) > restarted_at + 1, 60, prom_log)
            assert clips() == {"ok": 2, "degraded": 1, "placeholder": 1, "failed": 0}
            resets = _values(prom_port, "resets(anime_pipeline_clips_total[5m])", "status")
            assert set(resets.values()) == {0.0}, resets
            assert _stop(again) == 0
        assert _stop(prometheus) == 0
