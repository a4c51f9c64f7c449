"""Budgeter benchmark: our multiple-choice knapsack against the exact MILP optimum.

Random episodes of 100, 1,000 and 10,000 shots (random shot types, durations, camera moves,
criticality, audio density, global profile, style and available backends) with random
budgets between the cheapest and the most expensive plan. For each instance:

* ``plan ms``: our solver (``solve_mckp``) on the episode's candidate matrices;
* ``e2e ms``: the whole ``build_compute_plan`` (CB1..CB4 and the ``ComputePlan``);
* ``ratio``: our objective / the exact optimum of ``scipy.optimize.milp`` (HiGHS) on the
  same candidates (dominated candidates removed first: that cannot change the optimum).
  Should HiGHS hit its time limit (``MILP_TIME_LIMIT_S``, it can on a few 10,000-shot
  instances), the ratio is taken against the tighter of its dual bound and our LP bound,
  both >= the optimum, so the printed ratio never flatters us;
* ``overrun``: our total cost above the budget (must be 0).

Run by hand (scipy is a dev dependency)::

    .venv/bin/python benchmarks/budgeter.py               # 20 x 100, 10 x 1000, 3 x 10000
    .venv/bin/python benchmarks/budgeter.py --sizes 100 --instances 50 --seed 7
    .venv/bin/python benchmarks/budgeter.py --timing 10000   # no MILP: plan, JSON, validation

``--timing N`` times, on one random N-shot episode (seed ``--seed``), the median of
``--repeat`` runs of ``build_compute_plan``, of its JSON (``model_dump_json``) and of
``validate_plan``.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anime_pipeline.budget import build_compute_plan, validate_plan  # noqa: E402
from anime_pipeline.budget.allocation import build_candidates  # noqa: E402
from anime_pipeline.budget.complexity import analyze_complexity  # noqa: E402
from anime_pipeline.budget.settings import resolve_settings  # noqa: E402
from anime_pipeline.budget.solver import pareto_front, solve_mckp  # noqa: E402
from anime_pipeline.domain.contracts import ResourceState  # noqa: E402
from anime_pipeline.domain.episode import CreativeControl, Episode, Shot  # noqa: E402

TYPES = ["establishing", "dialogue", "action", "insert", "transition"]
MOVES = ["static", "push_in", "pull_out", "pan_left", "pan_right", "tilt_up", "tilt_down",
         "shake"]
NOW = datetime(2026, 1, 1, tzinfo=UTC)
MILP_TIME_LIMIT_S = 120.0


def random_episode(rng: np.random.Generator, n: int) -> tuple[Episode, dict, ResourceState,
                                                               dict]:
    shots = []
    manifest_shots = []
    for i in range(n):
        sid = f"S{i:05d}"
        shot = {
            "id": sid,
            "type": TYPES[int(rng.integers(len(TYPES)))],
            "duration_ms": int(rng.integers(400, 12_000)),
            "criticality": str(rng.choice(["low", "normal", "normal", "normal", "critical"],
                                          p=[0.15, 0.25, 0.25, 0.25, 0.10])),
            "camera": {"move": MOVES[int(rng.integers(len(MOVES)))],
                       "strength": float(rng.random())},
        }
        if rng.random() < 0.08:
            shot["source"] = {"uri": f"footage/{sid}.mp4", "in_ms": 0}
        else:
            shot["keyframe"] = f"keyframes/{sid}.png"
        shots.append(Shot.model_validate(shot))
        if rng.random() < 0.95:
            manifest_shots.append({"shot_id": sid, "event_density": float(rng.gamma(2.0, 1.2)),
                                   "peak_energy": float(rng.random())})
    fps = float(rng.choice([24, 24, 25, 30]))
    height = int(rng.choice([720, 1080]))
    episode = Episode.model_construct(  # model_construct: 10,000 shots is above the 2,000 cap
        schema_version="1.0", tenant_id="bench", project_id="bench", episode_id=f"n{n}",
        title="", format=Episode.model_fields["format"].annotation.model_validate(  # type: ignore[union-attr]
            {"width": height * 16 // 9, "height": height, "fps": fps}),
        audio="audio/mix.wav", shots=shots,
    )
    gens = [b for b in ("wan_i2v", "comfyui_i2v") if rng.random() < 0.7]
    resources = ResourceState(available_backends=("animatic", "source_clip", *gens),
                              gpu_count=int(rng.integers(0, 3)), workers_available=2)
    creative = {
        "global_profile": str(rng.choice(["LOW", "MEDIUM", "HIGH"])),
        "style": {"prefer_smooth_motion": bool(rng.random() < 0.5),
                  "min_fps": float(rng.choice([6, 8, 12])) if rng.random() < 0.5 else None},
    }
    return episode, creative, resources, {"shots": manifest_shots}


def exact_optimum(costs: np.ndarray, values: np.ndarray, budget: float) -> tuple[float, str]:
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix

    _, pc, pv = pareto_front(costs, values)
    mask = np.isfinite(pc)
    rows, _ = np.nonzero(mask)
    nvar = rows.size
    one_per_shot = csr_matrix((np.ones(nvar), (rows, np.arange(nvar))),
                              shape=(pc.shape[0], nvar))
    sys.stdout.flush()
    saved = os.dup(1)  # HiGHS writes debug lines straight to fd 1
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        res = milp(
            -pv[mask],
            constraints=[LinearConstraint(one_per_shot, 1, 1),
                         LinearConstraint(csr_matrix(pc[mask][None, :]), -np.inf, budget)],
            integrality=np.ones(nvar),
            bounds=Bounds(0, 1),
            options={"mip_rel_gap": 1e-7, "time_limit": MILP_TIME_LIMIT_S, "disp": False},
        )
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    if res.status == 0:
        return float(-res.fun), "optimal"
    # time limit: compare against the MILP's dual bound (>= the optimum: a safe ratio)
    bound = getattr(res, "mip_dual_bound", None)
    if bound is not None and math.isfinite(bound):
        return float(-bound), "dual bound (time limit)"
    return math.nan, str(res.message)


def run(sizes: list[int], instances: dict[int, int], seed: int,
        args_verbose: bool = False) -> int:
    rng = np.random.default_rng(seed)
    print(f"{'shots':>6} {'inst':>4} {'worst':>8} {'mean':>8} {'plan ms (max)':>14} "
          f"{'e2e ms (max)':>13} {'overruns':>8}  milp", flush=True)
    overruns_total = 0
    for n in sizes:
        ratios, plan_ms, e2e_ms, overruns, milp_notes = [], [], [], 0, set()
        for _ in range(instances[n]):
            episode, cc, resources, manifest = random_episode(rng, n)
            # a random budget between the cheapest and the most expensive plan
            base = CreativeControl.model_validate(cc)
            settings = resolve_settings(episode, base, resources, NOW)
            analyses = analyze_complexity(episode, manifest)
            grid = build_candidates(analyses, settings)
            lo = float(np.min(grid.cost, axis=1).sum())
            hi = float(np.where(np.isfinite(grid.cost), grid.cost, 0).max(axis=1).sum())
            budget = lo + float(rng.uniform(0.02, 0.98)) * (hi - lo)
            t0 = time.perf_counter()
            sol = solve_mckp(grid.cost, grid.value, budget)
            plan_ms.append((time.perf_counter() - t0) * 1000)
            used = math.fsum(grid.cost[np.arange(n), sol.choice].tolist())
            if used > budget:
                overruns += 1
            t0 = time.perf_counter()
            opt, note = exact_optimum(grid.cost, grid.value, budget)
            if note != "optimal" and sol.upper_bound is not None:
                # HiGHS hit its time limit: use the tighter of its dual bound and our LP
                # relaxation bound; both are >= the true optimum, so the ratio is safe
                opt = min(opt, sol.upper_bound) if math.isfinite(opt) else sol.upper_bound
            if args_verbose:
                print(f"  n={n} budget={budget:.0f}s ratio={sol.objective / opt:.6f} "
                      f"plan={plan_ms[-1]:.1f}ms milp={time.perf_counter() - t0:.1f}s {note}",
                      flush=True)
            milp_notes.add(note)
            ratios.append(sol.objective / opt if opt > 0 else 1.0)
            # end to end, through the public API, with the same budget in minutes
            creative = CreativeControl.model_validate({**cc, "budget": {
                "max_gpu_minutes": budget / 60.0}})
            t0 = time.perf_counter()
            plan = build_compute_plan(episode, creative, manifest, resources, now=NOW)
            e2e_ms.append((time.perf_counter() - t0) * 1000)
            if plan.budget_summary.estimated_gpu_sec > budget:
                overruns += 1
            del plan  # not alive while the next one is built (that alone costs ~30%)
        overruns_total += overruns
        print(f"{n:>6} {len(ratios):>4} {min(ratios):>8.5f} {statistics.mean(ratios):>8.5f} "
              f"{max(plan_ms):>14.1f} {max(e2e_ms):>13.1f} {overruns:>8}  "
              f"{', '.join(sorted(milp_notes))}", flush=True)
    return overruns_total


def random_instance(rng: np.random.Generator, n: int) -> tuple[Episode, CreativeControl,
                                                                 ResourceState, dict]:
    """A random n-shot episode with a budget halfway between its cheapest and dearest
    plan."""
    episode, cc, resources, manifest = random_episode(rng, n)
    settings = resolve_settings(episode, CreativeControl.model_validate(cc), resources, NOW)
    grid = build_candidates(analyze_complexity(episode, manifest), settings)
    lo = float(np.min(grid.cost, axis=1).sum())
    hi = float(np.where(np.isfinite(grid.cost), grid.cost, 0).max(axis=1).sum())
    creative = CreativeControl.model_validate(
        {**cc, "budget": {"max_gpu_minutes": (lo + 0.5 * (hi - lo)) / 60.0}})
    return episode, creative, resources, manifest


def timing(n: int, seed: int, repeat: int) -> None:
    episode, creative, resources, manifest = random_instance(np.random.default_rng(seed), n)

    def median_ms(fn: Callable[[], object], times: int) -> float:
        out = []
        for _ in range(times):
            t0 = time.perf_counter()
            result = fn()
            out.append((time.perf_counter() - t0) * 1000)
            del result  # freeing it is not part of the timing
            gc.collect()
        return statistics.median(out)

    def build() -> Any:
        return build_compute_plan(episode, creative, manifest, resources, now=NOW)

    build_ms = median_ms(build, repeat)  # first, with no other plan alive
    plan = build()
    json_ms = median_ms(plan.model_dump_json, max(1, repeat // 2))
    validate_ms = median_ms(lambda: validate_plan(plan), max(1, repeat // 2))
    print(f"{n} shots, {sum(len(s.candidates) for s in plan.shots)} candidates written "
          f"(median of {repeat}): build_compute_plan {build_ms:.0f} ms, "
          f"model_dump_json {json_ms:.0f} ms, validate_plan {validate_ms:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--instances", type=int, default=None,
                    help="instances per size (default: 20 / 10 / 3 for 100 / 1000 / 10000)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per instance")
    ap.add_argument("--timing", type=int, metavar="N", default=None,
                    help="only time build_compute_plan, its JSON and validate_plan at N shots")
    ap.add_argument("--repeat", type=int, default=7, help="runs per timing (--timing)")
    args = ap.parse_args()
    if args.timing is not None:
        timing(args.timing, args.seed, args.repeat)
        return
    default = {100: 20, 1000: 10, 10000: 3}
    instances = {n: args.instances or default.get(n, 5) for n in args.sizes}
    overruns = run(args.sizes, instances, args.seed, args.verbose)
    sys.exit(1 if overruns else 0)


if __name__ == "__main__":
    main()
