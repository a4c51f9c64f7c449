"""What a clips run spends: its usage written to the ledger as each shot finishes, and the
project budget checked before the render starts and before each generative shot.

* Before the render: the plan's estimate for the shots that will really render (not those
  whose clip is reused) against what the period has left. ``refuse`` fails the run before
  anything is spent (:class:`BudgetRefused`); ``degrade`` sends every shot to the local
  backends; ``alert`` renders and says so.
* Before each generative shot: the same against the ledger *now* plus what the shots still
  in flight are expected to cost (their reservations), so six shots on a farm cannot all slip
  past the last minute of a budget. ``degrade`` renders that shot on the local backends;
  ``refuse`` stops the run (shots not started never start).

A shot's usage is recorded once it has a clip record: one entry per billable call and unit,
idempotent per ``(run, shot, attempt, call, unit)``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from anime_pipeline.budget import ComputePlan, ShotPlan
from anime_pipeline.domain.contracts import LOCAL_BACKENDS
from anime_pipeline.domain.records import ClipRecord
from anime_pipeline.domain.rendering import RenderAborted
from anime_pipeline.ledger import (
    DEFAULT_PRICES,
    BudgetStatus,
    BudgetVerdict,
    Ledger,
    PriceTable,
    budget_verdict,
    clip_usage,
)

log = logging.getLogger("anime_pipeline.progress")


class BudgetRefused(RenderAborted):
    """The project's budget is spent and its ``on_exceed`` is ``refuse``."""


def local_entry(entry: ShotPlan) -> ShotPlan:
    """``entry`` rendered on the local backends only (its generative ones dropped)."""
    local = [b for b in entry.backend_preference if b in LOCAL_BACKENDS]
    return entry.model_copy(update={"backend_preference": local or [LOCAL_BACKENDS[0]]})


@dataclass
class Spend:
    """The ledger side of one clips run (one project)."""

    ledger: Ledger
    tenant: str
    project: str
    run_id: str
    user: str = "unknown"
    prices: PriceTable = DEFAULT_PRICES
    on_recorded: Callable[[BudgetStatus | None], None] | None = None  # alerts, after each shot
    degrade_all: bool = False  # set when the pre-render check said degrade
    _reserved: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _alerted: bool = False

    @classmethod
    def for_episode(cls, ledger: Ledger, episode_key: str, **kwargs: object) -> Spend:
        tenant, project, _ = episode_key.split("/")
        return cls(ledger, tenant, project, **kwargs)  # type: ignore[arg-type]

    def status(self) -> BudgetStatus | None:
        return self.ledger.budget_status(self.tenant, self.project)

    # ----------------------------------------------------------------- checks

    def before_render(self, plan: ComputePlan, shot_ids: Sequence[str],
                      reused: Callable[[ShotPlan], bool]) -> BudgetVerdict:
        """Check the plan's estimate for the shots that will render; raise
        :class:`BudgetRefused` when the project refuses, remember a ``degrade``."""
        wanted = set(shot_ids)
        estimate = sum(e.estimated_cost.gpu_sec for e in plan.shots
                       if e.shot_id in wanted and not reused(e))
        verdict = budget_verdict(self.status(), estimate, what=f"{plan.episode_key}")
        if verdict.verdict == "refuse":
            raise BudgetRefused(f"refused before rendering: {verdict.message}")
        if verdict.verdict == "degrade":
            self.degrade_all = True
            log.warning("%s: %s: rendering on local backends", plan.episode_key,
                        verdict.message)
        elif verdict.verdict == "alert":
            log.warning("%s: over budget, rendering anyway: %s", plan.episode_key,
                        verdict.message)
        return verdict

    def before_shot(self, entry: ShotPlan, generative: set[str]) -> ShotPlan:
        """The entry to render: as planned, or on local backends when the budget says
        degrade; :class:`BudgetRefused` when it refuses. Reserves the shot's estimate."""
        if self.degrade_all and set(entry.backend_preference) & generative:
            return local_entry(entry)
        if entry.backend_preference[0] not in generative:
            return entry
        with self._lock:
            status = self.status()
            pending = sum(self._reserved.values())
            verdict = budget_verdict(
                None if status is None else status.model_copy(
                    update={"spent_gpu_sec": status.spent_gpu_sec + pending}),
                entry.estimated_cost.gpu_sec, what=f"shot {entry.shot_id}")
            if verdict.verdict == "refuse":
                raise BudgetRefused(f"stopped before shot {entry.shot_id}: {verdict.message}")
            if verdict.verdict == "degrade":
                log.warning("%s: %s: rendered on local backends", entry.shot_id,
                            verdict.message)
                return local_entry(entry)
            if verdict.verdict == "alert" and not self._alerted:
                self._alerted = True
                log.warning("over budget, rendering anyway: %s", verdict.message)
            self._reserved[entry.shot_id] = entry.estimated_cost.gpu_sec
        return entry

    # ----------------------------------------------------------------- usage

    def record(self, record: ClipRecord) -> int:
        """Write a rendered clip's usage; release its reservation. Entries added."""
        added = self.ledger.record(clip_usage(record, run_id=self.run_id, user=self.user,
                                              prices=self.prices))
        with self._lock:
            self._reserved.pop(record.shot_id, None)
        if self.on_recorded is not None:
            self.on_recorded(self.status())
        return added

    def release(self, shot_id: str) -> None:
        with self._lock:
            self._reserved.pop(shot_id, None)
