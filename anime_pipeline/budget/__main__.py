"""``python -m anime_pipeline.budget [--check]``: regenerate ``compute_plan.schema.json``
from :class:`~anime_pipeline.budget.plan.ComputePlan`, or (``--check``) exit 1 when the
committed file differs from the model's schema."""

from __future__ import annotations

import sys

from anime_pipeline.budget.schema import (
    SCHEMA_PATH,
    generate_plan_schema,
    schema_text,
    write_plan_schema,
)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        same = SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(generate_plan_schema())
        print(f"{SCHEMA_PATH}: {'up to date' if same else 'out of date'}")
        return 0 if same else 1
    print(f"wrote {write_plan_schema()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
