"""Dagster resources: artifact storage (local disk or S3) and render settings."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from anime_pipeline.storage import LocalStore, S3Store, Storage


def pipeline_home() -> Path:
    """Project-local state folder (artifacts, runtime state): ``$ANIME_PIPELINE_HOME``."""
    return Path(os.environ.get("ANIME_PIPELINE_HOME", ".anime_pipeline")).resolve()


class StorageResource(dg.ConfigurableResource):
    """Where artifacts live. Subclasses choose the backend (hooli's FileSystem pattern)."""

    def store(self) -> Storage:
        raise NotImplementedError


class LocalStorageResource(StorageResource):
    root: str = Field(description="Folder that holds every artifact, keyed tenant/project/episode.")

    def store(self) -> Storage:
        return LocalStore(self.root)


class S3StorageResource(StorageResource):
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = Field(default=None, description="For S3-compatible stores.")
    region_name: str | None = None
    cache_dir: str | None = Field(default=None, description="Local cache for ffmpeg inputs.")

    def store(self) -> Storage:
        return S3Store(self.bucket, self.prefix, endpoint_url=self.endpoint_url,
                       region_name=self.region_name, cache_dir=self.cache_dir)


class RenderSettings(dg.ConfigurableResource):
    concurrency: int = Field(default=4, ge=1, le=64,
                             description="Shots rendered at once within one clips step.")
    burn_subtitles: bool = Field(default=False, description="Also draw subtitles into the video.")
    force: bool = Field(default=False, description="Re-render clips even when cached.")


def storage_from_env() -> StorageResource:
    bucket = os.environ.get("ANIME_PIPELINE_S3_BUCKET")
    if bucket:
        return S3StorageResource(
            bucket=bucket,
            prefix=os.environ.get("ANIME_PIPELINE_S3_PREFIX", ""),
            endpoint_url=os.environ.get("ANIME_PIPELINE_S3_ENDPOINT_URL") or None,
            region_name=os.environ.get("AWS_REGION") or None,
        )
    root = os.environ.get("ANIME_PIPELINE_STORAGE") or str(pipeline_home() / "artifacts")
    return LocalStorageResource(root=root)


def render_settings_from_env() -> RenderSettings:
    return RenderSettings(
        concurrency=int(os.environ.get("ANIME_PIPELINE_RENDER_CONCURRENCY", "4")),
        burn_subtitles=os.environ.get("ANIME_PIPELINE_BURN_SUBTITLES", "0") in ("1", "true"),
    )
