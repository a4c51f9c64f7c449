"""What a rendered clip cost: the ledger entries of one clip record, and the budget verdicts.

Plain Python. A shot's clip record lists its render attempts; each billable call becomes one
:class:`~anime_pipeline.ledger.records.UsageEntry` per unit:

* a generative attempt: one call per prompt the server ran (its ``Usage``): ``gpu_sec`` (the
  server's execution time when it reports one, else the prompt's wall time), ``frames`` and
  ``video_sec`` delivered. An attempt that never reached a server costs nothing;
* a local attempt (animatic, source clip, the placeholder slate): ``gpu_sec`` is its
  render-slot seconds, as the budgeter counts them (``budget/cost.py``), plus the frames and
  seconds of video of the clip it delivered.

The budget is counted in ``gpu_sec`` (the planner's unit); the price table gives the cost.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from anime_pipeline.domain.contracts import BACKEND_PLACEHOLDER, LOCAL_BACKENDS
from anime_pipeline.domain.records import ClipRecord
from anime_pipeline.ledger.prices import DEFAULT_PRICES, PriceTable
from anime_pipeline.ledger.records import BudgetStatus, Unit, UsageEntry

LOCAL_PROVIDERS = frozenset((*LOCAL_BACKENDS, BACKEND_PLACEHOLDER))


def clip_usage(record: ClipRecord, *, run_id: str, user: str = "unknown",
               prices: PriceTable = DEFAULT_PRICES, at: dt.datetime | None = None,
               ) -> list[UsageEntry]:
    """The ledger entries of the render ``record`` describes (none for a reused clip)."""
    tenant, project, episode = record.episode_key.split("/")
    when = at or dt.datetime.now(dt.UTC)
    out: list[UsageEntry] = []

    def add(attempt: int, call: int, provider: str, unit: Unit, amount: float,
            outcome: str, server: str | None = None, prompt_id: str | None = None) -> None:
        if amount <= 0 and unit != "gpu_sec":
            return
        out.append(UsageEntry(
            tenant=tenant, project=project, episode=episode, shot=record.shot_id,
            run_id=run_id, attempt=attempt, call=call, provider=provider, server=server,
            prompt_id=prompt_id, unit=unit, amount=round(max(0.0, amount), 3),
            cost=prices.cost(provider, unit, max(0.0, amount)), currency=prices.currency,
            user=user, outcome=outcome, at=when))

    last = len(record.attempts)
    for number, attempt in enumerate(record.attempts, start=1):
        delivered = attempt.ok and number == last
        if attempt.backend in LOCAL_PROVIDERS:
            outcome = "ok" if attempt.ok else "failed"
            add(number, 0, attempt.backend, "gpu_sec", attempt.seconds, outcome)
            if delivered:
                add(number, 0, attempt.backend, "frames", float(record.frames), outcome)
                add(number, 0, attempt.backend, "video_sec", record.duration_ms / 1000, outcome)
            continue
        for call, u in enumerate(attempt.usage):
            gpu = u.gpu_sec if u.gpu_sec is not None else u.wall_sec
            for unit, amount in (("gpu_sec", gpu), ("frames", float(u.frames)),
                                 ("video_sec", u.video_sec)):
                add(number, call, u.provider, unit, amount,  # type: ignore[arg-type]
                    u.outcome, u.server, u.prompt_id)
    return out


Verdict = Literal["render", "alert", "degrade", "refuse"]


@dataclass(frozen=True)
class BudgetVerdict:
    """What to do before spending ``estimate_gpu_sec`` more on a project."""

    verdict: Verdict
    message: str

    @property
    def proceed(self) -> bool:
        return self.verdict in ("render", "alert")


def budget_verdict(status: BudgetStatus | None, estimate_gpu_sec: float, *,
                   what: str = "the render") -> BudgetVerdict:
    """``render`` while the spend so far plus ``estimate_gpu_sec`` fits the period's budget;
    past it, the project's ``on_exceed``: ``alert`` (render anyway), ``degrade`` (render on
    local backends) or ``refuse`` (spend nothing)."""
    if status is None:
        return BudgetVerdict("render", "no budget set")
    if estimate_gpu_sec <= 0:
        return BudgetVerdict("render", "nothing to spend (every clip is current)")
    b = status.budget
    need = status.spent_gpu_sec + max(0.0, estimate_gpu_sec)
    if need <= status.limit_gpu_sec:
        return BudgetVerdict("render", f"{_minutes(need)} of {b.gpu_minutes:g} GPU minutes")
    message = (f"budget of {b.tenant}/{b.project} for {status.period_label}: "
               f"{_minutes(status.spent_gpu_sec)} of {b.gpu_minutes:g} GPU minutes spent, "
               f"{what} needs about {_minutes(estimate_gpu_sec)} more "
               f"(on_exceed: {b.on_exceed})")
    return BudgetVerdict(b.on_exceed, message)


def _minutes(gpu_sec: float) -> str:
    """GPU seconds as minutes, to three significant digits (0.0325, 1.5, 612)."""
    return f"{gpu_sec / 60:.3g}"
