"""The desk's settings: one record, read from the environment at the CLI boundary only
(:meth:`DeskSettings.from_environ`); tests and other callers build it themselves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from anime_pipeline.desk.auth import SESSION_MAX_AGE_S, TOKENS_ENV
from anime_pipeline.desk.signing import (
    DEFAULT_LINK_TTL_S,
    MAX_LINK_TTL_S,
    MIN_LINK_TTL_S,
    SECRET_ENV,
)
from anime_pipeline.ledger import LEDGER_URL_ENV, default_url
from anime_pipeline.ops.notify import UI_URL_ENV
from anime_pipeline.settings import PipelineConfig
from anime_pipeline.storage import LocalStore, S3Store, Storage

# The same variables as the Dagster resources' (defs/resources.py, which imports Dagster);
# a test keeps the two in step.
S3_BUCKET_ENV = "ANIME_PIPELINE_S3_BUCKET"
S3_PREFIX_ENV = "ANIME_PIPELINE_S3_PREFIX"
S3_ENDPOINT_ENV = "ANIME_PIPELINE_S3_ENDPOINT_URL"


class LocalStorageSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["local"] = "local"
    root: Path


class S3StorageSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["s3"] = "s3"
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region_name: str | None = None


class DeskSettings(BaseModel):
    """Everything the desk needs: where things are, who may come in, how links are signed."""

    model_config = ConfigDict(frozen=True)

    home: Path  # the pipeline home (the secret file lives here)
    storage: LocalStorageSettings | S3StorageSettings = Field(discriminator="kind")
    ledger_url: str  # the ledger's database: review history, usage, budgets
    tokens: SecretStr  # TOKEN=SCOPE,... (see auth.TokenTable.parse)
    secret: SecretStr | None = None  # None: <home>/desk_secret
    ui_url: str = ""  # the Dagster UI, for links to a shot's partition
    link_ttl_s: int = Field(default=DEFAULT_LINK_TTL_S, ge=MIN_LINK_TTL_S, le=MAX_LINK_TTL_S)
    session_max_age_s: int = Field(default=SESSION_MAX_AGE_S, ge=60)

    def open_storage(self) -> Storage:
        s = self.storage
        if isinstance(s, S3StorageSettings):
            return S3Store(s.bucket, s.prefix, endpoint_url=s.endpoint_url,
                           region_name=s.region_name, cache_dir=self.home / "desk_cache")
        return LocalStore(s.root)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, home: str | Path | None = None,
                     ledger_url: str | None = None, link_ttl_s: int | None = None
                     ) -> DeskSettings:
        """The settings the pipeline's variables say (the CLI's ``--home`` and
        ``--ledger-url`` first): the same storage and ledger every other process uses."""
        config = PipelineConfig.from_env(environ, home=home)
        storage: LocalStorageSettings | S3StorageSettings
        if environ.get(S3_BUCKET_ENV):
            storage = S3StorageSettings(
                bucket=environ[S3_BUCKET_ENV], prefix=environ.get(S3_PREFIX_ENV, ""),
                endpoint_url=environ.get(S3_ENDPOINT_ENV) or None,
                region_name=environ.get("AWS_REGION") or None)
        else:
            storage = LocalStorageSettings(root=config.artifacts)
        secret = environ.get(SECRET_ENV, "")
        return cls(home=config.home, storage=storage,
                   ledger_url=ledger_url or environ.get(LEDGER_URL_ENV) or default_url(
                       config.home),
                   tokens=SecretStr(environ.get(TOKENS_ENV, "")),
                   secret=SecretStr(secret) if secret.strip() else None,
                   ui_url=environ.get(UI_URL_ENV, ""),
                   link_ttl_s=link_ttl_s or DEFAULT_LINK_TTL_S)
