"""The metrics collector against real Dagster instances and a real ledger: clip renders and
failures from real runs and events, runs and the backlog, usage and budgets, the runtime
policy, GPUs; incremental reads, restarts, and a source that cannot be read."""

import datetime as dt
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from anime_pipeline.defs.metadata import clip_values, reused_values
from anime_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG
from anime_pipeline.domain.records import ClipMetadata, ClipsReused, ClipStatus
from anime_pipeline.ledger import Ledger, ProjectBudget, UsageEntry
from anime_pipeline.ledger.records import Unit
from anime_pipeline.ops.metrics import FAMILIES, IdTail, PipelineCollector
from anime_pipeline.runtime import nvml
from anime_pipeline.runtime.monitor import MonitorState, StateStore, manual_degrade
from anime_pipeline.runtime.testing import make_profile

P = "anime_pipeline_"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CLIP_PARTS = dg.DynamicPartitionsDefinition(name="clips")
EP = "studio-a/moonlit/ep01"
NO_GPU = nvml.NvmlReport(available=False, reason="no GPU here (test)")


def no_gpu() -> nvml.NvmlReport:
    return NO_GPU


def clip(shot: str, status: str = "ok", *, backend: str = "animatic", seconds: float = 1.0,
         cached: bool = False) -> ClipMetadata:
    return ClipMetadata(
        episode_key=EP, shot_id=shot, status=ClipStatus(status), cached=cached, backend=backend,
        shot_type="action", duration_ms=1000, fps=24, resolution="720p", encoder="libx264",
        frames=24, size_bytes=1000, render_seconds=seconds, attempts=1)


def report(instance: dg.DagsterInstance, meta: ClipMetadata) -> None:
    """A clip materialization as the clips step writes it (the project's metadata writer)."""
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key="clips", partition=f"{EP}/{meta.shot_id}", metadata=clip_values(meta)))


@dg.multi_asset(specs=[dg.AssetSpec("clips", partitions_def=CLIP_PARTS)],
                partitions_def=CLIP_PARTS, can_subset=True,
                backfill_policy=dg.BackfillPolicy.single_run())
def dying_clips(context: dg.AssetExecutionContext) -> Iterator[dg.AssetMaterialization]:
    """Like the real step: reports each clip as it finishes; dies after the first."""
    first = context.partition_keys[0]
    yield dg.AssetMaterialization(asset_key="clips", partition=first,
                                  metadata=clip_values(clip(first.rsplit("/", 1)[1])))
    raise RuntimeError("out of memory")


@dg.asset
def shot_plan() -> None:
    return None


DEFS = dg.Definitions(assets=[dying_clips, shot_plan], jobs=[
    dg.define_asset_job("render_clips", selection=[dying_clips]),
    dg.define_asset_job("plan_episode", selection=[shot_plan]),
])


@dg.multi_asset(name="clips", specs=[dg.AssetSpec("clips", partitions_def=CLIP_PARTS)],
                partitions_def=CLIP_PARTS, can_subset=True,
                backfill_policy=dg.BackfillPolicy.single_run())
def reusing_then_dying_clips(context: dg.AssetExecutionContext) -> Iterator[dg.AssetObservation]:
    """Like the real step: reports the first shot's current clip reused; then dies."""
    first = context.partition_keys[0]
    yield dg.AssetObservation(asset_key="clips", metadata=reused_values(
        ClipsReused(episode_key=EP, shot_ids=[first.rsplit("/", 1)[1]])))
    raise RuntimeError("out of memory")


REUSING = dg.Definitions(assets=[reusing_then_dying_clips], jobs=[
    dg.define_asset_job("render_clips", selection=[reusing_then_dying_clips])])


def failed_render(instance: dg.DagsterInstance, first: str, last: str,
                  defs: dg.Definitions = DEFS) -> str:
    """A real render_clips run over ``first..last`` that materializes one clip (or reports
    one reused), then dies."""
    job = defs.resolve_job_def("render_clips")
    result = job.execute_in_process(
        instance=instance, raise_on_error=False,
        tags={RANGE_START_TAG: f"{EP}/{first}", RANGE_END_TAG: f"{EP}/{last}"})
    assert not result.success
    return result.run_id


