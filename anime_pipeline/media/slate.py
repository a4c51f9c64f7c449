"""The placeholder slate: a card of exactly the shot's length at the delivery format.

It shows the shot id, its duration and type and a short, producer-readable reason
(:func:`short_reason`); the full reason belongs in the clip's metadata, not on the picture.

Text never breaks a slate:

* every line is drawn by its own ``drawtext`` from a UTF-8 text file with ``expansion=none``,
  so ``%``, ``\\``, ``:``, ``'``, ``{}``... in a reason are plain characters and never part of
  the filter graph (file paths are escaped by ffmpeg-python);
* font size and wrapping are chosen from the frame size and the text, measured with the
  font's own advance widths (:class:`FontMetrics` reads ``cmap``/``hmtx`` from the TrueType or
  OpenType file that ``drawtext`` uses); lines that cannot fit at a legible size are left out,
  down to a slate without text (a 16x16 frame);
* no font on the machine -> a slate without text; drawing the text fails for any other
  reason -> :func:`render_slate` renders the slate again without text.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import struct
import tempfile
import time
import unicodedata
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg  # ffmpeg-python

from anime_pipeline.domain.contracts import SOFTWARE_ENCODER
from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media.render import Delivery, conform, encode_args
from anime_pipeline.media.synth import find_font

BACKGROUND = "0x2b2b3a"
BAR_COLOUR = "0xe0a030"
HEADER_COLOUR = "0xe0a030"
TEXT_COLOUR = "white"
REASON_COLOUR = "0xd0d0dc"

SHORT_REASON_MAX = 80  # characters of :func:`short_reason`
MIN_FONT_PX = 6  # below this a line is left out rather than drawn illegibly
REASON_MAX_LINES = 3
WIDTH_SAFETY = 1.06  # measured advances ignore kerning and hinting: keep a little slack
LINE_GAP = 0.3  # of the font size, between lines

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- font metrics


class FontMetrics:
    """Horizontal advances and vertical extent of a TrueType/OpenType font (first face).

    Enough to predict ``drawtext``'s ``text_w``: the sum of the advances of the glyphs the
    font maps the characters to (``.notdef`` for missing ones).
    """

    def __init__(self, data: bytes) -> None:
        tables = self._tables(data)
        head, hhea = tables["head"], tables["hhea"]
        self.units_per_em = struct.unpack_from(">H", data, head + 18)[0] or 1000
        self.ascender, self.descender = struct.unpack_from(">hh", data, hhea + 4)
        n_metrics = struct.unpack_from(">H", data, hhea + 34)[0]
        hmtx = tables["hmtx"]
        self._advances = [struct.unpack_from(">H", data, hmtx + 4 * i)[0]
                          for i in range(n_metrics)]
        if not self._advances:
            raise ValueError("font has no horizontal metrics")
        self._lookup = self._cmap(data, tables["cmap"])
        self.family = self._name(data, tables.get("name"), 1) or ""
        self.subfamily = self._name(data, tables.get("name"), 2) or ""

    @staticmethod
    def _name(data: bytes, table: int | None, name_id: int) -> str | None:
        """A string of the ``name`` table (1: family, 2: subfamily), English if present."""
        if table is None:
            return None
        try:
            _, count, strings = struct.unpack_from(">HHH", data, table)
            found: dict[tuple[int, int], str] = {}
            for i in range(count):
                platform, encoding, language, nid, length, offset = struct.unpack_from(
                    ">HHHHHH", data, table + 6 + 12 * i)
                if nid != name_id:
                    continue
                raw = data[table + strings + offset: table + strings + offset + length]
                if platform in (0, 3):
                    found[(0 if language in (0, 0x409) else 1, 0)] = raw.decode("utf-16-be")
                elif platform == 1 and encoding == 0:
                    found[(0 if language == 0 else 1, 1)] = raw.decode("latin-1")
            return found[min(found)] if found else None
        except (struct.error, UnicodeDecodeError):
            return None

    @staticmethod
    def _tables(data: bytes) -> dict[str, int]:
        base = 0
        if data[:4] == b"ttcf":  # a collection: drawtext uses face 0
            base = struct.unpack_from(">I", data, 12)[0]
        num = struct.unpack_from(">H", data, base + 4)[0]
        tables = {}
        for i in range(num):
            tag, _, offset, _ = struct.unpack_from(">4sIII", data, base + 12 + 16 * i)
            tables[tag.decode("latin-1")] = offset
        missing = {"head", "hhea", "hmtx", "cmap"} - set(tables)
        if missing:
            raise ValueError(f"font lacks tables {sorted(missing)}")
        return tables

    @staticmethod
    def _cmap(data: bytes, cmap: int) -> Callable[[int], int]:
        _, n = struct.unpack_from(">HH", data, cmap)
        subtables: dict[tuple[int, int], int] = {}
        for i in range(n):
            platform, encoding, offset = struct.unpack_from(">HHI", data, cmap + 4 + 8 * i)
            subtables[(platform, encoding)] = cmap + offset
        for key in ((3, 10), (0, 6), (0, 4), (3, 1), (0, 3), (0, 2), (0, 1), (0, 0)):
            if key not in subtables:
                continue
            at = subtables[key]
            fmt = struct.unpack_from(">H", data, at)[0]
            if fmt == 12:
                return FontMetrics._format12(data, at)
            if fmt == 4:
                return FontMetrics._format4(data, at)
        raise ValueError("font has no Unicode cmap of format 4 or 12")

    @staticmethod
    def _format12(data: bytes, at: int) -> Callable[[int], int]:
        n = struct.unpack_from(">I", data, at + 12)[0]
        groups = [struct.unpack_from(">III", data, at + 16 + 12 * i) for i in range(n)]
        ends = [g[1] for g in groups]

        def lookup(cp: int) -> int:
            i = bisect_left(ends, cp)
            if i < len(groups) and groups[i][0] <= cp:
                return groups[i][2] + cp - groups[i][0]
            return 0

        return lookup

    @staticmethod
    def _format4(data: bytes, at: int) -> Callable[[int], int]:
        seg = struct.unpack_from(">H", data, at + 6)[0] // 2
        ends_at = at + 14
        starts_at = ends_at + 2 * seg + 2
        deltas_at = starts_at + 2 * seg
        ranges_at = deltas_at + 2 * seg
        ends = list(struct.unpack_from(f">{seg}H", data, ends_at))
        starts = struct.unpack_from(f">{seg}H", data, starts_at)
        deltas = struct.unpack_from(f">{seg}h", data, deltas_at)
        ranges = struct.unpack_from(f">{seg}H", data, ranges_at)

        def lookup(cp: int) -> int:
            if cp > 0xFFFF:
                return 0
            i = bisect_left(ends, cp)
            if i >= seg or starts[i] > cp:
                return 0
            if ranges[i] == 0:
                return (cp + deltas[i]) & 0xFFFF
            where = ranges_at + 2 * i + ranges[i] + 2 * (cp - starts[i])
            glyph = struct.unpack_from(">H", data, where)[0]
            return (glyph + deltas[i]) & 0xFFFF if glyph else 0

        return lookup

    def advance_em(self, ch: str) -> float:
        glyph = self._lookup(ord(ch))
        advance = self._advances[min(glyph, len(self._advances) - 1)]
        return advance / self.units_per_em

    def width(self, text: str, size: float) -> float:
        """Pixel width of ``text`` drawn at ``size`` px (``drawtext`` ``fontsize``)."""
        return sum(self.advance_em(ch) for ch in text) * size

    def line_height(self, size: float) -> float:
        return (self.ascender - self.descender) / self.units_per_em * size


class EstimatedMetrics:
    """A conservative stand-in when the font file cannot be read."""

    family = ""
    subfamily = ""

    def width(self, text: str, size: float) -> float:
        total = 0.0
        for ch in text:
            if unicodedata.combining(ch):
                continue
            total += 1.05 if unicodedata.east_asian_width(ch) in "WF" else 0.9
        return total * size

    def line_height(self, size: float) -> float:
        return 1.25 * size


Metrics = FontMetrics | EstimatedMetrics


@functools.lru_cache(maxsize=4)
def font_metrics(font: str) -> Metrics:
    try:
        return FontMetrics(Path(font).read_bytes())
    except (OSError, ValueError, struct.error, IndexError):
        return EstimatedMetrics()


# --------------------------------------------------------------------------- text layout


def clean_line(text: str) -> str:
    """One drawable line: whitespace runs -> one space, no control/format characters."""
    kept = "".join(ch for ch in str(text) if ch.isspace() or unicodedata.category(ch)
                   not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    return " ".join(kept.split())


def wrap(text: str, width_px: float, metrics: Metrics, size: float) -> list[str]:
    """Greedy word wrap to ``width_px``; a word longer than a line is cut by characters."""
    def fits(s: str) -> bool:
        return metrics.width(s, size) * WIDTH_SAFETY <= width_px

    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if fits(candidate):
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        while word and not fits(word):
            cut = 1
            while cut < len(word) and fits(word[:cut + 1]):
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def ellipsize(text: str, width_px: float, metrics: Metrics, size: float) -> str:
    """``text`` cut to ``width_px`` with an ellipsis, or "" when not even that fits."""
    if metrics.width(text, size) * WIDTH_SAFETY <= width_px:
        return text
    for end in range(len(text) - 1, 0, -1):
        candidate = text[:end].rstrip() + "…"
        if metrics.width(candidate, size) * WIDTH_SAFETY <= width_px:
            return candidate
    return ""


def fit_size(text: str, width_px: float, metrics: Metrics, size: float) -> int:
    """The largest font size <= ``size`` at which ``text`` is no wider than ``width_px``."""
    w = metrics.width(text, 1.0) * WIDTH_SAFETY
    return int(min(size, width_px / w)) if w > 0 else int(size)


@dataclass(frozen=True)
class TextLine:
    text: str
    size: int  # drawtext fontsize, px
    x: int  # left edge of the available area; the line is centred in [x, x + width]
    y: int  # top of the line
    width: int  # the available width (the line is at most this wide)
    colour: str


@dataclass(frozen=True)
class _Block:
    """One element of the slate: its text, or ways to break it, or (``wrap``) a paragraph."""

    options: tuple[tuple[str, ...], ...]  # alternative line breaks, the preferred first
    size: float
    colour: str
    wrap: bool = False


def bar_height(height: int) -> int:
    return max(1, height // 40)


def layout(width: int, height: int, *, shot_id: str, shot_type: str, duration_ms: int,
           reason: str, metrics: Metrics) -> list[TextLine]:
    """Where each line of the slate goes: fitted to the frame, never outside a safe margin.

    Blocks are tried in full, then without the least important (header, then duration/type,
    then reason) until what is left fits at ``MIN_FONT_PX`` or more; possibly nothing.
    """
    bar = bar_height(height)
    mx = max(1, math.ceil(width * 0.05))
    my = max(1, math.ceil(height * 0.04))
    area_w = width - 2 * mx
    top, bottom = bar + my, height - bar - my
    area_h = bottom - top
    if area_w <= 0 or area_h <= 0:
        return []
    sid = clean_line(shot_id)
    half = (len(sid) + 1) // 2
    blocks = {
        "header": _Block((("PLACEHOLDER",),), height / 13, HEADER_COLOUR),
        # a long id on a narrow frame: "SHOT" above the id, or the id cut in two
        "id": _Block(((f"SHOT {sid}",), ("SHOT", sid), ("SHOT", sid[:half], sid[half:])),
                     height / 8, TEXT_COLOUR),
        "meta": _Block(((clean_line(f"{duration_ms / 1000:.2f} s · {shot_type}"),),),
                       height / 16, TEXT_COLOUR),
        "reason": _Block(((clean_line(reason),),), height / 18, REASON_COLOUR, wrap=True),
    }
    order = ["header", "id", "meta", "reason"]
    for drop in ([], ["header"], ["header", "meta"], ["header", "meta", "reason"]):
        names = [n for n in order if n not in drop and all(blocks[n].options[0])]
        placed = _fit(names, blocks, area_w, area_h, metrics)
        if placed is not None:
            return _place(placed, mx, top, area_w, area_h, metrics)
    return []


def _fit(names: Sequence[str], blocks: dict[str, _Block], area_w: int, area_h: int,
         metrics: Metrics) -> list[tuple[list[str], int, str]] | None:
    if not names:
        return None
    fitted: list[tuple[list[str], float, str]] = []
    for name in names:
        block = blocks[name]
        text = block.options[0][0]
        if block.wrap:
            size = max(block.size, MIN_FONT_PX)
            lines = wrap(text, area_w, metrics, size)
            while len(lines) > REASON_MAX_LINES and size * 0.9 >= MIN_FONT_PX:
                size *= 0.9
                lines = wrap(text, area_w, metrics, size)
            if len(lines) > REASON_MAX_LINES:
                rest = " ".join(lines[REASON_MAX_LINES - 1:])
                lines = [*lines[:REASON_MAX_LINES - 1],
                         ellipsize(rest, area_w, metrics, size)]
            if not all(lines):
                return None
            fitted.append((lines, size, block.colour))
        else:
            best: tuple[list[str], float] | None = None
            for i, option in enumerate(block.options):
                if not all(option):
                    continue
                size = min(fit_size(line, area_w, metrics, max(block.size, MIN_FONT_PX))
                           for line in option)
                if best is None:
                    best = (list(option), size)
                # another break must buy a clearly larger size; cutting a word (the third
                # option on) only when the text would be hard to read otherwise
                elif size > best[1] * 1.3 and (i < 2 or best[1] < 1.5 * MIN_FONT_PX):
                    best = (list(option), size)
            if best is None:
                return None
            fitted.append((best[0], best[1], block.colour))
    if "id" in names:  # nothing below the id is drawn larger than the id
        cap = fitted[list(names).index("id")][1]
        fitted = [(lines, min(size, cap) if name in ("meta", "reason") else size, colour)
                  for name, (lines, size, colour) in zip(names, fitted, strict=True)]
    total = _stack_height(fitted, metrics)
    scale = min(1.0, area_h / total) if total > 0 else 1.0
    out = []
    for lines, size, colour in fitted:
        px = int(size * scale)  # shrinking keeps every line inside the width
        if px < MIN_FONT_PX:
            return None
        out.append((lines, px, colour))
    if _stack_height([(ls, float(s), c) for ls, s, c in out], metrics) > area_h:
        return None
    return out


def _stack_height(blocks: Sequence[tuple[list[str], float, str]], metrics: Metrics) -> float:
    rows = [size for lines, size, _ in blocks for _ in lines]
    return sum(metrics.line_height(s) for s in rows) + sum(LINE_GAP * s for s in rows[1:])


def _place(blocks: Sequence[tuple[list[str], int, str]], x: int, top: int, area_w: int,
           area_h: int, metrics: Metrics) -> list[TextLine]:
    total = _stack_height([(ls, float(s), c) for ls, s, c in blocks], metrics)
    y = top + max(0.0, (area_h - total) / 2)
    placed: list[TextLine] = []
    for lines, size, colour in blocks:
        for line in lines:
            if placed:
                y += LINE_GAP * size
            placed.append(TextLine(line, size, x, int(round(y)), area_w, colour))
            y += metrics.line_height(size)
    return placed


# --------------------------------------------------------------------------- short reason


_FFMPEG_NOISE = re.compile(r"\[[\w ./-]+ @ (?:0x)?[0-9a-fA-F]+\]\s*")
_PREFIX = re.compile(r"^(?P<backend>[A-Za-z][\w.-]*): (?:(?P<exc>[A-Z][A-Za-z0-9_]*): )?")
_HTTP = re.compile(r"(?:HTTP(?:\s+error)?|Server returned|status(?: code)?)[\s:]*(\d{3})\b",
                   re.IGNORECASE)
_TIMEOUT = re.compile(r"tim(?:ed|e)\s*-?\s*out\s+after\s+(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds)?\b",
                      re.IGNORECASE)
_NOT_CONFIGURED = re.compile(r"backend\s+['\"]?([\w.-]+)['\"]?\s+is\s+not\s+configured",
                             re.IGNORECASE)
_IMAGE = re.compile(r"\.(?:png|jpe?g|webp)\b|keyframe", re.IGNORECASE)
_DECODE = re.compile(r"invalid data found|could not be decoded|decod|\bdec:|corrupt|invalid png|"
                     r"not a (?:png|jpeg|webp)|error opening input|could not open|"
                     r"could not find codec|unsupported|truncated|received no packets",
                     re.IGNORECASE)
_NETWORK = (
    (re.compile(r"connection refused", re.IGNORECASE), "connection refused"),
    (re.compile(r"failed to resolve|name or service not known|nodename nor servname|"
                r"temporary failure in name resolution|no address associated|host not found",
                re.IGNORECASE), "host not found"),
    (re.compile(r"connection timed out|operation timed out|i/o timeout",
                re.IGNORECASE), "connection timed out"),
    (re.compile(r"connection reset|connection lost|broken pipe|end of file", re.IGNORECASE),
     "connection lost"),
    (re.compile(r"ssl|tls|certificate", re.IGNORECASE), "TLS error"),
)
_SOURCE = re.compile(r"source_clip|source footage|https?://|\.(?:mp4|m3u8|mov|mkv|ts)\b",
                     re.IGNORECASE)


def _seconds(value: str, unit: str | None) -> str:
    s = float(value) / (1000 if (unit or "").lower() == "ms" else 1)
    return f"{s:.0f}" if s >= 10 or s == int(s) else f"{s:.2g}"


def _cap(text: str, limit: int = SHORT_REASON_MAX) -> str:
    text = clean_line(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:.-") + "…"


def _comfy_reason(flat: str, backend: str | None) -> str | None:
    """A ComfyUI server's answer, said as what happened to the shot (its text may mention
    ffmpeg or libx264 from the server's side: never "render failed (ffmpeg error)")."""
    name = backend or "comfyui"
    if m := re.search(r"workflow (\S+) cannot run on \S+?:? (.*)", flat):
        what = "a model file" if "is not on the server" in m.group(2) else "a node"
        return _cap(f"workflow {m.group(1)} needs {what} the server lacks")
    if m := re.search(r"rejected workflow \S+: node (\S+) \(([\w.]+)\)(?: input (\w+))?", flat):
        where = f"node {m.group(1)} {m.group(2)}" + (f" {m.group(3)}" if m.group(3) else "")
        return _cap(f"backend {name} rejected the workflow ({where})")
    if m := re.search(r"ComfyUI at \S+: node (\S+) \(([\w.]+)\) failed", flat):
        return _cap(f"backend {name} failed on the server (node {m.group(1)} {m.group(2)})")
    if m := re.search(r"prompt \S+ on \S+ still running after ([\d.]+) s", flat):
        return _cap(f"backend {name}: no result within {m.group(1)} s")
    if re.search(r"no server can take the shot", flat):
        return _cap(f"backend {name}: no server available")
    if re.search(r"ComfyUI at \S+.*(closed|dropped) the websocket", flat):
        return _cap(f"backend {name} lost its server mid-shot")
    if re.search(r"ComfyUI at \S+ .*wrote no video", flat):
        return _cap(f"backend {name} returned no video")
    return None


