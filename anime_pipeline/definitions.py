"""The anime_pipeline code location: every module under ``anime_pipeline/defs`` (one topic
each: resources, partitions, planning assets, clips, delivery assets, checks, jobs, sensors,
schedules, runtime), discovered by ``load_from_defs_folder``."""

import os
import sys
from pathlib import Path

import dagster as dg

from anime_pipeline import logs
from anime_pipeline.settings import DAGSTER_HOME_ENV, default_home, instance_home

_announced = False


def _announce() -> None:
    """Under ``dagster dev``, say once which homes this code location uses (the CLI prints
    the same), and warn when dagster dev runs on a throw-away instance."""
    global _announced
    if _announced or not os.environ.get("DAGSTER_IS_DEV_CLI"):
        return
    _announced = True
    if os.environ.get(DAGSTER_HOME_ENV):
        where = f"instance {instance_home()}"
    else:
        where = ("a TEMPORARY instance (DAGSTER_HOME is not set: start `make dev`, or "
                 f"`dagster dev` in the project folder, to use {instance_home()}, the one "
                 "`anime-pipeline render` uses)")
    print(f"anime_pipeline: {where}; pipeline home {default_home()}", file=sys.stderr,
          flush=True)


@dg.definitions
def defs() -> dg.Definitions:
    logs.configure()
    _announce()
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
