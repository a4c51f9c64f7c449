"""The episode contract: every rule refused with file, field path and reason; nothing written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from anime_pipeline.cli import main
from anime_pipeline.domain.episode import (
    EpisodeValidationError,
    load_episode,
)
from anime_pipeline_tests.conftest import minimal_episode


def _edit(folder: Path, fn: Any) -> None:
    doc = yaml.safe_load((folder / "episode.yaml").read_text(encoding="utf-8"))
    fn(doc)
    (folder / "episode.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True),
                                         encoding="utf-8")


def _problems(folder: Path) -> list[str]:
    with pytest.raises(EpisodeValidationError) as exc:
        load_episode(folder)
    return [str(p) for p in exc.value.problems]


def test_valid_episode_loads(episode_dir: Path) -> None:
    bundle = load_episode(episode_dir)
    ep = bundle.episode
    assert ep.key == "studio-a/moonlit-courier/ep99"
    assert ep.duration_ms == 1500
    assert ep.shot_starts_ms() == {"S01": 0, "S02": 1000}
    assert ep.shots[0].camera.strength == 0.3  # default
    assert ep.shots[1].criticality.value == "critical"
    assert bundle.creative.mode.value == "standard"  # no creative_control.yaml: defaults


CASES: list[tuple[str, Any, str]] = [
    ("bad tenant", lambda d: d.update(tenant_id="Studio A"), "episode.yaml: tenant_id:"),
    ("bad schema", lambda d: d.update(schema_version="2.0"), "episode.yaml: schema_version:"),
    ("no shots", lambda d: d.update(shots=[]), "episode.yaml: shots:"),
    ("odd width", lambda d: d["format"].update(width=321), "episode.yaml: format.width:"),
    ("missing audio", lambda d: d.pop("audio"), "episode.yaml: audio: required field"),
    ("shot too short", lambda d: d["shots"][1].update(duration_ms=199),
     "episode.yaml: shots[1].duration_ms:"),
    ("shot too long", lambda d: d["shots"][1].update(duration_ms=120_001),
     "episode.yaml: shots[1].duration_ms:"),
    ("bad type", lambda d: d["shots"][0].update(type="fight"), "episode.yaml: shots[0].type:"),
    ("bad shot id", lambda d: d["shots"][0].update(id="S 01"), "episode.yaml: shots[0].id:"),
    ("duplicate id", lambda d: d["shots"][1].update(id="S01"),
     "episode.yaml: shots[1].id: duplicate shot id 'S01'"),
    ("bad move", lambda d: d["shots"][0]["camera"].update(move="dolly"),
     "episode.yaml: shots[0].camera.move:"),
    ("strength > 1", lambda d: d["shots"][0]["camera"].update(strength=1.5),
     "episode.yaml: shots[0].camera.strength:"),
    ("dialogue past shot", lambda d: d["shots"][0]["dialogue"][0].update(end_ms=1001),
     "episode.yaml: shots[0].dialogue[0].end_ms: 1001 ms is past the end of shot S01"),
    ("dialogue reversed", lambda d: d["shots"][0]["dialogue"][0].update(start_ms=950),
     "episode.yaml: shots[0].dialogue[0]: end_ms (900) must be after start_ms (950)"),
    ("no keyframe no source", lambda d: d["shots"][0].pop("keyframe"),
     "episode.yaml: shots[0]: keyframe is required unless source is given"),
    ("dotdot", lambda d: d["shots"][0].update(keyframe="../outside.png"),
     "episode.yaml: shots[0].keyframe: '../outside.png': '..' is not allowed"),
    ("absolute", lambda d: d["shots"][0].update(keyframe="/etc/passwd"),
     "episode.yaml: shots[0].keyframe: '/etc/passwd': absolute paths are not allowed"),
    ("missing file", lambda d: d["shots"][0].update(keyframe="keyframes/nope.png"),
     "episode.yaml: shots[0].keyframe: 'keyframes/nope.png': file not found"),
    ("ftp source", lambda d: d["shots"][0].update(source={"uri": "ftp://x/y.mp4"}),
     "episode.yaml: shots[0].source.uri: 'ftp://x/y.mp4': only http(s)://"),
    ("negative in_ms", lambda d: d["shots"][0].update(
        source={"uri": "https://example.invalid/a.mp4", "in_ms": -5}),
     "episode.yaml: shots[0].source.in_ms:"),
    # fps below 1 used to be accepted (rendering then failed)
    ("fps below 1", lambda d: d["format"].update(fps=0.5), "episode.yaml: format.fps:"),
    # milliseconds are YAML integers: 900.0 used to be coerced (and skip the shot rule)
    ("float end_ms", lambda d: d["shots"][0]["dialogue"][0].update(end_ms=900.0),
     "episode.yaml: shots[0].dialogue[0].end_ms: 900.0 is not an integer"),
    ("string duration_ms", lambda d: d["shots"][1].update(duration_ms="500"),
     "episode.yaml: shots[1].duration_ms: '500' is not an integer"),
    ("trailing slash", lambda d: d.update(audio="audio/mix.wav/"),
     "episode.yaml: audio: 'audio/mix.wav/': must name a file"),
    ("url-like path", lambda d: d.update(audio="concat:audio/mix.wav"),
     "episode.yaml: audio: 'concat:audio/mix.wav': URLs are not allowed"),
]


@pytest.mark.parametrize("name,edit,expected", CASES, ids=[c[0] for c in CASES])
def test_each_rule_is_refused_with_file_and_field(
    episode_dir: Path, name: str, edit: Any, expected: str
) -> None:
    _edit(episode_dir, edit)
    problems = _problems(episode_dir)
    assert any(p.startswith(expected) for p in problems), problems


def test_every_problem_is_reported_at_once(episode_dir: Path) -> None:
    def many(d: dict[str, Any]) -> None:
        d["tenant_id"] = "BAD"
        d["shots"][1]["id"] = "S01"
        d["shots"][0]["dialogue"][0]["end_ms"] = 5000
        d["shots"][1]["type"] = "nope"

    _edit(episode_dir, many)
    problems = _problems(episode_dir)
    assert len(problems) == 4, problems


def test_symlink_leaving_the_folder_is_refused(episode_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    outside.write_bytes((episode_dir / "keyframes" / "S01.png").read_bytes())
    os.symlink(outside, episode_dir / "keyframes" / "link.png")
    _edit(episode_dir, lambda d: d["shots"][0].update(keyframe="keyframes/link.png"))
    assert any("resolves outside the episode folder" in p for p in _problems(episode_dir))


def test_keyframe_must_be_an_image(episode_dir: Path) -> None:
    (episode_dir / "keyframes" / "S01.png").write_text("not an image")
    assert any("not a PNG, JPEG or WebP" in p for p in _problems(episode_dir))


def test_webp_and_jpeg_magic_accepted(episode_dir: Path) -> None:
    (episode_dir / "keyframes" / "a.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    (episode_dir / "keyframes" / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0rest")
    _edit(episode_dir, lambda d: (d["shots"][0].update(keyframe="keyframes/a.webp"),
                                  d["shots"][1].update(keyframe="keyframes/b.jpg")))
    load_episode(episode_dir)


def test_http_source_needs_no_keyframe(episode_dir: Path) -> None:
    _edit(episode_dir, lambda d: (d["shots"][1].pop("keyframe"), d["shots"][1].update(
        source={"uri": "https://cdn.example.invalid/ep/take.m3u8", "in_ms": 100})))
    shot = load_episode(episode_dir).episode.shots[1]
    assert shot.source is not None and shot.source.is_remote


def test_broken_yaml_names_line(episode_dir: Path) -> None:
    (episode_dir / "episode.yaml").write_text("tenant_id: [unclosed\n", encoding="utf-8")
    problems = _problems(episode_dir)
    # The field being read when the syntax error was found comes first, then line/column.
    assert problems[0].startswith("episode.yaml: tenant_id: invalid YAML: line 2, column 1:")


def test_missing_episode_yaml(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert _problems(tmp_path / "empty") == ["episode.yaml: required file is missing"]


def test_episode_yaml_that_is_a_directory_says_so(tmp_path: Path) -> None:
    (tmp_path / "ep" / "episode.yaml").mkdir(parents=True)
    assert _problems(tmp_path / "ep") == [
        "episode.yaml: must be a regular file, not a directory"]


def test_creative_control_is_validated(episode_dir: Path) -> None:
    (episode_dir / "creative_control.yaml").write_text(yaml.safe_dump({
        "mode": "rush", "global_profile": "ULTRA", "budget": {"max_gpu_minutes": -1},
        "sla": {"deadline": "2026-12-01T12:00:00"}, "style": {"min_fps": 0},
        "feature_flags": {"enable_dynamic_fps": "maybe"},
    }))
    problems = _problems(episode_dir)
    for field in ("mode", "global_profile", "budget.max_gpu_minutes", "sla.deadline",
                  "style.min_fps", "feature_flags.enable_dynamic_fps"):
        assert any(p.startswith(f"creative_control.yaml: {field}:") for p in problems), (
            field, problems)


def test_creative_control_full_example_accepted(episode_dir: Path) -> None:
    (episode_dir / "creative_control.yaml").write_text(
        "mode: preview\nglobal_profile: MEDIUM\nbudget:\n  max_gpu_minutes: 38\n"
        "sla:\n  deadline: \"2026-12-01T12:00:00Z\"\nstyle:\n  prefer_smooth_motion: true\n"
        "  min_fps: 8\nfeature_flags:\n  enable_shot_level_budget: false\n")
    cc = load_episode(episode_dir).creative
    assert cc.mode.value == "preview" and cc.budget.max_gpu_minutes == 38
    assert cc.feature_flags.enable_shot_level_budget is False
    assert cc.feature_flags.enable_dynamic_fps is True


def test_unknown_fields_are_warnings_not_errors(episode_dir: Path) -> None:
    _edit(episode_dir, lambda d: d["shots"][0].update(lens="35mm"))
    bundle = load_episode(episode_dir)
    assert [str(w) for w in bundle.warnings] == [
        "episode.yaml: shots[0].lens: unknown field (ignored)"]
    # ignored means dropped: unknown keys never reach model_dump() (shot_plan.json)
    assert "lens" not in bundle.episode.shots[0].model_dump()


def test_cli_validate_prints_one_line_per_problem_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = minimal_episode(tmp_path / "bad")
    _edit(folder, lambda d: (d["shots"][1].update(id="S01"), d.update(episode_id="EP")))
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["validate", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"episode {folder} refused (2 problem(s))")
    assert "episode.yaml: episode_id:" in err[1]
    assert "episode.yaml: shots[1].id: duplicate shot id 'S01'" in err[2]
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_cli_validate_ok(episode_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(episode_dir)]) == 0
    assert capsys.readouterr().out.startswith("OK studio-a/moonlit-courier/ep99: 2 shots")


def test_cli_render_refuses_bad_episode_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = minimal_episode(tmp_path / "bad")
    _edit(folder, lambda d: d["shots"][0].update(duration_ms=10))
    assert main(["render", str(folder)]) == 1
    assert "shots[0].duration_ms" in capsys.readouterr().err
    assert not (tmp_path / "artifacts").exists()
