"""Rejection regenerates: a rejected shot gets a retake — the plan's next candidate on a
local backend, a new seed and the reviewer's note in the prompt on a generative one — only
that shot renders again, and its new version comes back to review; under the daemon the
review loop sensor asks for that render once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from anime_pipeline.backends.config import parse_backends
from anime_pipeline.defs.resources import LedgerResource, LocalStorageResource
from anime_pipeline.defs.review import review_loop_sensor
from anime_pipeline.domain.contracts import ResourceState
from anime_pipeline.ledger import default_url
from anime_pipeline.pipeline.clips import clips_run
from anime_pipeline.pipeline.review import decide, request_retakes, sync_versions
from anime_pipeline.review.machine import ReviewState
from anime_pipeline.review.store import ReviewStore
from anime_pipeline_tests.backends.test_comfy_backend import WAN_FILES
from anime_pipeline_tests.pipeline.test_generative_clips import Episode, _outcomes, cpu_policy
from anime_pipeline_tests.review.test_review import _clip
from anime_pipeline_tests.support.comfyui_double import ComfyDouble

pytestmark = pytest.mark.slow  # real renders

LOCAL = ResourceState(available_backends=("animatic", "source_clip"), workers_available=2)
EP = "studio-a/moonlit-courier/ep99"


def _render(ep: Episode, plan: Any, tmp_path: Path, config: Any = None) -> dict[str, Any]:
    with clips_run(cpu_policy(2), concurrency=2, home=tmp_path / "home",
                   backends_config=config, nvenc_fits=lambda mb: False,
                   run_id=f"run-{len(list(tmp_path.iterdir()))}") as run:
        return _outcomes(ep.render(run, plan))


def test_a_rejected_local_shot_renders_its_next_candidate_and_returns_to_review(
        tmp_path: Path) -> None:
    ep = Episode(tmp_path)
    reviews = ReviewStore(default_url(tmp_path))
    plan = ep.plan(LOCAL)
    first = _render(ep, plan, tmp_path)
    assert sync_versions(ep.store, reviews, ep.bundle) == ["S01", "S02"]
    decide(ep.store, reviews, ep.bundle, "S01", "rejected", reviewer="mei",
           reason="camera drifts")
    assert request_retakes(ep.store, reviews, ep.bundle) == {"S01": 1}
    assert request_retakes(ep.store, reviews, ep.bundle) == {}  # once per rejection
    assert reviews.latest(EP)["S01"].state is ReviewState.regenerating
    second = _render(ep, plan, tmp_path)
    # Only the rejected shot renders (a current clip is reported reused, not rendered).
    assert not second["S01"].cached and ("S02" not in second or second["S02"].cached)
    old, new = first["S01"].record, second["S01"].record
    entry = next(s for s in plan.shots if s.shot_id == "S01")
    if len([c for c in entry.candidates if c.backend == "animatic"]) > 1:
        assert (new.fps, new.resolution) != (old.fps, old.resolution)  # the next candidate
    assert new.fingerprint != old.fingerprint
    assert sync_versions(ep.store, reviews, ep.bundle) == ["S01"]
    states = [e.state.value for e in reviews.history(EP, "S01")]
    assert states == ["rendered", "in_review", "rejected", "regenerating", "rendered",
                      "in_review"]
    third = _render(ep, plan, tmp_path)  # the retake is kept: the new clip is current
    assert "S01" not in third or third["S01"].cached


def test_a_rejected_generative_shot_gets_a_new_seed_and_the_note_in_its_prompt(
        tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    d = doubles(node_latency_s=0.05, model_files=WAN_FILES)
    config = parse_backends(f"comfyui_i2v:\n  kind: comfyui\n  workflow: wan_i2v\n"
                            f"  servers:\n    - url: {d.url}\n      max_inflight: 2\n")
    ep = Episode(tmp_path)
    reviews = ReviewStore(default_url(tmp_path))
    plan = ep.plan(ResourceState(available_backends=("animatic", "source_clip", "comfyui_i2v"),
                                 workers_available=4))
    first = _render(ep, plan, tmp_path, config)
    assert first["S01"].record.backend == "comfyui_i2v"
    sync_versions(ep.store, reviews, ep.bundle)
    decide(ep.store, reviews, ep.bundle, "S01", "rejected", reviewer="mei",
           reason="more rim light on Aki")
    request_retakes(ep.store, reviews, ep.bundle)
    before = len(d.prompts)
    second = _render(ep, plan, tmp_path, config)
    assert "S02" not in second or second["S02"].cached
    assert second["S01"].record.backend == "comfyui_i2v"

    def graphs_of(shot: str, prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p["prompt"] for p in prompts if any(
            str(n["inputs"].get("filename_prefix", "")).startswith(f"anime_pipeline/{shot}_")
            for n in p["prompt"].values())]

    [retake] = graphs_of("S01", d.prompts[before:])
    [original] = graphs_of("S01", d.prompts[:before])
    texts = [n["inputs"]["text"] for n in retake.values() if n["class_type"] ==
             "CLIPTextEncode"]
    assert any(t.endswith("more rim light on Aki") for t in texts), texts
    seeds = {str(n["inputs"].get("seed", n["inputs"].get("noise_seed")))
             for n in retake.values() if {"seed", "noise_seed"} & set(n["inputs"])}
    old_seeds = {str(n["inputs"].get("seed", n["inputs"].get("noise_seed")))
                 for n in original.values() if {"seed", "noise_seed"} & set(n["inputs"])}
    assert seeds and seeds.isdisjoint(old_seeds)


def test_the_review_loop_sensor_asks_for_each_retake_render_once(tmp_path: Path) -> None:
    from anime_pipeline.pipeline import catalog
    from anime_pipeline.storage import LocalStore
    from anime_pipeline_tests.conftest import minimal_episode

    store = LocalStore(tmp_path / "artifacts")
    bundle = catalog.register(store, minimal_episode(tmp_path / "ep"))
    ledger = LedgerResource(url=default_url(tmp_path))
    reviews = ReviewStore(ledger.url)
    _clip(store, "S01", "a" * 64)
    _clip(store, "S02", "b" * 64)
    resources = {"storage": LocalStorageResource(root=str(tmp_path / "artifacts")),
                 "ledger": ledger}
    with dg.instance_for_test() as instance:
        def tick() -> dg.SensorResult:
            ctx = dg.build_sensor_context(instance=instance, resources=resources)
            result = review_loop_sensor(ctx)
            assert isinstance(result, dg.SensorResult)
            return result

        assert tick().run_requests == []  # both in review; mode human: no QC
        decide(store, reviews, bundle, "S02", "rejected", reviewer="mei", reason="blurry")
        [render] = tick().run_requests or []
        assert render.job_name == "render_clips" and render.tags["anime_pipeline/retakes"] == \
            "S02#1"
        assert render.tags["dagster/asset_partition_range_start"] == f"{EP}/S01"
        [again] = tick().run_requests or []  # still waiting for its render: same run key
        assert again.run_key == render.run_key
        reviews.set_review_mode("studio-a", "moonlit-courier", "ai")
        requests = tick().run_requests or []
        [qc] = [r for r in requests if r.job_name == "review_episode"]
        assert qc.run_config == {"ops": {"review_clips": {"config": {"episode_key": EP}}}}
