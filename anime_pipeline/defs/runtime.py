"""Dagster layer of the runtime profile: the ``runtime_profile`` asset, the monitor sensor and
the control jobs.

The logic lives in :mod:`anime_pipeline.runtime` (no Dagster there); this module only reads the
instance (run and event records, pool limits) and writes what the UI shows. The policy in force
is the ``runtime`` resource (:class:`~anime_pipeline.defs.resources.RuntimePolicyResource`).

* ``runtime_profile`` — an asset: materializing it re-detects the machine; the monitor sensor
  also reports a materialization of it (runless) on every change of the policy in force, with
  the explanation (Markdown, English and Chinese) and the metrics as metadata.
* ``runtime_monitor_sensor`` — samples VRAM, memory, CPU and the failure rate of recent ``clips``
  renders from this instance's own records, applies :func:`~anime_pipeline.runtime.monitor.
  evaluate`, keeps the state in the state folder's ``runtime_state.json`` (and a copy in the
  sensor cursor), and keeps the ``gpu`` pool limit equal to the number of GPUs (at least 1).
* ``runtime_degrade`` (config ``reason``), ``runtime_restore``, ``runtime_redetect`` — jobs to
  launch from the UI: what ``anime-pipeline runtime degrade|restore|reload`` do (both call
  :mod:`anime_pipeline.runtime.control`), each reported as a materialization of
  ``runtime_profile``.

Every writer of ``runtime_profile`` (the asset, the sensor, the jobs) gives it the same
metadata, :func:`runtime_metadata`: the class, the policy, whether and why it is degraded, the
monitor's last sample, the explanation and the recommendations.
"""

import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from anime_pipeline.defs.metadata import read_clip_metadata, read_reused
from anime_pipeline.defs.partitions import clip_key
from anime_pipeline.defs.resources import RuntimePolicyResource
from anime_pipeline.domain.records import ClipMetadata
from anime_pipeline.instance import GPU_POOL, REFUSED_TAG
from anime_pipeline.runtime import control
from anime_pipeline.runtime.explain import (
    describe_policy,
    describe_sample,
    explain_profile,
    recommendations,
    when,
)
from anime_pipeline.runtime.monitor import (
    Decision,
    MetricSnapshot,
    MonitorState,
    StateStore,
    Thresholds,
    evaluate,
    restore_samples_needed,
    sample_metrics,
)
from anime_pipeline.runtime.policy import ExecutionPolicy
from anime_pipeline.runtime.profile import RuntimeProfile
from anime_pipeline.runtime.state import load_profile, policy_for

RUNTIME_GROUP = "runtime"
RUNTIME_PROFILE_KEY = dg.AssetKey("runtime_profile")
CLIPS_KEY = dg.AssetKey("clips")
PROFILE_MAX_AGE_S = 600.0  # the sensor re-detects the machine this often
_UNPARTITIONED = "__unpartitioned__"


# --------------------------------------------------------------------------- metadata


def _markdown(text: str) -> str:
    lines = text.rstrip("\n").splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if i == 0:
            out.append(f"### {line}")
        elif line.startswith("  - "):
            out.append("- " + line[4:])
        elif line.endswith((":", "：")):
            out.append(f"\n**{line[:-1]}**\n")
        else:
            out.append(line)
    return "\n".join(out)


def _bullets(lines: list[str], none: str) -> str:
    return "\n".join(f"- {line}" for line in lines) if lines else none


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _steps_markdown(state: MonitorState, thresholds: Thresholds | None) -> str:
    """Why the policy is degraded: one row per step, then what restores it."""
    if not state.degraded:
        return "Not degraded: the baseline policy of the class is in force."
    rows = ["| # | kind | source | reason | since |", "|---|---|---|---|---|"]
    for i, step in enumerate(state.steps, 1):
        rows.append(
            f"| {i} | {step.kind} | {step.source} | {_cell(step.reason)} | {when(step.at)} |"
        )
    if state.manual_hold:
        rows.append("\nDegraded by hand: held until a manual restore (the `runtime_restore` job, "
                    "or `anime-pipeline runtime restore`); the monitor never restores it.")
    elif thresholds is not None:
        need = restore_samples_needed(state, thresholds)
        rows.append(f"\nThe monitor restores the baseline after {need} healthy samples in a row "
                    f"(now {state.healthy_streak}).")
    return "\n".join(rows)


