"""Prometheus metrics, read from the Dagster instance and the usage ledger at scrape time.

:class:`PipelineCollector` is a ``prometheus_client`` custom collector. It keeps no counter of
its own that a render would bump: every value comes from what the instance and the ledger hold,
so it is the same whichever process, run worker or machine rendered, and restarting the metrics
server changes nothing a query sees.

**Incremental.** History (``clips`` materializations, run ends, usage rows) is read in storage-id
order from a cursor the collector keeps, with running totals: a scrape reads only what was
written since the last one. Each read starts ``margin`` ids below the highest id seen and skips
the ids it already counted, so a row whose id was handed out before a higher one but committed
after it (PostgreSQL sequences; SQLite never does this, and gets no margin) is still counted,
exactly once. A scrape reads history for at most ``scrape_budget_s`` (one page per source at
least); a fresh server catches up in the background (:meth:`PipelineCollector.catch_up`).
Until it has caught up once, the families built from history are left out of the scrape,
rather than showing a partial count that Prometheus would take for a counter reset. Everything
else (runs in progress, the queue, budgets, the runtime policy, GPUs) is read whole on every
scrape, bounded.

**What is counted.**

* A *render* is a ``clips`` materialization whose metadata says the clip was rendered (not
  reused): it counts in ``anime_pipeline_clips_total`` under its status (``ok``, ``degraded``,
  ``placeholder`` — a slate stood in) and in ``anime_pipeline_clip_render_seconds`` (labels
  ``backend`` and ``status`` as recorded). A reused clip is no render: it counts only in
  ``anime_pipeline_clips_reused_total``, read from the ``clips`` observations that report
  reused clips (one per step or CLI render, listing the shots) and from the older
  materializations whose metadata says ``cached``.
* ``failed``: a partition a run planned and never materialized, when that run failed or was
  canceled after it had started (counted when the run's end is read; the same rule as the
  monitor's failure rate, :func:`~anime_pipeline.defs.runtime.failed_renders`).
* ``anime_pipeline_runs{job,status}``: runs now queued, not started, starting, started or
  canceling (read on every scrape, at most :data:`ACTIVE_RUNS_LIMIT`), and runs ended in success,
  failure or cancelation (from their end events, each run once).
* ``anime_pipeline_queue_backlog{kind="runs"}``: runs queued or not started.
  ``{kind="shots"}`` — *shots waiting*: the clip partitions of the ``clips`` runs that have not
  begun to render: queued, not started or starting, or started with their step waiting for a
  slot of the ``gpu`` pool. A run's shots are its partition (``dagster/partition``) or its
  partition range (``dagster/asset_partition_range_start``/``_end``, one episode's shots in
  order); a range whose ends are no longer partitions counts 0. Backfills whose runs are not
  created yet are not counted.
* Usage and budgets come from the ledger: all-time sums per tenant, project, provider and unit;
  the GPU seconds left in each project's current budget period.
* GPU gauges read this machine's GPUs through NVML (absent without a GPU); the runtime profile
  class and the policy in force are read from the state folder's files (never detected here).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from anime_pipeline.defs.metadata import read_clip_metadata, read_reused
from anime_pipeline.defs.partitions import CLIPS, RANGE_END_TAG, RANGE_START_TAG
from anime_pipeline.defs.runtime import CLIPS_KEY, failed_renders, run_clips
from anime_pipeline.instance import GPU_POOL
from anime_pipeline.ledger import Ledger
from anime_pipeline.runtime import nvml
from anime_pipeline.runtime.monitor import STATE_FILE, MonitorState
from anime_pipeline.runtime.profile import ProfileClass, RuntimeProfile
from anime_pipeline.runtime.state import policy_for, profile_path

PREFIX = "anime_pipeline"
CLIP_STATUSES = ("ok", "degraded", "placeholder", "failed")
RENDER_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)
CLIP_JOBS = frozenset({"render_clips", "rerender_shots"})
BUDGET_UNIT = "gpu_sec"
ACTIVE_RUNS_LIMIT = 5000
EVENT_MARGIN = 100  # ids re-read below the highest seen (event storage not on SQLite)
LEDGER_MARGIN = 1000  # the same for the ledger's usage rows
PARTITION_TAG = "dagster/partition"

_S = dg.DagsterRunStatus
ACTIVE = (_S.QUEUED, _S.NOT_STARTED, _S.STARTING, _S.STARTED, _S.CANCELING)
NOT_BEGUN = frozenset({_S.QUEUED, _S.NOT_STARTED, _S.STARTING})
WAITING_TO_START = frozenset({_S.QUEUED, _S.NOT_STARTED})
RunEnd = Literal[dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE,
                 dg.DagsterEventType.RUN_CANCELED]
RUN_ENDS: tuple[tuple[RunEnd, str], ...] = (
    (dg.DagsterEventType.RUN_SUCCESS, "success"),
    (dg.DagsterEventType.RUN_FAILURE, "failure"),
    (dg.DagsterEventType.RUN_CANCELED, "canceled"),
)
FAILED_ENDS = frozenset({"failure", "canceled"})
SOURCES = ("instance", "ledger", "runtime", "gpu")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """One metric family we export: its type, labels and meaning (the README's table)."""

    kind: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...]
    help: str


