"""``render_backends.yaml``: the generative backends of a studio and the servers they run on.

::

    comfyui_i2v:                 # the backend name the planner uses
      kind: comfyui
      workflow: weightfree_i2v   # a bundled template name, or a path to a template file
      servers:
        - url: http://127.0.0.1:8188
          max_inflight: 2
        - url: http://127.0.0.1:8189
      requests_per_second: 5     # token bucket per server (optional)

The file is ``$ANIME_PIPELINE_BACKENDS_FILE``, else ``<pipeline home>/render_backends.yaml``.
It is read with the same safe YAML loader as episode files; a broken file is refused with the
file and field named. ``ANIME_PIPELINE_BACKENDS="name=url,..."`` (the older way) still names
servers for the runtime profile to probe, but a backend renders only when this file gives it a
kind and a workflow: :func:`load_backends` says so when only the variable is set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from anime_pipeline.domain.contracts import GENERATIVE_BACKENDS, LOCAL_BACKENDS

BACKENDS_FILE_ENV = "ANIME_PIPELINE_BACKENDS_FILE"
BACKENDS_ENV = "ANIME_PIPELINE_BACKENDS"
BACKENDS_FILE = "render_backends.yaml"
MAX_FILE_BYTES = 256 * 1024
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class BackendsConfigError(ValueError):
    """``render_backends.yaml`` is broken: the message names the file and the field."""


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    max_inflight: int = Field(default=1, ge=1, le=64)

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r}: must be an http(s) URL of a ComfyUI server")
        return v.rstrip("/")


class ComfyBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["comfyui"]
    workflow: str = Field(min_length=1)
    servers: list[ServerConfig] = Field(min_length=1, max_length=256)
    requests_per_second: float | None = Field(default=None, gt=0, le=1000)
    timeout_s: float = Field(default=1800, gt=0, le=24 * 3600,
                             description="Longest a prompt may run before it is interrupted.")

    @field_validator("servers")
    @classmethod
    def _unique(cls, v: list[ServerConfig]) -> list[ServerConfig]:
        urls = [s.url for s in v]
        dup = sorted({u for u in urls if urls.count(u) > 1})
        if dup:
            raise ValueError(f"servers listed twice: {dup}")
        return v


class BackendsConfig(BaseModel):
    """Every configured generative backend, by the name the planner uses."""

    model_config = ConfigDict(frozen=True)

    backends: dict[str, ComfyBackendConfig] = Field(default_factory=dict)
    source: str | None = None  # the file they came from
    notes: tuple[str, ...] = ()  # e.g. why ANIME_PIPELINE_BACKENDS alone renders nothing

    def urls(self) -> dict[str, list[str]]:
        """name -> server URLs (what the runtime profile probes)."""
        return {name: [s.url for s in b.servers] for name, b in self.backends.items()}


def backends_file(home: Path, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    explicit = env.get(BACKENDS_FILE_ENV)
    return Path(explicit).expanduser().absolute() if explicit else home / BACKENDS_FILE


def _problems(file: str, name: str, err: ValidationError) -> str:
    """One line per problem: ``<file>: <backend>.<field path>: <what is wrong>``."""
    lines = []
    for e in err.errors(include_url=False):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{file}: {name}{where}: {msg}")
    return "\n".join(lines)


def parse_backends(text: str, *, source: str = BACKENDS_FILE) -> BackendsConfig:
    """The backends of one YAML document; :class:`BackendsConfigError` when it is broken."""
    from anime_pipeline.domain.safe_yaml import YamlRefused, load_yaml

    try:
        data = load_yaml(text, max_depth=8, max_nodes=20_000)
    except YamlRefused as e:
        raise BackendsConfigError(f"{source}: {e}") from None
    if data is None:
        return BackendsConfig(source=source)
    if not isinstance(data, dict):
        raise BackendsConfigError(f"{source}: must be a mapping of backend names")
    out: dict[str, ComfyBackendConfig] = {}
    problems: list[str] = []
    for name, body in data.items():
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(f"{source}: {name!r}: a backend name is [a-z][a-z0-9_]*")
            continue
        if name in LOCAL_BACKENDS or name == "placeholder":
            problems.append(f"{source}: {name}: is a local backend; it needs no configuration")
            continue
        try:
            out[name] = ComfyBackendConfig.model_validate(body)
        except ValidationError as e:
            problems.append(_problems(source, name, e))
    if problems:
        raise BackendsConfigError("\n".join(problems))
    unknown = sorted(set(out) - set(GENERATIVE_BACKENDS))
    notes = tuple(f"{source}: {n}: not a backend the budgeter plans for "
                  f"(one of {list(GENERATIVE_BACKENDS)}); it is probed but never chosen"
                  for n in unknown)
    return BackendsConfig(backends=out, source=source, notes=notes)


def load_backends(home: Path, environ: Mapping[str, str] | None = None) -> BackendsConfig:
    """The configured backends (none when there is no file)."""
    env = os.environ if environ is None else environ
    path = backends_file(home, env)
    if not path.exists():
        if env.get(BACKENDS_ENV, "").strip():
            return BackendsConfig(notes=(
                f"{BACKENDS_ENV} names servers to probe, but rendering on them needs a kind "
                f"and a workflow: write {path} (see the README, 'Generative backends')",))
        return BackendsConfig()
    if not path.is_file():
        raise BackendsConfigError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BackendsConfigError(f"{path}: {size} bytes, more than {MAX_FILE_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BackendsConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    return parse_backends(text, source=str(path))