def runtime_metadata(
    profile: RuntimeProfile,
    policy: ExecutionPolicy,
    state: MonitorState,
    snapshot: MetricSnapshot | None = None,
    decision: Decision | None = None,
    *,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """The metadata of a ``runtime_profile`` materialization (every writer uses this).

    ``snapshot`` defaults to the monitor's last sample saved in ``state``; with ``thresholds``
    (those in force) a monitor degrade says how many healthy samples restore it.
    """
    md = dg.MetadataValue
    snapshot = snapshot if snapshot is not None else state.last_snapshot
    meta: dict[str, Any] = {
        "explanation": md.md(_markdown(explain_profile(profile, "en", policy))),
        "explanation_zh": md.md(_markdown(explain_profile(profile, "zh", policy))),
        "recommendations": md.md(_bullets(recommendations(profile, "en"), "Nothing to improve.")),
        "recommendations_zh": md.md(_bullets(recommendations(profile, "zh"), "无需改进。")),
        "profile_class": profile.profile_class.value,
        "profile_detected_at": md.timestamp(profile.detected_at),
        "policy": policy.name,
        "degraded": policy.degraded,
        "degrade_level": policy.degrade_level,
        "degrade_reasons": md.json({"reasons": policy.reasons}),
        "degrade_steps": md.md(_steps_markdown(state, thresholds)),
        "degrade_steps_json": md.json({"steps": [
            {**step.model_dump(mode="json"), "at_utc": when(step.at)} for step in state.steps]}),
        "manual_hold": state.manual_hold,
        "encoder": policy.encoder,
        "render_concurrency": policy.render_concurrency,
        "max_resolution": policy.max_resolution,
        "max_fps": float(policy.max_fps),
        "max_shots_in_flight": policy.max_shots_in_flight,
        "gpu_pool_limit": policy.gpu_pool_limit,
        "gpu_count": profile.gpu_count,
        "cpu_threads": profile.cpu.threads,
        "cpu_score": float(profile.cpu.score),
        "memory_total_gb": float(profile.memory.total_gb),
        "policy_json": md.json(policy.model_dump(mode="json")),
        "state_revision": state.revision,
        "last_sample": describe_sample(snapshot, "en"),
    }
    if state.steps:
        meta["degraded_since"] = md.timestamp(state.steps[0].at)
        if thresholds is not None and not state.manual_hold:
            meta["restore_after_healthy_samples"] = restore_samples_needed(state, thresholds)
            meta["healthy_streak"] = state.healthy_streak
    if profile.disk is not None:
        meta["disk_free_gb"] = float(profile.disk.free_gb)
    if snapshot is not None:
        meta["last_sample_at"] = md.timestamp(snapshot.taken_at)
        meta["mem_available_gb"] = float(snapshot.mem_available_gb)
        if snapshot.cpu_percent is not None:
            meta["cpu_percent"] = float(snapshot.cpu_percent)
        if snapshot.vram_used_frac is not None:
            meta["vram_used_frac"] = float(snapshot.vram_used_frac)
        meta["clip_failure_rate"] = float(snapshot.recent_failure_rate or 0.0)
        meta["clip_renders_in_window"] = snapshot.failure_samples
        meta["clip_failures_in_window"] = snapshot.failures
    else:
        meta["mem_available_gb"] = float(profile.memory.available_gb)
    if decision is not None:
        meta["monitor_action"] = decision.action
        meta["monitor_message"] = decision.message
    return meta


def status_metadata(st: control.RuntimeStatus) -> dict[str, Any]:
    """:func:`runtime_metadata` of a status read from its state folder (thresholds too)."""
    return runtime_metadata(st.profile, st.policy, st.state,
                            thresholds=Thresholds.load(st.state_dir))


# --------------------------------------------------------------------------- the asset


@dg.asset(
    key=RUNTIME_PROFILE_KEY,
    group_name=RUNTIME_GROUP,
    kinds={"python"},
    description="What the pipeline runs on, its class and the execution policy in force. "
    "Materialize (or launch runtime_redetect) to re-detect; the runtime_degrade and "
    "runtime_restore jobs and the runtime monitor sensor report every policy change here.",
)
def runtime_profile(
    context: dg.AssetExecutionContext, runtime: RuntimePolicyResource
) -> dg.MaterializeResult:
    st = control.redetect(runtime.state_dir)
    context.log.info(f"re-detected {st.profile.profile_class.value}: "
                     f"{describe_policy(st.policy, 'en')}")
    return dg.MaterializeResult(metadata=status_metadata(st))


# --------------------------------------------------------------------------- the control jobs


class DegradeConfig(dg.Config):
    reason: str = Field(
        description="Why the policy goes down a step (required, not blank): recorded in the "
        "policy and shown on runtime_profile, e.g. 'render farm maintenance'.")


def _report(context: dg.OpExecutionContext, st: control.RuntimeStatus, what: str) -> None:
    """Log what was done and report the status now as a materialization of runtime_profile."""
    context.log.info(f"{what}. {describe_policy(st.policy, 'en')}")
    context.log_event(dg.AssetMaterialization(
        asset_key=RUNTIME_PROFILE_KEY, description=what, metadata=status_metadata(st)))


@dg.op(description="Degrade the execution policy one step now, by hand; held until "
                   "runtime_restore (the monitor never restores it).")
def degrade_policy(
    context: dg.OpExecutionContext, config: DegradeConfig, runtime: RuntimePolicyResource
) -> None:
    try:
        st = control.degrade(runtime.state_dir, config.reason)
    except ValueError as e:
        raise dg.Failure(description=f"{e}; set ops.degrade_policy.config.reason in the "
                                     "Launchpad") from None
    _report(context, st, f"degraded by hand to level {st.policy.degrade_level}: "
                         f"{config.reason.strip()}")


@dg.op(description="Back to the baseline policy of the runtime profile (any degrade, manual "
                   "or the monitor's).")
def restore_policy(context: dg.OpExecutionContext, runtime: RuntimePolicyResource) -> None:
    st, was_degraded = control.restore(runtime.state_dir)
    _report(context, st, "restored to the baseline" if was_degraded
            else "already at the baseline; nothing to restore")


@dg.job(description="Degrade the execution policy one step now (config: reason), held until "
                    "runtime_restore; what `anime-pipeline runtime degrade --reason` does.")
def runtime_degrade() -> None:
    degrade_policy()


@dg.job(description="Restore the baseline execution policy; what `anime-pipeline runtime "
                    "restore` does.")
def runtime_restore() -> None:
    restore_policy()


runtime_redetect = dg.define_asset_job(
    "runtime_redetect", selection=[runtime_profile],
    description="Re-detect the machine and re-resolve the baseline policy (degrade steps "
                "kept): materializes runtime_profile; what `anime-pipeline runtime reload` does.",
)


# --------------------------------------------------------------------------- clip failure rate


@dataclass
class RenderStats:
    succeeded: int = 0
    failed: int = 0
    runs: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed

    @property
    def rate(self) -> float | None:
        return self.failed / self.total if self.total else None


def _planned_keys(data: Any) -> set[str]:
    if getattr(data, "partition", None):
        return {str(data.partition)}
    subset = getattr(data, "partitions_subset", None)
    if subset is None:
        return {_UNPARTITIONED}
    try:
        return {str(k) for k in subset.get_partition_keys()}
    except Exception:  # a subset that needs its definition: count it, unnamed
        return {f"{_UNPARTITIONED}{i}" for i in range(len(subset))}


@dataclass
class RunClips:
    """What one run did to a clips asset: the partitions it planned, each of its
    materializations (partition key, typed metadata or None when it is not a clip's), and the
    partitions whose current clip it reused (reported in one observation, not materialized)."""

    planned: set[str] = field(default_factory=set)
    materialized: list[tuple[str, ClipMetadata | None]] = field(default_factory=list)
    reused: set[str] = field(default_factory=set)

    @property
    def touched(self) -> bool:
        return bool(self.planned or self.materialized)

    @property
    def unmaterialized(self) -> set[str]:
        """Planned, never materialized and not reused: failed renders, when the run failed
        or was canceled."""
        return self.planned - {key for key, _ in self.materialized} - self.reused


def run_clips(
    instance: dg.DagsterInstance, run_id: str, asset_key: dg.AssetKey = CLIPS_KEY
) -> RunClips:
    """The planned, materialized and reused partitions of ``asset_key`` in one run (its event
    records of those three kinds only, page by page)."""
    out = RunClips()
    kinds = {dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
             dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_OBSERVATION}
    cursor = None
    while True:
        conn = instance.get_records_for_run(run_id, cursor=cursor, of_type=kinds)
        for r in conn.records:
            ev = r.event_log_entry.dagster_event
            if ev is None or ev.asset_key != asset_key:
                continue
            if ev.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
                out.planned |= _planned_keys(ev.event_specific_data)
                continue
            if ev.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
                report = read_reused(ev.asset_observation_data.asset_observation.metadata)
                if report is not None:
                    out.reused |= {clip_key(report.episode_key, s) for s in report.shot_ids}
                continue
            mat = ev.step_materialization_data.materialization
            key = str(mat.partition) if mat.partition else _UNPARTITIONED
            out.materialized.append((key, read_clip_metadata(mat.metadata)))
        if not conn.has_more:
            return out
        cursor = conn.cursor


FAILED_RUN_STATUSES = frozenset({dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED})


def failed_renders(record: dg.RunRecord, clips_of_run: RunClips) -> int:
    """The clips a run failed to render: planned and never materialized, in a run that failed
    or was canceled after it had started. A run canceled in the queue, or that never launched,
    rendered nothing (its partitions are planned when the run is created); nor did the shots a
    run refused to start (``REFUSED_TAG``: the budget, a rebalance_required plan)."""
    if record.dagster_run.status not in FAILED_RUN_STATUSES or record.start_time is None:
        return 0
    if REFUSED_TAG in record.dagster_run.tags:
        return 0  # refused (budget, rebalance_required): the shots not started were not tried
    return len(clips_of_run.unmaterialized)


def clip_render_stats(
    instance: dg.DagsterInstance,
    since: float,
    asset_key: dg.AssetKey = CLIPS_KEY,
    max_runs: int = 200,
) -> RenderStats:
    """Renders of ``asset_key`` in runs that ended after ``since`` (epoch s), from this instance.

    Per run that planned the asset: each materialized partition is a success, or a failure
    when its metadata says ``placeholder`` (the render failed and a slate stood in); partitions
    planned but not materialized in a run that failed or was canceled once started are failures
    (:func:`failed_renders`). Reused clips are not
    renders; runs still in progress are not counted. Clip metadata is read through
    :class:`~anime_pipeline.domain.records.ClipMetadata`, the model its one writer uses.
    """
    stats = RenderStats()
    done_statuses = [
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.CANCELED,
    ]
    records = instance.get_run_records(
        dg.RunsFilter(
            statuses=done_statuses,
            updated_after=_dt.datetime.fromtimestamp(since, tz=_dt.UTC),
        ),
        limit=max_runs,
    )
    for rec in records:
        if rec.end_time is not None and rec.end_time < since:
            continue
        run = rec.dagster_run
        clips_of_run = run_clips(instance, run.run_id, asset_key)
        if not clips_of_run.touched:
            continue
        ok = bad = 0
        for _, meta in clips_of_run.materialized:
            if meta is None or not meta.rendered:
                continue  # not a clip of ours, or a reused one: not a render
            if meta.placeholder:
                bad += 1
            else:
                ok += 1
        bad += failed_renders(rec, clips_of_run)
        stats.runs += 1
        stats.succeeded += ok
        stats.failed += bad
    return stats


# --------------------------------------------------------------------------- gpu pool


def sync_gpu_pool(instance: dg.DagsterInstance, gpu_count: int) -> int | None:
    """Set the ``gpu`` pool limit to ``max(1, gpu_count)``; the limit now, None if unsupported."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return None
    want = max(1, gpu_count)
    info = storage.get_concurrency_info(GPU_POOL)
    if info.slot_count != want or info.using_default_limit:
        storage.set_concurrency_slots(GPU_POOL, want)
    return want


# --------------------------------------------------------------------------- the sensor


def _read_cursor(cursor: str | None) -> dict[str, Any]:
    if not cursor:
        return {}
    try:
        data = json.loads(cursor)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def monitor_tick(
    context: dg.SensorEvaluationContext,
    *,
    state_dir_: str | Path,
    thresholds: Thresholds | None = None,
    clips_key: dg.AssetKey = CLIPS_KEY,
    profile_max_age_s: float = PROFILE_MAX_AGE_S,
) -> dg.SensorResult:
    """One evaluation of the monitor (the body of ``runtime_monitor_sensor``)."""
    sd = Path(state_dir_).absolute()
    t = thresholds or Thresholds.load(sd)
    store = StateStore(sd)
    cursor = _read_cursor(context.cursor)
    if store.exists():
        state = store.load()
    elif isinstance(cursor.get("state"), dict):
        state = MonitorState.model_validate(cursor["state"])
        context.log.warning(f"{store.path} missing; monitor state restored from the sensor cursor")
    else:
        state = MonitorState()

    profile = load_profile(sd, max_age_s=profile_max_age_s, storage_root=sd)
    now = time.time()
    since = max(now - t.failure_window_s, state.last_change_at or 0.0)
    stats = clip_render_stats(context.instance, since, clips_key)
    snapshot = sample_metrics(stats.rate, stats.total, stats.failed)
    decision = evaluate(snapshot, state, t)
    store.save(decision.state)
    policy = policy_for(profile, decision.state)

    gpus = len(snapshot.vram_used_frac_per_gpu)
    pool = sync_gpu_pool(context.instance, gpus)

    events: list[dg.AssetMaterialization | dg.AssetObservation] = []
    changed = decision.action != "none" or cursor.get("emitted_revision") != decision.state.revision
    if changed:
        meta = runtime_metadata(profile, policy, decision.state, snapshot, decision, thresholds=t)
        meta["gpu_pool_limit"] = pool if pool is not None else policy.gpu_pool_limit
        events.append(dg.AssetMaterialization(asset_key=RUNTIME_PROFILE_KEY, metadata=meta))
    if decision.action == "degrade":
        context.log.warning(f"runtime monitor: {decision.message}. {describe_policy(policy, 'en')}")
    elif decision.action == "restore":
        context.log.info(f"runtime monitor: {decision.message}. {describe_policy(policy, 'en')}")
    elif changed:
        context.log.info(f"runtime monitor: policy in force {policy.name}: {decision.message}")
    else:
        context.log.debug(f"runtime monitor: {decision.message}")

    new_cursor = json.dumps(
        {
            "emitted_revision": decision.state.revision,
            "last_tick": now,
            "state": decision.state.model_dump(mode="json", exclude={"last_snapshot"}),
        }
    )
    return dg.SensorResult(asset_events=events, cursor=new_cursor)


def build_runtime_monitor_sensor(
    *,
    name: str = "runtime_monitor_sensor",
    minimum_interval_seconds: int = 30,
    state_dir_: str | Path | None = None,
    thresholds: Thresholds | None = None,
    clips_key: dg.AssetKey = CLIPS_KEY,
    profile_max_age_s: float = PROFILE_MAX_AGE_S,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
) -> dg.SensorDefinition:
    """A monitor sensor; the thresholds default to ``thresholds.json`` in the state folder."""

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Samples VRAM, memory, CPU and the clip failure rate; degrades or restores "
        "the execution policy with hysteresis; reports changes on runtime_profile.",
    )
    def _monitor(
        context: dg.SensorEvaluationContext, runtime: RuntimePolicyResource
    ) -> dg.SensorResult:
        return monitor_tick(
            context,
            state_dir_=state_dir_ if state_dir_ is not None else runtime.state_dir,
            thresholds=thresholds,
            clips_key=clips_key,
            profile_max_age_s=profile_max_age_s,
        )

    return _monitor


runtime_monitor_sensor = build_runtime_monitor_sensor()
