"""The ledger's typed records: one billable call, a project budget, where a budget stands, and
a row of a usage summary. Plain pydantic (no SQL, no Dagster)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Unit = Literal["gpu_sec", "frames", "video_sec", "images", "tokens"]
UNITS: tuple[Unit, ...] = ("gpu_sec", "frames", "video_sec", "images", "tokens")
Period = Literal["day", "week", "month", "total"]
OnExceed = Literal["alert", "degrade", "refuse"]
GroupBy = Literal["day", "episode", "provider", "user", "project"]
Outcome = Literal["ok", "failed", "lost", "interrupted", "degraded", "placeholder"]


class LedgerRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UsageEntry(LedgerRecord):
    """One billable amount of one call: a shot's render attempt (``attempt``, from 1) and the
    call within it (``call``, from 0; a generative attempt makes one prompt per segment), in
    one unit. ``(run_id, episode key, shot, attempt, call, unit)`` is unique: recording it
    again adds nothing."""

    tenant: str
    project: str
    episode: str
    shot: str
    run_id: str
    attempt: int = Field(ge=1)
    call: int = Field(default=0, ge=0)
    provider: str
    server: str | None = None
    prompt_id: str | None = None
    unit: Unit
    amount: float = Field(ge=0)
    cost: float = Field(default=0.0, ge=0)
    currency: str = "USD"
    user: str = "unknown"
    outcome: str = "ok"
    at: dt.datetime

    @property
    def episode_key(self) -> str:
        return f"{self.tenant}/{self.project}/{self.episode}"


class ProjectBudget(LedgerRecord):
    """A project's GPU allowance per period, and what happens when it is used up."""

    tenant: str
    project: str
    gpu_minutes: float = Field(gt=0)
    period: Period = "month"
    on_exceed: OnExceed = "alert"


class BudgetStatus(LedgerRecord):
    """Where a project's budget stands in its current period."""

    budget: ProjectBudget
    period_start: dt.datetime | None  # None for period "total"
    period_label: str  # "2026-12", "2026-W49", "2026-12-01", "total"
    spent_gpu_sec: float

    @property
    def limit_gpu_sec(self) -> float:
        return self.budget.gpu_minutes * 60.0

    @property
    def remaining_gpu_sec(self) -> float:
        return max(0.0, self.limit_gpu_sec - self.spent_gpu_sec)

    @property
    def used_fraction(self) -> float:
        return self.spent_gpu_sec / self.limit_gpu_sec

    @property
    def exceeded(self) -> bool:
        return self.spent_gpu_sec >= self.limit_gpu_sec


class UsageFilter(LedgerRecord):
    tenant: str | None = None
    project: str | None = None
    episode: str | None = None
    user: str | None = None
    provider: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


class UsageSummaryRow(LedgerRecord):
    """One group of a usage summary: the amount per unit, the cost, the number of calls."""

    group: str
    amounts: dict[str, float]
    cost: float
    currency: str
    calls: int
