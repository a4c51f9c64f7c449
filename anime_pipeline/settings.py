"""Where the pipeline keeps its things, resolved one way for the CLI, the UI and the tests.

Plain Python (no Dagster). Two homes, both anchored to the project checkout the package runs
from, so a command started in any folder finds the same ones:

* the **pipeline home** (artifacts, runtime state, sample episodes): ``$ANIME_PIPELINE_HOME``,
  else ``<project>/.anime_pipeline`` for a checkout (an editable install), else
  ``~/.anime_pipeline``;
* the **Dagster instance home** (runs, events, schedules): ``$DAGSTER_HOME``, else
  ``<project>/.dagster`` (its ``dagster.yaml`` is the project's), else
  ``<pipeline home>/dagster``.

:class:`PipelineConfig` is the one settings object (home, artifact root, inbox folders, state
folder); the Dagster resource :class:`anime_pipeline.defs.resources.PipelineSettings` wraps it
with ``dg.EnvVar`` values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

HOME_ENV = "ANIME_PIPELINE_HOME"
STORAGE_ENV = "ANIME_PIPELINE_STORAGE"
INBOX_ENV = "ANIME_PIPELINE_INBOX"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
HOME_DIRNAME = ".anime_pipeline"
INSTANCE_DIRNAME = ".dagster"
INSTANCE_CONFIG = "dagster.yaml"

# Used when there is neither DAGSTER_HOME nor a project checkout (e.g. a wheel install).
_FALLBACK_INSTANCE_CONFIG = """\
# anime_pipeline's default local instance (SQLite under this folder).
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 1
    granularity: op
run_monitoring:
  enabled: true
  free_slots_after_run_end_seconds: 300
telemetry:
  enabled: false
"""


def project_root() -> Path | None:
    """The checkout this package runs from (``pyproject.toml`` and ``dagster.yaml`` beside
    the package), or None for an installed wheel."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / INSTANCE_CONFIG).is_file():
        return here
    return None


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV]).expanduser().absolute()
    root = project_root()
    return (root / HOME_DIRNAME) if root is not None else Path.home() / HOME_DIRNAME


def instance_home(environ: Mapping[str, str] | None = None) -> Path:
    """Where the Dagster instance lives (see the module doc)."""
    env = os.environ if environ is None else environ
    if env.get(DAGSTER_HOME_ENV):
        return Path(env[DAGSTER_HOME_ENV]).expanduser().absolute()
    root = project_root()
    if root is not None:
        return root / INSTANCE_DIRNAME
    return default_home(env) / "dagster"


def ensure_instance_home(home: Path) -> Path:
    """Create ``home`` with a ``dagster.yaml`` if it has none: a link to the project's (so
    one file configures every process), else a default local configuration."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / INSTANCE_CONFIG
    if config.exists() or config.is_symlink():
        return home
    root = project_root()
    if root is not None and home.resolve().parent == root.resolve():
        config.symlink_to(Path("..") / INSTANCE_CONFIG)
    else:
        config.write_text(_FALLBACK_INSTANCE_CONFIG, encoding="utf-8")
    return home


class PipelineConfig(BaseModel):
    """The one settings object: pipeline home, artifact root, inbox folders, state folder."""

    model_config = ConfigDict(frozen=True)

    home: Path
    storage_root: Path | None = None  # local artifacts; default <home>/artifacts
    inbox: tuple[Path, ...] = ()

    @property
    def artifacts(self) -> Path:
        return self.storage_root if self.storage_root is not None else self.home / "artifacts"

    @property
    def state_dir(self) -> Path:
        """Runtime profile, monitor state and thresholds."""
        return self.home

    @property
    def samples(self) -> Path:
        return self.home / "sample"

    @classmethod
    def from_values(cls, home: str | Path | None = None, storage_root: str | Path | None = None,
                    inbox: str | None = None) -> PipelineConfig:
        h = Path(home).expanduser().absolute() if home else default_home()
        root = Path(storage_root).expanduser().absolute() if storage_root else None
        folders = tuple(Path(p).expanduser().absolute()
                        for p in (inbox or "").split(os.pathsep) if p.strip())
        return cls(home=h, storage_root=root, inbox=folders)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 home: str | Path | None = None) -> PipelineConfig:
        """From the environment; ``home`` (a ``--home`` option) replaces only the home."""
        env = os.environ if environ is None else environ
        return cls.from_values(home or env.get(HOME_ENV) or default_home(env),
                               env.get(STORAGE_ENV), env.get(INBOX_ENV))
