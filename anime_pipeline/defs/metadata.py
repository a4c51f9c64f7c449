"""What the UI shows of each asset: Markdown tables, inline previews, typed clip metadata."""


import base64
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from anime_pipeline.domain.records import ClipMetadata


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