FAMILIES: dict[str, Family] = {
    f"{PREFIX}_clip_render_seconds": Family(
        "histogram", ("backend", "status"),
        "Render time of a clip, all attempts (rendered clips; reused ones are no render)."),
    f"{PREFIX}_clips_total": Family(
        "counter", ("status",),
        "Clip renders by outcome: ok, degraded (lower down its ladder), placeholder (a slate), "
        "failed (planned, never materialized in a run that failed or was canceled once "
        "started)."),
    f"{PREFIX}_clips_reused_total": Family(
        "counter", (), "Clips reused because they were current (not rendered again)."),
    f"{PREFIX}_runs": Family(
        "gauge", ("dagster_job", "status"),
        "Runs on the instance by Dagster job and status (ended runs counted from their end "
        "events); the label is dagster_job: Prometheus keeps job for the scrape target."),
    f"{PREFIX}_queue_backlog": Family(
        "gauge", ("kind",),
        "Waiting work: runs queued or not started; shots of clips runs not rendering yet."),
    f"{PREFIX}_usage_total": Family(
        "counter", ("tenant", "project", "provider", "unit"),
        "Billable usage recorded in the ledger, all time."),
    f"{PREFIX}_budget_remaining": Family(
        "gauge", ("tenant", "project", "unit"),
        "What is left of a project's budget in its current period."),
    f"{PREFIX}_budget_limit": Family(
        "gauge", ("tenant", "project", "unit"), "A project's budget per period."),
    f"{PREFIX}_gpus": Family("gauge", (), "NVIDIA GPUs this metrics server can read."),
    f"{PREFIX}_gpu_memory_used_bytes": Family("gauge", ("gpu", "name"), "VRAM in use."),
    f"{PREFIX}_gpu_memory_total_bytes": Family("gauge", ("gpu", "name"), "VRAM in all."),
    f"{PREFIX}_gpu_utilisation_ratio": Family(
        "gauge", ("gpu", "name"), "GPU busy time over the driver's last sample period, 0..1."),
    f"{PREFIX}_runtime_profile": Family(
        "gauge", ("profile_class",),
        "The runtime profile class in the state folder: 1 for the class found, 0 for others."),
    f"{PREFIX}_policy_degraded": Family(
        "gauge", (), "1 when the execution policy in force is degraded."),
    f"{PREFIX}_policy_degrade_level": Family(
        "gauge", (), "Steps the policy in force is down from its baseline."),
    f"{PREFIX}_metrics_source_up": Family(
        "gauge", ("source",), "1 when the source (instance, ledger, runtime, gpu) could be "
        "read in this scrape."),
    f"{PREFIX}_metrics_caught_up": Family(
        "gauge", (), "1 when this server has read all history (clips, run ends, usage)."),
    f"{PREFIX}_metrics_collect_seconds": Family(
        "gauge", (), "Time this scrape took to read the instance, the ledger and the GPUs."),
}


def family(name: str, value: float | None = None) -> Any:
    """An empty family of ``FAMILIES[name]`` (or, unlabelled, one with ``value``)."""
    spec = FAMILIES[name]
    labels = list(spec.labels) if value is None else None
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, value=value, labels=labels)
    if spec.kind == "histogram":
        return HistogramMetricFamily(name, spec.help, labels=labels)
    return GaugeMetricFamily(name, spec.help, value=value, labels=labels)


def status_label(status: dg.DagsterRunStatus) -> str:
    return status.value.lower()


# --------------------------------------------------------------------------- cursors


