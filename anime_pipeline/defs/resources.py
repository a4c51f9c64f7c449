"""Resources: settings, artifact storage (local disk or S3), render settings, the runtime policy
in force, the GPU, the usage ledger and the notifier. Values come from ``dg.EnvVar`` when the
variable is set, so they resolve at launch and the UI shows where they come from; otherwise
from the project's defaults."""


import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from anime_pipeline.domain.contracts import ResourceState
from anime_pipeline.ledger import LEDGER_URL_ENV, Ledger, default_url
from anime_pipeline.ops.notify import (
    DEFAULT_TIMEOUT_S,
    UI_URL_ENV,
    WEBHOOK_URL_ENV,
    LogLike,
    Notifier,
)
from anime_pipeline.runtime import nvml
from anime_pipeline.runtime.policy import ExecutionPolicy, to_resource_state
from anime_pipeline.runtime.profile import RuntimeProfile
from anime_pipeline.runtime.state import load_profile, policy_in_force
from anime_pipeline.settings import HOME_ENV, INBOX_ENV, STORAGE_ENV, PipelineConfig
from anime_pipeline.storage import LocalStore, S3Store, Storage

S3_BUCKET_ENV = "ANIME_PIPELINE_S3_BUCKET"
S3_PREFIX_ENV = "ANIME_PIPELINE_S3_PREFIX"
S3_ENDPOINT_ENV = "ANIME_PIPELINE_S3_ENDPOINT_URL"
CONCURRENCY_ENV = "ANIME_PIPELINE_RENDER_CONCURRENCY"
BURN_ENV = "ANIME_PIPELINE_BURN_SUBTITLES"


class PipelineSettings(dg.ConfigurableResource):
    """The pipeline home, the local artifact root, the inbox folders, the state folder."""

    home: str = Field(description="Pipeline home: runtime state, samples, default artifacts "
                                  "($ANIME_PIPELINE_HOME).")
    storage_root: str = Field(default="", description="Local artifact root; empty: "
                                                      "<home>/artifacts.")
    inbox: str = Field(default="", description="Folders the inbox sensor watches, "
                                               "separated by the OS path separator.")

    def config(self) -> PipelineConfig:
        return PipelineConfig.from_values(self.home, self.storage_root or None, self.inbox)


class StorageResource(dg.ConfigurableResource):
    """Where artifacts live. Subclasses choose the backend (hooli's FileSystem pattern)."""

    def store(self) -> Storage:
        raise NotImplementedError


class LocalStorageResource(StorageResource):
    root: str = Field(description="Folder that holds every artifact, keyed "
                                  "tenant/project/episode.")

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
    concurrency: int = Field(default=4, ge=1, le=6,
                             description="Shots rendered at once within one clips step: all "
                                         "of them on a farm, as many as the runtime policy "
                                         "allows on this machine. Changed live by "
                                         "`anime-pipeline concurrency N`.")
    burn_subtitles: bool = Field(default=False, description="Also draw subtitles into the "
                                                            "video.")


class RuntimePolicyResource(dg.ConfigurableResource):
    """The execution policy in force: the saved runtime profile's baseline plus the persisted
    downgrades of the monitor (``runtime_profile.json``, ``runtime_state.json``)."""

    state_dir: str = Field(description="Folder of the runtime profile and monitor state.")
    max_profile_age_s: float = Field(
        default=60.0, description="Re-detect the machine (GPUs, backend servers) when the saved "
                                  "profile is older: plans and renders read live state.")

    def profile(self) -> RuntimeProfile:
        return load_profile(self.state_dir, max_age_s=self.max_profile_age_s,
                            storage_root=None)

    def policy(self) -> ExecutionPolicy:
        return policy_in_force(self.state_dir, self.profile())

    def resource_state(self, queue_depth: int = 0) -> ResourceState:
        """What the budgeter needs of the machine and the policy in force."""
        profile = self.profile()
        return to_resource_state(policy_in_force(self.state_dir, profile), profile, queue_depth)


class InsufficientVramError(RuntimeError):
    pass


class GpuResource(dg.ConfigurableResource):
    """One NVIDIA GPU as the renderer sees it. Without a GPU or driver every call still answers."""

    device_index: int = 0
    headroom_mb: int = 256  # kept free for the driver and other processes

    def _reading(self) -> nvml.GpuReading | None:
        report = nvml.query([self.device_index])
        return report.gpus[0] if report.gpus else None

    def available(self) -> bool:
        return self._reading() is not None

    def free_vram_mb(self) -> int | None:
        r = self._reading()
        return None if r is None else max(0, r.vram_total_mb - r.vram_used_mb)

    def vram_check(self, required_mb: int, *, raise_on_insufficient: bool = False) -> bool:
        """True when ``required_mb`` fits in free VRAM beyond the headroom.

        False (or :class:`InsufficientVramError` with ``raise_on_insufficient``) when it does
        not fit or there is no GPU at ``device_index``.
        """
        r = self._reading()
        if r is None:
            why = f"no NVIDIA GPU at index {self.device_index}"
            ok = False
        else:
            free = max(0, r.vram_total_mb - r.vram_used_mb)
            ok = free - self.headroom_mb >= required_mb
            why = (
                f"GPU {r.index} ({r.name}) has {free} MiB free, {self.headroom_mb} MiB headroom, "
                f"{required_mb} MiB required"
            )
        if not ok and raise_on_insufficient:
            raise InsufficientVramError(why)
        return ok

    def utilisation(self) -> dict[str, Any]:
        """GPU and memory utilisation (%), VRAM used/total (MiB); ``available`` False if no GPU."""
        r = self._reading()
        if r is None:
            return {"available": False, "device_index": self.device_index}
        return {
            "available": True,
            "device_index": r.index,
            "name": r.name,
            "gpu_pct": r.utilisation_pct,
            "memory_pct": r.memory_utilisation_pct,
            "vram_used_mb": r.vram_used_mb,
            "vram_total_mb": r.vram_total_mb,
            "vram_used_frac": round(r.vram_used_mb / r.vram_total_mb, 4)
            if r.vram_total_mb
            else None,
        }


