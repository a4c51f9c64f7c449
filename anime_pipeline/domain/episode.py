"""The episode folder contract (``docs/episode-format.md``) as pydantic models.

Plain Python: no Dagster import. ``load_episode(folder)`` returns a validated
:class:`EpisodeBundle` or raises :class:`EpisodeValidationError` holding one
:class:`Problem` per broken rule, each naming the file, the field path
(``shots[3].dialogue[0].end_ms``) and what is wrong. Loading never writes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from anime_pipeline.domain.playlists import (
    LocalPathError,
    check_media_content,
    check_path_syntax,
    describe_os_error,
    file_kind,
    read_regular,
    resolve_inside,
)
from anime_pipeline.domain.safe_yaml import YamlRefused, format_path, load_yaml, show

EPISODE_FILE = "episode.yaml"
CREATIVE_FILE = "creative_control.yaml"

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
SHOT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
MIN_SHOT_MS = 200
MAX_SHOT_MS = 120_000
MAX_SHOTS = 2000
MAX_DIALOGUE_LINES = 1000
MIN_FPS = 1
MAX_FPS = 120
MAX_SOURCE_IN_MS = 24 * 3600 * 1000
MAX_TITLE_CHARS = 500
MAX_TEXT_CHARS = 2000
MAX_PROMPT_CHARS = 4000
MAX_URL_CHARS = 2048
MAX_GPU_MINUTES = 1_000_000
DEADLINE_MIN_YEAR = 2000
DEADLINE_MAX_YEAR = 2200

#: Size limits of the YAML files (bytes) and of what they may hold (YAML nodes).
EPISODE_MAX_BYTES = 8 * 1024 * 1024
CREATIVE_MAX_BYTES = 1024 * 1024
EPISODE_MAX_NODES = 500_000
CREATIVE_MAX_NODES = 10_000
#: At most this many problems (and warnings) are listed; a last line says more were cut.
MAX_PROBLEMS = 200

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
    # Unknown keys are ignored (the contract may be extended): they are reported as warnings
    # by load_episode, computed from the raw YAML, and never kept in the model, so they never
    # reach model_dump() (shot_plan.json) or any output. Floats must be finite.
    model_config = ConfigDict(
        extra="ignore", frozen=True, use_enum_values=False, allow_inf_nan=False
    )


def _root(info: ValidationInfo) -> Path | None:
    root: Path | None = (info.context or {}).get("root")
    return root


def _resolve(value: str, info: ValidationInfo) -> Path | None:
    """A path inside the episode folder: relative, no `..`, no symlink escaping the folder,
    an existing regular file (the file system is checked when validating with a ``root`` in
    the context); returns the resolved path then."""
    root = _root(info)
    try:
        if root is None:
            check_path_syntax(value)
            return None
        return resolve_inside(root, value)
    except LocalPathError as e:
        raise ValueError(f"{show(value)}: {e}") from None


def _check_media_path(value: str, info: ValidationInfo) -> str:
    """A local media input (audio mix, footage): a path inside the folder, and not a
    playlist or manifest that names anything outside it (see ``playlists``)."""
    real = _resolve(value, info)
    root = _root(info)
    if real is not None and root is not None:
        try:
            check_media_content(root, value, real)
        except LocalPathError as e:
            raise ValueError(f"{show(value)}: {e}") from None
    return value


class Format(_Model):
    width: int = Field(ge=16, le=7680)
    height: int = Field(ge=16, le=4320)
    fps: float = Field(ge=MIN_FPS, le=MAX_FPS)

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
    in_ms: int = Field(default=0, ge=0, le=MAX_SOURCE_IN_MS, strict=True)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str, info: ValidationInfo) -> str:
        if re.match(r"^https?://", v, flags=re.IGNORECASE):
            if len(v) > MAX_URL_CHARS:
                raise ValueError(f"{show(v)}: URL longer than {MAX_URL_CHARS} characters")
            if not re.match(r"^https?://[^/?#\s@]+", v, flags=re.IGNORECASE):
                raise ValueError(f"{show(v)}: not a valid http(s) URL (no host)")
            if re.search(r"[\s\x00-\x1f\x7f]", v):
                raise ValueError(f"{show(v)}: whitespace and control characters are not "
                                 "allowed in a URL")
            return v
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]+:", v):
            raise ValueError(f"{show(v)}: only http(s):// URLs or paths inside the folder "
                             "are allowed")
        return _check_media_path(v, info)

    @property
    def is_remote(self) -> bool:
        return bool(re.match(r"^https?://", self.uri, flags=re.IGNORECASE))


class DialogueLine(_Model):
    speaker: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    # Milliseconds are YAML integers, strictly: 2100.0 or "2100" are refused.
    start_ms: int = Field(ge=0, le=MAX_SHOT_MS, strict=True)
    end_ms: int = Field(gt=0, le=MAX_SHOT_MS, strict=True)

    @model_validator(mode="after")
    def _ordered(self) -> DialogueLine:
        if self.end_ms <= self.start_ms:
            raise ValueError(f"end_ms ({self.end_ms}) must be after start_ms ({self.start_ms})")
        return self


class Shot(_Model):
    id: str = Field(pattern=SHOT_ID_PATTERN)
    type: ShotType
    duration_ms: int = Field(ge=MIN_SHOT_MS, le=MAX_SHOT_MS, strict=True)
    criticality: Criticality = Criticality.normal
    keyframe: str | None = None
    camera: Camera = Field(default_factory=Camera)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    source: Source | None = None
    dialogue: list[DialogueLine] = Field(default_factory=list, max_length=MAX_DIALOGUE_LINES)

    @field_validator("keyframe")
    @classmethod
    def _keyframe(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        real = _resolve(v, info)
        if real is not None and sniff_image(real) is None:
            raise ValueError(f"{show(v)}: not a PNG, JPEG or WebP image")
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
    title: str = Field(default="", max_length=MAX_TITLE_CHARS)
    format: Format
    audio: str
    shots: list[Shot] = Field(min_length=1, max_length=MAX_SHOTS)

    _check_audio = field_validator("audio")(_check_media_path)

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
    max_gpu_minutes: float | None = Field(default=None, gt=0, le=MAX_GPU_MINUTES)


class Sla(_Model):
    deadline: datetime | None = None

    @field_validator("deadline")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if v.tzinfo is None or v.utcoffset() is None:
            raise ValueError("deadline must carry a timezone, e.g. 2026-12-01T12:00:00Z")
        try:
            utc = v.astimezone(UTC)
        except (OverflowError, ValueError):
            raise ValueError(f"{v.isoformat()} cannot be converted to UTC (out of range)") \
                from None
        if not DEADLINE_MIN_YEAR <= utc.year <= DEADLINE_MAX_YEAR:
            raise ValueError(f"{v.isoformat()} is outside {DEADLINE_MIN_YEAR}.."
                             f"{DEADLINE_MAX_YEAR} (in UTC)")
        return v


class Style(_Model):
    prefer_smooth_motion: bool = False
    min_fps: float | None = Field(default=None, ge=MIN_FPS, le=MAX_FPS)


class FeatureFlags(_Model):
    enable_shot_level_budget: bool = True
    enable_dynamic_fps: bool = True
    enable_backend_priority_assignment: bool = True


class PackageParts(_Model):
    """Which parts go into the delivery ZIP (``package:`` in creative_control.yaml, else the
    project's setting, else these defaults)."""

    keyframes: bool = True
    clips: bool = True
    composite: bool = True
    preview_composite: bool = False
    subtitles: bool = True
    manifests: bool = True
    review_report: bool = True


class CreativeControl(_Model):
    mode: Mode = Mode.standard
    global_profile: GlobalProfile | None = None
    budget: Budget = Field(default_factory=Budget)
    sla: Sla = Field(default_factory=Sla)
    style: Style = Field(default_factory=Style)
    feature_flags: FeatureFlags = Field(default_factory=FeatureFlags)
    package: PackageParts | None = None  # None: the project's setting, else the defaults


def episode_key(tenant_id: str, project_id: str, episode_id: str) -> str:
    return f"{tenant_id}/{project_id}/{episode_id}"


def sniff_image(path: Path) -> str | None:
    """PNG / JPEG / WEBP from the file's magic bytes, or None (also for anything that is not
    a readable regular file: a FIFO or a device is never read, nor waited on)."""
    try:
        head = read_regular(path, 12)[:12]
    except (OSError, ValueError):
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


def _pydantic_problems(
    file: str, err: ValidationError, prefix: tuple[int | str, ...] = ()
) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        for start in ("Value error, ", "Assertion failed, "):
            if msg.startswith(start):
                msg = msg[len(start) :]
        if e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "string_pattern_mismatch":
            msg = f"{show(e.get('input'))} does not match {e['ctx']['pattern']}"
        elif e["type"] in ("int_type", "int_parsing", "int_from_float") and loc and \
                str(loc[-1]).endswith("_ms"):
            msg = f"{show(e.get('input'))} is not an integer: milliseconds are whole numbers " \
                  "written without quotes or a decimal point"
        problems.append(Problem(file, format_path((*prefix, *loc)), msg))
    return problems


_ABSENT = object()


def _read_yaml(root: Path, name: str, limit: int, max_nodes: int, problems: list[Problem],
               *, required: bool) -> Any:
    """Read and parse one of the folder's YAML files, or add a problem and return None.
    Returns ``_ABSENT`` when an optional file does not exist.

    The file must be a regular file inside the folder (a symlink may point elsewhere inside
    it), at most ``limit`` bytes; it is opened non-blocking and checked with fstat before a
    byte is read, so a FIFO, a device or a directory is never opened for reading."""
    path = root / name

    def refuse(message: str) -> None:
        problems.append(Problem(name, "", message))

    try:
        link = os.lstat(path)
    except FileNotFoundError:
        if required:
            refuse("required file is missing")
            return None
        return _ABSENT
    except OSError as e:
        refuse(describe_os_error(e))
        return None
    real = os.path.realpath(path)
    if stat.S_ISLNK(link.st_mode):
        root_real = os.path.realpath(root)
        if not (real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)):
            refuse("is a symlink to a file outside the episode folder; the YAML files must be "
                   "inside the folder")
            return None
    try:
        st = os.stat(real)
    except OSError as e:
        refuse("is a broken symlink" if stat.S_ISLNK(link.st_mode) and
               isinstance(e, FileNotFoundError) else describe_os_error(e))
        return None
    if not stat.S_ISREG(st.st_mode):
        refuse(f"must be a regular file, not {file_kind(st.st_mode)}")
        return None
    too_big = f"larger than {limit} bytes ({limit // (1024 * 1024)} MiB), the limit for this file"
    if st.st_size > limit:
        refuse(too_big)
        return None
    try:
        raw = read_regular(real, limit, nofollow=True, same_as=st)
    except LocalPathError as e:
        refuse(str(e))
        return None
    except OSError as e:
        refuse(describe_os_error(e))
        return None
    if len(raw) > limit:
        refuse(too_big)
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        refuse(f"not UTF-8 text ({e.reason} at byte {e.start})")
        return None
    try:
        data = _parse_yaml(raw, text, max_nodes)
    except YamlRefused as e:
        problems.append(Problem(name, e.path, e.message))
        return None
    if not isinstance(data, dict):
        refuse("must be a mapping at the top level")
        return None
    return data


