"""Generative backends tested against the ComfyUI double (``support/comfyui_double.py``):
a real HTTP + websocket server that answers as ComfyUI 0.3.64 does."""

from __future__ import annotations

from pathlib import Path

import pytest

from anime_pipeline.backends.comfyui.backend import ComfyBackend
from anime_pipeline.backends.comfyui.farm import Farm
from anime_pipeline.backends.comfyui.templates import WorkflowTemplate, load_template
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.rendering import RenderSpec, ShotJob
from anime_pipeline.pipeline import catalog
from anime_pipeline.storage import LocalStore
from anime_pipeline_tests.conftest import minimal_episode
from anime_pipeline_tests.support.comfyui_double import ComfyDouble
from anime_pipeline_tests.support.farm import farm_config


@pytest.fixture
def bundle(tmp_path: Path) -> EpisodeBundle:
    return catalog.register(LocalStore(tmp_path / "artifacts"), minimal_episode(tmp_path / "ep"))


def farm_of(*doubles: ComfyDouble, max_inflight: int = 1, rps: float | None = None) -> Farm:
    config = farm_config(*doubles, max_inflight=max_inflight, rps=rps)
    return Farm.create("comfyui_i2v", config.backends["comfyui_i2v"])


def backend_on(*doubles: ComfyDouble, template: WorkflowTemplate | None = None,
               timeout_s: float = 120.0, max_inflight: int = 1) -> ComfyBackend:
    return ComfyBackend("comfyui_i2v", farm_of(*doubles, max_inflight=max_inflight),
                        template or load_template("weightfree_i2v"), prompt_timeout_s=timeout_s)


def job_for(bundle: EpisodeBundle, shot_id: str = "S01", *, fps: float = 8.0,
            resolution: str = "240p", segment_max_ms: int | None = None, attempt: int = 0,
            run_id: str = "run-1", thumbnail: Path | None = None, **kw: object) -> ShotJob:
    ep = bundle.episode
    return ShotJob(ep.shot(shot_id), bundle.root, ep.format,
                   RenderSpec("comfyui_i2v", fps, resolution), thumbnail=thumbnail,
                   segment_max_ms=segment_max_ms, run_id=run_id, attempt=attempt,
                   **kw)  # type: ignore[arg-type]
