"""Schedules: the nightly re-plan of every registered episode (in code), and the schedules
kept as data (``anime_pipeline.timetable``), fired by ``schedules_sensor``."""

import datetime as dt
import json

import dagster as dg

from anime_pipeline.defs.jobs import clips_job, delivery_job, plan_job
from anime_pipeline.defs.partitions import EPISODES, clip_range_tags
from anime_pipeline.defs.resources import LedgerResource, StorageResource
from anime_pipeline.defs.review import review_episode_job
from anime_pipeline.pipeline import catalog
from anime_pipeline.storage import Storage
from anime_pipeline.timetable import ScheduleStore


@dg.schedule(
    cron_schedule="0 2 * * *", job=plan_job, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Nightly: re-plan every registered episode; the episode flow sensor then "
                "renders what changed (current clips are reused) and delivers.",
)
def nightly_replan(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    return [dg.RunRequest(run_key=f"nightly:{key}:{context.scheduled_execution_time:%Y%m%d}",
                          partition_key=key)
            for key in context.instance.get_dynamic_partitions(EPISODES)]


# --------------------------------------------------------------------------- schedules as data


def _request(action: str, key: str, shots: list[str], run_key: str) -> dg.RunRequest:
    tags = {"anime_pipeline/schedule_run": run_key}
    if action == "plan":
        return dg.RunRequest(job_name="plan_episode", partition_key=key, run_key=run_key,
                             tags=tags)
    if action == "deliver":
        return dg.RunRequest(job_name="deliver_episode", partition_key=key, run_key=run_key,
                             tags=tags)
    if action == "render":
        return dg.RunRequest(job_name="render_clips", run_key=run_key,
                             tags={**tags, **clip_range_tags(key, shots)})
    return dg.RunRequest(job_name="review_episode", run_key=run_key, tags=tags,
                         run_config={"ops": {"review_clips": {"config": {"episode_key": key}}}})


def schedules_tick(context: dg.SensorEvaluationContext, store: Storage, url: str,
                   now: dt.datetime | None = None) -> dg.SensorResult:
    """One evaluation of ``schedules_sensor`` (its body, testable with any ``now``)."""
    now = now or dt.datetime.now(dt.UTC)
    fired: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    table = ScheduleStore(url)
    episodes = sorted(context.instance.get_dynamic_partitions(EPISODES))
    requests: list[dg.RunRequest] = []
    for schedule in table.all():
        if not schedule.enabled:
            continue
        # The cursor is the truth of what fired (saved with the run requests); the table's
        # last_fired_tick is for people (schedule list). A cursor reset fires the latest tick
        # again only in name: its run key is the same, and Dagster drops a repeated key.
        last = fired.get(schedule.id)
        known = schedule.model_copy(update={
            "last_fired_tick": dt.datetime.fromisoformat(last) if last else None})
        tick = known.due(now)
        if tick is None:
            continue
        targets = known.targets(episodes)
        for key in targets:
            shots = catalog.entry(store, key).shots if schedule.action == "render" else []
            requests.append(_request(schedule.action, key, shots,
                                     f"schedule:{schedule.id}:{tick:%Y%m%dT%H%M%SZ}:{key}"))
        context.log.info(f"schedule {schedule.id} ({schedule.cron} {schedule.timezone}, "
                         f"{schedule.action} {schedule.target}): tick {tick.isoformat()}, "
                         f"{len(targets)} episode(s)")
        fired[schedule.id] = tick.isoformat()
        table.mark_fired(schedule.id, tick)
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(fired, sort_keys=True))


@dg.sensor(
    jobs=[plan_job, clips_job, delivery_job, review_episode_job], minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Fires the schedules kept as data (`anime-pipeline schedule add|list|rm`): "
                "each due tick once (run keys carry the tick); after downtime only the "
                "latest missed tick fires.",
)
def schedules_sensor(context: dg.SensorEvaluationContext, storage: StorageResource,
                     ledger: LedgerResource) -> dg.SensorResult:
    return schedules_tick(context, storage.store(), ledger.ledger().url)
