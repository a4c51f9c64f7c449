"""What goes into the delivery ZIP: by default the keyframes and the review report too; the
project's setting (``review package``) and an episode's ``package:`` in creative_control.yaml
change it; a bad value is refused with the file and field named (an unknown part warns, as
every unknown key of the contract does)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from anime_pipeline_tests.conftest import minimal_episode
from anime_pipeline_tests.e2e.test_budget_e2e import _cli, _env

pytestmark = pytest.mark.slow

EP = "studio-a/moonlit-courier/ep99"


def _names(tmp_path: Path) -> set[str]:
    zip_path = tmp_path / "artifacts" / EP / "delivery" / "ep99_delivery.zip"
    with zipfile.ZipFile(zip_path) as zf:
        return set(zf.namelist())


def test_package_parts(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    env = _env(tmp_path)
    assert _cli("render", str(folder), env=env).returncode == 0
    names = _names(tmp_path)
    assert {"keyframes/S01.png", "keyframes/S02.png", "review_report.json", "ep99.mp4",
            "clips/S01.mp4", "manifests/shot_plan.json", "subtitles/ep99.srt"} <= names
    zip_path = tmp_path / "artifacts" / EP / "delivery" / "ep99_delivery.zip"
    with zipfile.ZipFile(zip_path) as zf:
        report = json.loads(zf.read("review_report.json"))
        manifest = json.loads(zf.read("manifest.json"))
    assert [(s["shot_id"], s["state"]) for s in report["shots"]] == [
        ("S01", "in_review"), ("S02", "in_review")]
    assert {f["kind"] for f in manifest["files"]} >= {"keyframe", "report"}

    # The project drops the clips and the keyframes.
    changed = _cli("review", "package", "--tenant", "studio-a", "--project", "moonlit-courier",
                   "clips=off", "keyframes=off", env=env)
    assert changed.returncode == 0 and "clips=off" in changed.stdout, changed.stderr
    assert _cli("review", "package", "--tenant", "studio-a", "--project", "moonlit-courier",
                "bakery=on", env=env).returncode == 2
    assert _cli("render", str(folder), env=env).returncode == 0
    names = _names(tmp_path)
    assert not any(n.startswith(("clips/", "keyframes/")) for n in names)
    assert "review_report.json" in names and "ep99.mp4" in names

    # The episode's own creative_control.yaml wins over the project's setting.
    (folder / "creative_control.yaml").write_text(
        "package: {review_report: false, keyframes: true}\n", encoding="utf-8")
    assert _cli("render", str(folder), env=env).returncode == 0
    names = _names(tmp_path)
    assert "keyframes/S01.png" in names and "clips/S01.mp4" in names  # defaults for the rest
    assert "review_report.json" not in names

    (folder / "creative_control.yaml").write_text("package: {bakery: true}\n", encoding="utf-8")
    checked = _cli("validate", str(folder), env=env)  # the contract: unknown keys warn
    assert checked.returncode == 0
    assert "creative_control.yaml: package.bakery: unknown field" in checked.stderr
    (folder / "creative_control.yaml").write_text("package: {clips: maybe}\n",
                                                  encoding="utf-8")
    refused = _cli("validate", str(folder), env=env)
    assert refused.returncode == 1
    assert "creative_control.yaml" in refused.stderr and "package.clips" in refused.stderr
