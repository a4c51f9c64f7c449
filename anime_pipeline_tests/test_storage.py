"""Storage: local atomic writes and S3 through boto3 against a local S3 server (moto)."""

from __future__ import annotations

import json
import os
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from anime_pipeline.domain.package import PackageEntry, build_package, verify_package
from anime_pipeline.domain.records import Lineage
from anime_pipeline.storage import EpisodeKeys, LocalStore, S3Store, get_json, put_json

LINEAGE = Lineage(episode_key="x/y/z", title="t", run_id="r1", code_version="test")


def test_local_roundtrip_and_listing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    keys = EpisodeKeys("studio-a/proj/ep01")
    put_json(store, keys.shot_plan, {"a": "日本語"})
    assert get_json(store, keys.shot_plan) == {"a": "日本語"}
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"x" * 100)
    store.put_file(src, keys.clip("S01"))
    assert store.exists(keys.clip("S01")) and not src.exists()  # moved, not copied
    assert store.list_keys("studio-a/proj/ep01") == [keys.clip("S01"), keys.shot_plan]
    assert store.fetch(keys.clip("S01")).read_bytes() == b"x" * 100


@pytest.mark.parametrize("key", ["../escape.json", "/abs.json", "a/../../b", ""])
def test_keys_cannot_escape(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        LocalStore(tmp_path).put_bytes(key, b"x")


def test_crash_mid_write_leaves_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a/b.json", b"old")

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        store.put_bytes("a/b.json", b"new but never complete")
    assert store.get_bytes("a/b.json") == b"old"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.json"]  # no temp left


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Store:
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    store = S3Store("anime-artifacts", "studio", endpoint_url=s3_endpoint,
                    region_name="us-east-1", cache_dir=tmp_path / "cache")
    try:
        store.client.create_bucket(Bucket="anime-artifacts")
    except store.client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return store


def test_s3_roundtrip(s3: S3Store, tmp_path: Path) -> None:
    keys = EpisodeKeys("studio-a/proj/ep01")
    assert not s3.exists(keys.compute_plan)
    put_json(s3, keys.compute_plan, {"status": "compute_plan_ready"})
    assert s3.exists(keys.compute_plan)
    assert get_json(s3, keys.compute_plan)["status"] == "compute_plan_ready"
    assert s3.uri(keys.compute_plan) == \
        "s3://anime-artifacts/studio/studio-a/proj/ep01/plan/shot_compute_budget_plan.json"
    src = tmp_path / "c.mp4"
    src.write_bytes(os.urandom(6 * 1024 * 1024))  # multipart-sized upload
    s3.put_file(src, keys.clip("S01"))
    fetched = s3.fetch(keys.clip("S01"))
    assert fetched.read_bytes() == src.read_bytes()
    assert s3.list_keys("studio-a/proj/ep01") == [keys.clip("S01"), keys.compute_plan]
    raw = s3.client.list_objects_v2(Bucket="anime-artifacts")["Contents"]
    assert all(o["Key"].startswith("studio/studio-a/") for o in raw)


def test_s3_presigned_links(s3: S3Store) -> None:
    """A SigV4 link to one object, that expires, with a download name; made without a call."""
    from urllib.parse import parse_qs, urlsplit

    import httpx

    key = "studio-a/proj/ep01/clips/S01.mp4"
    s3.put_bytes(key, b"clip bytes")
    url = s3.presigned_url(key, 600, filename="ep01_S01.mp4", inline=False)
    parts = urlsplit(url)
    q = parse_qs(parts.query)
    assert parts.path == "/anime-artifacts/studio/studio-a/proj/ep01/clips/S01.mp4"
    assert q["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and q["X-Amz-Expires"] == ["600"]
    assert q["response-content-disposition"] == ['attachment; filename="ep01_S01.mp4"']
    got = httpx.get(url, timeout=30)
    assert got.status_code == 200 and got.content == b"clip bytes"
    assert got.headers["content-disposition"] == 'attachment; filename="ep01_S01.mp4"'


def test_package_streams_and_verifies(tmp_path: Path) -> None:
    big = tmp_path / "big.mp4"
    with big.open("wb") as f:
        for _ in range(40):
            f.write(os.urandom(1 << 20))  # 40 MiB
    text = tmp_path / "a.srt"
    text.write_text("1\n00:00:00,000 --> 00:00:01,000\nhi\n")
    out = tmp_path / "p.zip"
    tracemalloc.start()
    manifest = build_package(out, [PackageEntry("ep.mp4", big, "composite"),
                                   PackageEntry("subtitles/a.srt", text, "subtitles")],
                             LINEAGE)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * 1024 * 1024  # memory does not grow with the package (40 MiB in)
    assert manifest.files[0].size == 40 << 20
    assert verify_package(out) == []
    with zipfile.ZipFile(out) as zf:
        assert zf.getinfo("ep.mp4").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("subtitles/a.srt").compress_type == zipfile.ZIP_DEFLATED
        assert json.loads(zf.read("manifest.json"))["lineage"]["run_id"] == "r1"


def test_verify_detects_tampering(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("hello")
    out = tmp_path / "p.zip"
    build_package(out, [PackageEntry("a.txt", a, "manifest")], LINEAGE)
    with zipfile.ZipFile(out) as zf:
        manifest = zf.read("manifest.json")
    tampered = tmp_path / "t.zip"
    with zipfile.ZipFile(tampered, "w") as zf:
        zf.writestr("a.txt", "HELLO")
        zf.writestr("extra.bin", "x")
        zf.writestr("manifest.json", manifest)
    problems = verify_package(tampered)
    assert "a.txt: sha256 mismatch" in problems
    assert "extra.bin: in the ZIP but not in the manifest" in problems


def test_records_roundtrip_and_name_the_key_when_broken(tmp_path: Path) -> None:
    from anime_pipeline.domain.records import CatalogEntry
    from anime_pipeline.storage import RecordError, get_record, put_record

    store = LocalStore(tmp_path)
    entry = CatalogEntry(episode_key="a/b/c", episode_dir="/x", shots=["S01"])
    put_record(store, "a/b/c.json", entry)
    assert get_record(store, "a/b/c.json", CatalogEntry) == entry
    store.put_bytes("a/b/bad.json", b'{"episode_key": 1}')
    with pytest.raises(RecordError, match=r"a/b/bad.json: not a valid CatalogEntry"):
        get_record(store, "a/b/bad.json", CatalogEntry)
    with pytest.raises(RecordError, match="not found"):
        get_record(store, "a/b/none.json", CatalogEntry)


def test_scratch_left_by_a_dead_process_is_reclaimed(tmp_path: Path) -> None:
    """A render killed with -9 leaves its work folder; the next scratch() removes it, and
    never a live process's."""
    import socket
    import subprocess

    store = LocalStore(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    base = tmp_path / ".scratch"
    leftover = base / f"{socket.gethostname()}-{dead.pid}-abc123"
    (leftover / "half.zip").parent.mkdir(parents=True)
    (leftover / "half.zip").write_bytes(b"x" * 1000)
    live = base / f"{socket.gethostname()}-{os.getpid()}-live01"
    live.mkdir()
    with store.scratch() as work:
        assert work.parent == base and work.name.startswith(f"{socket.gethostname()}-")
        assert not leftover.exists() and live.exists()
    assert not work.exists()