def exposition(collector: PipelineCollector) -> str:
    """One scrape, in the Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def scrape(collector: PipelineCollector) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(exposition(collector)):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((P + metric, frozenset(labels.items())))


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


def families(samples: Samples) -> set[str]:
    """The families of the samples (a histogram's ``_bucket``, ``_count``, ``_sum`` are one)."""
    out = set()
    for n in names(samples):
        for suffix in ("_bucket", "_count", "_sum"):
            if n.endswith(suffix) and n.removesuffix(suffix) in FAMILIES:
                n = n.removesuffix(suffix)
        out.add(n)
    return out


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions("clips", [f"{EP}/S{i:02d}" for i in range(1, 9)])
        yield inst


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")


def usage(shot: str, provider: str, unit: Unit, amount: float, *, project: str = "moonlit",
          run_id: str = "r1", attempt: int = 1) -> UsageEntry:
    return UsageEntry(tenant="studio-a", project=project, episode="ep01", shot=shot,
                      run_id=run_id, attempt=attempt, provider=provider, unit=unit,
                      amount=amount, at=dt.datetime.now(dt.UTC))


def test_clip_renders_failures_and_reuse(instance: dg.DagsterInstance) -> None:
    report(instance, clip("S01", seconds=1.2))
    report(instance, clip("S02", seconds=3.0))
    report(instance, clip("S03", "degraded", seconds=40.0))
    report(instance, clip("S04", "placeholder", backend="placeholder", seconds=0.4))
    report(instance, clip("S05", cached=True, seconds=2.0))  # reused: no render
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="clips",
                                                                partition=f"{EP}/S06"))
    failed_render(instance, "S06", "S08")  # S06 materialized, S07 and S08 failed

    s = scrape(PipelineCollector(instance, gpu_query=no_gpu))
    assert value(s, "clips_total", status="ok") == 3
    assert value(s, "clips_total", status="degraded") == 1
    assert value(s, "clips_total", status="placeholder") == 1
    assert value(s, "clips_total", status="failed") == 2
    assert value(s, "clips_reused_total") == 1
    ok = {"backend": "animatic", "status": "ok"}
    assert value(s, "clip_render_seconds_count", **ok) == 3
    assert value(s, "clip_render_seconds_sum", **ok) == pytest.approx(5.2)
    assert value(s, "clip_render_seconds_bucket", **ok, le="1.0") == 1
    assert value(s, "clip_render_seconds_bucket", **ok, le="2.5") == 2
    assert value(s, "clip_render_seconds_bucket", **ok, le="5.0") == 3
    assert value(s, "clip_render_seconds_bucket", **ok, le="+Inf") == 3
    assert value(s, "clip_render_seconds_count", backend="animatic", status="degraded") == 1
    assert value(s, "clip_render_seconds_bucket", backend="placeholder", status="placeholder",
                 le="0.5") == 1
    assert value(s, "runs", dagster_job="render_clips", status="failure") == 1
    assert value(s, "metrics_caught_up") == 1
    assert value(s, "metrics_source_up", source="instance") == 1
    assert value(s, "gpus") == 0 and P + "gpu_memory_used_bytes" not in names(s)
    # Reuse reports (one observation for many shots), in a run or outside any run; a reused
    # clip is no failed render when its run dies after it.
    instance.report_runless_asset_event(dg.AssetObservation(asset_key="clips", metadata=(
        reused_values(ClipsReused(episode_key=EP, shot_ids=["S01", "S02"])))))
    failed_render(instance, "S03", "S05", REUSING)  # S03 reused, S04 and S05 failed
    s = scrape(PipelineCollector(instance, gpu_query=no_gpu))
    assert value(s, "clips_reused_total") == 4
    assert value(s, "clips_total", status="failed") == 4
    assert value(s, "runs", dagster_job="render_clips", status="failure") == 2


