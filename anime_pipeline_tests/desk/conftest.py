"""The desk's fixtures: two registered episodes in two scopes (studio-a and studio-b), with
clip records and small stand-in files (no ffmpeg), a desk app over them, tokens for each."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.testclient import TestClient

from anime_pipeline.desk.app import create_app
from anime_pipeline.desk.config import DeskSettings, LocalStorageSettings
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.records import ClipRecord, ClipStatus
from anime_pipeline.ledger import default_url
from anime_pipeline.pipeline import catalog
from anime_pipeline.storage import EpisodeKeys, LocalStore, put_record
from anime_pipeline_tests.conftest import minimal_episode

TOKEN_A = "studio-a-token-0123456789"
TOKEN_B = "studio-b-token-9876543210"
EP_A = "studio-a/moonlit-courier/ep99"
EP_B = "studio-b/glass-harbor/ep01"
UI = "http://dagster.test:3000"


def fake_clip(store: LocalStore, episode_key: str, shot: str, body: bytes,
              status: ClipStatus = ClipStatus.ok) -> ClipRecord:
    """A clip record over a stand-in file (the desk never decodes clips)."""
    keys = EpisodeKeys(episode_key)
    store.put_bytes(keys.clip(shot), body)
    store.put_bytes(keys.thumbnail(shot), b"\xff\xd8\xff thumbnail of " + body[:20])
    import hashlib

    record = ClipRecord(
        episode_key=episode_key, shot_id=shot, status=status, fingerprint="fp",
        backend="animatic", fps=24, resolution="360p", encoder="libx264", attempts=[],
        render_seconds=1.0, frames=24, width=320, height=180, delivery_fps=24,
        size_bytes=len(body), sha256=hashlib.sha256(body).hexdigest(), uri="u",
        shot_type="action", duration_ms=1000, segment_policy="single", segments=1,
        rendered_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    put_record(store, keys.clip_record(shot), record)
    return record


@dataclass
class World:
    tmp: Path
    store: LocalStore
    settings: DeskSettings
    a: EpisodeBundle
    b: EpisodeBundle

    def app(self, **kw: object) -> Starlette:
        return create_app(self.settings.model_copy(update=kw) if kw else self.settings)


@pytest.fixture
def world(tmp_path: Path) -> World:
    store = LocalStore(tmp_path / "artifacts")
    a = catalog.register(store, minimal_episode(tmp_path / "ep-a"))
    b = catalog.register(store, minimal_episode(
        tmp_path / "ep-b", tenant_id="studio-b", project_id="glass-harbor", episode_id="ep01",
        title="Glass Harbor 1"))
    for key in (EP_A, EP_B):
        fake_clip(store, key, "S01", f"{key} S01 clip v1".encode())
        fake_clip(store, key, "S02", f"{key} S02 clip v1".encode())
        store.put_bytes(EpisodeKeys(key).subtitles_srt, f"1\n00:00:00,100 --> 00:00:00,900\n"
                                                         f"{key}\n".encode())
    settings = DeskSettings(
        home=tmp_path / "home", storage=LocalStorageSettings(root=tmp_path / "artifacts"),
        ledger_url=default_url(tmp_path / "home"),
        tokens=SecretStr(f"{TOKEN_A}=studio-a, {TOKEN_B}=mei@studio-b/glass-harbor"),
        ui_url=UI)
    return World(tmp_path, store, settings, a, b)


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with TestClient(world.app(), base_url="http://desk.test") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
