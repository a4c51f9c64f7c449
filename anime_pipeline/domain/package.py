"""The delivery ZIP: files streamed in, sha256 computed on the way, manifest.json last.

Memory stays flat whatever the package size: each file is copied in 1 MiB chunks.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from anime_pipeline.domain.records import Lineage, PackageFile, PackageManifest

CHUNK = 1 << 20
# Already-compressed media is stored; text is deflated.
_STORED_SUFFIXES = {".mp4", ".mov", ".mkv", ".jpg", ".jpeg", ".png", ".webp", ".zip", ".m4a"}


@dataclass(frozen=True)
class PackageEntry:
    arcname: str
    path: Path
    kind: str  # composite | clip | subtitles | manifest | keyframe | preview | report


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def build_package(out: Path, entries: Iterable[PackageEntry],
                  lineage: Lineage) -> PackageManifest:
    """Write the ZIP to ``out`` (caller supplies a temp path) and return its manifest."""
    files: list[PackageFile] = []
    with zipfile.ZipFile(out, "w", allowZip64=True) as zf:
        for entry in entries:
            compress = (
                zipfile.ZIP_STORED
                if entry.path.suffix.lower() in _STORED_SUFFIXES
                else zipfile.ZIP_DEFLATED
            )
            info = zipfile.ZipInfo.from_file(entry.path, arcname=entry.arcname)
            info.compress_type = compress
            h = hashlib.sha256()
            size = 0
            with entry.path.open("rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
            files.append(PackageFile(path=entry.arcname, kind=entry.kind, size=size,
                                     sha256=h.hexdigest()))
        manifest = PackageManifest(lineage=lineage, files=files)
        zf.writestr("manifest.json", manifest.model_dump_json(indent=2),
                    compress_type=zipfile.ZIP_DEFLATED)
    return manifest


def verify_package(path: Path) -> list[str]:
    """Re-read every file of the ZIP against its manifest; return the problems found."""
    problems: list[str] = []
    with zipfile.ZipFile(path) as zf:
        try:
            manifest = PackageManifest.model_validate_json(zf.read("manifest.json"))
        except KeyError:
            return ["manifest.json missing"]
        except (ValidationError, json.JSONDecodeError) as e:
            return [f"manifest.json unreadable: {str(e).splitlines()[0]}"]
        listed = {f.path for f in manifest.files}
        present = set(zf.namelist()) - {"manifest.json"}
        for extra in sorted(present - listed):
            problems.append(f"{extra}: in the ZIP but not in the manifest")
        for f in manifest.files:
            if f.path not in present:
                problems.append(f"{f.path}: listed but missing")
                continue
            h = hashlib.sha256()
            size = 0
            with zf.open(f.path) as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
            if size != f.size:
                problems.append(f"{f.path}: size {size} != manifest {f.size}")
            if h.hexdigest() != f.sha256:
                problems.append(f"{f.path}: sha256 mismatch")
    return problems
