"""The usage ledger: every billable call, project budgets and the alerts already sent, in one
SQL database (SQLite under the pipeline home, or PostgreSQL by URL). No Dagster import."""

from anime_pipeline.ledger.prices import DEFAULT_PRICES, PriceTable, PriceTableError, load_prices
from anime_pipeline.ledger.records import (
    BudgetStatus,
    ProjectBudget,
    UsageEntry,
    UsageFilter,
    UsageSummaryRow,
)
from anime_pipeline.ledger.store import LEDGER_URL_ENV, Ledger, default_url, period_start
from anime_pipeline.ledger.usage import BudgetVerdict, budget_verdict, clip_usage

__all__ = [
    "DEFAULT_PRICES",
    "LEDGER_URL_ENV",
    "BudgetStatus",
    "BudgetVerdict",
    "Ledger",
    "PriceTable",
    "PriceTableError",
    "ProjectBudget",
    "UsageEntry",
    "UsageFilter",
    "UsageSummaryRow",
    "budget_verdict",
    "clip_usage",
    "default_url",
    "load_prices",
    "period_start",
]
