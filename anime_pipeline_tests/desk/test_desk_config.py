"""The desk's settings from the environment, S3 storage (presigned links), and the CLI."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from anime_pipeline.cli import main
from anime_pipeline.desk import config as desk_config
from anime_pipeline.desk.app import create_app
from anime_pipeline.desk.config import DeskSettings, LocalStorageSettings, S3StorageSettings
from anime_pipeline.domain.records import ClipRecord, ClipStatus
from anime_pipeline.ledger import default_url
from anime_pipeline.pipeline import catalog
from anime_pipeline.storage import EpisodeKeys, S3Store, put_record
from anime_pipeline_tests.conftest import minimal_episode
from anime_pipeline_tests.desk.conftest import EP_A, TOKEN_A, TOKEN_B, bearer

REPO = Path(__file__).resolve().parents[2]


def test_settings_from_the_environment(tmp_path: Path) -> None:
    env = {"ANIME_PIPELINE_HOME": str(tmp_path / "h"), "ANIME_PIPELINE_DESK_TOKENS": "x",
           "ANIME_PIPELINE_UI_URL": "http://ui:3000"}
    s = DeskSettings.from_environ(env)
    assert s.home == tmp_path / "h" and s.storage == LocalStorageSettings(
        root=tmp_path / "h" / "artifacts")
    assert s.ledger_url == default_url(tmp_path / "h") and s.secret is None
    assert s.ui_url == "http://ui:3000" and "x" not in repr(s.tokens)
    s = DeskSettings.from_environ({**env, "ANIME_PIPELINE_STORAGE": str(tmp_path / "art"),
                                   "ANIME_PIPELINE_LEDGER_URL": "sqlite:///l.db",
                                   "ANIME_PIPELINE_DESK_SECRET": "s" * 20},
                                  home=tmp_path / "other", link_ttl_s=120)
    assert s.home == tmp_path / "other" and s.storage.root == tmp_path / "art"  # type: ignore[union-attr]
    assert s.ledger_url == "sqlite:///l.db" and s.link_ttl_s == 120
    assert s.secret is not None and s.secret.get_secret_value() == "s" * 20
    s = DeskSettings.from_environ({**env, "ANIME_PIPELINE_S3_BUCKET": "b",
                                   "ANIME_PIPELINE_S3_PREFIX": "p", "AWS_REGION": "eu-west-1"})
    assert s.storage == S3StorageSettings(bucket="b", prefix="p", region_name="eu-west-1")


def test_the_variables_are_the_dagster_resources_own() -> None:
    from anime_pipeline.defs import resources

    assert (desk_config.S3_BUCKET_ENV, desk_config.S3_PREFIX_ENV,
            desk_config.S3_ENDPOINT_ENV) == (resources.S3_BUCKET_ENV, resources.S3_PREFIX_ENV,
                                             resources.S3_ENDPOINT_ENV)


def test_the_cli_refuses_to_start_without_good_tokens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from anime_pipeline.cli import desk as desk_cli

    def never(*_: object) -> None:
        raise AssertionError("the desk must not start")

    monkeypatch.setattr(desk_cli, "serve", never)
    monkeypatch.delenv("ANIME_PIPELINE_DESK_TOKENS", raising=False)
    args = ["desk", "--home", str(tmp_path), "--port", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "desk: ANIME_PIPELINE_DESK_TOKENS is not set" in err and "TOKEN=SCOPE" not in err
    assert "studio-b/glass-harbor" in err  # it says what a scope looks like
    monkeypatch.setenv("ANIME_PIPELINE_DESK_TOKENS", "s3cr3t-too-shrt=studio-b")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "entry 1 (scope studio-b): the token is 15 characters" in err and "s3cr3t" not in err
    monkeypatch.setenv("ANIME_PIPELINE_DESK_TOKENS", "s3cr3t-token-long-enough=Studio")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "entry 1: scope 'Studio'" in err and "s3cr3t" not in err
    monkeypatch.setenv("ANIME_PIPELINE_DESK_TOKENS", "s3cr3t-token-long-enough=studio")
    assert main([*args, "--link-ttl", "5"]) == 2
    assert "--link-ttl: 60 to 604800 seconds" in capsys.readouterr().err
    monkeypatch.setenv("ANIME_PIPELINE_UI_URL", "javascript:alert(1)")
    assert main(args) == 1
    assert "ANIME_PIPELINE_UI_URL: must be an http:// or https:// URL" in capsys.readouterr().err


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_s3_storage_gets_presigned_links(s3_endpoint: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    store = S3Store("desk-artifacts", "studio", endpoint_url=s3_endpoint,
                    region_name="us-east-1", cache_dir=tmp_path / "cache")
    try:
        store.client.create_bucket(Bucket="desk-artifacts")
    except store.client.exceptions.BucketAlreadyOwnedByYou:
        pass
    bundle = catalog.register(store, minimal_episode(tmp_path / "ep"))
    keys = EpisodeKeys(bundle.episode.key)
    body = b"an S3 clip"
    store.put_bytes(keys.clip("S01"), body)
    put_record(store, keys.clip_record("S01"), ClipRecord(
        episode_key=EP_A, shot_id="S01", status=ClipStatus.ok, fingerprint="fp",
        backend="animatic", fps=24, resolution="360p", encoder="libx264", frames=24,
        width=320, height=180, delivery_fps=24, size_bytes=len(body),
        sha256=hashlib.sha256(body).hexdigest(), uri="u", shot_type="action",
        duration_ms=1000))
    settings = DeskSettings(
        home=tmp_path / "home", ledger_url=default_url(tmp_path / "home"),
        storage=S3StorageSettings(bucket="desk-artifacts", prefix="studio",
                                  endpoint_url=s3_endpoint, region_name="us-east-1"),
        tokens=SecretStr(f"{TOKEN_A}=studio-a,{TOKEN_B}=studio-b"), link_ttl_s=900)
    with TestClient(create_app(settings)) as client:
        ep = client.get(f"/api/episodes/{EP_A}", headers=bearer(TOKEN_A)).json()
        url = ep["shots"][0]["clip"]["url"]
        parts = urlsplit(url)
        assert url.startswith(s3_endpoint + "/desk-artifacts/studio/" + keys.clip("S01"))
        assert parse_qs(parts.query)["X-Amz-Expires"] == ["900"]
        assert ep["shots"][1]["clip"] is None  # S02 has no clip: no link
        assert httpx.get(url, timeout=30).content == body
        page = client.get(f"/episodes/{EP_A}", headers=bearer(TOKEN_A))
        assert s3_endpoint in page.headers["content-security-policy"]  # media from S3
        assert client.get(f"/api/episodes/{EP_A}", headers=bearer(TOKEN_B)).status_code == 404
        # the desk's own /files route serves nothing of an S3 store, signed or not
        signer = client.app.state.desk.service.signer  # type: ignore[attr-defined]
        exp = int(time.time()) + 60
        sig = signer.signature(keys.clip("S01"), exp, "studio-a")
        r = client.get(f"/files/{keys.clip('S01')}?exp={exp}&scope=studio-a&sig={sig}")
        assert r.status_code == 403


def _first_line(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """The first line the process prints, waiting at most ``timeout`` seconds."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            pytest.fail(f"the desk printed nothing in {timeout:.0f} s")
    return proc.stdout.readline()


def _stop(proc: subprocess.Popen[str], timeout: float = 30) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"the desk (pid {proc.pid}) ignored SIGTERM for {timeout:.0f} s")


@pytest.mark.slow
def test_the_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "ANIME_PIPELINE_DESK_TOKENS": f"{TOKEN_A}=studio-a",
           "ANIME_PIPELINE_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "anime_pipeline.cli", "desk", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    try:
        line = _first_line(proc)  # the CLI prints it once it listens
        assert line.startswith("desk: serving http://127.0.0.1:"), line
        base = line.split()[-1]
        assert httpx.get(base + "healthz", timeout=30).text == "ok\n"
        r = httpx.get(base + "api/episodes", headers=bearer(TOKEN_A), timeout=30)
        assert r.status_code == 200 and r.json()["episodes"] == []
    finally:
        code = _stop(proc)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert proc.stderr is not None and "desk: stopped" in proc.stderr.read()
