"""Signed, expiring download links.

Local storage: the desk serves ``/files/<key>?exp=<unix time>&scope=<scope>&sig=<hex>``, where
``sig`` is HMAC-SHA256 over (storage key, expiry, scope) with the desk's secret. A link is
honoured only when, in this order, its signature matches (:func:`hmac.compare_digest`), it has
not expired, its key is a plain relative key (no ``..``, no absolute path, no empty or dot
segment, no control character, no backslash), the key's episode lies in the signed scope, the
key is one of that episode's artifacts (:func:`artifact_keys`), and the file on disk is that
key under the storage root with no symbolic link on the way. Anything else is refused before
a byte is read.

S3 storage: the same checks choose what to sign, and the link is the bucket's own presigned
URL (``S3Store.presigned_url``): S3 checks the signature and the expiry.

The secret: ``ANIME_PIPELINE_DESK_SECRET``, else ``<pipeline home>/desk_secret``, generated once
with permissions 0600 (and refused if anyone but its owner may read it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import stat
from pathlib import Path, PurePosixPath

from anime_pipeline.desk.auth import DeskConfigError, Scope
from anime_pipeline.storage import EpisodeKeys

SECRET_ENV = "ANIME_PIPELINE_DESK_SECRET"
SECRET_FILE = "desk_secret"
MIN_SECRET_BYTES = 16
DEFAULT_LINK_TTL_S = 3600
MIN_LINK_TTL_S = 60
MAX_LINK_TTL_S = 7 * 24 * 3600
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


class LinkRefused(Exception):
    """A link the desk will not serve; the reason is for the log, never for the caller."""


def load_secret(home: Path, value: str | None = None) -> bytes:
    """``value`` (the variable), else the secret file in ``home``, created on first use."""
    if value is not None and value.strip():
        if len(value.strip().encode()) < MIN_SECRET_BYTES:
            raise DeskConfigError(f"{SECRET_ENV}: at least {MIN_SECRET_BYTES} characters "
                                  "(the value is not shown)")
        return value.strip().encode()
    path = home / SECRET_FILE
    home.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise DeskConfigError(f"{path}: not a regular file (the desk's secret)")
    if info.st_mode & 0o077:
        raise DeskConfigError(f"{path}: readable by others (mode {stat.S_IMODE(info.st_mode):o});"
                              f" chmod 600 it, or set {SECRET_ENV}")
    text = path.read_text("ascii").strip()
    if len(text) < MIN_SECRET_BYTES:
        raise DeskConfigError(f"{path}: too short to be the desk's secret; remove it to make a "
                              "new one (every link and session signed with it ends)")
    return text.encode()


def subkey(secret: bytes, purpose: str) -> bytes:
    """A key of its own for each use of the secret (links, sessions)."""
    return hmac.new(secret, f"anime-pipeline-desk:{purpose}".encode(), hashlib.sha256).digest()


def safe_key(key: str) -> str:
    """``key`` if it is a plain relative storage key, else :class:`LinkRefused`."""
    if not key or len(key) > 1024 or _CONTROL.search(key):
        raise LinkRefused("empty, overlong or control characters")
    parts = key.split("/")
    if key.startswith("/") or PurePosixPath(key).is_absolute() or any(
            p in ("", ".", "..") for p in parts):
        raise LinkRefused(f"not a plain relative key: {key!r}")
    return key


def episode_of(key: str) -> str:
    """The ``tenant/project/episode`` a storage key belongs to."""
    parts = safe_key(key).split("/")
    if len(parts) < 4:
        raise LinkRefused(f"{key!r} is not an episode's artifact")
    return "/".join(parts[:3])


def artifact_keys(episode_key: str, shot_ids: list[str]) -> dict[str, str]:
    """Every key the desk hands out for an episode, and what each is."""
    k = EpisodeKeys(episode_key)
    out = {k.composite: "composite", k.preview_composite: "preview composite",
           k.subtitles_srt: "subtitles (SRT)", k.subtitles_ass: "subtitles (ASS)",
           k.contact_sheet: "contact sheet", k.shot_plan: "shot plan",
           k.audio_manifest: "audio event manifest", k.compute_plan: "compute plan",
           k.package: "delivery ZIP"}
    for shot in shot_ids:
        out[k.clip(shot)] = f"clip {shot}"
        out[k.thumbnail(shot)] = f"thumbnail {shot}"
    return out


def download_name(key: str) -> str:
    """The file name a download gets: the key's, prefixed with the episode id if need be."""
    episode_id = key.split("/")[2]
    name = key.rsplit("/", 1)[-1]
    return name if name.startswith(episode_id) else f"{episode_id}_{name}"


def expiry(now: float, ttl_s: int) -> int:
    """An expiry ``ttl_s`` or a little more from now, on a whole minute (so a page's links
    stay the same for a minute and players and browsers can cache them)."""
    return int(math.ceil((now + ttl_s) / 60.0) * 60)


class LinkSigner:
    """Signs and checks the desk's own links (local storage)."""

    def __init__(self, secret: bytes) -> None:
        self._key = subkey(secret, "links")

    def signature(self, key: str, expires: int, scope: str) -> str:
        message = json.dumps(["v1", key, int(expires), scope], separators=(",", ":"))
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def params(self, key: str, scope: Scope, expires: int) -> dict[str, str]:
        """The query of a link to ``key`` for ``scope`` (which must cover it)."""
        if not scope.covers(episode_of(key)):
            raise LinkRefused(f"{key!r} is outside scope {scope}")
        return {"exp": str(expires), "scope": str(scope),
                "sig": self.signature(key, expires, str(scope))}

    def verify(self, key: str, *, exp: str | None, scope: str | None, sig: str | None,
               now: float) -> tuple[str, Scope]:
        """The episode key and scope of a link that passes every check, else
        :class:`LinkRefused`. Reads no file."""
        if not exp or not scope or not sig or not re.fullmatch(r"\d{1,12}", exp):
            raise LinkRefused("incomplete link")
        expected = self.signature(key, int(exp), scope)
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            raise LinkRefused("bad signature")
        if int(exp) <= now:
            raise LinkRefused("expired")
        episode = episode_of(key)
        try:
            granted = Scope.parse(scope)
        except ValueError:
            raise LinkRefused("bad scope") from None
        if not granted.covers(episode):
            raise LinkRefused(f"{key!r} is outside scope {scope}")
        return episode, granted


def local_file(root: Path, key: str) -> Path:
    """The regular file at ``key`` under ``root``, with no symbolic link anywhere below the
    root (none may point out of it, nor to another episode's file). Checks metadata only."""
    base = root.resolve()
    path = base.joinpath(*safe_key(key).split("/"))
    current = base
    for part in key.split("/"):
        current = current / part
        try:
            info = current.lstat()
        except FileNotFoundError:
            raise LinkRefused(f"{key!r}: no such file") from None
        if stat.S_ISLNK(info.st_mode):
            raise LinkRefused(f"{key!r}: a symbolic link on the way")
    if not stat.S_ISREG(path.lstat().st_mode) or path.resolve() != path:
        raise LinkRefused(f"{key!r}: not a regular file under the storage root")
    return path
