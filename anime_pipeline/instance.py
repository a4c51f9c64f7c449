"""Working with the Dagster instance: the one instance home, and runs that died.

A render killed with ``kill -9`` never reports its end: its run stays "started" and the ``gpu``
pool slot its clips step claimed stays held, so every later render on that instance would wait
forever. Every run that renders records which process and host it runs in
(:func:`claim_run_worker`); :func:`reap_dead_runs` marks a run whose process is gone as failed
and frees its slots, and frees slots still held by runs that already ended. The CLI calls it
before and while it waits for a slot; with the daemon running, a sensor calls it every minute.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from anime_pipeline.settings import ensure_instance_home, instance_home

DRIVER_TAG = "anime_pipeline/driver"  # "cli": the CLI drives the stages itself
WORKER_PID_TAG = "anime_pipeline/worker_pid"
WORKER_HOST_TAG = "anime_pipeline/worker_host"
# Set on a run that refused to render (the project's budget, a rebalance_required plan): its
# shots were never tried, so they are not render failures (the monitor, the metrics).
REFUSED_TAG = "anime_pipeline/refused"
GPU_POOL = "gpu"
_IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.CANCELING]


def open_instance(home: Path | None = None) -> dg.DagsterInstance:
    """The instance in ``home`` (default: :func:`anime_pipeline.settings.instance_home`)."""
    folder = ensure_instance_home(home or instance_home())
    return dg.DagsterInstance.from_config(str(folder))


def worker_tags() -> dict[str, str]:
    """The tags that say which process on which host runs a run."""
    return {WORKER_PID_TAG: str(os.getpid()), WORKER_HOST_TAG: socket.gethostname()}


def claim_run_worker(instance: dg.DagsterInstance, run_id: str) -> None:
    """Record this process as the worker of ``run_id`` (so a dead one can be found)."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.tags.get(WORKER_PID_TAG) != str(os.getpid()):
        instance.add_run_tags(run_id, worker_tags())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ReapedRun:
    run_id: str
    job_name: str
    why: str


def reap_dead_runs(instance: dg.DagsterInstance, pool: str = GPU_POOL) -> list[ReapedRun]:
    """Fail runs of this host whose worker process is gone; free every slot of ``pool`` held
    by a run that is no longer running. Runs of other hosts are never touched."""
    host = socket.gethostname()
    reaped: list[ReapedRun] = []
    for rec in instance.get_run_records(dg.RunsFilter(statuses=_IN_PROGRESS)):
        run = rec.dagster_run
        pid = run.tags.get(WORKER_PID_TAG, "")
        if run.tags.get(WORKER_HOST_TAG) != host or not pid.isdigit() or _alive(int(pid)):
            continue
        why = f"its worker process {pid} on {host} is gone (killed?)"
        instance.report_run_failed(run, message=f"Run marked failed by anime_pipeline: {why}.")
        reaped.append(ReapedRun(run.run_id, run.job_name, why))
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in sorted(storage.get_concurrency_info(pool).active_run_ids):
            holder = instance.get_run_by_id(run_id)
            if holder is None or holder.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                if run_id not in {r.run_id for r in reaped}:
                    reaped.append(ReapedRun(run_id, holder.job_name if holder else "?",
                                            "it ended without giving its slot back"))
    return reaped


def pool_wait_report(instance: dg.DagsterInstance, run_id: str,
                     pool: str = GPU_POOL) -> str | None:
    """What ``run_id`` waits for when its step waits for a ``pool`` slot, else None."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return None
    info = storage.get_concurrency_info(pool)
    if run_id not in info.pending_run_ids:
        return None
    holders = []
    for holder in sorted(info.active_run_ids):
        run = instance.get_run_by_id(holder)
        if run is None:
            holders.append(f"run {holder[:8]} (gone)")
            continue
        record = instance.get_run_record_by_id(holder)
        since = ""
        if record is not None and record.start_time:
            since = " since " + datetime.fromtimestamp(record.start_time, UTC).strftime(
                "%H:%M:%S UTC")
        what = run.tags.get("dagster/partition") or run.tags.get(
            "dagster/asset_partition_range_start", "")
        holders.append(f"run {holder[:8]} ({run.job_name}{', ' + what if what else ''}"
                       f"{since})")
    return (f"waiting for a slot of the '{pool}' pool (limit {info.slot_count}), held by "
            + (", ".join(holders) or "no run (queued behind others)"))
