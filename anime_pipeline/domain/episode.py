"""The episode folder contract (``shared/episode-format.md``) as pydantic models.

Plain Python: no Dagster import. ``load_episode(folder)`` returns a validated
:class:`EpisodeBundle` or raises :class:`EpisodeValidationError` holding one
:class:`Problem` per broken rule, each naming the file, the field path
(``shots[3].dialogue[0].end_ms``) and what is wrong. Loading never writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

EPISODE_FILE = "episode.yaml"
CREATIVE_FILE = "creative_control.yaml"

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
SHOT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
MIN_SHOT_MS = 200
MAX_SHOT_MS = 120_000
MAX_SHOTS = 2000

Slug = Annotated[str, Field(pattern=SLUG_PATTERN)]

# Magic numbers of the keyframe formats the contract admits.
_IMAGE_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "JPEG": (b"\xff\xd8\xff",),
}


class ShotType(StrEnum):
    establishing = "establishing"
    dialogue = "dialogue"
    action = "action"
    insert = "insert"
    transition = "transition"


class Criticality(StrEnum):
    low = "low"
    normal = "normal"
    critical = "critical"


class CameraMove(StrEnum):
    static = "static"
    push_in = "push_in"
    pull_out = "pull_out"
    pan_left = "pan_left"
    pan_right = "pan_right"
    tilt_up = "tilt_up"
    tilt_down = "tilt_down"
    shake = "shake"


class Mode(StrEnum):
    preview = "preview"
    standard = "standard"
    final = "final"


class GlobalProfile(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class _Model(BaseModel):
    # Extra keys are accepted (the contract may be extended) and reported as warnings.
    model_config = ConfigDict(extra="allow", frozen=True, use_enum_values=False)


def _check_relative_path(value: str, info: ValidationInfo) -> str:
    """A path inside the episode folder: relative, no `..`, no symlink escaping the folder."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty relative path")
    if "\\" in value:
        raise ValueError(f"{value!r}: use '/' as the path separator")
    p = PurePosixPath(value)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", value):
        raise ValueError(f"{value!r}: absolute paths are not allowed; use a path inside the folder")
    if ".." in p.parts:
        raise ValueError(f"{value!r}: '..' is not allowed; the path must stay inside the folder")
    root: Path | None = (info.context or {}).get("root")
    if root is not None:
        full = root / value
        resolved_root = root.resolve()
        try:
            full.resolve().relative_to(resolved_root)
        except ValueError:
            raise ValueError(f"{value!r}: resolves outside the episode folder (symlink)") from None
        if not full.exists():
            raise ValueError(f"{value!r}: file not found")
        if not full.is_file():
            raise ValueError(f"{value!r}: not a regular file")
    return value


class Format(_Model):
    width: int = Field(ge=16, le=7680)
    height: int = Field(ge=16, le=4320)
    fps: float = Field(gt=0, le=120)

    @field_validator("width", "height")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"{v} must be even (H.264 with yuv420p needs even dimensions)")
        return v


class Camera(_Model):
    move: CameraMove = CameraMove.static
    strength: float = Field(default=0.3, ge=0.0, le=1.0)


class Source(_Model):
    uri: str
    in_ms: int = Field(default=0, ge=0)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str, info: ValidationInfo) -> str:
        if re.match(r"^https?://", v, flags=re.IGNORECASE):
            return v
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", v):
            raise ValueError(f"{v!r}: only http(s):// URLs or paths inside the folder are allowed")
        return _check_relative_path(v, info)

    @property
    def is_remote(self) -> bool:
        return bool(re.match(r"^https?://", self.uri, flags=re.IGNORECASE))


class DialogueLine(_Model):
    speaker: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1)
    start_ms: int = Field(ge=0)
    end_ms: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> DialogueLine:
        if self.end_ms <= self.start_ms:
            raise ValueError(f"end_ms ({self.end_ms}) must be after start_ms ({self.start_ms})")
        return self


