"""The producer's contract, from the command line: a generative render lands in the usage
ledger (``usage --by provider``), a project whose budget is spent and says ``refuse`` is
refused before a prompt is sent, and a plan that says ``rebalance_required`` renders only with
``--allow-rebalance``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from anime_pipeline_tests.conftest import minimal_episode, tiny_png
from anime_pipeline_tests.support.comfyui_double import ComfyDouble
from anime_pipeline_tests.support.farm import render_backends_yaml

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(DAGSTER_HOME=str(tmp_path / "dagster_home"),
               ANIME_PIPELINE_HOME=str(tmp_path / "home"),
               ANIME_PIPELINE_STORAGE=str(tmp_path / "artifacts"))
    env.pop("ANIME_PIPELINE_LEDGER_URL", None)
    return env


def _cli(*args: str, env: dict[str, str], timeout: float = 300
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anime_pipeline.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_usage_then_a_refused_render_then_the_budget_raised(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    home = tmp_path / "home"
    home.mkdir()
    env = _env(tmp_path)
    with ComfyDouble(work_dir=tmp_path / "a", node_latency_s=0.05) as a:
        (home / "render_backends.yaml").write_text(render_backends_yaml(a, max_inflight=2),
                                                   encoding="utf-8")
        done = _cli("render", str(folder), "--json", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        prompts = len(a.prompts)

        usage = _cli("usage", "--by", "provider", "--json", env=env)
        assert usage.returncode == 0, usage.stderr
        [row] = json.loads(usage.stdout)["rows"]
        assert row["group"] == "comfyui_i2v" and row["calls"] == prompts == 2
        assert row["amounts"]["gpu_sec"] > 0 and row["cost"] > 0
        table = _cli("usage", "--by", "user", "--project", "moonlit-courier", env=env)
        assert table.returncode == 0 and "gpu_min" in table.stdout, table.stderr

        # A clip that is current costs nothing: a re-render is never refused.
        assert _cli("budget", "set", "--tenant", "studio-a", "--project", "moonlit-courier",
                    "--gpu-minutes", "0.001", "--on-exceed", "refuse",
                    env=env).returncode == 0
        assert _cli("render", str(folder), "--json", env=env).returncode == 0
        assert len(a.prompts) == prompts
        # S01's keyframe changes: it must render again, and the project has spent more than
        # its 0.001 GPU minutes: refused, before a prompt is sent.
        (folder / "keyframes" / "S01.png").write_bytes(tiny_png(64, 36, b"\x00\xff\x00"))
        shown = json.loads(_cli("budget", "show", "--json", env=env).stdout)
        assert shown[0]["exceeded"] is True and shown[0]["on_exceed"] == "refuse"
        refused = _cli("render", str(folder), "--json", env=env)
        assert refused.returncode == 1
        assert "refused before rendering: budget of studio-a/moonlit-courier" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert len(a.prompts) == prompts  # nothing was sent
        # The refused run's shots were never tried: no render failures for the monitor.
        from anime_pipeline.defs.runtime import clip_render_stats
        from anime_pipeline.instance import open_instance

        with open_instance(tmp_path / "dagster_home") as instance:
            stats = clip_render_stats(instance, since=0.0)
        assert stats.failed == 0 and stats.succeeded == 2, stats

        # ``--allow-rebalance`` is not a budget override; raising the budget is.
        assert _cli("budget", "set", "--tenant", "studio-a", "--project", "moonlit-courier",
                    "--gpu-minutes", "100", "--on-exceed", "refuse", env=env).returncode == 0
        again = _cli("render", str(folder), "--json", env=env)
        assert again.returncode == 0, again.stderr[-2000:]
    assert len(a.prompts) == prompts + 1  # S01 only; S02 is reused
    [after] = json.loads(_cli("usage", "--json", env=env).stdout)["rows"]
    assert after["calls"] == prompts + 1


def test_a_plan_that_does_not_fit_renders_only_when_the_user_says_so(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    (folder / "creative_control.yaml").write_text("budget: {max_gpu_minutes: 0.0001}\n",
                                                  encoding="utf-8")
    env = _env(tmp_path)
    refused = _cli("render", str(folder), env=env)
    assert refused.returncode == 1
    assert "rebalance_required" in refused.stderr and "--allow-rebalance" in refused.stderr
    assert "Traceback" not in refused.stderr
    from anime_pipeline.defs.runtime import clip_render_stats
    from anime_pipeline.instance import open_instance

    with open_instance(tmp_path / "dagster_home") as instance:
        assert clip_render_stats(instance, since=0.0).failed == 0  # refused, not failed
    done = _cli("render", str(folder), "--allow-rebalance", "--json", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["plan_status"] == "rebalance_required"


def test_a_render_that_crosses_its_budget_alerts_once_without_a_daemon(tmp_path: Path) -> None:
    from anime_pipeline_tests.support.webhook import Receiver

    folder = minimal_episode(tmp_path / "ep")
    with Receiver() as hook:
        env = {**_env(tmp_path), "ANIME_PIPELINE_WEBHOOK_URL": hook.url}
        assert _cli("budget", "set", "--tenant", "studio-a", "--project", "moonlit-courier",
                    "--gpu-minutes", "0.001", "--on-exceed", "alert", env=env).returncode == 0
        done = _cli("render", str(folder), env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        (folder / "keyframes" / "S01.png").write_bytes(tiny_png(64, 36, b"\x00\xff\x00"))
        again = _cli("render", str(folder), env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        hook.wait_for(4)
        texts = hook.texts()
    budget = [t for t in texts if "budget" in t.lower()]
    assert len(budget) == 2, texts  # 80 % and 100 %, once in the period, over two renders
    assert any("80" in t for t in budget) and any("100" in t for t in budget)
    assert sum("delivered" in t.lower() for t in texts) == 2, texts