def test_reads_only_new_events_and_restarts_to_the_same_values(
        instance: dg.DagsterInstance) -> None:
    for i in range(1, 4):
        report(instance, clip(f"S0{i}"))
    failed_render(instance, "S04", "S05")
    collector = PipelineCollector(instance, gpu_query=no_gpu, margin=0)
    first = scrape(collector)
    assert value(first, "clips_total", status="ok") == 4
    assert value(first, "clips_total", status="failed") == 1

    reads: list[int | None] = []
    fetch = instance.fetch_materializations

    def spy(records_filter, limit, cursor=None, ascending=False):  # type: ignore[no-untyped-def]
        reads.append(records_filter.after_storage_id)
        result = fetch(records_filter, limit, cursor, ascending)
        reads.append(len(result.records))
        return result

    instance.fetch_materializations = spy  # type: ignore[method-assign]
    try:
        report(instance, clip("S06", "degraded", seconds=12.0))
        second = scrape(collector)
    finally:
        del instance.fetch_materializations
    floor, got = reads
    assert floor is not None and floor > 0 and got == 1  # one read, of the new event only
    assert value(second, "clips_total", status="degraded") == 1
    assert value(second, "clips_total", status="ok") == 4

    restarted = scrape(PipelineCollector(instance, gpu_query=no_gpu))
    history = {k: v for k, v in second.items() if "metrics_" not in k[0]}
    assert {k: v for k, v in restarted.items() if "metrics_" not in k[0]} == history


def test_history_is_left_out_until_caught_up(instance: dg.DagsterInstance,
                                             ledger: Ledger) -> None:
    for i in range(1, 7):
        report(instance, clip(f"S0{i}", seconds=float(i)))
    ledger.record([usage(f"S0{i}", "animatic", "gpu_sec", 1.0) for i in range(1, 5)])
    full = scrape(PipelineCollector(instance, ledger, gpu_query=no_gpu))
    slow = PipelineCollector(instance, ledger, gpu_query=no_gpu, page_size=1,
                             ledger_page_size=1, scrape_budget_s=0.0)
    s = scrape(slow)  # one page of one record per source
    assert value(s, "metrics_caught_up") == 0
    assert P + "clips_total" not in names(s) and P + "usage_total" not in names(s)
    assert value(s, "queue_backlog", kind="runs") == 0  # what is read whole is there
    for _ in range(10):
        s = scrape(slow)
        if value(s, "metrics_caught_up") == 1:
            break
    assert value(s, "metrics_caught_up") == 1
    assert value(s, "clips_total", status="ok") == value(full, "clips_total", status="ok") == 6
    assert value(s, "usage_total", tenant="studio-a", project="moonlit", provider="animatic",
                 unit="gpu_sec") == 4.0


def test_a_row_committed_late_is_counted_once() -> None:
    tail = IdTail(margin=2)
    for i in (1, 2, 3, 5):  # 4 was handed out before 5 and committed after it
        assert tail.fresh(i)
        tail.mark(i)
    tail.settle()
    assert tail.floor == 3
    assert not tail.fresh(3) and not tail.fresh(5)
    assert tail.fresh(4)
    tail.mark(4)
    tail.settle()
    assert not tail.fresh(4)


