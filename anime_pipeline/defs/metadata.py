"""What the UI shows of each asset: Markdown tables, inline previews, typed clip metadata."""


import base64
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from pydantic import ValidationError

from anime_pipeline.domain.records import ClipMetadata, ClipsReused

REUSED_CLIPS = "reused_clips"


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dg.MetadataValue:
    def cell(value: Any) -> str:
        return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "\n".join("| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows)
    return dg.MetadataValue.md(head + body)


def image(jpeg: bytes, alt: str) -> dg.MetadataValue:
    """An inline JPEG preview (Markdown with a data URI)."""
    data = base64.b64encode(jpeg).decode("ascii")
    return dg.MetadataValue.md(f"![{alt}](data:image/jpeg;base64,{data})")


def clip_values(meta: ClipMetadata) -> dict[str, Any]:
    """Clip metadata as Dagster metadata: the typed record's values, the file as a path."""
    values: dict[str, Any] = dict(meta.values())
    values["uri"] = dg.MetadataValue.path(meta.uri) if meta.uri else ""
    return values


def read_clip_metadata(metadata: Mapping[str, Any]) -> ClipMetadata | None:
    """The typed metadata of a clips materialization (None for other or older events)."""
    return ClipMetadata.from_values({k: getattr(v, "value", v) for k, v in metadata.items()})


def reused_values(report: ClipsReused) -> dict[str, Any]:
    """A reuse report as Dagster metadata: the typed record (JSON), and a count for the UI."""
    return {REUSED_CLIPS: dg.MetadataValue.json(report.model_dump(mode="json")),
            "clips_reused": len(report.shot_ids), "episode": report.episode_key}


def read_reused(metadata: Mapping[str, Any]) -> ClipsReused | None:
    """The reuse report in an observation's metadata (None for any other observation)."""
    value = metadata.get(REUSED_CLIPS)
    if value is None:
        return None
    try:
        return ClipsReused.model_validate(getattr(value, "value", value))
    except ValidationError:
        return None
