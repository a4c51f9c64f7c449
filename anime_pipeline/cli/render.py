"""``anime-pipeline render``: the same Dagster jobs as the UI, on the same instance, driven in
this process stage by stage (plan -> clips -> delivery), with progress per shot.

Settings reach the jobs as resources and run config, never as environment variables.
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import dagster as dg
from pydantic import BaseModel

from anime_pipeline.defs.clips import USER_TAG, reuse_observation
from anime_pipeline.defs.partitions import clip_range_tags, register_partitions
from anime_pipeline.defs.resources import LedgerResource, NotifierResource, pipeline_resources
from anime_pipeline.domain.records import ClipsReused, ClipStatus
from anime_pipeline.instance import (
    DRIVER_TAG,
    GPU_POOL,
    pool_wait_report,
    reap_dead_runs,
    worker_tags,
)
from anime_pipeline.ledger import Ledger
from anime_pipeline.logs import JsonFormatter, json_format
from anime_pipeline.ops.notify import Notifier, run_failed_notification
from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.clips import read_clip_records, render_span, shots_to_render
from anime_pipeline.pipeline.planning import read_compute_plan
from anime_pipeline.pipeline.scheduling import CLIP_STATS_KEYS, CLIP_STATS_TAG, ClipStats
from anime_pipeline.runtime import nvml
from anime_pipeline.settings import PipelineConfig
from anime_pipeline.storage import EpisodeKeys, LocalStore, Storage

PROGRESS_LOGGER = "anime_pipeline.progress"
SHOTS_LOGGER = "anime_pipeline.shots"  # local shots' lines: printed here, not in the run log
# The Dagster console logger prints stack frames for every failure; the CLI prints one line.
SILENT_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
WAIT_REPORT_EVERY_S = 10.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PLACEHOLDERS = 3  # delivered, but some shots are placeholder slates


class RenderFailed(RuntimeError):
    def __init__(self, stage: str, run_id: str, reason: str) -> None:
        super().__init__(f"{stage} failed (run {run_id}): {reason}")
        self.stage, self.run_id, self.reason = stage, run_id, reason


class ClipSummary(BaseModel):
    """One shot of ``render --json``: how its clip was made."""

    shot_id: str
    status: str
    backend: str
    server: str | None = None  # the ComfyUI server that generated it, for generative shots
    segments: int = 1
    render_seconds: float
    reason: str | None = None


class RenderReport(BaseModel):
    """What ``render --json`` prints."""

    episode_key: str
    composite: str
    package: str
    subtitles: list[str]
    shots: int
    duration_s: float
    plan_status: str
    delivered_with_placeholders: bool
    placeholder_shots: list[str]
    degraded_shots: list[str]
    reaped_runs: list[str]
    clips: list[ClipSummary]
    clip_stats: dict[str, Any]  # the render run's clip_stats tag (mean/P95/max, failures...)
    run_ids: dict[str, str]
    instance: str
    pipeline_home: str
    seconds: float


def root_cause(error: Any) -> str:
    """The user's own error message under Dagster's wrapping of it (no stack frames)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    cls = getattr(error, "cls_name", None)
    message = str(getattr(error, "message", error)).strip()
    qualified = re.match(r"^(?:[\w.]+\.)?(\w+): (.*)", message, re.S)
    if qualified and qualified.group(1) == cls:
        message = qualified.group(2)  # Dagster writes "package.module.Class: message"
    line = message.splitlines()[0] if message else ""
    return f"{cls}: {line}" if cls else (line or "unknown error")


