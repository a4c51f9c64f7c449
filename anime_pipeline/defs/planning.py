"""What the budgeter reads from the Dagster instance: queue depth and render history."""

from __future__ import annotations

from typing import Any

import dagster as dg

from anime_pipeline.defs.runtime import current_resource_state
from anime_pipeline.domain.contracts import ResourceState
from anime_pipeline.runtime.policy import ExecutionPolicy

HISTORY_LIMIT = 2000
_ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
           dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def queue_depth(instance: dg.DagsterInstance) -> int:
    """Runs queued or in progress on the instance (the current one included)."""
    return instance.get_runs_count(dg.RunsFilter(statuses=_ACTIVE))


def resource_state(instance: dg.DagsterInstance) -> ResourceState:
    """The machine as the runtime policy in force sees it, plus the instance's queue."""
    return current_resource_state(queue_depth(instance))


def policy_record(policy: ExecutionPolicy) -> dict[str, Any]:
    """What a plan and each clip record of the policy they were made under."""
    return {"name": policy.name, "profile_class": str(policy.profile_class),
            "degraded": policy.degraded, "degrade_level": policy.degrade_level,
            "reasons": list(policy.reasons), "encoder": policy.encoder,
            "render_concurrency": policy.render_concurrency}


def clip_history_records(instance: dg.DagsterInstance, limit: int = HISTORY_LIMIT
                         ) -> list[dict[str, Any]]:
    """Past clip renders from our own materialization metadata (cached ones excluded)."""
    records = instance.fetch_materializations(dg.AssetKey("clips"), limit=limit).records
    out = []
    for rec in records:
        mat = rec.asset_materialization
        if mat is None:
            continue
        md = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
        if not md.get("in_episode", True) or md.get("cached") or md.get("placeholder"):
            continue
        if "render_seconds" not in md or "backend" not in md:
            continue
        out.append({"backend": md["backend"], "shot_type": md.get("shot_type"),
                    "fps": md.get("fps"), "resolution": md.get("resolution"),
                    "render_seconds": md["render_seconds"], "duration_ms": md.get("duration_ms")})
    return out


def cost_history(instance: dg.DagsterInstance) -> Any:
    from anime_pipeline.budget import CostHistory

    return CostHistory.from_records(clip_history_records(instance))