def short_reason(full_reason: str) -> str:
    """A one-line, producer-readable reason for the slate; never a raw ffmpeg dump.

    Known failures get a fixed phrase ("render timed out after 600 s", "keyframe could not be
    decoded", "source footage unreachable (HTTP 404)", "backend comfyui_i2v is not
    configured", "disk full", ...); anything else is the first line of the message without
    ffmpeg's ``[x @ 0x..]`` prefixes, capped at ``SHORT_REASON_MAX`` characters.
    """
    text = str(full_reason or "").strip()
    if not text:
        return "no reason given"
    flat = " ".join(text.split())
    m = _PREFIX.match(flat)
    named = re.search(r"\bbackend\s+['\"]?([\w.-]+)", flat)
    backend = m.group("backend") if m else named.group(1) if named else None
    if re.search(r"no space left|ENOSPC|disk full|errno 28\b|quota exceeded", flat, re.I):
        return "disk full"
    if re.search(r"out of memory|cannot allocate memory|MemoryError|ENOMEM|\bOOM\b", flat, re.I):
        return "out of memory"
    if mt := _NOT_CONFIGURED.search(flat):
        return _cap(f"backend {mt.group(1)} is not configured")
    if mt := _TIMEOUT.search(flat):
        return f"render timed out after {_seconds(mt.group(1), mt.group(2))} s"
    if (re.search(r"\bTimeout(?:Expired|Error)?\b|FfmpegTimeout|\btimed out\b", flat)
            and not any(p.search(flat) for p, _ in _NETWORK[:3])):
        return "render timed out"
    source = bool(_SOURCE.search(flat))
    if mh := _HTTP.search(flat):
        code = mh.group(1)
        if source or not backend:
            return f"source footage unreachable (HTTP {code})"
        return _cap(f"backend {backend} failed (HTTP {code})")
    for pattern, phrase in _NETWORK:
        if pattern.search(flat):
            if source or not backend:
                return f"source footage unreachable ({phrase})"
            return _cap(f"backend {backend} unreachable ({phrase})")
    if comfy := _comfy_reason(flat, backend):
        return comfy
    if re.search(r"has no keyframe", flat, re.I):
        return "shot has no keyframe"
    if re.search(r"has no source", flat, re.I):
        return "shot has no source footage"
    if re.search(r"no such file or directory|not found", flat, re.I):
        if _IMAGE.search(flat):
            return "keyframe file missing"
        if source:
            return "source footage missing"
    if _IMAGE.search(flat) and _DECODE.search(flat):
        return "keyframe could not be decoded"
    if source and _DECODE.search(flat):
        return "source footage could not be decoded"
    if re.search(r"permission denied|EACCES", flat, re.I):
        return "permission denied"
    if mf := re.search(r"\bfailed \((?:ffmpeg )?exit (-?\d+)\)", flat):
        return f"render failed (ffmpeg exit {mf.group(1)})"
    if re.search(r"ffmpeg|libx264|\[\w+ @ 0x", flat, re.I):
        return "render failed (ffmpeg error)"
    first = _FFMPEG_NOISE.sub("", text.splitlines()[0])
    m = _PREFIX.match(first)
    if m and m.group("exc"):
        first = f"{m.group('backend')}: {first[m.end():]}"
    return _cap(first) or "no reason given"


