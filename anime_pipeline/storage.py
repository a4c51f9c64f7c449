"""Artifact storage: a small interface, a local-disk store and an S3 store (boto3).

Keys are POSIX paths scoped ``tenant/project/episode/...`` (see :class:`EpisodeKeys`).
Every write lands under a temporary name first and is renamed (local) or uploaded whole
(S3, where an object appears atomically), so a crash never leaves a half file under a
final name. No Dagster import: the Dagster resources in ``defs/resources.py`` wrap these.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
SCRATCH_DIR = ".scratch"


class Storage(Protocol):
    def uri(self, key: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def put_file(self, local: Path, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes) -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def fetch(self, key: str) -> Path: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def scratch(self) -> Any: ...  # context manager yielding a local Path


def check_key(key: str) -> str:
    p = PurePosixPath(key)
    if p.is_absolute() or ".." in p.parts or not key or key.endswith("/"):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def put_json(storage: Storage, key: str, obj: Any) -> str:
    return storage.put_bytes(key, json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8"))


def get_json(storage: Storage, key: str) -> Any:
    return json.loads(storage.get_bytes(key))


class RecordError(ValueError):
    """A stored record that is missing or does not match its model; names the key."""


def put_record(storage: Storage, key: str, record: BaseModel) -> str:
    """Write a typed record (one of :mod:`anime_pipeline.domain.records`) as JSON."""
    return storage.put_bytes(key, record.model_dump_json(indent=2).encode("utf-8"))


def get_record(storage: Storage, key: str, model: type[M]) -> M:
    """Read a typed record back through its model; a broken file names its key."""
    try:
        data = storage.get_bytes(key)
    except FileNotFoundError:
        raise RecordError(f"{storage.uri(key)}: not found") from None
    try:
        return model.model_validate_json(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecordError(
            f"{storage.uri(key)}: not a valid {model.__name__} ({where}: {first['msg']})"
        ) from None


# --------------------------------------------------------------------------- scratch


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def reclaim_scratch(base: Path, *, max_age_s: float = 7 * 24 * 3600) -> list[Path]:
    """Remove work folders left by dead processes (a ``kill -9`` mid-run); return them.

    Folders are named ``<host>-<pid>-<random>``: one of this host whose process is gone is
    reclaimed at once; any folder untouched for ``max_age_s`` (another host's, say) too.
    """
    removed: list[Path] = []
    if not base.is_dir():
        return removed
    host = socket.gethostname()
    now = time.time()
    for child in base.iterdir():
        if not child.is_dir() or child.is_symlink():
            continue
        parts = child.name.rsplit("-", 2)  # tempfile's random suffix has no '-'
        ours = len(parts) == 3 and parts[1].isdigit()
        dead = ours and parts[0] == host and not _pid_alive(int(parts[1]))
        try:
            stale = now - child.stat().st_mtime > max_age_s
        except OSError:
            continue
        if dead or stale or not ours:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


@contextmanager
def scratch_dir(base: Path) -> Iterator[Path]:
    """A private work folder under ``base``, removed afterwards (and reclaimed if we die)."""
    base.mkdir(parents=True, exist_ok=True)
    reclaim_scratch(base)
    prefix = f"{socket.gethostname()}-{os.getpid()}-"
    with tempfile.TemporaryDirectory(prefix=prefix, dir=base) as d:
        yield Path(d)


class LocalStore:
    """Files under ``root``; writes are temp-file + ``os.replace`` on the same filesystem."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def uri(self, key: str) -> str:
        return str(self.path(key))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def _atomic_target(self, key: str) -> tuple[Path, Path]:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        return final, Path(tmp)

    def put_file(self, local: Path, key: str) -> str:
        final, tmp = self._atomic_target(key)
        try:
            if Path(local).resolve().parent.stat().st_dev == final.parent.stat().st_dev:
                os.replace(local, tmp)  # same filesystem: a move, no copy
            else:
                shutil.copyfile(local, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return str(final)

    def put_bytes(self, key: str, data: bytes) -> str:
        final, tmp = self._atomic_target(key)
        try:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return str(final)

    def get_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def fetch(self, key: str) -> Path:
        p = self.path(key)
        if not p.is_file():
            raise FileNotFoundError(f"{key} not found in storage {self.root}")
        return p

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root).as_posix())
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A local work folder on the same filesystem as the store (so results move)."""
        with scratch_dir(self.root / SCRATCH_DIR) as d:
            yield d


class S3Store:
    """Objects in ``bucket`` under ``prefix``; a local cache serves ffmpeg's file inputs."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region_name: str | None = None, cache_dir: str | Path | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # SigV4 throughout, presigned links included (S3 refuses SigV2 links in newer regions)
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region_name,
                                   config=Config(signature_version="s3v4"))
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "anime_pipeline_s3")

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def size(self, key: str) -> int:
        head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def put_file(self, local: Path, key: str) -> str:
        # upload_file streams in parts; the object only appears once complete.
        self.client.upload_file(str(local), self.bucket, self._key(key))
        return self.uri(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def presigned_url(self, key: str, expires_s: int, *, filename: str | None = None,
                      inline: bool = True) -> str:
        """A GET link to ``key`` that S3 honours for ``expires_s`` seconds (SigV4 presigned;
        no request is made). ``filename``: the name a download is saved under."""
        params: dict[str, str] = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            kind = "inline" if inline else "attachment"
            params["ResponseContentDisposition"] = f'{kind}; filename="{filename}"'
        return str(self.client.generate_presigned_url("get_object", Params=params,
                                                      ExpiresIn=int(expires_s)))

    def fetch(self, key: str) -> Path:
        dest = self.cache_dir / self.bucket / self._key(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key), tmp)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest

    def list_keys(self, prefix: str) -> list[str]:
        full = self._key(prefix.rstrip("/") + "/x")[:-1]
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full
        ):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                keys.append(k[len(self.prefix) + 1:] if self.prefix else k)
        return sorted(keys)

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        with scratch_dir(self.cache_dir / SCRATCH_DIR) as d:
            yield d


