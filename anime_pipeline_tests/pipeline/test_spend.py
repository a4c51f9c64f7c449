"""A clips run and the project budget, through the use-case layer on a farm of ComfyUI
doubles: usage lands in the ledger once, ``refuse`` spends nothing, ``degrade`` sends shots
to the local backends (all of them before the render, the rest mid-run), ``alert`` renders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from anime_pipeline.domain.records import ClipStatus
from anime_pipeline.ledger import Ledger, ProjectBudget, UsageFilter, default_url
from anime_pipeline.pipeline.clips import clips_run
from anime_pipeline.pipeline.spend import BudgetRefused, Spend
from anime_pipeline_tests.pipeline.test_generative_clips import (
    Episode,
    _outcomes,
    cpu_policy,
    farm,
    shots,
)
from anime_pipeline_tests.support.comfyui_double import ComfyDouble

pytestmark = pytest.mark.slow  # real renders on real (double) servers


def _budget(ledger: Ledger, gpu_minutes: float, on_exceed: str) -> None:
    ledger.set_budget(ProjectBudget(tenant="studio-a", project="moonlit-courier",
                                    gpu_minutes=gpu_minutes,
                                    on_exceed=on_exceed))  # type: ignore[arg-type]


def test_every_rendered_shot_is_in_the_ledger_once(
        tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    a = doubles(node_latency_s=0.05)
    ledger = Ledger(default_url(tmp_path))
    ep = Episode(tmp_path, shots=shots(3))
    plan = ep.plan()
    seen: list[object] = []
    with clips_run(cpu_policy(2), concurrency=3, home=tmp_path / "home",
                   backends_config=farm(a), nvenc_fits=lambda mb: False, run_id="run-1",
                   ledger=ledger, user="aki", on_recorded=seen.append) as run:
        outcomes = _outcomes(ep.render(run, plan))
        again = _outcomes(ep.render(run, plan))  # everything current: reused, not billed
    assert {o.record.backend for o in outcomes.values()} == {"comfyui_i2v"}
    assert all(o.cached for o in again.values())
    entries = ledger.entries()
    gpu = {(e.shot, e.prompt_id): e.amount for e in entries if e.unit == "gpu_sec"}
    # One gpu_sec entry per prompt the server ran, with the server's own execution time.
    expected = {(o.shot_id, u.prompt_id): round(u.gpu_sec or 0.0, 3)
                for o in outcomes.values() for u in o.record.usage}
    assert gpu == expected and len(gpu) == len(a.prompts) == 3
    assert {e.user for e in entries} == {"aki"} and {e.run_id for e in entries} == {"run-1"}
    frames = sum(e.amount for e in entries if e.unit == "frames")  # generated, at the plan's fps
    assert frames == sum(u.frames for o in outcomes.values() for u in o.record.usage) > 0
    assert len(seen) == 3  # the alert hook ran after each recorded shot
    [row] = ledger.summary(UsageFilter(project="moonlit-courier"), by="provider")
    assert row.group == "comfyui_i2v" and row.calls == 3


def test_refuse_spends_nothing(tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    a = doubles(node_latency_s=0.05)
    ledger = Ledger(default_url(tmp_path))
    _budget(ledger, 0.01, "refuse")  # 0.6 s: less than any plan
    ep = Episode(tmp_path, shots=shots(2))
    with clips_run(cpu_policy(2), concurrency=2, home=tmp_path / "home",
                   backends_config=farm(a), nvenc_fits=lambda mb: False, run_id="r",
                   ledger=ledger) as run, pytest.raises(BudgetRefused, match=(
                       "refused before rendering: budget of studio-a/moonlit-courier")):
        ep.render(run, ep.plan())
    assert a.prompts == [] and ledger.entries() == []
    assert not ep.store.exists(ep.keys.clip_record("S01"))


def test_degrade_before_the_render_sends_every_shot_to_the_local_backends(
        tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    a = doubles(node_latency_s=0.05)
    ledger = Ledger(default_url(tmp_path))
    _budget(ledger, 0.01, "degrade")
    ep = Episode(tmp_path, shots=shots(2))
    with clips_run(cpu_policy(2), concurrency=2, home=tmp_path / "home",
                   backends_config=farm(a), nvenc_fits=lambda mb: False, run_id="r",
                   ledger=ledger) as run:
        outcomes = _outcomes(ep.render(run, ep.plan()))
    assert a.prompts == []
    for o in outcomes.values():
        assert o.record.backend in ("animatic", "source_clip")
        assert o.status is ClipStatus.degraded and "budget" in (o.record.reason or "")
    assert {e.provider for e in ledger.entries()} <= {"animatic", "source_clip"}


def test_mid_run_the_rest_of_the_shots_degrade_once_the_budget_is_reserved(
        tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    a = doubles(node_latency_s=0.2)
    ledger = Ledger(default_url(tmp_path))
    ep = Episode(tmp_path, shots=shots(4))
    plan = ep.plan()
    costs = sorted(s.estimated_cost.gpu_sec for s in plan.shots)
    # Room for one shot, not two: four shots start at once on the farm, the first to reserve
    # its estimate renders on it, the others find the budget taken.
    assert costs[-1] < 1.5 * costs[0]
    _budget(ledger, 1.5 * costs[0] / 60, "degrade")
    spend = Spend.for_episode(ledger, ep.bundle.episode.key, run_id="r")
    from anime_pipeline.pipeline.clips import render_episode_clips

    with clips_run(cpu_policy(2), concurrency=4, home=tmp_path / "home",
                   backends_config=farm(a, max_inflight=4), nvenc_fits=lambda mb: False,
                   run_id="r") as run, ep.store.scratch() as work:
        outcomes = render_episode_clips(ep.store, ep.bundle, plan, ep.shot_ids,
                                        backends=run.backends, env=run.env, work_dir=work,
                                        run_id="r", slots=run.slots, spend=spend)
    backends = sorted(o.record.backend for o in outcomes)
    assert backends.count("comfyui_i2v") == 1 and len(a.prompts) == 1
    assert {o.status for o in outcomes if o.record.backend != "comfyui_i2v"} == {
        ClipStatus.degraded}


def test_alert_renders_as_planned(tmp_path: Path, doubles: Callable[..., ComfyDouble]) -> None:
    a = doubles(node_latency_s=0.05)
    ledger = Ledger(default_url(tmp_path))
    _budget(ledger, 0.01, "alert")
    ep = Episode(tmp_path, shots=shots(2))
    with clips_run(cpu_policy(2), concurrency=2, home=tmp_path / "home",
                   backends_config=farm(a), nvenc_fits=lambda mb: False, run_id="r",
                   ledger=ledger) as run:
        outcomes = _outcomes(ep.render(run, ep.plan()))
    assert {o.record.backend for o in outcomes.values()} == {"comfyui_i2v"}
    assert {o.status for o in outcomes.values()} == {ClipStatus.ok}
    status = ledger.budget_status("studio-a", "moonlit-courier")
    assert status is not None and status.exceeded
