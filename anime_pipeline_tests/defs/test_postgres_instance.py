"""deploy/dagster-postgres.yaml: a shared instance on PostgreSQL (dagster-postgres) runs the
pipeline and a second process sees the same runs and partitions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from anime_pipeline_tests.conftest import minimal_episode

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PG = {"host": os.environ.get("PGHOST", "127.0.0.1"), "port": 5432, "user": "postgres"}


@pytest.fixture
def pg_database() -> Iterator[str]:
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(dbname="test", connect_timeout=3, **PG)
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL on {PG['host']}:5432: {e}")
    admin.autocommit = True
    name = f"anime_pipeline_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def test_postgres_instance_shared_between_processes(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    env = {"DAGSTER_PG_HOST": PG["host"], "DAGSTER_PG_USER": PG["user"],
           "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": pg_database}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    from anime_pipeline.definitions import defs
    from anime_pipeline.defs.partitions import register_partitions
    from anime_pipeline.defs.resources import pipeline_resources
    from anime_pipeline.pipeline import catalog
    from anime_pipeline.settings import PipelineConfig
    from anime_pipeline.storage import LocalStore

    config = PipelineConfig(home=tmp_path / "home", storage_root=tmp_path / "artifacts")
    folder = minimal_episode(tmp_path / "ep")
    bundle = catalog.register(LocalStore(config.artifacts), folder)
    key = bundle.episode.key
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        register_partitions(instance, key, ["S01", "S02"])
        result = defs().resolve_job_def("plan_episode").execute_in_process(
            instance=instance, partition_key=key, resources=pipeline_resources(config))
        assert result.success
    # Another process (as the webserver or daemon would be) reads the same instance.
    probe = (
        "import dagster as dg\n"
        "i = dg.DagsterInstance.get()\n"
        "print(i.get_runs_count(), sorted(i.get_dynamic_partitions('episodes')),\n"
        "      i.get_latest_materialization_event(dg.AssetKey('shot_plan')) is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, **env, "DAGSTER_HOME": str(home)}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"1 ['{key}'] True"
    clips = subprocess.run(
        [sys.executable, "-c", "import dagster as dg\n"
         "print(dg.DagsterInstance.get().get_dynamic_partitions('clips'))"],
        capture_output=True, text=True, env={**os.environ, **env, "DAGSTER_HOME": str(home)},
        timeout=120)
    assert clips.stdout.strip() == f"['{key}/S01', '{key}/S02']", clips.stderr[-2000:]
