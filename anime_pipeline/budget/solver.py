"""Multiple-choice knapsack (MCKP): pick one candidate per shot, maximise total value,
total cost within the budget.

Input is two ``(n_shots, n_candidates)`` arrays; a cell whose cost is not finite is not a
candidate of that shot. Algorithm (all vectorised with numpy except the short tail of the
greedy):

1. per shot, drop dominated candidates (costlier and not more valuable) -> Pareto front;
2. start every shot at its cheapest candidate; if that already exceeds the budget the
   instance is infeasible (the caller turns that into a rebalance proposal);
3. walk the upper convex hull of each front: the hull steps of all shots, sorted by
   incremental efficiency (extra value per extra second), are taken greedily while they fit.
   The prefix up to the first step that does not fit is exactly the LP-relaxation optimum
   minus its one fractional step, which gives the upper bound reported as ``upper_bound``;
4. repair/fill: spend what is left on the best single upgrades (any front candidate, not
   only hull vertices), then improve with pair exchanges (upgrade one shot, downgrade
   another with the least value lost) while they gain value and fit.

Costs are real numbers; the budget is never exceeded: every acceptance test compares exact
sums, and the final total is checked with ``math.fsum`` and repaired if rounding ever
disagreed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


@dataclass
class Solution:
    choice: np.ndarray  # (n,) column index of the chosen candidate per shot
    objective: float
    used: float
    feasible: bool  # False: even the cheapest candidate of every shot exceeds the budget
    solver: str
    time_ms: float
    upper_bound: float | None = None  # LP-relaxation bound (None when there is no budget)
    min_cost: float = 0.0  # total of the cheapest candidates


def _fsum_pick(mat: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> float:
    return math.fsum(mat[rows, cols].tolist())


def pareto_front(costs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Per row, the non-dominated candidates sorted by cost: (index, cost, value) arrays of
    shape (n, K), padded with -1 / inf / -inf."""
    c = np.where(np.isfinite(costs), costs, np.inf)
    v = np.where(np.isfinite(c), values, -np.inf)
    o1 = np.argsort(-v, axis=1, kind="stable")
    o2 = np.argsort(np.take_along_axis(c, o1, axis=1), axis=1, kind="stable")
    order = np.take_along_axis(o1, o2, axis=1)
    cs = np.take_along_axis(c, order, axis=1)
    vs = np.take_along_axis(v, order, axis=1)
    prev = np.maximum.accumulate(vs, axis=1)
    prev = np.concatenate([np.full((vs.shape[0], 1), -np.inf), prev[:, :-1]], axis=1)
    keep = (vs > prev) & np.isfinite(cs)
    if not keep[:, 0].all():
        bad = int(np.flatnonzero(~keep[:, 0])[0])
        raise ValueError(f"shot row {bad} has no candidate with a finite cost")
    pos = np.argsort(~keep, axis=1, kind="stable")
    k = int(keep.sum(axis=1).max())
    pos = pos[:, :k]
    kept = np.take_along_axis(keep, pos, axis=1)
    idx = np.where(kept, np.take_along_axis(order, pos, axis=1), -1)
    pc = np.where(kept, np.take_along_axis(cs, pos, axis=1), np.inf)
    pv = np.where(kept, np.take_along_axis(vs, pos, axis=1), -np.inf)
    return idx, pc, pv


