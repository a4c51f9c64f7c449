"""The use-case layer tested directly: a local store, real ffmpeg, fake backends where a test
needs a backend to misbehave."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from anime_pipeline.budget import ComputePlan
from anime_pipeline.domain.contracts import ResourceState
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.records import PolicyRecord
from anime_pipeline.pipeline import catalog, planning
from anime_pipeline.pipeline.clips import RenderEnvironment
from anime_pipeline.storage import LocalStore
from anime_pipeline_tests.conftest import minimal_episode

POLICY = PolicyRecord(name="TEST/baseline", profile_class="LOCAL_CPU_ONLY", encoder="libx264",
                      render_concurrency=2)
ENV = RenderEnvironment(concurrency=2, local_concurrency=2, encoder="libx264", policy=POLICY)


@dataclass
class Planned:
    store: LocalStore
    bundle: EpisodeBundle
    plan: ComputePlan
    folder: Path

    @property
    def shot_ids(self) -> list[str]:
        return [s.id for s in self.bundle.episode.shots]

    def replan(self) -> Planned:
        return plan_episode(self.store, self.folder)


def plan_episode(store: LocalStore, folder: Path) -> Planned:
    bundle = catalog.register(store, folder)
    planning.write_shot_plan(store, bundle)
    planning.write_audio_manifest(store, bundle)
    plan = planning.write_compute_plan(store, bundle, resources=ResourceState(), history=None,
                                       policy=POLICY)
    return Planned(store, bundle, plan, folder)


@pytest.fixture
def planned(tmp_path: Path) -> Planned:
    return plan_episode(LocalStore(tmp_path / "artifacts"), minimal_episode(tmp_path / "ep99"))


@pytest.fixture
def make_planned(tmp_path: Path) -> Callable[..., Planned]:
    def make(name: str = "ep", **overrides: object) -> Planned:
        return plan_episode(LocalStore(tmp_path / "artifacts"),
                            minimal_episode(tmp_path / name, **overrides))
    return make