def test_runs_and_backlog(instance: dg.DagsterInstance) -> None:
    render = DEFS.resolve_job_def("render_clips")
    plan = DEFS.resolve_job_def("plan_episode")
    # Runs created and not launched yet wait like queued ones (a QUEUED run needs the origin
    # of a code location; the collector treats both statuses alike).
    Q, S = dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTED

    def run(job: dg.JobDefinition, status: dg.DagsterRunStatus, **tags: str) -> dg.DagsterRun:
        created = instance.create_run_for_job(job, tags=tags)
        if status == S:  # what the run worker reports
            instance.report_dagster_event(
                dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job.name), created.run_id)
        got = instance.get_run_by_id(created.run_id)
        assert got is not None and got.status == status
        return got

    run(render, Q, **{RANGE_START_TAG: f"{EP}/S01", RANGE_END_TAG: f"{EP}/S03"})  # 3 shots
    run(render, Q, **{"dagster/partition": f"{EP}/S04"})  # 1 shot
    run(plan, Q)
    rendering = run(render, S, **{RANGE_START_TAG: f"{EP}/S05", RANGE_END_TAG: f"{EP}/S06"})
    waiting = run(render, S, **{RANGE_START_TAG: f"{EP}/S07", RANGE_END_TAG: f"{EP}/S08"})
    canceled = run(render, Q, **{RANGE_START_TAG: f"{EP}/S01", RANGE_END_TAG: f"{EP}/S02"})
    instance.report_run_canceled(canceled)
    instance.add_dynamic_partitions("clips", [f"{EP}/X1", f"{EP}/X2"])
    run(render, Q, **{RANGE_START_TAG: f"{EP}/X1", RANGE_END_TAG: f"{EP}/X2"})
    for key in (f"{EP}/X1", f"{EP}/X2"):  # the episode changed: those shots are gone
        instance.delete_dynamic_partition("clips", key)
    storage = instance.event_log_storage
    storage.set_concurrency_slots("gpu", 1)
    storage.claim_concurrency_slot("gpu", rendering.run_id, "clips")
    storage.claim_concurrency_slot("gpu", waiting.run_id, "clips")  # no slot left: pending

    s = scrape(PipelineCollector(instance, gpu_query=no_gpu))
    assert value(s, "runs", dagster_job="render_clips", status="not_started") == 3
    assert value(s, "runs", dagster_job="plan_episode", status="not_started") == 1
    assert value(s, "runs", dagster_job="render_clips", status="started") == 2
    assert value(s, "runs", dagster_job="render_clips", status="canceled") == 1
    assert value(s, "queue_backlog", kind="runs") == 4
    # S01..S03, S04, S07..S08 (waiting for a gpu slot); not S05..S06 (rendering), not X1..X2
    assert value(s, "queue_backlog", kind="shots") == 3 + 1 + 2
    assert value(s, "clips_total", status="failed") == 0  # canceled before it started


def test_usage_and_budgets(instance: dg.DagsterInstance, ledger: Ledger) -> None:
    ledger.record([usage("S01", "comfyui", "gpu_sec", 90.0), usage("S01", "comfyui", "frames", 48),
                   usage("S02", "animatic", "gpu_sec", 30.0),
                   usage("S01", "comfyui", "gpu_sec", 5.0, project="other", run_id="r2")])
    ledger.set_budget(ProjectBudget(tenant="studio-a", project="moonlit", gpu_minutes=10))
    collector = PipelineCollector(instance, ledger, gpu_query=no_gpu)
    s = scrape(collector)
    key = {"tenant": "studio-a", "project": "moonlit"}
    assert value(s, "usage_total", **key, provider="comfyui", unit="gpu_sec") == 90.0
    assert value(s, "usage_total", **key, provider="comfyui", unit="frames") == 48
    assert value(s, "usage_total", tenant="studio-a", project="other", provider="comfyui",
                 unit="gpu_sec") == 5.0
    assert value(s, "budget_remaining", **key, unit="gpu_sec") == 600 - 120
    assert value(s, "budget_limit", **key, unit="gpu_sec") == 600
    assert value(s, "budget_remaining", tenant="studio-a", project="other",
                 unit="gpu_sec") is None  # no budget
    # a retried step records the same call again: nothing added; a new attempt adds
    ledger.record([usage("S02", "animatic", "gpu_sec", 30.0),
                   usage("S02", "animatic", "gpu_sec", 31.0, attempt=2)])
    s = scrape(collector)
    assert value(s, "usage_total", **key, provider="animatic", unit="gpu_sec") == 61.0
    assert value(s, "budget_remaining", **key, unit="gpu_sec") == 600 - 151
    assert value(s, "metrics_source_up", source="ledger") == 1


