"""Shot review: the state machine (``machine``) and its append-only history in SQL
(``store``, in the ledger's database). No Dagster import."""
