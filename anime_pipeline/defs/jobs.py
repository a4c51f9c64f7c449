"""Jobs per partitions definition (a run covers one), the nightly schedule and sensors that
register episodes dropped in an inbox and chain an episode's stages."""


import hashlib
import os
from pathlib import Path

import dagster as dg

from anime_pipeline import steps
from anime_pipeline.defs.assets import (
    audio_event_manifest,
    clips,
    composite,
    package_zip,
    shot_compute_budget_plan,
    shot_plan,
)
from anime_pipeline.defs.partitions import (
    EPISODES,
    SHOTS,
    clip_partitions,
    clip_range_tags,
    episode_partitions,
)
from anime_pipeline.defs.resources import StorageResource
from anime_pipeline.domain.episode import EPISODE_FILE, EpisodeValidationError
from anime_pipeline.storage import EpisodeKeys, get_json

plan_job = dg.define_asset_job(
    "plan_episode", selection=[shot_plan, audio_event_manifest, shot_compute_budget_plan],
    partitions_def=episode_partitions,
    description="Validate the episode, analyse its audio and plan per-shot compute.",
)
clips_job = dg.define_asset_job(
    "render_clips", selection=[clips], partitions_def=clip_partitions,
    description="Render shots; launch over a partition range to render an episode in one run.",
)
delivery_job = dg.define_asset_job(
    "deliver_episode", selection=[composite, package_zip], partitions_def=episode_partitions,
    description="Composite the episode and build its delivery ZIP.",
)
JOBS = [plan_job, clips_job, delivery_job]


def inbox_dirs() -> list[Path]:
    raw = os.environ.get("ANIME_PIPELINE_INBOX", "")
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


def _folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dg.sensor(
    jobs=[plan_job], minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
    description="Registers episode folders found under $ANIME_PIPELINE_INBOX (new or changed) "
                "and plans them. Refused folders are logged with every problem.",
)
def episode_inbox_sensor(context: dg.SensorEvaluationContext, storage: StorageResource
                         ) -> dg.SensorResult:
    import json

    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    store = storage.store()
    requests: list[dg.RunRequest] = []
    new_episodes: list[str] = []
    new_shots: set[str] = set()
    known_shots = set(context.instance.get_dynamic_partitions(SHOTS))
    for root in inbox_dirs():
        for episode_file in sorted(root.glob(f"*/{EPISODE_FILE}")):
            folder = episode_file.parent
            fp = _folder_fingerprint(folder)
            if seen.get(str(folder)) == fp:
                continue
            seen[str(folder)] = fp
            try:
                bundle = steps.register_episode(store, folder)
            except EpisodeValidationError as e:
                context.log.error(str(e))
                continue
            key = bundle.episode.key
            if not context.instance.has_dynamic_partition(EPISODES, key):
                new_episodes.append(key)
            new_shots.update(s.id for s in bundle.episode.shots if s.id not in known_shots)
            requests.append(dg.RunRequest(run_key=f"{key}:{fp}", partition_key=key))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[
            *( [episode_partitions.build_add_request(new_episodes)] if new_episodes else []),
            *( [dg.DynamicPartitionsDefinition(name=SHOTS).build_add_request(sorted(new_shots))]
               if new_shots else []),
        ],
        cursor=json.dumps(seen),
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[plan_job], request_job=clips_job,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="When an episode is planned, render all its shots in one run.",
)
def render_after_plan(context: dg.RunStatusSensorContext, storage: StorageResource):
    episode_key = context.dagster_run.tags.get("dagster/partition")
    if not episode_key:
        return dg.SkipReason("planning run had no episode partition")
    plan = get_json(storage.store(), EpisodeKeys(episode_key).compute_plan)
    shot_ids = [s["shot_id"] for s in plan["shots"]]
    return dg.RunRequest(run_key=f"clips:{context.dagster_run.run_id}",
                         tags=clip_range_tags(episode_key, shot_ids))


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[clips_job], request_job=delivery_job,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="When an episode's clips are rendered, composite and package it.",
)
def deliver_after_clips(context: dg.RunStatusSensorContext):
    start = context.dagster_run.tags.get("dagster/asset_partition_range_start") or \
        context.dagster_run.tags.get("dagster/partition")
    if not start:
        return dg.SkipReason("clips run had no partition")
    episode_key = clip_partitions.get_partition_key_from_str(start).keys_by_dimension["episode"]
    return dg.RunRequest(run_key=f"deliver:{context.dagster_run.run_id}",
                         partition_key=episode_key)


@dg.schedule(
    cron_schedule="0 2 * * *", job=plan_job, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Nightly: re-plan every registered episode (unchanged clips are reused).",
)
def nightly_replan(context: dg.ScheduleEvaluationContext):
    for key in context.instance.get_dynamic_partitions(EPISODES):
        yield dg.RunRequest(run_key=f"nightly:{key}:{context.scheduled_execution_time:%Y%m%d}",
                            partition_key=key)


SENSORS = [episode_inbox_sensor, render_after_plan, deliver_after_clips]
SCHEDULES = [nightly_replan]
