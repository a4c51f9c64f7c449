"""Schedules: the nightly re-plan of every registered episode."""


import dagster as dg

from anime_pipeline.defs.jobs import plan_job
from anime_pipeline.defs.partitions import EPISODES


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