class IdTail:
    """Where an incremental reader of rows in storage-id order stands.

    Every id at or below ``floor`` is counted; ``seen`` holds the counted ids above it. A read
    starts at ``floor``, which trails the highest id seen by ``margin``, so a row committed
    after a higher id was read is still found (and no row is counted twice).
    """

    def __init__(self, margin: int) -> None:
        self.margin = margin
        self.floor = 0
        self.high = 0
        self._seen: set[int] = set()

    def fresh(self, storage_id: int) -> bool:
        return storage_id > self.floor and storage_id not in self._seen

    def mark(self, storage_id: int) -> None:
        self._seen.add(storage_id)
        self.high = max(self.high, storage_id)

    def settle(self) -> None:
        floor = max(self.floor, self.high - self.margin)
        if floor != self.floor:
            self.floor = floor
            self._seen = {i for i in self._seen if i > floor}


@dataclass
class Stream:
    """One history source: a page reader ``fetch(after_id, limit)``, the id of a row, and what
    to do with a row not counted yet."""

    name: str
    fetch: Callable[[int, int], Sequence[Any]]
    storage_id: Callable[[Any], int]
    apply: Callable[[Any], None]
    tail: IdTail
    page_size: int | None = None  # None: the collector's
    caught_up: bool = False  # the last read reached the end
    ever_caught_up: bool = False


