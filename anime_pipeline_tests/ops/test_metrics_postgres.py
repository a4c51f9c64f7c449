"""The collector on PostgreSQL (127.0.0.1:5432), where ids can commit out of order: a usage row
whose transaction commits after a later one is still counted, once; clip events of a
PostgreSQL instance are counted the same after a restart."""

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import pytest

from anime_pipeline.ledger import Ledger, UsageEntry
from anime_pipeline.ledger import store as ledger_store
from anime_pipeline.ops.metrics import EVENT_MARGIN, LEDGER_MARGIN, PipelineCollector
from anime_pipeline_tests.defs.test_postgres_instance import PG, pg_database  # noqa: F401
from anime_pipeline_tests.ops.test_metrics import clip, no_gpu, report, scrape, value

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def entry(shot: str, amount: float) -> UsageEntry:
    return UsageEntry(tenant="studio-a", project="moonlit", episode="ep01", shot=shot,
                      run_id="r1", attempt=1, provider="comfyui", unit="gpu_sec",
                      amount=amount, at=dt.datetime.now(dt.UTC))


def gpu_sec(collector: PipelineCollector) -> float | None:
    return value(scrape(collector), "usage_total", tenant="studio-a", project="moonlit",
                 provider="comfyui", unit="gpu_sec")


def test_postgres_late_commits_and_instance(
        tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ledger = Ledger(f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/"
                    f"{pg_database}")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    for k, v in {"DAGSTER_PG_HOST": str(PG["host"]), "DAGSTER_PG_USER": str(PG["user"]),
                 "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": pg_database}.items():
        monkeypatch.setenv(k, v)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert "Postgres" in type(instance.event_log_storage).__name__
        collector = PipelineCollector(instance, ledger, gpu_query=no_gpu)
        assert collector.streams[0].tail.margin == EVENT_MARGIN
        assert collector.ledger_stream is not None
        assert collector.ledger_stream.tail.margin == LEDGER_MARGIN

        ledger.record([entry("S01", 10.0)])
        assert gpu_sec(collector) == 10.0
        late = entry("S02", 5.0)
        with ledger.engine.connect() as conn:
            tx = conn.begin()  # takes the next id, commits after a later row
            conn.execute(ledger_store.usage.insert(), {
                **late.model_dump(), "day": late.at.strftime("%Y-%m-%d")})
            ledger.record([entry("S03", 1.0)])
            assert gpu_sec(collector) == 11.0  # the late row is not visible yet
            tx.commit()
        assert gpu_sec(collector) == 16.0  # found below the highest id seen
        assert gpu_sec(collector) == 16.0  # and counted once
        assert gpu_sec(PipelineCollector(instance, ledger, gpu_query=no_gpu)) == 16.0

        report(instance, clip("S01"))
        report(instance, clip("S02", "placeholder", backend="placeholder"))
        s = scrape(collector)
        assert value(s, "clips_total", status="ok") == 1
        assert value(s, "clips_total", status="placeholder") == 1
        again = scrape(PipelineCollector(instance, ledger, gpu_query=no_gpu))
        assert {k: v for k, v in again.items() if "metrics_" not in k[0]} == \
            {k: v for k, v in scrape(collector).items() if "metrics_" not in k[0]}
