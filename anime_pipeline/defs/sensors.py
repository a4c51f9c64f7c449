"""Sensors: episodes dropped in an inbox, the episode flowing downstream after every run that
materializes part of it (whoever launched it: a job, the asset catalog, a backfill, the
schedule), and dead runs giving back their pool slots."""


import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path

import dagster as dg

from anime_pipeline.defs.jobs import clips_job, delivery_job, plan_job
from anime_pipeline.defs.metadata import read_reused
from anime_pipeline.defs.partitions import (
    clip_key,
    clip_range_tags,
    register_partitions,
    split_clip_key,
)
from anime_pipeline.defs.resources import PipelineSettings, StorageResource
from anime_pipeline.domain.episode import EPISODE_FILE, EpisodeValidationError
from anime_pipeline.instance import DRIVER_TAG, reap_dead_runs
from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.delivery import ClipsMissing, episode_clips

MAX_FINGERPRINT_FILES = 10_000
log = logging.getLogger("anime_pipeline.sensors")


def folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of the folder's files (changed => re-register)."""
    h = hashlib.sha256()
    for i, p in enumerate(sorted(folder.rglob("*"))):
        if i >= MAX_FINGERPRINT_FILES:
            break
        try:
            st = p.lstat()
        except OSError:
            continue
        h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dg.sensor(
    jobs=[plan_job], minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
    description="Registers episode folders found in the inbox folders of the `settings` "
                "resource ($ANIME_PIPELINE_INBOX), new or changed, and plans them. Refused "
                "folders are logged with every problem and retried only once they change.",
)
def episode_inbox_sensor(context: dg.SensorEvaluationContext, settings: PipelineSettings,
                         storage: StorageResource) -> dg.SensorResult:
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    store = storage.store()
    requests: list[dg.RunRequest] = []
    for root in settings.config().inbox:
        for episode_file in sorted(root.glob(f"*/{EPISODE_FILE}")):
            folder = episode_file.parent
            fp = folder_fingerprint(folder)
            if seen.get(str(folder)) == fp:
                continue
            seen[str(folder)] = fp
            try:
                bundle = catalog.register(store, folder)
            except EpisodeValidationError as e:
                context.log.error(str(e))
                continue
            ep = bundle.episode
            register_partitions(context.instance, ep.key, [s.id for s in ep.shots])
            requests.append(dg.RunRequest(run_key=f"{ep.key}:{fp}", partition_key=ep.key))
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen))


# --------------------------------------------------------------------------- episode flow


def materialized_by_run(instance: dg.DagsterInstance, run_id: str) -> dict[str, set[str]]:
    """Asset name -> partition keys the run materialized; for ``clips``, also the partitions
    whose current clip it reused (one observation lists them): they are as done."""
    out: dict[str, set[str]] = defaultdict(set)
    cursor = None
    kinds = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION}
    while True:
        conn = instance.get_records_for_run(run_id, cursor=cursor, of_type=kinds)
        for rec in conn.records:
            event = rec.event_log_entry.dagster_event
            if event is None or event.asset_key is None:
                continue
            if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
                report = read_reused(event.asset_observation_data.asset_observation.metadata)
                if report is not None:
                    out[event.asset_key.to_user_string()].update(
                        clip_key(report.episode_key, s) for s in report.shot_ids)
                continue
            out[event.asset_key.to_user_string()].add(event.partition or "")
        if not conn.has_more:
            return out
        cursor = conn.cursor


def next_stages(run: dg.DagsterRun, done: dict[str, set[str]],
                storage: StorageResource) -> list[dg.RunRequest]:
    """What comes after what ``run`` materialized, per episode."""
    requests: list[dg.RunRequest] = []
    store = storage.store()

    def ask(stage: str, key: str, job: str, **kwargs: object) -> None:
        requests.append(dg.RunRequest(run_key=f"{stage}:{run.run_id}:{key}", job_name=job,
                                      **kwargs))  # type: ignore[arg-type]

    for key in sorted(done.get("shot_plan", set()) - done.get("shot_compute_budget_plan", set())):
        rest = ["shot_compute_budget_plan"]
        if key not in done.get("audio_event_manifest", set()):
            rest.insert(0, "audio_event_manifest")
        ask("plan", key, plan_job.name, partition_key=key,
            asset_selection=[dg.AssetKey(a) for a in rest])
    for key in sorted(done.get("audio_event_manifest", set())
                      - done.get("shot_compute_budget_plan", set()) - done.get("shot_plan", set())):
        ask("plan", key, plan_job.name, partition_key=key,
            asset_selection=[dg.AssetKey("shot_compute_budget_plan")])
    for key in sorted(done.get("shot_compute_budget_plan", set())):
        try:
            bundle = catalog.load_registered(store, key)
        except (LookupError, ValueError, EpisodeValidationError) as e:
            log.warning("episode flow: %s planned but cannot be loaded now: %s", key, e)
            continue
        shot_ids = [s.id for s in bundle.episode.shots]
        ask("clips", key, clips_job.name, tags=clip_range_tags(key, shot_ids))
    episodes = {split_clip_key(k)[0] for k in done.get("clips", set()) if k}
    for key in sorted(episodes):
        try:
            episode_clips(store, catalog.load_registered(store, key))
        except (ClipsMissing, LookupError, EpisodeValidationError):
            continue  # not every shot has a clip yet: a later run will deliver
        ask("deliver", key, delivery_job.name, partition_key=key)
    for key in sorted(done.get("composite", set()) - done.get("package_zip", set())):
        ask("package", key, delivery_job.name, partition_key=key,
            asset_selection=[dg.AssetKey("package_zip")])
    return requests


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, request_jobs=[plan_job, clips_job, delivery_job],
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=10,
    description="After every successful run that materialized part of an episode, however it "
                "was launched, requests the next stage: planning -> clips of every shot -> "
                "composite and package. Runs driven by the CLI chain themselves and are "
                "skipped.",
)
def episode_flow_sensor(context: dg.RunStatusSensorContext, storage: StorageResource
                        ) -> list[dg.RunRequest] | dg.SkipReason:
    run = context.dagster_run
    if run.tags.get(DRIVER_TAG) == "cli":
        return dg.SkipReason(f"run {run.run_id[:8]} was driven by the CLI")
    done = materialized_by_run(context.instance, run.run_id)
    requests = next_stages(run, done, storage)
    return requests or dg.SkipReason(f"run {run.run_id[:8]}: nothing downstream to do")


@dg.sensor(
    minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks runs whose worker process died (kill -9, OOM) as failed and frees the "
                "gpu pool slots they held, so no later render waits forever.",
)
def dead_run_reaper(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    reaped = reap_dead_runs(context.instance)
    for r in reaped:
        context.log.warning(f"run {r.run_id} ({r.job_name}): {r.why}; its slots are freed")
    return dg.SkipReason(f"{len(reaped)} dead run(s) reaped" if reaped else "no dead runs")


