"""Local files an episode refers to: path containment, safe reads, and playlists by content.

Every path in an episode folder's YAML is relative to the folder and must stay inside it.
:func:`resolve_inside` applies that rule (syntax, then symlinks resolved, then "an existing
regular file"). :func:`read_regular` reads a file without ever blocking on a FIFO or reading
a device: it opens with ``O_NONBLOCK`` and checks ``fstat`` before reading a byte.

Media inputs (the audio mix, local ``source.uri`` footage) go to ffmpeg, which picks a
demuxer by *content*, whatever the file is called. A file that starts with ``#EXTM3U`` is an
HLS playlist to ffmpeg, and ffmpeg opens every file (or URL) it names. So
:func:`check_local_media` sniffs each media input: an HLS playlist is parsed (segment lines,
``URI=`` attributes of ``EXT-X-KEY``, ``EXT-X-MAP``, ``EXT-X-MEDIA``,
``EXT-X-I-FRAME-STREAM-INF`` and any other tag, variant playlists recursively, with limits
on depth, size and count) and every reference in it must be a relative path inside the
folder naming an existing regular file (no URL scheme of any kind, no ``..``, no absolute
path, no query or fragment). Other reference formats ffmpeg would follow are refused by
content: DASH manifests (``<MPD``), ffconcat lists, SDP session descriptions and IMF
composition playlists.

Plain Python: no Dagster import.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from anime_pipeline.domain.safe_yaml import bad_character, show

MAX_COMPONENT_BYTES = 255
MAX_PATH_BYTES = 1024
MAX_PLAYLIST_BYTES = 2 * 1024 * 1024
MAX_PLAYLIST_DEPTH = 4
MAX_PLAYLISTS = 64
MAX_REFERENCES = 20_000
MAX_PLAYLIST_LINE_BYTES = 4000
#: ffmpeg probes up to 5,000,000 bytes; a text format is only seen up to the first NUL.
SNIFF_BYTES = 5_000_000
SNIFF_BUDGET_BYTES = 64 * 1024 * 1024

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DRIVE = re.compile(r"^[A-Za-z]:")
_SDP_CONNECTION = re.compile(rb"(?:^|[\r\n])c=IN IP")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_CHUNK = 64 * 1024
_ASCII_SPACE = " \t\n\v\f\r"  # av_isspace
#: Script formats ffmpeg may be built to run (AviSynth, VapourSynth), chosen by extension.
_SCRIPT_SUFFIXES = {".avs", ".vpy"}


class LocalPathError(ValueError):
    """A local path or reference that is refused; the message is one line, without the
    path itself (callers prefix it)."""


def _open_flags(nofollow: bool) -> int:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    return flags


def file_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words: ``a directory``, ``a FIFO (named pipe)``..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file"


def describe_os_error(e: OSError) -> str:
    """An ``OSError`` from stat/open/read as a short reason."""
    code = e.errno
    if code == errno.ENOENT:
        return "file not found"
    if code == errno.ENOTDIR:
        return "file not found (a parent is not a folder)"
    if code == errno.ELOOP:
        return "symlink loop (or a symlink where none is allowed)"
    if code == errno.ENAMETOOLONG:
        return "path is too long for the file system"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return f"cannot be read ({e.strerror or type(e).__name__})"


def check_path_syntax(value: str) -> None:
    """The rules a relative path must follow before the file system is asked anything."""
    if not isinstance(value, str) or not value.strip():
        raise LocalPathError("must be a non-empty relative path")
    why = bad_character(value)
    if why is not None or any(c in value for c in "\t\n\r\x85"):
        raise LocalPathError(why or "control characters are not allowed in paths")
    if "\\" in value:
        raise LocalPathError("use '/' as the path separator")
    if value.endswith("/"):
        raise LocalPathError("must name a file, not end with '/'")
    if "%" in value:
        raise LocalPathError("'%' is not allowed in paths (ffmpeg reads it as a frame-number "
                             "pattern, which would name other files)")
    p = PurePosixPath(value)
    if p.is_absolute() or _DRIVE.match(value):
        raise LocalPathError("absolute paths are not allowed; use a path inside the folder")
    if _SCHEME.match(value):
        raise LocalPathError("URLs are not allowed here; use a path inside the folder")
    if ".." in p.parts:
        raise LocalPathError("'..' is not allowed; the path must stay inside the folder")
    for part in p.parts:
        size = len(part.encode("utf-8"))
        if size > MAX_COMPONENT_BYTES:
            raise LocalPathError(f"a path component of {size} bytes is too long "
                                 f"(at most {MAX_COMPONENT_BYTES})")
    size = len(value.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise LocalPathError(f"path of {size} bytes is too long (at most {MAX_PATH_BYTES})")


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def resolve_inside(root: Path, rel: str) -> Path:
    """``root/rel`` with symlinks resolved, once it is known to be an existing regular file
    inside ``root``; else :class:`LocalPathError`."""
    check_path_syntax(rel)
    try:
        root_real = os.path.realpath(root)
        real = os.path.realpath(os.path.join(root, rel))
    except (OSError, ValueError) as e:  # pragma: no cover - realpath is lenient
        raise LocalPathError(f"cannot be resolved ({type(e).__name__})") from None
    if not _inside(real, root_real):
        raise LocalPathError("resolves outside the episode folder (symlink)")
    try:
        st = os.stat(real)
    except OSError as e:
        raise LocalPathError(describe_os_error(e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise LocalPathError(f"not a regular file (it is {file_kind(st.st_mode)})")
    return Path(real)


def read_regular(path: Path | str, limit: int, *, nofollow: bool = False,
                 same_as: os.stat_result | None = None) -> bytes:
    """At most ``limit + 1`` bytes of a regular file (so "over the limit" is visible).

    Opens with ``O_NONBLOCK`` (a FIFO never blocks) and checks ``fstat`` before reading, so a
    FIFO, a device or a directory is refused unread (:class:`LocalPathError`). With
    ``same_as``, the opened file must be that one (no swap since it was checked). OSError
    from opening or reading propagates."""
    fd = os.open(path, _open_flags(nofollow))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LocalPathError(f"not a regular file (it is {file_kind(st.st_mode)})")
        if same_as is not None and (st.st_dev, st.st_ino) != (same_as.st_dev, same_as.st_ino):
            raise LocalPathError("the file changed while it was being checked")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text_prefix(path: Path | str, limit: int = SNIFF_BYTES) -> bytes:
    """The bytes of a regular file before its first NUL byte, at most ``limit`` of them:
    what a text-format probe (which stops at NUL) can see. Binary media stop early."""
    fd = os.open(path, _open_flags(False))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LocalPathError(f"not a regular file (it is {file_kind(st.st_mode)})")
        chunks: list[bytes] = []
        total = 0
        while total < limit:
            chunk = os.read(fd, min(_CHUNK, limit - total))
            if not chunk:
                break
            nul = chunk.find(b"\0")
            if nul >= 0:
                chunks.append(chunk[:nul])
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def manifest_kind(prefix: bytes) -> str | None:
    """The reference/manifest format ``prefix`` (a file's text before its first NUL) is in,
    as ffmpeg would probe it (``"an HLS playlist"``, ``"a DASH manifest (MPD)"``, ...), or
    None for anything else (plain media)."""
    head = prefix[:64].removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"#EXTM3U"):
        return "an HLS playlist"
    if head.lower().startswith(b"ffconcat version"):
        return "an ffconcat list"
    low = prefix.lower()
    if b"<mpd" in low:
        return "a DASH manifest (MPD)"
    if b"<compositionplaylist" in low:
        return "an IMF composition playlist"
    if _SDP_CONNECTION.search(prefix):
        return "an SDP session description"
    return None


def hls_attributes(text: str) -> list[tuple[str, str]]:
    """``KEY=value`` / ``KEY="value"`` pairs of an HLS tag, parsed the way ffmpeg does
    (``ff_parse_key_value``: commas or spaces between pairs, backslash escapes in quotes)."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and (text[i] in _ASCII_SPACE or text[i] == ","):
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            break
        key = text[i:eq].strip()
        i = eq + 1
        value: list[str] = []
        if i < n and text[i] == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    if i + 1 >= n:
                        break
                    value.append(text[i + 1])
                    i += 2
                else:
                    value.append(text[i])
                    i += 1
            if i < n and text[i] == '"':
                i += 1
        else:
            while i < n and not (text[i] in _ASCII_SPACE or text[i] == ","):
                value.append(text[i])
                i += 1
        out.append((key, "".join(value)))
    return out


@dataclass
class _Walk:
    root: Path
    references: int = 0
    playlists: int = 0
    sniffed: int = 0
    done: set[str] = field(default_factory=set)
    active: set[str] = field(default_factory=set)


def _check_reference_syntax(ref: str) -> None:
    if ref != ref.strip():
        raise LocalPathError("leading or trailing whitespace is not allowed")
    if _SCHEME.match(ref):
        raise LocalPathError("URL schemes are not allowed in a local playlist "
                             "(file:, http:, data:, ...); use a relative path inside the folder")
    if "?" in ref or "#" in ref:
        raise LocalPathError("query strings and fragments ('?', '#') are not allowed")
    check_path_syntax(ref)


def _check_media(walk: _Walk, rel: str, real: Path, depth: int) -> None:
    key = str(real)
    if key in walk.done:
        return
    if PurePosixPath(rel).suffix.lower() in _SCRIPT_SUFFIXES:
        raise LocalPathError("script formats (AviSynth .avs, VapourSynth .vpy) are not "
                             "accepted as media")
    if key in walk.active:
        raise LocalPathError("the playlist refers back to itself (a cycle)")
    if walk.sniffed > SNIFF_BUDGET_BYTES:
        raise LocalPathError(f"too much to check: more than {SNIFF_BUDGET_BYTES} bytes of "
                             "referenced files")
    try:
        prefix = read_text_prefix(real)
    except OSError as e:
        raise LocalPathError(describe_os_error(e)) from None
    walk.sniffed += len(prefix) + 1
    kind = manifest_kind(prefix)
    if kind is None:
        walk.done.add(key)
        return
    if kind != "an HLS playlist":
        raise LocalPathError(f"is {kind}: reference files and manifests are not accepted "
                             "as local media")
    if depth >= MAX_PLAYLIST_DEPTH:
        raise LocalPathError(f"HLS playlists nested more than {MAX_PLAYLIST_DEPTH} deep")
    walk.playlists += 1
    if walk.playlists > MAX_PLAYLISTS:
        raise LocalPathError(f"more than {MAX_PLAYLISTS} HLS playlists")
    try:
        data = read_regular(real, MAX_PLAYLIST_BYTES)
    except OSError as e:
        raise LocalPathError(describe_os_error(e)) from None
    if len(data) > MAX_PLAYLIST_BYTES:
        raise LocalPathError(f"HLS playlist larger than {MAX_PLAYLIST_BYTES} bytes")
    walk.active.add(key)
    try:
        _check_playlist(walk, rel, data, depth)
    finally:
        walk.active.discard(key)
    walk.done.add(key)


def _check_playlist(walk: _Walk, rel: str, data: bytes, depth: int) -> None:
    if b"\0" in data:
        raise LocalPathError("HLS playlist contains a NUL byte")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LocalPathError(f"HLS playlist is not UTF-8 text (byte {e.start})") from None
    text = text.removeprefix("\ufeff")
    base = PurePosixPath(rel).parent
    for number, raw in enumerate(_LINE_BREAK.split(text), 1):
        if len(raw.encode("utf-8", "surrogatepass")) > MAX_PLAYLIST_LINE_BYTES:
            raise LocalPathError(f"HLS playlist line {number}: longer than "
                                 f"{MAX_PLAYLIST_LINE_BYTES} bytes")
        line = raw.rstrip(" \t\v\f")
        if not line:
            continue
        refs: list[str]
        if line.startswith("#"):
            if not line.startswith("#EXT") or ":" not in line:
                continue  # a comment, or a tag without attributes
            refs = [v for k, v in hls_attributes(line.split(":", 1)[1])
                    if k.upper().endswith("URI")]
            if refs and "\\" in line:  # ffmpeg versions differ on escapes: allow none
                raise LocalPathError(f"HLS playlist line {number}: backslashes are not "
                                     "allowed in a tag that names a file")
        else:
            refs = [line]
        for ref in refs:
            try:
                _check_reference(walk, base, ref, depth)
            except LocalPathError as e:
                raise LocalPathError(f"HLS playlist line {number}: {show(ref)}: {e}") from None


def _check_reference(walk: _Walk, base: PurePosixPath, ref: str, depth: int) -> None:
    walk.references += 1
    if walk.references > MAX_REFERENCES:
        raise LocalPathError(f"more than {MAX_REFERENCES} references in HLS playlists")
    if not ref:
        raise LocalPathError("empty reference")
    _check_reference_syntax(ref)
    joined = (base / ref).as_posix()
    real = resolve_inside(walk.root, joined)
    _check_media(walk, joined, real, depth + 1)


def check_media_content(root: Path, rel: str, real: Path) -> None:
    """Refuse a local media input (already resolved by :func:`resolve_inside`) that is a
    reference format ffmpeg would follow; check HLS playlists reference by reference."""
    _check_media(_Walk(root=root), rel, real, 0)


def check_local_media(root: Path, rel: str) -> Path:
    """:func:`resolve_inside`, then :func:`check_media_content`; returns the resolved path."""
    real = resolve_inside(root, rel)
    check_media_content(root, rel, real)
    return real
