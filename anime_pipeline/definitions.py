"""The anime_pipeline code location: every module under ``anime_pipeline/defs`` (one topic
each: resources, partitions, planning assets, clips, delivery assets, checks, jobs, sensors,
schedules, runtime), discovered by ``load_from_defs_folder``."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
