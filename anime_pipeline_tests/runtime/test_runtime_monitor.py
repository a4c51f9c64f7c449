"""Monitor rules, hysteresis and durable state, driven by metric snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anime_pipeline.runtime.monitor import (
    Decision,
    MetricSnapshot,
    MonitorState,
    StateStore,
    Thresholds,
    evaluate,
    manual_degrade,
    manual_restore,
    sample_metrics,
)
from anime_pipeline.runtime.state import policy_for, policy_in_force
from anime_pipeline.runtime.testing import make_profile

T = Thresholds()  # defaults: degrade after 2 breaches, restore after 3 healthy, 60 s cooldown


def snap(
    t: float,
    vram: float | None = 0.3,
    mem: float = 16.0,
    fail: float | None = None,
    n: int = 0,
) -> MetricSnapshot:
    return MetricSnapshot(
        taken_at=t,
        vram_used_frac=vram,
        vram_used_frac_per_gpu=[] if vram is None else [vram],
        mem_available_gb=mem,
        cpu_percent=20.0,
        recent_failure_rate=fail,
        failure_samples=n,
        failures=round((fail or 0) * n),
    )


def run(series: list[MetricSnapshot], state: MonitorState | None = None,
        t: Thresholds = T) -> tuple[list[Decision], MonitorState]:  # fmt: skip
    state = state or MonitorState()
    out = []
    for s in series:
        d = evaluate(s, state, t)
        out.append(d)
        state = d.state
    return out, state


def actions(ds: list[Decision]) -> list[str]:
    return [d.action for d in ds]


def test_healthy_machine_does_nothing() -> None:
    ds, st = run([snap(i * 30) for i in range(5)])
    assert actions(ds) == ["none"] * 5 and all(d.healthy for d in ds)
    assert st.level == 0 and st.samples_seen == 5 and st.revision == 0


def test_each_rule_degrades_after_two_consecutive_breaches() -> None:
    cases = {
        "vram": snap(0, vram=0.92),
        "memory": snap(0, mem=1.5),
        "failure_rate": snap(0, fail=0.5, n=10),
    }
    for kind, bad in cases.items():
        first = evaluate(bad, MonitorState(), T)
        assert first.action == "none" and first.state.breach_streak == 1 and first.reasons
        second = evaluate(bad.model_copy(update={"taken_at": 30}), first.state, T)
        assert second.action == "degrade" and second.kind == kind
        assert second.state.level == 1 and second.state.steps[0].kind == kind
        assert second.state.revision == 1 and second.state.last_change_at == 30


def test_thresholds_are_strict_and_failure_rate_needs_samples() -> None:
    assert evaluate(snap(0, vram=0.85), MonitorState(), T).reasons == []
    assert evaluate(snap(0, mem=2.0), MonitorState(), T).reasons == []
    assert evaluate(snap(0, fail=1.0, n=3), MonitorState(), T).reasons == []  # < 4 renders
    assert evaluate(snap(0, fail=0.30, n=10), MonitorState(), T).reasons == []
    assert evaluate(snap(0, vram=None), MonitorState(), T).healthy  # no GPU: no VRAM rule
    both = evaluate(snap(0, vram=0.95, fail=0.6, n=5), MonitorState(), T)
    assert len(both.reasons) == 2 and "VRAM 95%" in both.reasons[0] and "3/5" in both.reasons[1]


def test_one_spike_does_not_degrade() -> None:
    ds, st = run([snap(0), snap(30, vram=0.95), snap(60), snap(90, vram=0.95), snap(120)])
    assert actions(ds) == ["none"] * 5 and st.level == 0


def test_restore_needs_three_healthy_samples_clear_of_the_margin() -> None:
    ds, st = run([snap(0, vram=0.95), snap(30, vram=0.95)])
    assert actions(ds) == ["none", "degrade"]
    # 0.80 is under 85% but not under 75%: the dead band resets the healthy streak
    ds, st = run([snap(60), snap(90), snap(120, vram=0.80), snap(150), snap(180), snap(210)], st)
    assert actions(ds) == ["none", "none", "none", "none", "none", "restore"]
    assert not ds[2].healthy and ds[2].state.healthy_streak == 0
    assert st.level == 0 and st.last_action == "restore" and st.revision == 2


def test_oscillating_metrics_do_not_flap() -> None:
    # VRAM swinging around the threshold every sample: never two breaches in a row
    series = [snap(i * 30, vram=0.9 if i % 2 else 0.8) for i in range(20)]
    ds, st = run(series)
    assert set(actions(ds)) == {"none"} and st.level == 0
    # swinging between breach and healthy after a degrade: no restore without 3 healthy in a row
    _, st = run([snap(0, vram=0.95), snap(30, vram=0.95)])
    series = [snap(60 + i * 30, vram=0.95 if i % 3 == 2 else 0.3) for i in range(12)]
    ds, st = run(series, st)
    assert "restore" not in actions(ds)


def test_cooldown_and_max_level() -> None:
    t = Thresholds(degrade_cooldown_s=100, max_degrade_level=2)
    ds, st = run([snap(i * 30, mem=1.0) for i in range(12)], t=t)
    degrades = [d.state.last_change_at or 0.0 for d in ds if d.action == "degrade"]
    assert len(degrades) == 2 and degrades[1] - degrades[0] >= 100
    assert st.level == 2 and "lowest allowed level" in ds[-1].message


def test_flapping_doubles_the_restore_requirement() -> None:
    t = Thresholds(degrade_cooldown_s=0)
    bad = [snap(0, vram=0.95), snap(10, vram=0.95)]
    _, st = run(bad, t=t)
    ds, st = run([snap(20 + i * 10) for i in range(3)], st, t)
    assert ds[-1].action == "restore" and st.flaps == 0
    _, st = run([snap(60, vram=0.95), snap(70, vram=0.95)], st, t)  # soon after: a flap
    assert st.level == 1 and st.flaps == 1
    ds, st = run([snap(80 + i * 10) for i in range(6)], st, t)
    assert actions(ds) == ["none"] * 5 + ["restore"]  # 6 healthy samples needed now
    ds, st = run([snap(80 + 600 + 60)], st, t)  # the restore held through the flap window
    assert st.flaps == 0


def test_manual_degrade_is_held_until_manual_restore() -> None:
    st = manual_degrade(MonitorState(), "client review tonight", now=5)
    assert st.level == 1 and st.manual_hold and st.steps[0].source == "manual"
    ds, st = run([snap(10 + i * 30) for i in range(10)], st)
    assert "restore" not in actions(ds) and st.level == 1
    st = manual_restore(st, now=400)
    assert st.level == 0 and not st.manual_hold and st.revision == 2


def test_policy_follows_the_state() -> None:
    profile = make_profile(vram_gib=[8.0])
    _, st = run([snap(0, vram=0.95), snap(30, vram=0.95)])
    policy = policy_for(profile, st)
    assert policy.degraded and policy.encoder == "libx264" and not policy.uses_local_gpu
    assert "VRAM 95%" in policy.reasons[0]
    _, st = run([snap(60 + i * 30) for i in range(3)], st)
    assert not policy_for(profile, st).degraded


def test_state_store_survives_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "home")
    assert not store.exists() and store.load() == MonitorState()
    _, st = run([snap(0, mem=1.0), snap(30, mem=1.0), snap(60, mem=1.0)])
    store.save(st)
    again = StateStore(tmp_path / "home").load()  # a new process would do just this
    assert again == st and again.level == 1 and again.breach_streak == 1
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["runtime_state.json"]
    # the decision continues where it left off
    d = evaluate(snap(90, mem=1.0), again, Thresholds(degrade_after=2, degrade_cooldown_s=0))
    assert d.action == "degrade" and d.state.level == 2


def test_corrupt_state_is_set_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text("{not json", encoding="utf-8")
    assert store.load() == MonitorState()
    assert any(p.name.startswith("runtime_state.json.corrupt-") for p in tmp_path.iterdir())


def test_policy_in_force_from_files(tmp_path: Path) -> None:
    profile = make_profile(vram_gib=[24.0])
    profile.save(tmp_path / "runtime_profile.json")
    assert policy_in_force(tmp_path).name == "LOCAL_GPU_HIGH/baseline"
    StateStore(tmp_path).save(manual_degrade(MonitorState(), "test"))
    p = policy_in_force(tmp_path)
    assert p.degraded and p.degrade_level == 1 and p.reasons == ["[manual] test"]


def test_thresholds_load(tmp_path: Path) -> None:
    assert Thresholds.load(tmp_path) == Thresholds()
    (tmp_path / "thresholds.json").write_text(json.dumps({"vram_max_frac": 0.9}))
    assert Thresholds.load(tmp_path).vram_max_frac == 0.9
    assert Thresholds.load(tmp_path).min_mem_gb == 2.0


def test_sample_metrics_live() -> None:
    s = sample_metrics(0.25, 8, cpu_interval_s=0.05)
    assert s.mem_available_gb > 0 and s.cpu_percent is not None and 0 <= s.cpu_percent <= 100
    assert s.recent_failure_rate == 0.25 and s.failure_samples == 8 and s.failures == 2
    assert s.taken_at > 0
    if s.vram_used_frac is not None:
        assert 0 <= s.vram_used_frac <= 1
    else:
        assert s.vram_used_frac_per_gpu == []
    d = evaluate(s, MonitorState(), T)
    assert d.action == "none"


@pytest.mark.parametrize("n", [0, 1])
def test_evaluate_does_not_modify_its_input(n: int) -> None:
    st = MonitorState()
    before = st.model_dump()
    evaluate(snap(0, vram=0.99), st, T)
    assert st.model_dump() == before