class Shot(_Model):
    id: str = Field(pattern=SHOT_ID_PATTERN)
    type: ShotType
    duration_ms: int = Field(ge=MIN_SHOT_MS, le=MAX_SHOT_MS)
    criticality: Criticality = Criticality.normal
    keyframe: str | None = None
    camera: Camera = Field(default_factory=Camera)
    prompt: str | None = None
    source: Source | None = None
    dialogue: list[DialogueLine] = Field(default_factory=list)

    @field_validator("keyframe")
    @classmethod
    def _keyframe(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        _check_relative_path(v, info)
        root: Path | None = (info.context or {}).get("root")
        if root is not None:
            kind = sniff_image(root / v)
            if kind is None:
                raise ValueError(f"{v!r}: not a PNG, JPEG or WebP image")
        return v

    @model_validator(mode="after")
    def _rules(self) -> Shot:
        if self.keyframe is None and self.source is None:
            raise ValueError("keyframe is required unless source is given")
        return self


class Episode(_Model):
    schema_version: Literal["1.0"] = "1.0"
    tenant_id: Slug
    project_id: Slug
    episode_id: Slug
    title: str = ""
    format: Format
    audio: str
    shots: list[Shot] = Field(min_length=1, max_length=MAX_SHOTS)

    _check_audio = field_validator("audio")(_check_relative_path)

    @property
    def duration_ms(self) -> int:
        return sum(s.duration_ms for s in self.shots)

    @property
    def key(self) -> str:
        """The episode's partition key: ``tenant/project/episode``."""
        return episode_key(self.tenant_id, self.project_id, self.episode_id)

    def shot(self, shot_id: str) -> Shot:
        for s in self.shots:
            if s.id == shot_id:
                return s
        raise KeyError(f"shot {shot_id!r} is not in episode {self.key}")

    def shot_starts_ms(self) -> dict[str, int]:
        """Start time of each shot on the episode timeline (shots play back to back)."""
        starts: dict[str, int] = {}
        t = 0
        for s in self.shots:
            starts[s.id] = t
            t += s.duration_ms
        return starts


class Budget(_Model):
    max_gpu_minutes: float | None = Field(default=None, gt=0)


class Sla(_Model):
    deadline: datetime | None = None

    @field_validator("deadline")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("deadline must carry a timezone, e.g. 2026-12-01T12:00:00Z")
        return v


class Style(_Model):
    prefer_smooth_motion: bool = False
    min_fps: float | None = Field(default=None, gt=0, le=120)


class FeatureFlags(_Model):
    enable_shot_level_budget: bool = True
    enable_dynamic_fps: bool = True
    enable_backend_priority_assignment: bool = True


class CreativeControl(_Model):
    mode: Mode = Mode.standard
    global_profile: GlobalProfile | None = None
    budget: Budget = Field(default_factory=Budget)
    sla: Sla = Field(default_factory=Sla)
    style: Style = Field(default_factory=Style)
    feature_flags: FeatureFlags = Field(default_factory=FeatureFlags)


def episode_key(tenant_id: str, project_id: str, episode_id: str) -> str:
    return f"{tenant_id}/{project_id}/{episode_id}"


def sniff_image(path: Path) -> str | None:
    """PNG / JPEG / WEBP from the file's magic bytes, or None."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return None
    for kind, sigs in _IMAGE_SIGNATURES.items():
        if any(head.startswith(s) for s in sigs):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


@dataclass
class EpisodeValidationError(Exception):
    folder: str
    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        head = f"episode {self.folder} refused ({len(self.problems)} problem(s)):"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


@dataclass(frozen=True)
class EpisodeBundle:
    """A validated episode folder: the episode, its creative control and where it lives."""

    root: Path
    episode: Episode
    creative: CreativeControl
    warnings: tuple[Problem, ...] = ()

    def path(self, relative: str) -> Path:
        return self.root / relative


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_problems(file: str, err: ValidationError) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
        if e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "string_pattern_mismatch":
            msg = f"{e.get('input')!r} does not match {e['ctx']['pattern']}"
        problems.append(Problem(file, _loc_to_path(loc), msg))
    return problems


def _read_yaml(root: Path, name: str, problems: list[Problem]) -> Any:
    path = root / name
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        problems.append(Problem(name, "", f"not UTF-8 text ({e.reason} at byte {e.start})"))
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problems.append(Problem(name, "", f"invalid YAML: {where}{getattr(e, 'problem', e)}"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(name, "", "must be a mapping at the top level"))
        return None
    return data


def _extra_warnings(file: str, model: BaseModel, prefix: str = "") -> list[Problem]:
    out: list[Problem] = []
    for name in model.model_extra or {}:
        out.append(Problem(file, f"{prefix}{name}", "unknown field (ignored)"))
    for name in type(model).model_fields:
        value = getattr(model, name)
        items: list[tuple[str, Any]] = []
        if isinstance(value, BaseModel):
            items = [(f"{prefix}{name}.", value)]
        elif isinstance(value, list):
            items = [(f"{prefix}{name}[{i}].", v) for i, v in enumerate(value)]
        for sub_prefix, sub in items:
            if isinstance(sub, BaseModel):
                out.extend(_extra_warnings(file, sub, sub_prefix))
    return out


def _cross_checks(data: dict[str, Any]) -> list[Problem]:
    """Rules that span fields, checked on the raw data so they are reported together with
    every per-field problem (not only once the rest is valid)."""
    problems: list[Problem] = []
    shots = data.get("shots")
    if not isinstance(shots, list):
        return problems
    seen: dict[str, int] = {}
    for i, shot in enumerate(shots):
        if not isinstance(shot, dict):
            continue
        sid = shot.get("id")
        if isinstance(sid, str):
            if sid in seen:
                problems.append(
                    Problem(EPISODE_FILE, f"shots[{i}].id",
                            f"duplicate shot id {sid!r} (first used by shots[{seen[sid]}])")
                )
            else:
                seen[sid] = i
        duration = shot.get("duration_ms")
        dialogue = shot.get("dialogue")
        if not isinstance(duration, int) or not isinstance(dialogue, list):
            continue
        for j, line in enumerate(dialogue):
            end = line.get("end_ms") if isinstance(line, dict) else None
            if isinstance(end, int) and end > duration:
                problems.append(
                    Problem(
                        EPISODE_FILE,
                        f"shots[{i}].dialogue[{j}].end_ms",
                        f"{end} ms is past the end of shot {sid} ({duration} ms); "
                        "dialogue must lie within its shot",
                    )
                )
    return problems


def load_episode(folder: str | Path) -> EpisodeBundle:
    """Validate an episode folder completely; raise with every problem found."""
    root = Path(folder)
    problems: list[Problem] = []
    if not root.is_dir():
        raise EpisodeValidationError(str(root), [Problem(str(root), "", "not a folder")])
    if not (root / EPISODE_FILE).is_file():
        raise EpisodeValidationError(
            str(root), [Problem(EPISODE_FILE, "", "required file is missing")]
        )

    ctx = {"root": root}
    episode: Episode | None = None
    data = _read_yaml(root, EPISODE_FILE, problems)
    if data is not None:
        try:
            episode = Episode.model_validate(data, context=ctx)
        except ValidationError as e:
            problems.extend(_pydantic_problems(EPISODE_FILE, e))
        problems.extend(_cross_checks(data))

    creative = CreativeControl()
    if (root / CREATIVE_FILE).exists():
        cdata = _read_yaml(root, CREATIVE_FILE, problems)
        if cdata is not None:
            try:
                creative = CreativeControl.model_validate(cdata, context=ctx)
            except ValidationError as e:
                problems.extend(_pydantic_problems(CREATIVE_FILE, e))

    if problems or episode is None:
        raise EpisodeValidationError(str(root), problems)
    warnings = _extra_warnings(EPISODE_FILE, episode) + _extra_warnings(CREATIVE_FILE, creative)
    return EpisodeBundle(root=root, episode=episode, creative=creative, warnings=tuple(warnings))