_PARSED: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
_PARSED_LOCK = threading.Lock()
PARSED_KEPT = 8  # documents remembered per process


def _parse_yaml(raw: bytes, text: str, max_nodes: int) -> Any:
    """``load_yaml(text)``, parsed once per process for the same bytes.

    A render loads its episode in every stage (register, each planning asset, clips,
    composite, package); only the first parses it. The document is remembered by the sha256
    of the file's bytes (and the node limit), so a changed file — new content, whatever its
    size or times — is always parsed again, and a refused one is never remembered. Each call
    gets its own copy (a pickle of what was parsed: far cheaper than parsing, and no caller
    can change what another one reads). Everything after the parse (the contract, the files
    it names) is validated on every load."""
    key = (hashlib.sha256(raw).digest(), max_nodes)
    with _PARSED_LOCK:
        blob = _PARSED.get(key)
        if blob is not None:
            _PARSED.move_to_end(key)
    if blob is not None:
        return pickle.loads(blob)  # our own bytes, made below in this process
    data = load_yaml(text, max_nodes=max_nodes)
    blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    with _PARSED_LOCK:
        _PARSED[key] = blob
        while len(_PARSED) > PARSED_KEPT:
            _PARSED.popitem(last=False)
    return data


def _submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds (``Camera``, ``Shot | None``, ``list[Shot]``) and whether it
    holds a list of them."""
    origin = get_origin(annotation)
    if origin is list:
        inner, _ = _submodel(get_args(annotation)[0])
        return inner, True
    if origin is Union or (origin is not None and type(annotation).__name__ == "UnionType"):
        for arg in get_args(annotation):
            inner, is_list = _submodel(arg)
            if inner is not None:
                return inner, is_list
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _unknown_fields(file: str, raw: Any, model: type[BaseModel],
                    path: tuple[int | str, ...] = ()) -> Iterator[Problem]:
    """Warnings for the keys of the raw YAML that the contract does not define."""
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        if not isinstance(key, str) or key not in fields:
            yield Problem(file, format_path((*path, key)), "unknown field (ignored)")
            continue
        sub, is_list = _submodel(fields[key].annotation)
        if sub is None:
            continue
        if is_list and isinstance(value, list):
            for i, item in enumerate(value):
                yield from _unknown_fields(file, item, sub, (*path, key, i))
        elif not is_list:
            yield from _unknown_fields(file, value, sub, (*path, key))


def _strict_int(value: Any, low: int, high: int) -> int | None:
    """``value`` when it is a YAML integer (not a bool, float or string) within bounds."""
    if type(value) is int and low <= value <= high:
        return value
    return None


def _cross_checks(data: dict[str, Any]) -> list[Problem]:
    """Rules that span fields, checked on the raw data so they are reported together with
    every per-field problem (not only once the rest is valid). Each rule applies whenever
    the values it compares are themselves valid."""
    problems: list[Problem] = []
    shots = data.get("shots")
    if not isinstance(shots, list) or len(shots) > MAX_SHOTS:
        return problems
    seen: dict[str, int] = {}
    for i, shot in enumerate(shots):
        if len(problems) > MAX_PROBLEMS:
            break
        if not isinstance(shot, dict):
            continue
        sid = shot.get("id")
        if isinstance(sid, str):
            if sid in seen:
                problems.append(
                    Problem(EPISODE_FILE, f"shots[{i}].id",
                            f"duplicate shot id {show(sid)} (first used by shots[{seen[sid]}])")
                )
            else:
                seen[sid] = i
        name = sid if isinstance(sid, str) and re.match(SHOT_ID_PATTERN, sid) else show(sid, 40)
        duration = _strict_int(shot.get("duration_ms"), MIN_SHOT_MS, MAX_SHOT_MS)
        dialogue = shot.get("dialogue")
        if duration is None or not isinstance(dialogue, list) \
                or len(dialogue) > MAX_DIALOGUE_LINES:
            continue
        for j, line in enumerate(dialogue):
            end = _strict_int(line.get("end_ms"), 1, MAX_SHOT_MS) \
                if isinstance(line, dict) else None
            if end is not None and end > duration:
                problems.append(
                    Problem(
                        EPISODE_FILE,
                        f"shots[{i}].dialogue[{j}].end_ms",
                        f"{end} ms is past the end of shot {name} ({duration} ms); "
                        "dialogue must lie within its shot",
                    )
                )
    return problems


def _validate_episode(data: dict[str, Any], ctx: dict[str, Any],
                      problems: list[Problem]) -> Episode | None:
    """Validate episode.yaml's data: the top level first, then shot by shot (so a hostile
    document cannot make pydantic list millions of errors: validation stops once
    ``MAX_PROBLEMS`` are known), then the cross-field rules."""
    raw_shots = data.get("shots")
    per_shot = isinstance(raw_shots, list) and 1 <= len(raw_shots) <= MAX_SHOTS
    top = dict(data)
    if per_shot:
        top["shots"] = [_PLACEHOLDER_SHOT]
    episode: Episode | None = None
    try:
        episode = Episode.model_validate(top, context=ctx)
    except ValidationError as e:
        problems.extend(_pydantic_problems(EPISODE_FILE, e))
    shots: list[Shot] = []
    if per_shot and isinstance(raw_shots, list):
        for i, raw in enumerate(raw_shots):
            if len(problems) > MAX_PROBLEMS:
                break
            try:
                shots.append(Shot.model_validate(raw, context=ctx))
            except ValidationError as e:
                problems.extend(_pydantic_problems(EPISODE_FILE, e, ("shots", i)))
    problems.extend(_cross_checks(data))
    if problems or episode is None:
        return None
    if per_shot:
        episode = episode.model_copy(update={"shots": shots})
    return episode


# A valid stand-in for the shots while the top level of episode.yaml is validated on its own.
_PLACEHOLDER_SHOT = Shot.model_construct(
    id="S00", type=ShotType.action, duration_ms=MIN_SHOT_MS, keyframe="placeholder.png"
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_MESSAGE_CHARS = 500


def _one_line(p: Problem) -> Problem:
    """Every problem prints as one readable line, whatever the input held."""

    def clean(text: str, limit: int) -> str:
        text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= limit else text[: limit - 3] + "..."

    return Problem(clean(p.file, 200), clean(p.field, 300), clean(p.message, _MAX_MESSAGE_CHARS))


def _capped(items: list[Problem], what: str) -> list[Problem]:
    items = [_one_line(p) for p in items[: MAX_PROBLEMS + 1]]
    if len(items) <= MAX_PROBLEMS:
        return items
    return [*items[:MAX_PROBLEMS],
            Problem(items[MAX_PROBLEMS].file, "", f"more {what} not shown (at most "
                                                  f"{MAX_PROBLEMS} are listed)")]


def _load(root: Path) -> EpisodeBundle:
    problems: list[Problem] = []
    if not root.is_dir():
        raise EpisodeValidationError(str(root), [Problem(str(root), "", "not a folder")])
    ctx = {"root": root}
    episode: Episode | None = None
    data = _read_yaml(root, EPISODE_FILE, EPISODE_MAX_BYTES, EPISODE_MAX_NODES, problems,
                      required=True)
    if isinstance(data, dict):
        episode = _validate_episode(data, ctx, problems)
    elif not problems:  # pragma: no cover - _read_yaml always says why
        problems.append(Problem(EPISODE_FILE, "", "could not be read"))
    if problems and problems[-1] == Problem(EPISODE_FILE, "", "required file is missing"):
        raise EpisodeValidationError(str(root), problems)

    creative = CreativeControl()
    cdata = _read_yaml(root, CREATIVE_FILE, CREATIVE_MAX_BYTES, CREATIVE_MAX_NODES, problems,
                       required=False)
    if isinstance(cdata, dict):
        try:
            creative = CreativeControl.model_validate(cdata, context=ctx)
        except ValidationError as e:
            problems.extend(_pydantic_problems(CREATIVE_FILE, e))

    if problems or episode is None:
        raise EpisodeValidationError(str(root), _capped(problems, "problems"))
    warnings = [*_unknown_fields(EPISODE_FILE, data, Episode)]
    if isinstance(cdata, dict):
        warnings += _unknown_fields(CREATIVE_FILE, cdata, CreativeControl)
    return EpisodeBundle(root=root, episode=episode, creative=creative,
                         warnings=tuple(_capped(warnings, "warnings")))


def load_episode(folder: str | Path) -> EpisodeBundle:
    """Validate an episode folder completely; raise with every problem found.

    Only :class:`EpisodeValidationError` ever leaves this function; it reads the folder and
    never writes anything."""
    root = Path(folder)
    try:
        return _load(root)
    except EpisodeValidationError:
        raise
    except Exception as e:  # a bug in the validator must still not become a traceback
        raise EpisodeValidationError(str(root), [Problem(
            str(root), "", f"internal validator error ({type(e).__name__}: {e}); "
                           "please report it")]) from e
