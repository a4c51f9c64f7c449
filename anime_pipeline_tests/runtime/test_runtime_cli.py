"""`profile` and `runtime status|degrade|restore|reload`, called through the CLI entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anime_pipeline.runtime.cli import main
from anime_pipeline.runtime.monitor import StateStore
from anime_pipeline.runtime.profile import RuntimeProfile
from anime_pipeline.runtime.state import policy_in_force
from anime_pipeline.runtime.testing import make_profile


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANIME_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANIME_PIPELINE_BACKENDS", raising=False)
    return tmp_path / "home"


def test_profile_text_json_and_save(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["profile", "--lang", "en"]) == 0
    out = capsys.readouterr().out
    assert "What was found:" in out and "What would improve it:" in out

    assert main(["profile", "--lang", "zh"]) == 0
    assert "检测结果：" in capsys.readouterr().out

    target = tmp_path / "p.json"
    assert main(["profile", "--json", "--save", str(target)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["profile_class"] in {
        "LOCAL_GPU_HIGH", "LOCAL_GPU_MID", "LOCAL_GPU_LOW", "LOCAL_CPU_ONLY", "CLOUD_HYBRID"
    }  # fmt: skip
    assert RuntimeProfile.load(target).profile_class == data["profile_class"]


def test_bad_usage_exits_2(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--lang", "fr"]) == 2
    assert main(["runtime"]) == 2
    assert main(["runtime", "degrade"]) == 2  # --reason is required
    capsys.readouterr()


def test_status_degrade_restore(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_profile(vram_gib=[8.0]).save(home / "runtime_profile.json")

    assert main(["runtime", "status"]) == 0
    out = capsys.readouterr().out
    assert "LOCAL_GPU_MID/baseline" in out and "has not sampled" in out

    assert main(["runtime", "degrade", "--reason", "client review tonight"]) == 0
    out = capsys.readouterr().out
    assert "DEGRADED (level 1)" in out and "client review tonight" in out
    assert policy_in_force(home).encoder == "libx264"  # GPU → CPU, persisted
    assert StateStore(home).load().manual_hold

    assert main(["runtime", "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policy"]["degraded"] is True and data["monitor"]["manual_hold"] is True
    assert data["monitor"]["steps"][0]["source"] == "manual"

    assert main(["runtime", "status", "--lang", "zh"]) == 0
    out = capsys.readouterr().out
    assert "已降级" in out and "手动降级" in out

    assert main(["runtime", "degrade", "--reason", "  "]) == 1
    assert "must not be empty" in capsys.readouterr().err

    assert main(["runtime", "restore"]) == 0
    assert "LOCAL_GPU_MID/baseline" in capsys.readouterr().out
    assert not policy_in_force(home).degraded
    assert main(["runtime", "restore"]) == 0
    assert "Already at the baseline" in capsys.readouterr().out


def test_reload_redetects(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_profile(vram_gib=[24.0]).save(home / "runtime_profile.json")
    assert policy_in_force(home).profile_class == "LOCAL_GPU_HIGH"
    assert main(["runtime", "reload", "--json", "--state-dir", str(home)]) == 0
    data = json.loads(capsys.readouterr().out)
    real = RuntimeProfile.load(home / "runtime_profile.json")
    assert data["profile_class"] == real.profile_class.value
    assert real.os.hostname != "t"  # the synthetic profile was replaced by a real detection


def test_unwritable_state_is_an_error(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_profile().save(home / "runtime_profile.json")
    (home / "runtime_state.json").mkdir()  # a folder where the state file should be
    assert main(["runtime", "degrade", "--reason", "test"]) == 1
    assert "error:" in capsys.readouterr().err