@dataclass(frozen=True)
class EpisodeKeys:
    """Where each artifact of an episode lives in storage."""

    episode_key: str  # tenant/project/episode

    @property
    def episode_id(self) -> str:
        return self.episode_key.rsplit("/", 1)[-1]

    def _k(self, rel: str) -> str:
        return f"{self.episode_key}/{rel}"

    @property
    def shot_plan(self) -> str:
        return self._k("plan/shot_plan.json")

    @property
    def audio_manifest(self) -> str:
        return self._k("plan/audio_event_manifest.json")

    @property
    def compute_plan(self) -> str:
        return self._k("plan/shot_compute_budget_plan.json")

    def clip(self, shot_id: str) -> str:
        return self._k(f"clips/{shot_id}.mp4")

    def clip_record(self, shot_id: str) -> str:
        return self._k(f"clips/{shot_id}.json")

    def thumbnail(self, shot_id: str) -> str:
        return self._k(f"clips/{shot_id}.jpg")

    def retake(self, shot_id: str) -> str:
        """The shot's retake (a rejection's new take and note), read by every render."""
        return self._k(f"review/{shot_id}.retake.json")

    @property
    def composite(self) -> str:
        return self._k(f"composite/{self.episode_id}.mp4")

    @property
    def subtitles_srt(self) -> str:
        return self._k(f"composite/{self.episode_id}.srt")

    @property
    def subtitles_ass(self) -> str:
        return self._k(f"composite/{self.episode_id}.ass")

    @property
    def composite_record(self) -> str:
        return self._k("composite/composite.json")

    @property
    def mix(self) -> str:
        """The mix encoded once for the episode's composites (AAC, cut to the episode)."""
        return self._k("composite/mix.m4a")

    @property
    def mix_record(self) -> str:
        return self._k("composite/mix.json")

    @property
    def preview_composite(self) -> str:
        return self._k(f"composite/{self.episode_id}_preview.mp4")

    @property
    def preview_record(self) -> str:
        return self._k("composite/preview.json")

    @property
    def contact_sheet(self) -> str:
        return self._k("composite/contact_sheet.jpg")

    @property
    def package(self) -> str:
        return self._k(f"delivery/{self.episode_id}_delivery.zip")

    @property
    def package_record(self) -> str:
        return self._k("delivery/package.json")

    @property
    def catalog_entry(self) -> str:
        return f"_catalog/episodes/{self.episode_key}.json"