class LedgerResource(dg.ConfigurableResource):
    """The usage ledger: usage, project budgets, notifications sent (SQLAlchemy URL)."""

    url: str = Field(description="SQLAlchemy URL of the ledger database "
                                 "($ANIME_PIPELINE_LEDGER_URL); default SQLite under the "
                                 "pipeline home.")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], home: Path) -> "LedgerResource":
        """``$ANIME_PIPELINE_LEDGER_URL``, else SQLite under ``home`` (for the CLI)."""
        return cls(url=environ.get(LEDGER_URL_ENV) or default_url(home))

    def ledger(self) -> Ledger:
        return Ledger(self.url)


class NotifierResource(dg.ConfigurableResource):
    """Where alerts go: a Slack-compatible webhook (``{"text": ...}``). Without one they are
    only logged and recorded in the ledger. An URL that is not http(s) is refused where the
    notifier is made (a run's step, a sensor's tick, the CLI's start)."""

    webhook_url: str = Field(default="", description="Webhook that receives the alerts as "
                                                     "JSON ($ANIME_PIPELINE_WEBHOOK_URL; it "
                                                     "may hold a secret token: set it by "
                                                     "environment variable).")
    ui_base_url: str = Field(default="", description="Base URL of the Dagster UI, for links "
                                                     "to runs ($ANIME_PIPELINE_UI_URL).")
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=60,
                             description="Most seconds one notification may take, retries "
                                         "included.")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "NotifierResource":
        """Plain values from ``environ`` (the CLI, where no launch resolves ``dg.EnvVar``)."""
        return cls(webhook_url=environ.get(WEBHOOK_URL_ENV, ""),
                   ui_base_url=environ.get(UI_URL_ENV, ""))

    def notifier(self, ledger: Ledger, log: LogLike | None = None) -> Notifier:
        return Notifier(ledger, self.webhook_url, timeout_s=self.timeout_s,
                        ui_base_url=self.ui_base_url, log=log)


# --------------------------------------------------------------------------- bindings


def _env(environ: Mapping[str, str], name: str, default: str | None) -> Any:
    """``dg.EnvVar(name)`` when it is set (resolved at launch, shown in the UI), else default."""
    return dg.EnvVar(name) if environ.get(name) else default


def pipeline_resources(
    config: PipelineConfig, *, environ: Mapping[str, str] | None = None,
    concurrency: int | None = None, burn_subtitles: bool | None = None,
    notifier: NotifierResource | None = None, ledger: LedgerResource | None = None,
) -> dict[str, dg.ConfigurableResource]:
    """Every resource the pipeline uses. The code location binds them from the environment;
    the CLI and the tests pass their own ``config`` (and options, ``notifier``, ``ledger``)
    instead."""
    env: Mapping[str, str] = {} if environ is None else environ
    home = _env(env, HOME_ENV, str(config.home))
    storage: StorageResource
    if env.get(S3_BUCKET_ENV):
        storage = S3StorageResource(
            bucket=dg.EnvVar(S3_BUCKET_ENV), prefix=_env(env, S3_PREFIX_ENV, ""),
            endpoint_url=_env(env, S3_ENDPOINT_ENV, None),
            region_name=_env(env, "AWS_REGION", None))
    else:
        storage = LocalStorageResource(root=_env(env, STORAGE_ENV, str(config.artifacts)))
    if concurrency is None:
        concurrency = max(1, min(6, int(env.get(CONCURRENCY_ENV) or 4)))
    if burn_subtitles is None:
        burn_subtitles = env.get(BURN_ENV, "0").lower() in ("1", "true", "yes")
    return {
        "settings": PipelineSettings(
            home=home, storage_root=_env(env, STORAGE_ENV, ""),
            inbox=_env(env, INBOX_ENV, os.pathsep.join(str(p) for p in config.inbox))),
        "storage": storage,
        "render_settings": RenderSettings(concurrency=concurrency, burn_subtitles=burn_subtitles),
        "runtime": RuntimePolicyResource(state_dir=home),
        "gpu": GpuResource(),
        "ledger": ledger or LedgerResource(
            url=_env(env, LEDGER_URL_ENV, default_url(config.home))),
        "notifier": notifier or NotifierResource(
            webhook_url=_env(env, WEBHOOK_URL_ENV, ""), ui_base_url=_env(env, UI_URL_ENV, "")),
    }


@dg.definitions
def resources() -> dg.Definitions:
    # Steps of one run execute in the run's process: the renders inside a clips step are
    # already concurrent ffmpeg processes, and a process per step costs ~1 s of imports.
    return dg.Definitions(
        resources=pipeline_resources(PipelineConfig.from_env(), environ=os.environ),
        executor=dg.in_process_executor,
    )