# --------------------------------------------------------------------------- the slate


def slate_lines(width: int, height: int, *, shot_id: str, shot_type: str, duration_ms: int,
                reason: str, font: str | None) -> list[TextLine]:
    """The text of a slate as it will be drawn (empty without a font)."""
    if not font:
        return []
    return layout(width, height, shot_id=shot_id, shot_type=shot_type,
                  duration_ms=duration_ms, reason=short_reason(reason),
                  metrics=font_metrics(font))


def _slate(
    out: Path, *, shot_id: str, shot_type: str, duration_ms: int, reason: str,
    delivery: Delivery, thumbnail: Path | None, text_file_dir: Path | None, font: str | None,
    encoder: str,
) -> tuple[list[str], int]:
    frames = delivery.frames_for(duration_ms)
    video = ffmpeg.input(
        f"color=c={BACKGROUND}:s={delivery.width}x{delivery.height}:r={delivery.rate}",
        f="lavfi", t=f"{duration_ms / 1000 + 1:.3f}",
    )
    bar = bar_height(delivery.height)
    video = video.filter("drawbox", x=0, y=0, w="iw", h=bar, color=BAR_COLOUR, t="fill")
    video = video.filter("drawbox", x=0, y=f"ih-{bar}", w="iw", h=bar, color=BAR_COLOUR,
                         t="fill")
    fontfile = find_font() if font == "auto" else font
    lines: list[TextLine] = []
    if fontfile and text_file_dir is not None:
        lines = slate_lines(delivery.width, delivery.height, shot_id=shot_id,
                            shot_type=shot_type, duration_ms=duration_ms, reason=reason,
                            font=fontfile)
        for i, line in enumerate(lines):
            text_file = Path(text_file_dir) / f"slate_line_{i}.txt"
            text_file.write_text(line.text, encoding="utf-8")
            video = video.filter(
                "drawtext", fontfile=fontfile, textfile=str(text_file), expansion="none",
                fontcolor=line.colour, fontsize=line.size,
                x=f"{line.x}+({line.width}-text_w)/2", y=line.y, fix_bounds=1,
            )
    args = encode_args(conform(video, delivery, frames), out, delivery, frames, thumbnail,
                   encoder)
    return args, len(lines)