@dataclass
class Histogram:
    """Running bucket counts (not cumulative; the last one is +Inf) and sum."""

    bounds: tuple[float, ...] = RENDER_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(RENDER_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        i = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[i] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


# --------------------------------------------------------------------------- the collector


class PipelineCollector(Collector):
    """The pipeline's metrics for one instance, one ledger and one state folder.

    ``ledger`` or ``state_dir`` None: those families are left out. History is read
    ``page_size`` events (``ledger_page_size`` usage rows) at a time, re-reading the last
    ``margin`` (``ledger_margin``) ids: by default :data:`EVENT_MARGIN` (:data:`LEDGER_MARGIN`),
    none on SQLite, whose ids are handed out in commit order. ``gpu_query`` is
    :func:`anime_pipeline.runtime.nvml.query` (a test passes its own readings).
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        ledger: Ledger | None = None,
        state_dir: Path | None = None,
        *,
        clips_key: dg.AssetKey = CLIPS_KEY,
        page_size: int = 200,
        scrape_budget_s: float = 1.0,
        margin: int | None = None,
        ledger_page_size: int = 5000,
        ledger_margin: int | None = None,
        gpu_query: Callable[[], nvml.NvmlReport] = nvml.query,
    ) -> None:
        self.instance = instance
        self.ledger = ledger
        self.state_dir = state_dir
        self.clips_key = clips_key
        self.page_size = page_size
        self.scrape_budget_s = scrape_budget_s
        self.gpu_query = gpu_query
        if margin is None:
            margin = 0 if _sqlite(type(instance.event_log_storage).__name__) else EVENT_MARGIN
        if ledger_margin is None and ledger is not None:
            ledger_margin = 0 if _sqlite(ledger.engine.dialect.name) else LEDGER_MARGIN
        self._lock = threading.Lock()
        self._failing: set[str] = set()  # what could not be read (logged once)
        # running totals from history
        self.clips: Counter[str] = Counter({s: 0 for s in CLIP_STATUSES})
        self.reused = 0
        self.renders: dict[tuple[str, str], Histogram] = {}
        self.run_ends: dict[str, tuple[str, str]] = {}  # run id -> (job, end status)
        self.ended: Counter[tuple[str, str]] = Counter()
        self.usage: defaultdict[tuple[str, str, str, str], float] = defaultdict(float)
        self.streams = [Stream("clips", self._fetch_clips, _record_id, self._apply_clip,
                               IdTail(margin)),
                        Stream("clips_reused", self._fetch_clip_observations, _record_id,
                               self._apply_reused, IdTail(margin))]
        for event_type, status in RUN_ENDS:
            self.streams.append(Stream(
                f"runs_{status}", self._run_end_fetcher(event_type), _record_id,
                self._run_end_applier(status), IdTail(margin)))
        self.ledger_stream = (
            Stream("usage", ledger.usage_since, lambda row: int(row[0]), self._apply_usage,
                   IdTail(ledger_margin or 0), page_size=ledger_page_size)
            if ledger is not None else None)

    # ----------------------------------------------------------------- history readers

    def _fetch_clips(self, after: int, limit: int) -> Sequence[Any]:
        flt = dg.AssetRecordsFilter(asset_key=self.clips_key, after_storage_id=after or None)
        return self.instance.fetch_materializations(flt, limit=limit, ascending=True).records

    def _fetch_clip_observations(self, after: int, limit: int) -> Sequence[Any]:
        flt = dg.AssetRecordsFilter(asset_key=self.clips_key, after_storage_id=after or None)
        return self.instance.fetch_observations(flt, limit=limit, ascending=True).records

    def _apply_reused(self, record: Any) -> None:
        obs = record.asset_observation
        report = read_reused(obs.metadata) if obs is not None else None
        if report is not None:
            self.reused += len(report.shot_ids)

    def _apply_clip(self, record: Any) -> None:
        mat = record.asset_materialization
        meta = read_clip_metadata(mat.metadata) if mat is not None else None
        if meta is None:
            return  # not one of our clips (an older format, a hand-made event)
        if not meta.rendered:
            self.reused += 1
            return
        status = meta.status.value
        self.clips[status] += 1
        self.renders.setdefault((meta.backend, status), Histogram()).observe(meta.render_seconds)

    def _run_end_fetcher(self, event_type: RunEnd) -> Callable[[int, int], Sequence[Any]]:
        def fetch(after: int, limit: int) -> Sequence[Any]:
            flt = dg.RunStatusChangeRecordsFilter(event_type=event_type,
                                                  after_storage_id=after or None)
            return self.instance.fetch_run_status_changes(flt, limit=limit,
                                                          ascending=True).records
        return fetch

    def _run_end_applier(self, status: str) -> Callable[[Any], None]:
        def apply(record: Any) -> None:
            run_id = record.run_id
            job = record.event_log_entry.job_name or ""
            before = self.run_ends.get(run_id)
            if status in FAILED_ENDS and (before is None or before[1] not in FAILED_ENDS):
                run = self.instance.get_run_record_by_id(run_id)
                if run is not None:
                    self.clips["failed"] += failed_renders(
                        run, run_clips(self.instance, run_id, self.clips_key))
            if before is not None:
                self.ended[before] -= 1
            self.run_ends[run_id] = (job, status)
            self.ended[(job, status)] += 1
        return apply

    def _apply_usage(self, row: tuple[int, str, str, str, str, float]) -> None:
        _, tenant, project, provider, unit, amount = row
        self.usage[(tenant, project, provider, unit)] += amount

    def _read(self, stream: Stream, deadline: float) -> None:
        """Read ``stream`` from its floor until its end or ``deadline`` (the tail already
        counted is re-read whole, and one page past it at least)."""
        after = stream.tail.floor
        counted = stream.tail.high
        size = stream.page_size or self.page_size
        try:
            while True:
                page = stream.fetch(after, size)
                for rec in page:
                    sid = stream.storage_id(rec)
                    if stream.tail.fresh(sid):
                        stream.apply(rec)  # may raise: the row stays unread
                        stream.tail.mark(sid)
                if len(page) < size:
                    stream.caught_up = stream.ever_caught_up = True
                    return
                stream.caught_up = False
                after = stream.storage_id(page[-1])
                if after > counted and time.monotonic() >= deadline:
                    return
        finally:
            stream.tail.settle()

    def advance(self, budget_s: float | None = None) -> dict[str, bool]:
        """Read new history for at most ``budget_s`` (default: the scrape budget); per
        source (``instance``, ``ledger``), whether it could be read."""
        with self._lock:
            return self._advance(budget_s if budget_s is not None else self.scrape_budget_s)

    def _advance(self, budget_s: float) -> dict[str, bool]:
        deadline = time.monotonic() + budget_s
        ok = [self._guard(s.name, partial(self._read, s, deadline)) for s in self.streams]
        up = {"instance": all(ok)}
        if self.ledger_stream is not None:
            up["ledger"] = self._guard("usage", partial(self._read, self.ledger_stream,
                                                        deadline))
        return up

    def caught_up(self) -> bool:
        """Whether the last read of every history source reached its end."""
        return all(s.caught_up for s in self._history_streams())

    def _history_streams(self) -> list[Stream]:
        return self.streams + ([self.ledger_stream] if self.ledger_stream else [])

    def catch_up(self, stop: threading.Event | None = None, slice_s: float = 0.5) -> bool:
        """Read history until every source has reached its end (a fresh server does it in
        the background), in slices so that scrapes are served meanwhile."""
        while stop is None or not stop.is_set():
            up = self.advance(slice_s)
            if self.caught_up():
                return True
            if not all(up.values()):  # a source is down: try again, gently
                if stop is None:
                    time.sleep(1.0)
                else:
                    stop.wait(1.0)
        return False

    def _guard(self, what: str, read: Callable[[], object]) -> bool:
        """Run ``read``; False when it raised (logged once until it works again)."""
        try:
            read()
        except Exception as e:
            if what not in self._failing:
                self._failing.add(what)
                log.warning("metrics: cannot read %s: %s: %s", what, type(e).__name__, e,
                            exc_info=log.isEnabledFor(logging.DEBUG))
            return False
        if what in self._failing:
            self._failing.discard(what)
            log.warning("metrics: %s readable again", what)
        return True

    # ----------------------------------------------------------------- collect

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        with self._lock:
            # Runs in progress first, then history: a run that ends in between is found by
            # its end event (and left out of the runs in progress), never missed.
            found: list[Any] = []
            read = self._guard("runs in progress", lambda: found.extend(self._active_runs()))
            active = found if read else None  # None: unknown, so no runs or backlog gauges
            up = {"instance": read}
            for source, read_ok in self._advance(self.scrape_budget_s).items():
                up[source] = up.get(source, True) and read_ok
            out: list[Metric] = []
            builders: list[tuple[str, Callable[[], Iterable[Metric]]]] = [
                ("instance", lambda: self._instance_families(active)),
                ("ledger", self._ledger_families),
                ("runtime", self._runtime_families),
                ("gpu", self._gpu_families),
            ]
            for source, build in builders:
                got: list[Metric] = []
                if self._guard(source, partial(_extend, got, build)):
                    out += got
                    up.setdefault(source, True)
                else:
                    up[source] = False
            if self.ledger is None:
                up.pop("ledger", None)
            if self.state_dir is None:
                up.pop("runtime", None)
            out += self._self_families(up, time.monotonic() - started)
        yield from out

    def _active_runs(self) -> Sequence[Any]:
        return self.instance.get_run_records(dg.RunsFilter(statuses=list(ACTIVE)),
                                             limit=ACTIVE_RUNS_LIMIT)

    def _instance_families(self, active: Sequence[Any] | None) -> Iterator[Metric]:
        history = all(s.ever_caught_up for s in self.streams)
        if history:
            yield from self._clip_families()
        if active is None:
            return
        runs = family(f"{PREFIX}_runs")
        counts: Counter[tuple[str, str]] = Counter()
        for rec in active:
            if rec.dagster_run.run_id not in self.run_ends:  # else: it ended since, counted so
                counts[(rec.dagster_run.job_name, status_label(rec.dagster_run.status))] += 1
        if history:
            counts.update({k: v for k, v in self.ended.items() if v > 0})
        for (job, status), n in sorted(counts.items()):
            runs.add_metric([job, status], n)
        yield runs
        yield self._backlog(active)

    def _clip_families(self) -> Iterator[Metric]:
        total = family(f"{PREFIX}_clips_total")
        for status in CLIP_STATUSES:
            total.add_metric([status], self.clips[status])
        yield total
        yield family(f"{PREFIX}_clips_reused_total", self.reused)
        hist = family(f"{PREFIX}_clip_render_seconds")
        for (backend, status), h in sorted(self.renders.items()):
            hist.add_metric([backend, status], h.buckets(), h.total)
        yield hist

    def _backlog(self, active: Sequence[Any]) -> Metric:
        waiting_runs = 0
        shots = 0
        pending: set[str] | None = None
        order: dict[str, int] | None = None
        for rec in active:
            run = rec.dagster_run
            if run.run_id in self.run_ends:
                continue
            if run.status in WAITING_TO_START:
                waiting_runs += 1
            if not self._is_clips_run(run):
                continue
            if run.status not in NOT_BEGUN:
                if run.status != _S.STARTED:
                    continue
                if pending is None:
                    pending = self._gpu_pending()
                if run.run_id not in pending:
                    continue  # rendering
            if order is None and not run.tags.get(PARTITION_TAG):
                order = {k: i for i, k in enumerate(self.instance.get_dynamic_partitions(CLIPS))}
            shots += _run_shots(run.tags, order or {})
        backlog = family(f"{PREFIX}_queue_backlog")
        backlog.add_metric(["runs"], waiting_runs)
        backlog.add_metric(["shots"], shots)
        return backlog

    def _is_clips_run(self, run: Any) -> bool:
        return run.job_name in CLIP_JOBS or self.clips_key in (run.asset_selection or ())

    def _gpu_pending(self) -> set[str]:
        storage = self.instance.event_log_storage
        if not storage.supports_global_concurrency_limits:
            return set()
        return set(storage.get_concurrency_info(GPU_POOL).pending_run_ids)

    def _ledger_families(self) -> Iterator[Metric]:
        if self.ledger is None:
            return
        if self.ledger_stream is not None and self.ledger_stream.ever_caught_up:
            usage = family(f"{PREFIX}_usage_total")
            for (tenant, project, provider, unit), amount in sorted(self.usage.items()):
                usage.add_metric([tenant, project, provider, unit], amount)
            yield usage
        remaining = family(f"{PREFIX}_budget_remaining")
        limit = family(f"{PREFIX}_budget_limit")
        now = dt.datetime.now(dt.UTC)
        for budget in self.ledger.all_budgets():
            st = self.ledger.status(budget, now)
            labels = [budget.tenant, budget.project, BUDGET_UNIT]
            remaining.add_metric(labels, st.remaining_gpu_sec)
            limit.add_metric(labels, st.limit_gpu_sec)
        yield remaining
        yield limit

    def _runtime_families(self) -> Iterator[Metric]:
        if self.state_dir is None:
            return
        path = profile_path(self.state_dir)
        if not path.is_file():
            return  # not detected yet (the monitor sensor or `anime-pipeline profile` does)
        profile = RuntimeProfile.load(path)
        # Read only: StateStore.load would move a corrupt file aside; a scrape changes nothing.
        state_file = Path(self.state_dir) / STATE_FILE
        state = (MonitorState.model_validate_json(state_file.read_text(encoding="utf-8"))
                 if state_file.is_file() else MonitorState())
        policy = policy_for(profile, state)
        cls = family(f"{PREFIX}_runtime_profile")
        for value in ProfileClass:
            cls.add_metric([value.value], 1.0 if profile.profile_class is value else 0.0)
        yield cls
        yield family(f"{PREFIX}_policy_degraded", 1.0 if policy.degraded else 0.0)
        yield family(f"{PREFIX}_policy_degrade_level", float(policy.degrade_level))

    def _gpu_families(self) -> Iterator[Metric]:
        report = self.gpu_query()
        yield family(f"{PREFIX}_gpus", float(len(report.gpus)))
        if not report.gpus:
            return
        used = family(f"{PREFIX}_gpu_memory_used_bytes")
        total = family(f"{PREFIX}_gpu_memory_total_bytes")
        util = family(f"{PREFIX}_gpu_utilisation_ratio")
        mib = 1024 * 1024
        for g in report.gpus:
            values = [str(g.index), g.name]
            used.add_metric(values, float(g.vram_used_mb * mib))
            total.add_metric(values, float(g.vram_total_mb * mib))
            if g.utilisation_pct is not None:
                util.add_metric(values, g.utilisation_pct / 100.0)
        yield used
        yield total
        if util.samples:
            yield util

    def _self_families(self, up: dict[str, bool], seconds: float) -> list[Metric]:
        source_up = family(f"{PREFIX}_metrics_source_up")
        for source in SOURCES:
            if source in up:
                source_up.add_metric([source], 1.0 if up[source] else 0.0)
        return [source_up,
                family(f"{PREFIX}_metrics_caught_up", 1.0 if self.caught_up() else 0.0),
                family(f"{PREFIX}_metrics_collect_seconds", seconds)]


def _sqlite(name: str) -> bool:
    """SQLite has one writer at a time: ids are handed out in commit order (no late rows)."""
    return "sqlite" in name.lower()


def _extend(into: list[Metric], build: Callable[[], Iterable[Metric]]) -> None:
    into.extend(build())


def _record_id(record: Any) -> int:
    return int(record.storage_id)


def _run_shots(tags: Mapping[str, str], order: Mapping[str, int]) -> int:
    """The clip partitions a run renders: its one partition, or its range (0 if unknown)."""
    if tags.get(PARTITION_TAG):
        return 1
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if not start or not end:
        return 0
    if start == end:
        return 1
    first, last = order.get(start), order.get(end)
    if first is None or last is None or last < first:
        return 0
    return last - first + 1
