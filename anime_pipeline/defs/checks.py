"""Asset checks: every check names what it checks and is reported on its episode's (or, for
clips, its shot's) partition, so the UI shows which episode passed and why."""


import warnings

import dagster as dg

from anime_pipeline.defs.partitions import clip_partitions, episode_partitions
from anime_pipeline.domain.checks import DESCRIPTIONS, CheckOutcome

# Blocking: a failed check stops what is downstream in the same run.
BLOCKING = {"every_shot_planned_once", "critical_shots_at_floor", "composite_matches_episode",
            "package_checksums_match"}


def spec(name: str, asset: str, *, per_clip: bool = False) -> dg.AssetCheckSpec:
    # Partitioned checks are a preview feature in Dagster 1.13; chosen on purpose: without
    # them the UI shows a check's result without its episode ("Partition —").
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name, asset=asset, description=DESCRIPTIONS[name], blocking=name in BLOCKING,
            partitions_def=clip_partitions if per_clip else episode_partitions,
        )


PLAN_CHECKS = [spec(n, "shot_compute_budget_plan") for n in (
    "plan_within_budget", "every_shot_planned_once", "critical_shots_at_floor")]
CLIP_CHECK = spec("clip_rendered_as_planned", "clips", per_clip=True)
COMPOSITE_CHECK = spec("composite_matches_episode", "composite")
PACKAGE_CHECK = spec("package_checksums_match", "package_zip")


def result(outcome: CheckOutcome, *, warn: bool = False) -> dg.AssetCheckResult:
    """The result of a check on the step's own partition."""
    return dg.AssetCheckResult(
        check_name=outcome.name, passed=outcome.passed, description=outcome.description,
        metadata=outcome.metadata,
        severity=dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR,
    )


def evaluation(outcome: CheckOutcome, *, asset: str, partition: str,
               warn: bool = False) -> dg.AssetCheckEvaluation:
    """The result of a check on one partition of a multi-partition step (clips)."""
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(asset), check_name=outcome.name, passed=outcome.passed,
        description=outcome.description, metadata=outcome.metadata, partition=partition,
        severity=dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR,
    )