def slate_args(
    out: Path, *, shot_id: str, shot_type: str, duration_ms: int, reason: str,
    delivery: Delivery, thumbnail: Path | None = None, text_file_dir: Path | None = None,
    font: str | None = "auto", encoder: str = SOFTWARE_ENCODER,
) -> list[str]:
    """The ffmpeg arguments of a slate (see :func:`render_slate`).

    ``reason`` is the full reason; the slate shows :func:`short_reason` of it. Each text line
    is written to a file in ``text_file_dir`` (which must exist while ffmpeg runs). Without
    ``text_file_dir`` or without a font (``font=None``, or ``"auto"`` and
    :func:`~anime_pipeline.media.synth.find_font` finds none) the slate has no text.
    """
    return _slate(out, shot_id=shot_id, shot_type=shot_type, duration_ms=duration_ms,
                  reason=reason, delivery=delivery, thumbnail=thumbnail,
                  text_file_dir=text_file_dir, font=font, encoder=encoder)[0]


def _is_timeout(error: BaseException) -> bool:
    timeout_type = getattr(ff, "FfmpegTimeout", None)
    if isinstance(timeout_type, type) and isinstance(error, timeout_type):
        return True
    return "timed out" in str(error).lower()


def render_slate(
    out: Path, *, shot_id: str, shot_type: str, duration_ms: int, reason: str,
    delivery: Delivery, thumbnail: Path | None = None, timeout: float,
    work_dir: Path | None = None, font: str | None = "auto", encoder: str = SOFTWARE_ENCODER,
) -> bool:
    """Render the slate to ``out`` (and ``thumbnail``); True when it carries text.

    A slate never fails on its text: when the run with text fails, the slate is rendered
    again without text. A timeout (``timeout`` seconds for the whole slate) and failures of
    the slate without text (encoder, disk) raise :class:`~anime_pipeline.media.ffmpeg.
    FfmpegError`.
    """
    deadline = time.monotonic() + timeout
    build = functools.partial(_slate, out, shot_id=shot_id, shot_type=shot_type,
                              duration_ms=duration_ms, reason=reason, delivery=delivery,
                              thumbnail=thumbnail, font=font, encoder=encoder)
    with tempfile.TemporaryDirectory(prefix="slate-", dir=work_dir) as tmp:
        args, n_lines = build(text_file_dir=Path(tmp))
        try:
            ff.run(args, timeout=timeout)
            return n_lines > 0
        except ff.FfmpegError as e:
            if n_lines == 0 or _is_timeout(e):
                raise
            log.warning("slate for shot %s: drawing the text failed, rendering it without "
                        "text: %s", shot_id, e)
    out.unlink(missing_ok=True)
    args, _ = build(text_file_dir=None)
    ff.run(args, timeout=max(1.0, deadline - time.monotonic()))
    return False