def test_runtime_profile_policy_and_gpus(instance: dg.DagsterInstance, ledger: Ledger,
                                         tmp_path: Path) -> None:
    report(instance, clip("S01"))
    failed_render(instance, "S02", "S03")
    ledger.record([usage("S01", "comfyui", "gpu_sec", 9.0)])
    ledger.set_budget(ProjectBudget(tenant="studio-a", project="moonlit", gpu_minutes=1))
    make_profile(vram_gib=[24.0]).save(tmp_path / "runtime_profile.json")
    StateStore(tmp_path).save(manual_degrade(MonitorState(), "farm maintenance"))
    reading = nvml.GpuReading(index=0, name="NVIDIA Test GPU", uuid=None, vram_total_mb=24576,
                              vram_used_mb=6144, utilisation_pct=37.0,
                              memory_utilisation_pct=12.0)
    collector = PipelineCollector(instance, ledger, tmp_path, gpu_query=lambda: nvml.NvmlReport(
        available=True, gpus=[reading]))
    s = scrape(collector)
    found = [k for k in s if k[0] == P + "runtime_profile" and s[k] == 1]
    assert len(found) == 1
    assert dict(found[0][1])["profile_class"].startswith("LOCAL_GPU")
    assert value(s, "runtime_profile", profile_class="LOCAL_CPU_ONLY") == 0
    assert value(s, "policy_degraded") == 1 and value(s, "policy_degrade_level") == 1
    gpu = {"gpu": "0", "name": "NVIDIA Test GPU"}
    assert value(s, "gpus") == 1
    assert value(s, "gpu_memory_total_bytes", **gpu) == 24576 * 1024 * 1024
    assert value(s, "gpu_memory_used_bytes", **gpu) == 6144 * 1024 * 1024
    assert value(s, "gpu_utilisation_ratio", **gpu) == pytest.approx(0.37)
    # every family we document, and only those, is exported by a populated collector
    assert families(s) == set(FAMILIES)
    if shutil.which("promtool"):  # Prometheus' own linter of names, types and help texts
        lint = subprocess.run(["promtool", "check", "metrics"], input=exposition(collector),
                              capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_no_gpu_on_this_machine_means_no_gpu_gauges(instance: dg.DagsterInstance) -> None:
    report_ = nvml.query()
    s = scrape(PipelineCollector(instance))
    assert value(s, "gpus") == len(report_.gpus)
    if not report_.gpus:
        assert not {P + "gpu_memory_used_bytes", P + "gpu_memory_total_bytes",
                    P + "gpu_utilisation_ratio"} & names(s)
    else:  # a machine with an NVIDIA GPU: its real readings
        total = value(s, "gpu_memory_total_bytes", gpu="0", name=report_.gpus[0].name)
        assert total is not None and total > 0


def test_a_source_that_cannot_be_read_is_reported_not_fatal(
        instance: dg.DagsterInstance, tmp_path: Path) -> None:
    path = tmp_path / "broken.sqlite"
    broken = Ledger(f"sqlite:///{path}")
    report(instance, clip("S01"))
    broken.engine.dispose()
    path.write_bytes(b"this is not a database" * 100)
    (tmp_path / "runtime_profile.json").write_text("{not json", encoding="utf-8")
    s = scrape(PipelineCollector(instance, broken, state_dir=tmp_path, gpu_query=no_gpu))
    assert value(s, "metrics_source_up", source="ledger") == 0
    assert value(s, "metrics_source_up", source="runtime") == 0
    assert value(s, "metrics_source_up", source="instance") == 1
    assert value(s, "clips_total", status="ok") == 1
    assert (tmp_path / "runtime_profile.json").read_text(encoding="utf-8") == "{not json"


def test_serve_refuses_a_port_in_use_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from anime_pipeline.cli import main

    assert main(["metrics"]) == 2  # an action is required
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["metrics", "serve", "--host", "127.0.0.1", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"metrics: cannot listen on 127.0.0.1:{port}:" in err
    assert "Traceback" not in err
