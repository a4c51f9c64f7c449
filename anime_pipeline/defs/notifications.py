"""Sensors that notify (the text and the sending are :mod:`anime_pipeline.ops.notify`).

* ``run_failure_notifier`` — every failed run of this code location's jobs: ``run_failed``
  with the step and its error. Runs the CLI drives in process are invisible to the daemon's
  run status sensors (they match runs by the location that launched them), so the CLI
  notifies its own failures, under the same key: never twice.
* ``budget_alert_sensor`` — once a minute: the budget alerts due (80 % and 100 % of a
  project's period, once per period; the clips step also checks after each shot), and the
  notifications whose send failed, sent again.
* ``degradation_notifier`` — each step down of the execution policy (the runtime monitor's,
  or a manual ``runtime degrade``), read from the monitor's state file: the monitor sensor
  stays as it is, and a step is keyed by when it was taken, so it is sent once however often
  it is seen.
* ``package_zip`` notifies its delivery itself (see ``defs/delivery_assets.py``).

Exactly once across daemon restarts: the ledger's claim of a notification's key is the
guarantee; the cursors only spare the sensors from reading the same events again. Every
notification is also written to the sensor's (or the step's) Dagster log.
"""

import json
import socket
from pathlib import Path
from typing import Any

import dagster as dg

from anime_pipeline.cli.render import root_cause
from anime_pipeline.defs.partitions import RANGE_START_TAG, split_clip_key
from anime_pipeline.defs.resources import LedgerResource, NotifierResource, RuntimePolicyResource
from anime_pipeline.ops.notify import (
    check_budgets,
    clean,
    degraded_notification,
    run_failed_notification,
)
from anime_pipeline.runtime.monitor import STATE_FILE, MonitorState

PARTITION_TAG = "dagster/partition"


def episode_of_run(tags: dict[str, str]) -> str | None:
    """The episode a run worked on, from its partition tags (an episode or a clip key)."""
    key = tags.get(PARTITION_TAG) or tags.get(RANGE_START_TAG)
    if not key:
        return None
    if key.count("/") >= 3:  # a clip partition: tenant/project/episode/SHOT
        try:
            return split_clip_key(key)[0]
        except ValueError:
            return key
    return key


def step_failure_reason(events: list[dg.DagsterEvent], fallback: str) -> str:
    """``step: Error: message`` of the first failed step (no stack frames), else ``fallback``."""
    for event in events:
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            return f"{event.step_key or 'run'}: {root_cause(error)}"
    return fallback


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
    description="Notifies every failed run of this code location's jobs (run_failed: the job, "
                "the episode, the failed step and its error, a link to the run) to "
                "$ANIME_PIPELINE_WEBHOOK_URL and this log; once per run, even with the CLI.",
)
def run_failure_notifier(context: dg.RunFailureSensorContext, ledger: LedgerResource,
                         notifier: NotifierResource) -> dg.SkipReason:
    run = context.dagster_run
    alerts = notifier.notifier(ledger.ledger(), log=context.log)
    reason = step_failure_reason(list(context.get_step_failure_events()),
                                 context.failure_event.message or "run failed")
    n = run_failed_notification(run_id=run.run_id, job=run.job_name, reason=reason,
                                episode=episode_of_run(dict(run.tags)),
                                ui_base_url=alerts.ui_base_url)
    sent = alerts.notify(n)
    return dg.SkipReason(f"run {run.run_id[:8]}: {'notified' if sent else 'notified before'}")


@dg.sensor(
    minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
    description="Budget alerts: a project at 80% and at 100% of its period's GPU minutes, "
                "once per period; and notifications whose send failed, sent again.",
)
def budget_alert_sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource,
                        notifier: NotifierResource) -> dg.SkipReason:
    book = ledger.ledger()
    alerts = notifier.notifier(book, log=context.log)
    sent = check_budgets(book, alerts)
    resent = alerts.retry_unsent()
    return dg.SkipReason(f"{len(sent)} budget alert(s) sent, {len(resent)} resent")


def _read_state(path: Path) -> MonitorState | None:
    """The monitor state, read only (a corrupt file is the monitor's to set aside)."""
    try:
        return MonitorState.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cursor(raw: str | None) -> dict[str, Any]:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def degradation_tick(context: dg.SensorEvaluationContext, state_dir: str | Path,
                     ledger: LedgerResource, notifier: NotifierResource) -> dg.SensorResult:
    """One evaluation of ``degradation_notifier``: each step of the policy in force newer than
    the cursor is notified (once: keyed by when it was taken)."""
    cursor = _cursor(context.cursor)
    seen = float(cursor.get("through", 0.0) or 0.0)
    state = _read_state(Path(state_dir) / STATE_FILE)
    if state is None or not state.steps:
        return dg.SensorResult(skip_reason="the policy in force is the baseline",
                               cursor=json.dumps({"through": seen}))
    new = [(level, step) for level, step in enumerate(state.steps, start=1) if step.at > seen]
    if not new:
        return dg.SensorResult(skip_reason=f"degraded to level {state.level}, notified before",
                               cursor=json.dumps({"through": seen}))
    alerts = notifier.notifier(ledger.ledger(), log=context.log)
    where = clean(socket.gethostname(), 64)
    sent = 0
    for level, step in new:
        sent += alerts.notify(degraded_notification(
            at=step.at, kind=step.kind, reason=step.reason, level=level,
            manual=step.source == "manual", where=where))
    through = max(seen, *(step.at for _, step in new))
    return dg.SensorResult(skip_reason=f"{sent} degradation(s) notified",
                           cursor=json.dumps({"through": through}))


@dg.sensor(
    minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
    description="Notifies each step down of the execution policy (the runtime monitor's, or a "
                "manual `runtime degrade`), with its reason, once.",
)
def degradation_notifier(context: dg.SensorEvaluationContext, runtime: RuntimePolicyResource,
                         ledger: LedgerResource, notifier: NotifierResource
                         ) -> dg.SensorResult:
    return degradation_tick(context, runtime.state_dir, ledger, notifier)
