"""``render_backends.yaml`` and workflow templates: the user's contract, refused loudly when
broken (file and field named), and checked against what a server has installed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from anime_pipeline.backends.comfyui.templates import (
    Limits,
    TemplateError,
    TemplateMismatch,
    bundled_templates,
    check_against,
    load_template,
)
from anime_pipeline.backends.config import (
    BACKENDS_ENV,
    BACKENDS_FILE_ENV,
    BackendsConfigError,
    load_backends,
    parse_backends,
)
from anime_pipeline_tests.support.comfyui_double import ComfyDouble

ISSUE_EXAMPLE = """\
comfyui_i2v:                 # the backend name the planner uses
  kind: comfyui
  workflow: weightfree_i2v   # a bundled template name, or a path to a template file
  servers:
    - url: http://127.0.0.1:8188
      max_inflight: 2
    - url: http://127.0.0.1:8189
  requests_per_second: 5     # token bucket per server (optional)
"""


def test_the_documented_example_parses() -> None:
    config = parse_backends(ISSUE_EXAMPLE)
    b = config.backends["comfyui_i2v"]
    assert b.workflow == "weightfree_i2v" and b.requests_per_second == 5
    assert [(s.url, s.max_inflight) for s in b.servers] == [
        ("http://127.0.0.1:8188", 2), ("http://127.0.0.1:8189", 1)]
    assert config.urls() == {"comfyui_i2v": ["http://127.0.0.1:8188", "http://127.0.0.1:8189"]}


@pytest.mark.parametrize(("text", "expected"), [
    ("comfyui_i2v: {kind: comfyui, workflow: w, servers: [{url: ftp://x}]}",
     "comfyui_i2v.servers[0].url: 'ftp://x': must be an http(s) URL"),
    ("comfyui_i2v: {kind: comfyui, workflow: w, servers: [{url: 'http://a', max_inflight: 0}]}",
     "comfyui_i2v.servers[0].max_inflight"),
    ("comfyui_i2v: {kind: comfyui, workflow: w, servers: []}", "comfyui_i2v.servers"),
    ("comfyui_i2v: {kind: comfyui, workflow: w, servers: [{url: 'http://a'}], gpus: 3}",
     "comfyui_i2v.gpus: Extra inputs are not permitted"),
    ("comfyui_i2v: {kind: runway, workflow: w, servers: [{url: 'http://a'}]}",
     "comfyui_i2v.kind"),
    ("comfyui_i2v: {kind: comfyui, workflow: w, servers: [{url: 'http://a'}, {url: 'http://a/'}]}",
     "servers listed twice: ['http://a']"),
    ("animatic: {kind: comfyui, workflow: w, servers: [{url: 'http://a'}]}",
     "animatic: is a local backend"),
    ("Bad-Name: {}", "'Bad-Name': a backend name is"),
    ("- a\n- b\n", "must be a mapping of backend names"),
    ("a: &a [1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
     "render_backends.yaml: "),
])
def test_a_broken_file_names_the_file_and_the_field(text: str, expected: str) -> None:
    with pytest.raises(BackendsConfigError) as e:
        parse_backends(text, source="/studio/render_backends.yaml")
    assert str(e.value).startswith("/studio/render_backends.yaml")
    assert expected.replace("render_backends.yaml: ", "") in str(e.value)


def test_a_name_the_planner_never_uses_is_probed_but_noted() -> None:
    config = parse_backends("my_farm: {kind: comfyui, workflow: w, servers: [{url: 'http://a'}]}")
    assert "my_farm" in config.urls()
    assert "not a backend the budgeter plans for" in config.notes[0]


def test_the_file_is_found_in_the_home_or_where_the_variable_says(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert load_backends(home, {}).backends == {}
    (home / "render_backends.yaml").write_text(ISSUE_EXAMPLE, encoding="utf-8")
    assert "comfyui_i2v" in load_backends(home, {}).backends
    other = tmp_path / "farm.yaml"
    other.write_text(ISSUE_EXAMPLE.replace("comfyui_i2v", "wan_i2v"), encoding="utf-8")
    config = load_backends(home, {BACKENDS_FILE_ENV: str(other)})
    assert list(config.backends) == ["wan_i2v"] and config.source == str(other)


def test_the_old_variable_alone_says_what_to_write(tmp_path: Path) -> None:
    config = load_backends(tmp_path, {BACKENDS_ENV: "comfyui_i2v=http://127.0.0.1:8188"})
    assert config.backends == {}
    assert "render_backends.yaml" in config.notes[0] and "kind and a workflow" in config.notes[0]


def test_files_that_are_not_text_or_too_big_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "render_backends.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(BackendsConfigError, match="not UTF-8"):
        load_backends(tmp_path, {})
    path.write_text("#" * (300 * 1024), encoding="utf-8")
    with pytest.raises(BackendsConfigError, match="more than"):
        load_backends(tmp_path, {})
    path.unlink()
    path.mkdir()
    with pytest.raises(BackendsConfigError, match="not a regular file"):
        load_backends(tmp_path, {})


# --------------------------------------------------------------------------- templates


def test_the_bundled_templates_load() -> None:
    assert bundled_templates() == ["hunyuan_i2v", "wan_i2v", "weightfree_i2v"]
    for name in bundled_templates():
        t = load_template(name)
        assert t.output in t.graph and t.inputs["image"] and t.inputs["seed"]


@pytest.mark.parametrize(("limits", "wanted", "asked", "longest"), [
    (Limits(), 37, 37, 1000),
    (Limits(frames_step=4, frames_offset=1, max_frames=81), 37, 37, 81),  # Wan: 4k + 1
    (Limits(frames_step=4, frames_offset=1, max_frames=81), 38, 41, 81),
    (Limits(frames_step=4, frames_offset=1, max_frames=129, frames_dropped=4), 37, 41, 125),
])
def test_frame_counts_follow_the_models_rules(limits: Limits, wanted: int, asked: int,
                                              longest: int) -> None:
    assert limits.frames_for(wanted) == asked
    assert limits.max_output_frames == longest


def test_a_users_template_by_path_relative_to_the_config(tmp_path: Path) -> None:
    src = load_template("weightfree_i2v").source
    (tmp_path / "studio.yaml").write_text(Path(src).read_text(encoding="utf-8").replace(
        "name: weightfree_i2v", "name: studio_look"), encoding="utf-8")
    assert load_template("studio.yaml", relative_to=tmp_path).name == "studio_look"
    assert load_template(str(tmp_path / "studio.yaml")).name == "studio_look"


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.replace('output: "6"', 'output: "9"'), "output: node '9' is not in the graph"),
    (lambda t: t.replace('  seed: ["4.seed"]\n', ""), "['seed'] must each name"),
    (lambda t: t.replace('["4.seed"]', '["8.seed"]'), "inputs.seed: '8.seed' is not"),
    (lambda t: t.replace("max_frames: 4096", "max_frames: 0"), "limits.max_frames"),
    (lambda t: t + "\nsurprise: 1\n", "surprise: Extra inputs are not permitted"),
    (lambda t: "[" * 100, "user_look.yaml: "),
])
def test_a_broken_template_names_the_file_and_the_field(
        tmp_path: Path, change: Callable[[str], str], expected: str) -> None:
    text = Path(load_template("weightfree_i2v").source).read_text(encoding="utf-8")
    path = tmp_path / "user_look.yaml"
    path.write_text(change(text), encoding="utf-8")
    with pytest.raises(TemplateError) as e:
        load_template(str(path))
    assert str(e.value).startswith(str(path)) and expected in str(e.value)


def test_an_unknown_template_lists_the_bundled_ones() -> None:
    with pytest.raises(TemplateError, match="neither a bundled template .*weightfree_i2v"):
        load_template("does_not_exist")


def test_templates_are_checked_against_what_the_server_has(tmp_path: Path) -> None:
    bare = ComfyDouble(work_dir=tmp_path / "bare")
    models = ComfyDouble(work_dir=tmp_path / "models", model_files={
        "unet_name": ["wan2.1_i2v_480p_14B_fp16.safetensors"],
        "CLIPLoader.clip_name": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],
        "vae_name": ["wan_2.1_vae.safetensors"],
        "CLIPVisionLoader.clip_name": ["clip_vision_h.safetensors"]})
    with bare, models:
        info = httpx.get(f"{bare.url}/object_info", timeout=10).json()
        weightfree = load_template("weightfree_i2v")
        check_against(weightfree.graph, info, server=bare.url, template=weightfree.name,
                      bound=weightfree.bound_inputs)
        wan = load_template("wan_i2v")
        with pytest.raises(TemplateMismatch) as e:
            check_against(wan.graph, info, server=bare.url, template=wan.name,
                          bound=wan.bound_inputs)
        message = str(e.value)
        assert message.startswith(f"workflow wan_i2v cannot run on {bare.url}")
        assert "node 37 (UNETLoader): unet_name 'wan2.1_i2v_480p_14B_fp16.safetensors'" in message
        with_models = httpx.get(f"{models.url}/object_info", timeout=10).json()
        check_against(wan.graph, with_models, server=models.url, template=wan.name,
                      bound=wan.bound_inputs)


def test_the_old_variable_alone_is_said_when_a_render_starts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from anime_pipeline.pipeline.clips import clips_run
    from anime_pipeline.runtime.policy import ExecutionPolicyResolver
    from anime_pipeline.runtime.testing import make_profile

    config = load_backends(tmp_path, {BACKENDS_ENV: "comfyui_i2v=http://127.0.0.1:8188"})
    policy = ExecutionPolicyResolver().resolve(make_profile(vram_gib=[], nvenc=False))
    with caplog.at_level("WARNING", logger="anime_pipeline.progress"), clips_run(
            policy, concurrency=2, home=tmp_path, backends_config=config,
            nvenc_fits=lambda mb: False) as run:
        assert run.env.notes == config.notes
    assert "render_backends.yaml" in caplog.text
