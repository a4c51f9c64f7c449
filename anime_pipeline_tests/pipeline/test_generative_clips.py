"""An episode's generative shots on a farm of ComfyUI doubles, through the use-case layer:
remote work is not held to the local cap, the concurrency setting applies live, a staged plan
cuts its preview first, and a policy change mid-episode re-plans the shots not started."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from anime_pipeline.backends.config import BackendsConfig
from anime_pipeline.budget import build_compute_plan
from anime_pipeline.domain.contracts import ResourceState
from anime_pipeline.domain.records import ClipStatus
from anime_pipeline.pipeline import catalog, delivery, planning
from anime_pipeline.pipeline.clips import (
    ClipOutcome,
    ClipsRun,
    PreviewReady,
    clips_run,
    stage_phases,
)
from anime_pipeline.pipeline.scheduling import write_concurrency
from anime_pipeline.runtime.policy import ExecutionPolicy, ExecutionPolicyResolver
from anime_pipeline.runtime.testing import make_profile
from anime_pipeline.storage import EpisodeKeys, LocalStore, put_record
from anime_pipeline_tests.conftest import minimal_episode
from anime_pipeline_tests.pipeline.conftest import POLICY
from anime_pipeline_tests.support.comfyui_double import ComfyDouble
from anime_pipeline_tests.support.farm import farm_config

pytestmark = pytest.mark.slow  # real renders on real (double) servers

FARM = ResourceState(available_backends=("animatic", "source_clip", "comfyui_i2v"),
                     workers_available=4)


def farm(*doubles: ComfyDouble, max_inflight: int = 2) -> BackendsConfig:
    return farm_config(*doubles, max_inflight=max_inflight)


def cpu_policy(render_concurrency: int) -> ExecutionPolicy:
    base = ExecutionPolicyResolver().resolve(make_profile(vram_gib=[], nvenc=False))
    return base.model_copy(update={"render_concurrency": render_concurrency})


def shots(n: int, ms: int = 1000) -> list[dict[str, Any]]:
    return [{"id": f"S{i:02d}", "type": "action" if i % 2 else "establishing",
             "duration_ms": ms, "keyframe": "keyframes/S01.png"} for i in range(1, n + 1)]


class Episode:
    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.store = LocalStore(tmp_path / "artifacts")
        self.bundle = catalog.register(self.store, minimal_episode(tmp_path / "ep", **overrides))
        planning.write_shot_plan(self.store, self.bundle)
        planning.write_audio_manifest(self.store, self.bundle)
        self.keys = EpisodeKeys(self.bundle.episode.key)

    @property
    def shot_ids(self) -> list[str]:
        return [s.id for s in self.bundle.episode.shots]

    def plan(self, resources: ResourceState = FARM) -> Any:
        return planning.write_compute_plan(self.store, self.bundle, resources=resources,
                                           history=None, policy=POLICY)

    def render(self, run: ClipsRun, plan: Any, **kw: Any) -> list[ClipOutcome | PreviewReady]:
        with self.store.scratch() as work:
            _, items = run.render(self.store, self.bundle, plan, self.shot_ids, work_dir=work,
                                  **kw)
            return list(items)


def _outcomes(items: list[ClipOutcome | PreviewReady]) -> dict[str, ClipOutcome]:
    return {i.shot_id: i for i in items if isinstance(i, ClipOutcome)}


def test_waiting_on_a_farm_is_not_held_to_the_machines_cap(
        tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    a, b = doubles(node_latency_s=0.15), doubles(node_latency_s=0.15)
    ep = Episode(tmp_path, shots=shots(6))
    plan = ep.plan()
    assert all(s.backend_preference[0] == "comfyui_i2v" for s in plan.shots)
    with clips_run(cpu_policy(1), concurrency=4, home=tmp_path / "home",
                   backends_config=farm(a, b), nvenc_fits=lambda mb: False) as run:
        outcomes = _outcomes(ep.render(run, plan))
        stats = run.stats.as_dict()
    assert {o.status for o in outcomes.values()} == {ClipStatus.ok}
    assert {o.record.backend for o in outcomes.values()} == {"comfyui_i2v"}
    assert {o.record.server for o in outcomes.values()} == {a.url, b.url}
    # Four shots wait on the farm at once; ffmpeg on this machine stays at the policy's one.
    assert stats["peak_concurrency"] == {"local": 1, "remote": 4}
    assert stats["clips"] == 6 and stats["placeholders"] == 0 and stats["failed_attempts"] == 0
    assert set(stats["by_server"]) == {a.url, b.url}
    assert stats["by_backend"]["comfyui_i2v"]["clips"] == 6
    assert 0 < stats["mean_s"] <= stats["p95_s"] <= stats["max_s"]
    # Every clip keeps its usage: one prompt each, on the server that made it.
    for o in outcomes.values():
        [attempt] = o.record.attempts
        [usage] = attempt.usage
        assert usage.server == o.record.server and usage.outcome == "ok"


def test_a_change_of_the_concurrency_setting_applies_in_the_running_step(
        tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    a = doubles(node_latency_s=0.15)
    home = tmp_path / "home"
    write_concurrency(home, 1)
    ep = Episode(tmp_path, shots=shots(10))
    plan = ep.plan()
    seen: list[int] = []
    with clips_run(cpu_policy(1), concurrency=4, home=home, backends_config=farm(
            a, max_inflight=4), nvenc_fits=lambda mb: False) as run:
        with ep.store.scratch() as work:
            _, items = run.render(ep.store, ep.bundle, plan, ep.shot_ids, work_dir=work)
            for n, _ in enumerate(items):
                seen.append(run.slots.remote.peak)
                if n == 1:
                    write_concurrency(home, 3)  # while the step runs
    assert seen[0] == 1 and seen[1] == 1  # one at a time before the change
    assert run.slots.remote.peak == 3  # and three after it, without a restart


def test_a_staged_plan_renders_and_cuts_its_preview_first(
        tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    a = doubles()
    ep = Episode(tmp_path, shots=[{**s, "criticality": "critical"} if s["id"] == "S03" else s
                                  for s in shots(6)],
                 format={"width": 640, "height": 360, "fps": 24})
    (ep.bundle.root / "creative_control.yaml").write_text(
        "global_profile: HIGH\nsla:\n  deadline: '2026-12-01T12:00:12Z'\n", encoding="utf-8")
    bundle = catalog.register(ep.store, ep.bundle.root)
    ep.bundle = bundle
    plan = build_compute_plan(bundle.episode, bundle.creative,
                              planning.read_audio_manifest(ep.store, bundle.episode.key),
                              resources=FARM, now=datetime(2026, 12, 1, 12, tzinfo=UTC))
    put_record(ep.store, ep.keys.compute_plan, plan)
    staged = [s for s in plan.shots if s.preview is not None and "final" in s.stages]
    assert [s.shot_id for s in staged] == ["S06"], plan.stages  # a tight deadline stages it
    preview_tier = staged[0].preview
    assert preview_tier is not None
    items: list[ClipOutcome | PreviewReady] = []
    cut = None
    with clips_run(cpu_policy(2), concurrency=4, home=tmp_path / "home",
                   backends_config=farm(a), nvenc_fits=lambda mb: False) as run:
        with ep.store.scratch() as work:
            _, stream = run.render(ep.store, ep.bundle, plan, ep.shot_ids, work_dir=work)
            for item in stream:
                items.append(item)
                if isinstance(item, PreviewReady):  # what the clips step does here
                    cut = delivery.write_composite(ep.store, ep.bundle, work_dir=work / "p",
                                                   preview=True).record
    # The preview cut: every shot, S06 at its preview tier, marked, beside the final one.
    assert cut is not None and cut.preview
    assert {c.shot_id: c.stage for c in cut.clips}["S06"] == "preview"
    assert cut.video_frames == cut.expected_frames == 144
    assert ep.store.exists(ep.keys.preview_composite)
    assert not ep.store.exists(ep.keys.composite)  # the final composite is not touched
    marks = [i for i, item in enumerate(items) if isinstance(item, PreviewReady)]
    assert len(marks) == 1
    before, after = items[:marks[0]], items[marks[0] + 1:]
    assert sorted(o.shot_id for o in before if isinstance(o, ClipOutcome)) == ep.shot_ids
    s06_preview = next(o for o in before if isinstance(o, ClipOutcome) and o.shot_id == "S06")
    assert s06_preview.record.stage == "preview"
    assert (s06_preview.record.backend, s06_preview.record.fps,
            s06_preview.record.resolution) == (preview_tier.backend, preview_tier.fps,
                                               preview_tier.resolution)
    [s06_final] = after
    assert isinstance(s06_final, ClipOutcome) and s06_final.record.stage == "final"
    assert s06_final.record.backend == "comfyui_i2v"
    # The critical shot starts first, at its final tier.
    [(stage, queue), (_, later)] = stage_phases(plan, ep.shot_ids)
    assert stage == "preview" and queue[0].shot_id == "S03" and [e.shot_id for e in later] == [
        "S06"]
    s03 = next(o for o in before if isinstance(o, ClipOutcome) and o.shot_id == "S03")
    assert s03.record.stage == "final" and s03.record.backend == "comfyui_i2v"  # its final clip


def test_a_policy_change_mid_episode_replans_the_shots_not_started(
        tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    a = doubles(node_latency_s=0.1)
    ep = Episode(tmp_path, shots=shots(6))
    plan = ep.plan()
    revision = [0]
    replanned = threading.Event()

    def replan() -> Any:  # what the step does: plan again under the policy in force now
        replanned.set()
        return ep.plan(ResourceState())  # degraded: the farm is no longer in the policy

    with clips_run(cpu_policy(1), concurrency=1, home=tmp_path / "home",
                   backends_config=farm(a), nvenc_fits=lambda mb: False,
                   revision=lambda: revision[0]) as run:
        run.replan_poll_s = 0.0
        with ep.store.scratch() as work:
            holder, items = run.render(ep.store, ep.bundle, plan, ep.shot_ids, work_dir=work,
                                       replan=replan)
            got: list[ClipOutcome] = []
            for item in items:
                assert isinstance(item, ClipOutcome)
                got.append(item)
                if len(got) == 2:
                    revision[0] += 1  # the monitor degraded the policy
    assert replanned.is_set()
    [new_plan] = holder.drain()
    assert all(s.backend_preference == ["animatic"] for s in new_plan.shots)
    backends = [o.record.backend for o in got]
    assert backends[:2] == ["comfyui_i2v", "comfyui_i2v"]
    assert backends[-3:] == ["animatic"] * 3  # never waited for someone to re-plan
    assert all(o.status is ClipStatus.ok for o in got)
    assert planning.read_compute_plan(ep.store, ep.bundle.episode.key) == new_plan