def solve_mckp(
    costs: np.ndarray,
    values: np.ndarray,
    budget: float | None,
    front: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Solution:
    """Near-optimal MCKP; see the module docstring. ``budget=None`` means no cap.
    ``front``: ``pareto_front(costs, values)`` when the caller already has it."""
    t0 = time.perf_counter()
    costs = np.asarray(costs, dtype=float)
    values = np.asarray(values, dtype=float)
    if costs.ndim != 2 or costs.shape != values.shape:
        raise ValueError("costs and values must be arrays of the same 2-D shape")
    n = costs.shape[0]
    if n == 0:
        return Solution(np.zeros(0, dtype=int), 0.0, 0.0, True, "mckp_hull_greedy", 0.0, 0.0)
    idx, pc, pv = pareto_front(costs, values) if front is None else front
    rows = np.arange(n)
    k = pc.shape[1]
    min_cost = math.fsum(pc[:, 0].tolist())

    def finish(pos: np.ndarray, feasible: bool, name: str, ub: float | None) -> Solution:
        choice = idx[rows, pos]
        return Solution(
            choice=choice,
            objective=_fsum_pick(pv, rows, pos),
            used=_fsum_pick(pc, rows, pos),
            feasible=feasible,
            solver=name,
            time_ms=(time.perf_counter() - t0) * 1000.0,
            upper_bound=ub,
            min_cost=min_cost,
        )

    if budget is None or math.isinf(budget):
        last = np.isfinite(pc).sum(axis=1) - 1
        return finish(last, True, "max_value_no_budget", None)
    if min_cost > budget:
        return finish(np.zeros(n, dtype=int), False, "infeasible_cheapest", None)

    # ---- hull steps, vectorised over shots
    cur = np.zeros(n, dtype=int)
    s_shot, s_to, s_dc, s_dv, s_eff, s_k = [], [], [], [], [], []
    active = np.isfinite(pc[:, 1]) if k > 1 else np.zeros(n, dtype=bool)
    step = 0
    while active.any():
        r = np.flatnonzero(active)
        cc = pc[r, cur[r]][:, None]
        cv = pv[r, cur[r]][:, None]
        dc = pc[r] - cc
        dv = pv[r] - cv
        ok = np.isfinite(dc) & (dc > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(ok, dv / np.where(ok, dc, 1.0), -np.inf)
        nxt = np.argmax(slope, axis=1)
        best = slope[np.arange(r.size), nxt]
        good = np.isfinite(best)
        rg = r[good]
        ng = nxt[good]
        s_shot.append(rg)
        s_to.append(ng)
        s_dc.append(pc[rg, ng] - pc[rg, cur[rg]])
        s_dv.append(pv[rg, ng] - pv[rg, cur[rg]])
        s_eff.append(best[good])
        s_k.append(np.full(rg.size, step))
        cur[rg] = ng
        active[r[~good]] = False
        active[rg] = ng < k - 1
        step += 1

    pos = np.zeros(n, dtype=int)
    left = budget - min_cost
    ub: float | None = math.fsum(pv[:, 0].tolist())
    if s_shot:
        shot = np.concatenate(s_shot)
        to = np.concatenate(s_to)
        dcs = np.concatenate(s_dc)
        dvs = np.concatenate(s_dv)
        eff = np.concatenate(s_eff)
        ks = np.concatenate(s_k)
        order = np.lexsort((ks, -eff))
        shot, to, dcs, dvs = shot[order], to[order], dcs[order], dvs[order]
        cum = np.cumsum(dcs)
        t = int(np.searchsorted(cum, left * (1 - 1e-12), side="right"))
        # exact check of the prefix; back off if float rounding disagreed
        while t > 0 and math.fsum(dcs[:t].tolist()) > left:
            t -= 1
        if t:
            # hull positions only grow along a shot's steps: keep the furthest taken
            np.maximum.at(pos, shot[:t], to[:t])
        used_steps = math.fsum(dcs[:t].tolist())
        left = left - used_steps
        ub = math.fsum(pv[rows, pos].tolist())
        if t < shot.size:
            # LP bound with the budget relaxed by float noise: still an upper bound
            ub += dvs[t] * min(1.0, max(0.0, left + _tolerance(budget)) / dcs[t])
            # greedy tail: skip shots whose next hull step did not fit
            blocked = np.zeros(n, dtype=bool)
            suffix_min = np.minimum.accumulate(dcs[::-1])[::-1]
            for s in range(t, shot.size):
                if suffix_min[s] > left:
                    break
                i = shot[s]
                if blocked[i]:
                    continue
                if dcs[s] <= left:
                    pos[i] = to[s]
                    left -= dcs[s]
                else:
                    blocked[i] = True
    left = budget - _fsum_pick(pc, rows, pos)
    pos, left = _fill(pc, pv, pos, left, budget)
    pos, left = _exchange(pc, pv, pos, left, budget)
    pos = _repair(pc, pv, pos, budget)
    name = "mckp_hull_greedy"
    dp_pos = _small_dp(pc, pv, budget, min_cost)
    if dp_pos is not None:
        dp_left = budget - _fsum_pick(pc, rows, dp_pos)
        dp_pos, dp_left = _fill(pc, pv, dp_pos, dp_left, budget)
        dp_pos, dp_left = _exchange(pc, pv, dp_pos, dp_left, budget)
        if (_fsum_pick(pc, rows, dp_pos) <= budget
                and _fsum_pick(pv, rows, dp_pos) > _fsum_pick(pv, rows, pos)):
            pos, name = dp_pos, "mckp_hull_greedy+dp"
    return finish(pos, True, name, ub)


#: the dynamic programme runs when shots x front candidates is at most this
DP_MAX_CELLS = 4000
#: ... and does at most this many cell updates in all
DP_MAX_WORK = 10_000_000
DP_MAX_UNITS = 20_000


def _small_dp(pc: np.ndarray, pv: np.ndarray, budget: float, min_cost: float
              ) -> np.ndarray | None:
    """Small episodes: exact DP over the extra cost above each shot's cheapest candidate,
    in units of ``left / G`` rounded *up* (so every DP solution is feasible with the real
    costs). Its only loss is the rounding (< one unit per shot); the caller keeps the
    better of this and the greedy. None when the instance is too large for it."""
    n, k = pc.shape
    cells = int(np.isfinite(pc).sum())
    left = budget - min_cost
    if cells > DP_MAX_CELLS or left <= 1e-9 * max(1.0, abs(budget)) or k < 2:
        return None
    units = min(DP_MAX_UNITS, DP_MAX_WORK // max(1, cells))
    if units < 50 * n:  # rounding would cost more than ~2% of the budget left
        return None
    unit = left / units
    extra = pc - pc[:, :1]
    with np.errstate(invalid="ignore"):
        w = np.where(np.isfinite(extra), np.ceil(extra / unit - 1e-9), units + 1)
    w = np.where(np.isfinite(extra) & (w * unit < extra), w + 1, w)
    w = np.minimum(w, units + 1).astype(np.int64)
    dp = np.zeros(units + 1)
    arg = np.zeros((n, units + 1), dtype=np.int16)
    for i in range(n):
        new = dp + pv[i, 0]
        a = arg[i]
        for j in range(1, k):
            wj = int(w[i, j])
            if wj > units or not np.isfinite(pv[i, j]):
                continue
            cand = dp[: units + 1 - wj] + pv[i, j]
            better = cand > new[wj:]
            if better.any():
                new[wj:] = np.where(better, cand, new[wj:])
                a[wj:][better] = j
        dp = new
    pos = np.zeros(n, dtype=int)
    b = units
    for i in range(n - 1, -1, -1):
        j = int(arg[i, b])
        pos[i] = j
        b -= int(w[i, j]) if j else 0
    return pos


def _tolerance(budget: float) -> float:
    """Slack under which a cost difference is float noise (then the exact total decides)."""
    return 1e-9 * max(1.0, abs(budget))


def _fill(pc: np.ndarray, pv: np.ndarray, pos: np.ndarray, left: float, budget: float,
          max_rounds: int = 64) -> tuple[np.ndarray, float]:
    """Spend the leftover on the single upgrades with the largest value gain.

    An upgrade is considered when it fits the leftover within float noise, and taken only
    when the exact total (``math.fsum``) of the new choice stays within the budget."""
    n = pc.shape[0]
    rows = np.arange(n)
    tol = _tolerance(budget)
    refused = np.zeros(pc.shape, dtype=bool)
    for _ in range(max_rounds):
        extra = pc - pc[rows, pos][:, None]
        gain = pv - pv[rows, pos][:, None]
        ok = (extra <= left + tol) & (gain > _EPS) & np.isfinite(extra) & ~refused
        if not ok.any():
            break
        g = np.where(ok, gain, -np.inf)
        flat = int(np.argmax(g))
        i, j = divmod(flat, pc.shape[1])
        trial = pos.copy()
        trial[i] = j
        total = _fsum_pick(pc, rows, trial)
        if total > budget:
            refused[i, j] = True
            continue
        pos, left = trial, budget - total
    return pos, left


def _exchange(pc: np.ndarray, pv: np.ndarray, pos: np.ndarray, left: float, budget: float,
              max_rounds: int = 24) -> tuple[np.ndarray, float]:
    """Pair exchanges: upgrade shot a (even beyond the leftover) and pay for it by
    downgrading another shot b with the least value lost."""
    n, k = pc.shape
    if n < 2 or k < 2:
        return pos, left
    rows = np.arange(n)
    for _ in range(max_rounds):
        cc = pc[rows, pos][:, None]
        cv = pv[rows, pos][:, None]
        extra = pc - cc
        gain = pv - cv
        # downgrade options: saving > 0, loss >= 0
        down = np.isfinite(extra) & (extra < 0)
        if not down.any():
            break
        d_rows, d_cols = np.nonzero(down)
        saving = -extra[d_rows, d_cols]
        loss = -gain[d_rows, d_cols]
        o = np.argsort(saving, kind="stable")
        saving, loss, d_rows, d_cols = saving[o], loss[o], d_rows[o], d_cols[o]
        # suffix minimum of the loss (and where it is) over savings >= x
        rev_loss = loss[::-1]
        sm = np.minimum.accumulate(rev_loss)[::-1]
        is_new = np.r_[True, rev_loss[1:] < np.minimum.accumulate(rev_loss)[:-1]]
        arg_rev = np.maximum.accumulate(np.where(is_new, np.arange(loss.size), 0))
        sm_arg = (loss.size - 1 - arg_rev)[::-1]
        up = np.isfinite(extra) & (extra > left) & (gain > _EPS)
        if not up.any():
            break
        u_rows, u_cols = np.nonzero(up)
        need = extra[u_rows, u_cols] - left
        at = np.searchsorted(saving, need * (1 + 1e-12), side="left")
        has = at < saving.size
        if not has.any():
            break
        u_rows, u_cols, at = u_rows[has], u_cols[has], at[has]
        which = sm_arg[at]
        net = gain[u_rows, u_cols] - sm[at]
        net = np.where(d_rows[which] == u_rows, -np.inf, net)
        b = int(np.argmax(net))
        if not net[b] > _EPS * max(1.0, float(np.abs(pv[np.isfinite(pv)]).max())):
            break
        a, ja = int(u_rows[b]), int(u_cols[b])
        w = int(which[b])
        bb, jb = int(d_rows[w]), int(d_cols[w])
        new_pos = pos.copy()
        new_pos[a] = ja
        new_pos[bb] = jb
        new_used = _fsum_pick(pc, rows, new_pos)
        if new_used > budget:
            break
        pos = new_pos
        left = budget - new_used
        pos, left = _fill(pc, pv, pos, left, budget, max_rounds=4)
    return pos, left


def _repair(pc: np.ndarray, pv: np.ndarray, pos: np.ndarray, budget: float) -> np.ndarray:
    """Guarantee the exact total is within budget (float rounding safety net)."""
    rows = np.arange(pc.shape[0])
    while _fsum_pick(pc, rows, pos) > budget:
        movable = np.flatnonzero(pos > 0)
        if movable.size == 0:
            break
        saving = pc[movable, pos[movable]] - pc[movable, pos[movable] - 1]
        loss = pv[movable, pos[movable]] - pv[movable, pos[movable] - 1]
        i = movable[int(np.argmin(loss / np.maximum(saving, _EPS)))]
        pos[i] -= 1
    return pos


def solve_uniform(costs: np.ndarray, values: np.ndarray, levels: np.ndarray,
                  budget: float | None) -> Solution:
    """One global level for every shot (shot-level budgeting off): ``levels`` is an
    (n, L) array of column indices, level by level; the feasible level with the highest
    total value wins. Infeasible (no level fits): every shot's cheapest candidate."""
    t0 = time.perf_counter()
    costs = np.asarray(costs, dtype=float)
    values = np.asarray(values, dtype=float)
    levels = np.array(levels, dtype=int, copy=True)
    n = costs.shape[0]
    rows = np.arange(n)
    c = np.where(np.isfinite(costs), costs, np.inf)
    cheapest = np.argmin(c, axis=1)
    min_cost = math.fsum(c[rows, cheapest].tolist())
    best: tuple[float, int] | None = None
    for lv in range(levels.shape[1]):
        cols = levels[:, lv]
        # a shot whose level cell is not one of its candidates keeps its cheapest one
        cols = np.where(np.isfinite(c[rows, cols]), cols, cheapest)
        levels[:, lv] = cols
        total = math.fsum(c[rows, cols].tolist())
        if not math.isfinite(total) or (budget is not None and total > budget):
            continue
        val = math.fsum(values[rows, cols].tolist())
        if best is None or val > best[0]:
            best = (val, lv)
    feasible = best is not None
    choice = levels[:, best[1]] if best is not None else cheapest
    if best is None and (budget is None or min_cost <= budget):
        feasible = True  # no whole level fits, but the cheapest plan does
    return Solution(
        choice=np.asarray(choice),
        objective=math.fsum(values[rows, choice].tolist()),
        used=math.fsum(c[rows, choice].tolist()),
        feasible=feasible,
        solver="uniform_global_level",
        time_ms=(time.perf_counter() - t0) * 1000.0,
        upper_bound=None,
        min_cost=min_cost,
    )
