"""Workflow templates: an API-format ComfyUI graph plus which node inputs receive which
pipeline values.

A template file (YAML or JSON)::

    name: weightfree_i2v
    description: ...
    graph: {"1": {"class_type": "LoadImage", "inputs": {"image": "start.png"}}, ...}
    inputs:                       # pipeline value -> the node inputs that receive it
      image: ["1.image"]          # the uploaded start image (keyframe or previous segment)
      width: ["2.width"]
      height: ["2.height"]
      frames: ["3.amount"]
      fps: ["5.fps"]
      seed: ["4.seed"]
      positive_prompt: []
      negative_prompt: []
      filename_prefix: ["6.filename_prefix"]
    output: "6"                   # the node whose outputs hold the video
    limits: {frames_step: 1, frames_offset: 0, max_frames: 1000, size_multiple: 2, fps: null}

Bundled templates live in ``anime_pipeline/backends/templates/``; a studio names one, or
gives a path to its own. Before a shot is queued, :func:`check_against` compares the template
with the server's ``/object_info``: a missing node class, input or model file is a
:class:`TemplateMismatch` (a configuration problem, not retried).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from anime_pipeline.domain.rendering import NotRetryable

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
Value = Literal["image", "width", "height", "frames", "fps", "seed", "positive_prompt",
                "negative_prompt", "filename_prefix"]
REQUIRED_VALUES = ("image", "frames", "seed", "filename_prefix")  # a seed per attempt: no cache hit
MAX_TEMPLATE_BYTES = 1 << 20


class TemplateError(ValueError):
    """A template file that is not a usable template (names the file and the field)."""


class TemplateMismatch(ValueError, NotRetryable):
    """A template the server cannot run (a node class, input or model file it lacks): the
    same attempt again cannot fix it, so the shot goes down its ladder at once."""


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    frames_step: int = Field(default=1, ge=1, le=64)  # frames = offset + k * step
    frames_offset: int = Field(default=0, ge=0, le=64)
    max_frames: int = Field(default=1000, ge=1, le=10_000)  # longest a prompt may generate
    # Frames the graph generates and then drops (e.g. HunyuanVideo's first four).
    frames_dropped: int = Field(default=0, ge=0, le=64)
    size_multiple: int = Field(default=2, ge=1, le=128)
    fps: float | None = Field(default=None, gt=0, le=120)  # a model's fixed rate, if any
    max_side: int = Field(default=1920, ge=16, le=8192)

    def frames_for(self, wanted: int) -> int:
        """The frame count to ask the graph for (its ``frames`` input) so that at least
        ``wanted`` come out: the smallest the model accepts, plus what the graph drops."""
        n = max(wanted + self.frames_dropped, self.frames_offset, 1)
        k = math.ceil((n - self.frames_offset) / self.frames_step)
        return self.frames_offset + k * self.frames_step

    @property
    def max_output_frames(self) -> int:
        """The most frames one prompt can give (longer shots are split into segments)."""
        k = (self.max_frames - self.frames_offset) // self.frames_step
        return max(1, self.frames_offset + k * self.frames_step - self.frames_dropped)

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """``width`` x ``height`` scaled down under ``max_side`` and rounded to the multiple."""
        scale = min(1.0, self.max_side / max(width, height))
        m = self.size_multiple
        return (max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m))


class WorkflowTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    graph: dict[str, dict[str, Any]]
    inputs: dict[Value, list[str]]
    output: str
    limits: Limits = Field(default_factory=Limits)
    negative_prompt: str = "blurry, distorted, low quality, watermark, text"
    source: str = ""

    @field_validator("graph")
    @classmethod
    def _graph(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for node_id, node in v.items():
            if not isinstance(node.get("class_type"), str):
                raise ValueError(f"node {node_id}: class_type must be a string")
            if not isinstance(node.get("inputs", {}), dict):
                raise ValueError(f"node {node_id}: inputs must be a mapping")
        return v

    def model_post_init(self, _context: Any) -> None:
        bound = {str(k): v for k, v in self.inputs.items()}
        missing = [v for v in REQUIRED_VALUES if not bound.get(v)]
        if missing:
            raise ValueError(f"inputs: {missing} must each name at least one node input")
        if self.output not in self.graph:
            raise ValueError(f"output: node {self.output!r} is not in the graph")
        for value, targets in self.inputs.items():
            for target in targets:
                node, _, name = target.partition(".")
                if node not in self.graph or not name:
                    raise ValueError(f"inputs.{value}: {target!r} is not <node id>.<input> of "
                                     "a node in the graph")

    def bind(self, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """The graph with every bound input set (a deep copy; the template is unchanged)."""
        graph = copy.deepcopy(self.graph)
        for value, targets in self.inputs.items():
            if value not in values:
                continue
            for target in targets:
                node, _, name = target.partition(".")
                graph[node].setdefault("inputs", {})[name] = values[value]
        return graph

    @property
    def bound_inputs(self) -> list[str]:
        """Every ``node.input`` a pipeline value is written to."""
        return [t for targets in self.inputs.values() for t in targets]


def bundled_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATES_DIR.glob("*.yaml"))


def load_template(name_or_path: str, *, relative_to: Path | None = None) -> WorkflowTemplate:
    """A bundled template by name (``weightfree_i2v``), or a template file by path."""
    from anime_pipeline.domain.safe_yaml import YamlRefused, load_yaml

    candidate = Path(name_or_path)
    if relative_to is not None and not candidate.is_absolute():
        candidate = relative_to / candidate
    if (TEMPLATES_DIR / f"{name_or_path}.yaml").is_file() and "/" not in name_or_path:
        path = TEMPLATES_DIR / f"{name_or_path}.yaml"
    elif candidate.is_file():
        path = candidate
    else:
        raise TemplateError(f"workflow {name_or_path!r}: neither a bundled template "
                            f"({', '.join(bundled_templates())}) nor a file")
    if path.stat().st_size > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"{path}: larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TemplateError(f"{path}: not UTF-8 text ({e.reason})") from None
    try:
        data = (json.loads(text) if path.suffix == ".json"
                else load_yaml(text, max_depth=16, max_nodes=100_000))
    except (json.JSONDecodeError, YamlRefused) as e:
        raise TemplateError(f"{path}: {e}") from None
    try:
        return WorkflowTemplate.model_validate({**data, "source": str(path)})
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TemplateError(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}"
                            ) from None


def _declared(spec: Mapping[str, Any]) -> dict[str, Any]:
    inputs = spec.get("input", {}) or {}
    out: dict[str, Any] = {}
    for group in ("required", "optional"):
        out.update(inputs.get(group, {}) or {})
    return out


def _combo_values(declaration: Any) -> list[Any] | None:
    """The allowed values of a combo input, in the old (list) or the new ("COMBO") form."""
    if not isinstance(declaration, Sequence) or not declaration:
        return None
    head = declaration[0]
    if isinstance(head, list):
        return head
    if head == "COMBO" and len(declaration) > 1 and isinstance(declaration[1], Mapping):
        options = declaration[1].get("options")
        return list(options) if isinstance(options, list) else None
    return None


def check_against(graph: Mapping[str, Mapping[str, Any]], object_info: Mapping[str, Any],
                  *, server: str, template: str, bound: Sequence[str] = ()) -> None:
    """Raise :class:`TemplateMismatch` listing what ``graph`` needs that the server lacks:
    node classes, inputs, and combo values such as model files. Links are not judged, nor
    the values of ``bound`` inputs (``node.input``: set per prompt, e.g. the start image)."""
    problems: list[str] = []
    per_prompt = set(bound)
    for node_id, node in graph.items():
        cls = node["class_type"]
        spec = object_info.get(cls)
        if not spec:
            problems.append(f"node {node_id}: class {cls} is not installed")
            continue
        declared = _declared(spec)
        for name, value in (node.get("inputs") or {}).items():
            if name not in declared:
                problems.append(f"node {node_id} ({cls}): no input {name!r}")
                continue
            if isinstance(value, list) or f"{node_id}.{name}" in per_prompt:
                continue  # a link [node, output], or a value every prompt sets
            allowed = _combo_values(declared[name])
            if allowed is not None and value not in allowed:
                shown = ", ".join(map(str, allowed[:5])) or "none"
                problems.append(f"node {node_id} ({cls}): {name} {value!r} is not on the server "
                                f"(it has: {shown})")
    if problems:
        raise TemplateMismatch(f"workflow {template} cannot run on {server}: "
                               + "; ".join(problems[:8])
                               + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""))
