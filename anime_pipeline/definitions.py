"""The anime_pipeline code location."""

from __future__ import annotations

import dagster as dg

from anime_pipeline.defs.assets import episode_assets
from anime_pipeline.defs.jobs import JOBS, SCHEDULES, SENSORS
from anime_pipeline.defs.resources import render_settings_from_env, storage_from_env
from anime_pipeline.defs.runtime import runtime_defs


@dg.definitions
def defs() -> dg.Definitions:
    pipeline = dg.Definitions(
        assets=episode_assets,
        jobs=JOBS,
        sensors=SENSORS,
        schedules=SCHEDULES,
        resources={"storage": storage_from_env(), "render_settings": render_settings_from_env()},
        # Steps of one run execute in the run's process: the renders inside a clips step are
        # already concurrent ffmpeg processes, and a process per step costs ~1 s of imports.
        executor=dg.in_process_executor,
    )
    return dg.Definitions.merge(pipeline, runtime_defs)