def failure_reason(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure or event.is_run_failure:
            err = getattr(event.event_specific_data, "error", None)
            return f"{event.step_key or 'run'}: {root_cause(err) if err else event.message}"
    return "run failed"


class _Progress(logging.Handler):
    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.say = say
        self.json = JsonFormatter() if json_format() else None

    def emit(self, record: logging.LogRecord) -> None:
        self.say(self.json.format(record) if self.json else f"  {record.getMessage()}")


@contextmanager
def _progress(say: Callable[[str], None]) -> Iterator[None]:
    handler = _Progress(say)
    loggers = [logging.getLogger(name) for name in (PROGRESS_LOGGER, SHOTS_LOGGER)]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@contextmanager
def _watch_pool(instance: dg.DagsterInstance, run_id: str,
                say: Callable[[str], None]) -> Iterator[None]:
    """While the run waits for a pool slot, say what holds it; reap holders that died."""
    stop = threading.Event()

    def watch() -> None:
        last = ""
        while not stop.wait(1.0 if not last else WAIT_REPORT_EVERY_S):
            for r in reap_dead_runs(instance):
                say(f"  freed the {GPU_POOL} slot of run {r.run_id[:8]} ({r.job_name}): {r.why}")
            report = pool_wait_report(instance, run_id)
            if report:
                say(f"  {report}")
            last = report or ""

    thread = threading.Thread(target=watch, name="pool-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def ensure_gpu_pool(instance: dg.DagsterInstance) -> None:
    """One ``gpu`` slot per GPU found (one on a CPU-only machine), unless already set."""
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        info = storage.get_concurrency_info(GPU_POOL)
        if info.slot_count == 0 or info.using_default_limit:
            storage.set_concurrency_slots(GPU_POOL, max(1, len(nvml.query().gpus)))


def render_episode(
    folder: str | Path, *, config: PipelineConfig, instance: dg.DagsterInstance,
    instance_home: str = "", concurrency: int | None = None, burn_subtitles: bool = False,
    storage: Storage | None = None, say: Callable[[str], None] | None = None,
    allow_rebalance: bool = False, user: str | None = None,
    notifier: NotifierResource | None = None, ledger: LedgerResource | None = None,
) -> RenderReport:
    """Register the episode and materialize its whole graph on ``instance``. The runs carry
    the ``user`` tag (default: the login name), which the usage ledger records;
    ``allow_rebalance`` renders a plan that says ``rebalance_required``. ``notifier``: where
    alerts go (none: logged and recorded only); a failed stage notifies ``run_failed`` here, as
    no daemon sees the runs of this process. ``ledger``: where usage goes (default SQLite
    under the pipeline home)."""
    from anime_pipeline.definitions import defs

    def _say(msg: str) -> None:
        if say is not None:
            say(msg)

    t0 = time.perf_counter()
    store = storage or LocalStore(config.artifacts)
    bundle = catalog.register(store, folder)
    ep = bundle.episode
    shot_ids = [s.id for s in ep.shots]
    register_partitions(instance, ep.key, shot_ids)
    ensure_gpu_pool(instance)
    reaped = reap_dead_runs(instance)
    for r in reaped:
        _say(f"freed the {GPU_POOL} slot of run {r.run_id[:8]} ({r.job_name}): {r.why}")
    notifier = notifier or NotifierResource()
    resources = pipeline_resources(config, concurrency=concurrency,
                                   burn_subtitles=burn_subtitles, notifier=notifier,
                                   ledger=ledger)
    book = cast(LedgerResource, resources["ledger"]).ledger()
    notifier.notifier(book)  # a webhook URL that cannot work is refused before any work
    definitions = defs()
    tags = {DRIVER_TAG: "cli", USER_TAG: user or _login(), **worker_tags()}
    clips_config = {"ops": {"clips": {"config": {"allow_rebalance": True}}}} \
        if allow_rebalance else {}
    run_ids: dict[str, str] = {}

    def stage(job_name: str, label: str, **kwargs: Any) -> None:
        _say(f"{ep.key}: {label}...")
        run_id = str(uuid.uuid4())
        run_ids[job_name] = run_id
        job = definitions.resolve_job_def(job_name)
        with _watch_pool(instance, run_id, _say):
            result = job.execute_in_process(
                instance=instance, run_config={**SILENT_LOGS, **kwargs.pop("run_config", {})},
                resources=resources,
                raise_on_error=False, run_id=run_id,
                tags={**tags, **kwargs.pop("tags", {})}, **kwargs)
        if not result.success:
            reason = failure_reason(result)
            notify_failed(instance, notifier, book, job_name, run_id, ep.key, reason)
            raise RenderFailed(job_name, run_id, reason)

    with _progress(_say):
        stage("plan_episode", "planning", partition_key=ep.key)
        plan = read_compute_plan(store, ep.key)
        # Only the shots that need a render are planned in the clips run (the span from the
        # first to the last of them: a partition range); a current clip outside it is
        # reported reused here, and with nothing to render there is no clips run at all.
        todo, reused = shots_to_render(store, bundle, plan, shot_ids)
        refused = plan.status == "rebalance_required" and not allow_rebalance
        span = shot_ids if refused else render_span(shot_ids, todo)  # a refusal says why
        outside = [s for s in shot_ids if s in reused and s not in set(span)]
        if outside:
            instance.report_runless_asset_event(reuse_observation(
                ClipsReused(episode_key=ep.key, shot_ids=outside)))
        if span:
            current = f" ({len(reused)} current)" if reused else ""
            stage("render_clips", f"rendering {len(todo)} shots{current}",
                  tags=clip_range_tags(ep.key, span), run_config=clips_config)
        else:
            _say(f"{ep.key}: all {len(shot_ids)} clips are current: nothing to render")
        stage("deliver_episode", "compositing and packaging", partition_key=ep.key)
    keys = EpisodeKeys(ep.key)
    records = read_clip_records(store, bundle)
    placeholders = [s for s in shot_ids if records[s].status is ClipStatus.placeholder]
    degraded = [s for s in shot_ids if records[s].status is ClipStatus.degraded]
    return RenderReport(
        episode_key=ep.key,
        composite=store.uri(keys.composite),
        package=store.uri(keys.package),
        subtitles=[store.uri(keys.subtitles_srt), store.uri(keys.subtitles_ass)],
        shots=len(shot_ids),
        duration_s=ep.duration_ms / 1000,
        plan_status=plan.status,
        delivered_with_placeholders=bool(placeholders),
        placeholder_shots=placeholders,
        degraded_shots=degraded,
        reaped_runs=[r.run_id for r in reaped],
        clips=[ClipSummary(shot_id=s, status=records[s].status.value,
                           backend=records[s].backend, server=records[s].server,
                           segments=records[s].segments,
                           render_seconds=records[s].render_seconds,
                           reason=records[s].summary) for s in shot_ids],
        clip_stats=_clip_stats(instance, run_ids.get("render_clips"), reused=len(outside)),
        run_ids=run_ids,
        instance=instance_home,
        pipeline_home=str(config.home),
        seconds=round(time.perf_counter() - t0, 2),
    )


class _RunLog:
    """A notifier's log lines as engine events of a finished run: in its Dagster log."""

    def __init__(self, instance: dg.DagsterInstance, run: dg.DagsterRun | None) -> None:
        self.instance, self.run = instance, run

    def debug(self, msg: str, /) -> None:
        pass

    def info(self, msg: str, /) -> None:
        self.instance.report_engine_event(msg, dagster_run=self.run)

    warning = error = info


def notify_failed(instance: dg.DagsterInstance, notifier: NotifierResource, ledger: Ledger,
                  job: str, run_id: str, episode: str, reason: str) -> None:
    """``run_failed`` for a stage this process ran (the failure sensor's key: one message
    between them), logged in the run's Dagster log. Never raises: the failure is the news."""
    try:
        alerts: Notifier = notifier.notifier(ledger, log=_RunLog(
            instance, instance.get_run_by_id(run_id)))
        alerts.notify(run_failed_notification(run_id=run_id, job=job, reason=reason,
                                              episode=episode, ui_base_url=alerts.ui_base_url))
    except Exception as e:
        logging.getLogger("anime_pipeline.notify").warning(
            "run_failed notification of run %s not sent: %s: %s", run_id, type(e).__name__, e)


def _clip_stats(instance: dg.DagsterInstance, run_id: str | None, *,
                reused: int = 0) -> dict[str, Any]:
    """The clips run's ``clip_stats`` tag, with the current clips outside its range (reused
    without a run) counted as cached; without a clips run, every clip was reused."""
    run = instance.get_run_by_id(run_id) if run_id else None
    raw = run.tags.get(CLIP_STATS_TAG) if run else None
    if run_id is None:
        stats = {k: v for k, v in ClipStats().as_dict().items() if k in CLIP_STATS_KEYS}
    else:
        stats = json.loads(raw) if raw else {}
    if stats:
        stats["cached"] = stats.get("cached", 0) + reused
    return stats


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return "unknown"


def stderr_say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

