"""The episode's contact sheet: one labelled tile per shot, in episode order.

Built from per-shot images (the clip thumbnails the clip render writes: small JPEGs,
``THUMB_WIDTH`` px wide), never from the composite, so no shot is missed or doubled and
nothing long is decoded. Two ffmpeg runs whatever the number of shots, none with more than
one input:

1. the thumbnails, linked into one ``image2`` sequence in episode order, are scaled into the
   tile (aspect kept, letterboxed) and written as raw frames (``-xerror``: a thumbnail that
   cannot be decoded fails the run instead of being skipped, and the frame count is checked);
   when that fails the range is bisected until the broken thumbnails are found, and each gets
   a blank tile, so positions never shift;
2. the raw tiles go through the ``tile`` filter; the shot ids are drawn under the tiles by
   libass from one generated ASS script (``\\pos`` + ``\\clip`` to the tile, the id escaped
   as dialogue is, see :func:`anime_pipeline.domain.subtitles.ass_text`), so any id text is
   safe and never reaches the filter graph.

Big episodes get smaller tiles so that no side of the sheet exceeds ``max_side`` pixels
(:func:`sheet_layout`). No font on the machine, or labels that fail to draw: tiles without
labels.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ffmpeg  # ffmpeg-python
import pysubs2

from anime_pipeline.domain.subtitles import ass_text
from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media.render import THUMB_WIDTH
from anime_pipeline.media.slate import FontMetrics, clean_line, ellipsize, font_metrics
from anime_pipeline.media.synth import find_font

log = logging.getLogger(__name__)

SHEET_COLOUR = "0x101018"  # margins and gaps between tiles
TILE_COLOUR = "0x20202c"  # letterbox and label strip
MISSING_COLOUR = "0x505060"  # the picture of a tile whose thumbnail is missing or broken
MAX_SIDE = 8192  # px, each side of the sheet (JPEG and previews stay practical)
MIN_TILE_WIDTH = 16
MAX_TILES = 10_000


@dataclass(frozen=True)
class SheetLayout:
    """Where each tile goes. Tile ``i`` is at column ``i % columns``, row ``i // columns``."""

    count: int
    columns: int
    rows: int
    tile_width: int
    image_height: int  # the thumbnail area of a tile
    label_height: int  # the label strip under it (0: no labels)
    label_size: int  # drawtext fontsize of the labels
    padding: int  # between tiles
    margin: int  # around the sheet

    @property
    def tile_height(self) -> int:
        return self.image_height + self.label_height

    @property
    def width(self) -> int:
        return 2 * self.margin + self.columns * self.tile_width + (self.columns - 1) * self.padding

    @property
    def height(self) -> int:
        return 2 * self.margin + self.rows * self.tile_height + (self.rows - 1) * self.padding

    def tile_origin(self, i: int) -> tuple[int, int]:
        """Top-left pixel of tile ``i`` on the sheet."""
        col, row = i % self.columns, i // self.columns
        return (self.margin + col * (self.tile_width + self.padding),
                self.margin + row * (self.tile_height + self.padding))

    def image_box(self, i: int) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` of tile ``i``'s thumbnail area on the sheet."""
        x, y = self.tile_origin(i)
        return x, y, self.tile_width, self.image_height

    def label_box(self, i: int) -> tuple[int, int, int, int]:
        x, y = self.tile_origin(i)
        return x, y + self.image_height, self.tile_width, self.label_height


def _even(v: float) -> int:
    return max(2, int(v) // 2 * 2)


def _label_size(tile_width: int) -> int:
    return max(8, min(20, round(tile_width * 0.065)))


def _for_width(count: int, columns: int, tile_width: int, aspect: float,
               labels: bool) -> SheetLayout:
    tile_width = _even(tile_width)
    image_h = max(2, round(tile_width / aspect / 2) * 2)  # nearest even: keep the aspect
    size = _label_size(tile_width)
    label_h = _even(math.ceil(size * 1.6) + 1) if labels else 0
    padding = _even(tile_width / 48)  # even sizes everywhere: 4:2:0 chroma
    return SheetLayout(count=count, columns=columns, rows=math.ceil(count / columns),
                       tile_width=tile_width, image_height=image_h,
                       label_height=label_h, label_size=size, padding=padding,
                       margin=padding * 2)


def sheet_layout(count: int, *, columns: int | None = None, image_size: tuple[int, int] = (
        THUMB_WIDTH, 180), max_side: int = MAX_SIDE, labels: bool = True) -> SheetLayout:
    """The layout of a sheet of ``count`` tiles of ``image_size`` thumbnails.

    Without ``columns`` (or when they cannot fit), about as many columns as make a 16:9 sheet.
    Tiles are as wide as the thumbnails (never upscaled) or narrower, so that both sides stay
    within ``max_side``.
    """
    if not 1 <= count <= MAX_TILES:
        raise ValueError(f"a contact sheet has 1 to {MAX_TILES} tiles, not {count}")
    src_w, src_h = image_size
    aspect = src_w / src_h if src_w > 0 and src_h > 0 else 16 / 9
    aspect = min(8.0, max(1 / 8, aspect))
    start = max(MIN_TILE_WIDTH, min(THUMB_WIDTH, src_w if src_w > 0 else THUMB_WIDTH))
    probe = _for_width(count, 1, start, aspect, labels)
    auto = round(math.sqrt(count * (16 / 9) * probe.tile_height / probe.tile_width))
    # the columns asked for, else (they cannot fit) about a 16:9 sheet
    for cols in dict.fromkeys([columns, auto] if columns else [auto]):
        cols = max(1, min(count, int(cols or 1)))
        width = start
        layout = _for_width(count, cols, width, aspect, labels)
        while (layout.width > max_side or layout.height > max_side) and width > MIN_TILE_WIDTH:
            shrink = min(max_side / layout.width, max_side / layout.height, 0.98)
            width = max(MIN_TILE_WIDTH, int(width * shrink))
            layout = _for_width(count, cols, width, aspect, labels)
        if layout.width <= max_side and layout.height <= max_side:
            return layout
    raise ValueError(f"{count} tiles do not fit a {max_side} px sheet")


# --------------------------------------------------------------------------- images


def _image_kind(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "mjpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack_from(">H", data, i + 2)[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF):
            h, w = struct.unpack_from(">HH", data, i + 5)
            return (w, h) if w and h else None
        i += 2 + length
    return None


def image_info(path: Path) -> tuple[str, tuple[int, int] | None] | None:
    """``(decoder, (width, height))`` of a JPEG/PNG/WebP from its header, or None."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(1024 * 1024)
    except OSError:
        return None
    kind = _image_kind(head)
    if kind == "png" and len(head) >= 24:
        w, h = struct.unpack_from(">II", head, 16)
        return kind, (w, h)
    if kind == "mjpeg":
        return kind, _jpeg_size(head)
    return (kind, None) if kind else None




# --------------------------------------------------------------------------- rendering


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise ff.FfmpegTimeout(f"contact sheet timed out after {self.seconds} s")
        return left


def _args(stream: ffmpeg.nodes.OutputStream) -> list[str]:
    return list(ffmpeg.get_args(stream))


def _fit_chain(stream: ffmpeg.nodes.FilterableStream,
               layout: SheetLayout) -> ffmpeg.nodes.FilterableStream:
    """Any picture -> a tile: scaled into the image area, letterboxed, label strip below."""
    return (
        # out_range: JPEGs are full range, the raw tiles are read back as limited range
        stream.filter("scale", layout.tile_width, layout.image_height,
                      force_original_aspect_ratio="decrease", flags="bicubic", out_range="tv")
        .filter("pad", layout.tile_width, layout.tile_height, "(ow-iw)/2",
                f"({layout.image_height}-ih)/2", color=TILE_COLOUR)
        .filter("setsar", "1")
        .filter("format", "yuv420p")
    )


def _frame_bytes(layout: SheetLayout) -> int:
    w, h = layout.tile_width, layout.tile_height
    return w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)


def _link(source: Path, link: Path) -> None:
    try:
        os.symlink(source, link)
    except OSError:
        shutil.copyfile(source, link)


def _sequence_pattern(directory: Path) -> str:
    # in an image2 pattern '%' is special: a literal one is written '%%'
    return str(directory).replace("%", "%%") + "/%05d.jpg"


def _image_tiles(sources: Sequence[Path], tmp: Path, part: Path, layout: SheetLayout,
                 deadline: _Deadline) -> bool:
    """``sources`` as raw tile frames in ``part``; False when one of them cannot be decoded
    (nothing is ever silently skipped: ``-xerror`` and the size of ``part`` are checked)."""
    seq_dir = Path(tempfile.mkdtemp(prefix="seq-", dir=tmp))  # exactly these, numbered from 0
    try:
        for i, source in enumerate(sources):
            _link(source, seq_dir / f"{i:05d}.jpg")
        src = ffmpeg.input(_sequence_pattern(seq_dir), f="image2", pattern_type="sequence",
                           start_number=0, framerate=25)
        out = ffmpeg.output(_fit_chain(src.video, layout), str(part), f="rawvideo",
                            pix_fmt="yuv420p", vframes=len(sources)).global_args("-xerror")
        try:
            ff.run(_args(out), timeout=deadline.left())
        except ff.FfmpegTimeout:
            raise
        except ff.FfmpegError as e:
            log.info("contact sheet: %d thumbnails: %s", len(sources), e)
            return False
    finally:
        shutil.rmtree(seq_dir, ignore_errors=True)
    return part.is_file() and part.stat().st_size == len(sources) * _frame_bytes(layout)


def _blank_jpeg(tmp: Path, deadline: _Deadline) -> Path:
    """A blank picture for a missing thumbnail (scaled into its tile like any other)."""
    path = tmp / "blank.jpg"
    if not path.is_file():
        blank = ffmpeg.input(f"color=c={MISSING_COLOUR}:s=32x18:r=25", f="lavfi").video
        ff.run(_args(ffmpeg.output(blank, str(path), vframes=1, f="image2", c="mjpeg",
                                   update=1)), timeout=deadline.left())
    return path


def _to_jpeg(source: Path, decoder: str, out: Path, deadline: _Deadline) -> bool:
    """A PNG/WebP thumbnail as a JPEG, for the JPEG sequence; False when it is unreadable."""
    # pattern_type none: the path is a file name, never an image2 pattern ("%d" in a path)
    src = ffmpeg.input(str(source.absolute()), f="image2", pattern_type="none", vcodec=decoder)
    try:
        ff.run(_args(ffmpeg.output(src.video, str(out), vframes=1, f="image2", c="mjpeg",
                                   update=1, **{"q:v": 2})), timeout=deadline.left())
    except ff.FfmpegTimeout:
        raise
    except ff.FfmpegError as e:
        log.info("contact sheet: %s: %s", source, e)
        return False
    return out.is_file()


def _raw_tiles(sources: Sequence[Path], tmp: Path, layout: SheetLayout,
               deadline: _Deadline) -> tuple[Path, list[int]]:
    """All tiles as raw frames, in order; and the indices that got a blank tile."""
    raw = tmp / "tiles.yuv"
    blanks: list[int] = []
    blank: bytes | None = None
    part = tmp / "part.yuv"
    with raw.open("wb") as sink:
        pending = [(0, len(sources))]
        while pending:
            start, stop = pending.pop(0)
            if _image_tiles(sources[start:stop], tmp, part, layout, deadline):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, sink)
            elif stop - start == 1:
                if blank is None:
                    if not _image_tiles([_blank_jpeg(tmp, deadline)], tmp, part, layout,
                                        deadline):
                        raise ff.FfmpegError("contact sheet: cannot render a blank tile")
                    blank = part.read_bytes()
                sink.write(blank)
                blanks.append(start)
            else:  # bisect down to the thumbnails that cannot be decoded
                mid = (start + stop) // 2
                pending[:0] = [(start, mid), (mid, stop)]
            part.unlink(missing_ok=True)
    return raw, blanks


def _label_script(labels: Sequence[str], layout: SheetLayout, metrics: FontMetrics) -> str:
    """One ASS event per label, centred in its strip and clipped to it."""
    subs = pysubs2.SSAFile()
    subs.info.update({"PlayResX": str(layout.width), "PlayResY": str(layout.height),
                      "WrapStyle": "2", "ScaledBorderAndShadow": "yes"})
    # libass sizes a font by its ascender + descender, drawtext (and FontMetrics) by its em
    em_per_size = metrics.units_per_em / (metrics.ascender - metrics.descender)
    subs.styles = {"Label": pysubs2.SSAStyle(
        fontname=metrics.family.replace(",", " ") or "Sans",
        fontsize=round(layout.label_size / em_per_size, 1),
        primarycolor=pysubs2.Color(255, 255, 255, 0), outlinecolor=pysubs2.Color(0, 0, 0, 0),
        backcolor=pysubs2.Color(0, 0, 0, 0), bold="Bold" in metrics.subfamily,
        italic=False, borderstyle=1, outline=0, shadow=0,
        alignment=pysubs2.Alignment.MIDDLE_CENTER, marginl=0, marginr=0, marginv=0,
    )}
    room = layout.tile_width - 2 * layout.padding
    for i, label in enumerate(labels):
        text = ellipsize(label, room, metrics, layout.label_size)
        if not text:
            continue
        x, y, w, h = layout.label_box(i)
        tags = rf"{{\pos({x + w // 2},{y + h // 2})\clip({x},{y},{x + w},{y + h})}}"
        subs.append(pysubs2.SSAEvent(start=0, end=3_600_000, style="Label",
                                     text=tags + ass_text(text)))
    return subs.to_string("ass", header_notice="")


def _sheet(raw: Path, out: Path, layout: SheetLayout, labels: Path | None, fontsdir: Path | None,
           deadline: _Deadline) -> None:
    stream = ffmpeg.input(str(raw), f="rawvideo", pix_fmt="yuv420p", framerate=25,
                          s=f"{layout.tile_width}x{layout.tile_height}").video.filter(
        "tile", f"{layout.columns}x{layout.rows}", nb_frames=layout.count,
        margin=layout.margin, padding=layout.padding, color=SHEET_COLOUR)
    if labels is not None:
        options = {"filename": str(labels)}
        if fontsdir is not None:
            options["fontsdir"] = str(fontsdir)
        stream = stream.filter("ass", **options)
    # update=1: ``out`` is that one file, never an image2 pattern
    ff.run(_args(ffmpeg.output(stream, str(out), vframes=1, f="image2", c="mjpeg", update=1,
                               **{"q:v": 4})), timeout=deadline.left())


def contact_sheet(tiles: Sequence[tuple[str, Path]], out: Path, *, work_dir: Path,
                  columns: int | None = None, timeout: float, max_side: int = MAX_SIDE,
                  font: str | None = "auto") -> Path:
    """Write a JPEG contact sheet of ``tiles`` (``(shot_id, thumbnail)`` in episode order).

    ``timeout`` (seconds) bounds the whole sheet. Returns ``out``. Intermediate files go to a
    temporary folder inside ``work_dir``, removed afterwards. A missing or undecodable
    thumbnail only blanks its own tile (logged). Raises
    :class:`~anime_pipeline.media.ffmpeg.FfmpegError` (``FfmpegTimeout`` past ``timeout``)
    when the sheet itself cannot be made, :class:`ValueError` for 0 or too many tiles.
    """
    deadline = _Deadline(timeout)
    fontfile = find_font() if font == "auto" else font
    metrics = font_metrics(fontfile) if fontfile else None
    labelled = isinstance(metrics, FontMetrics)
    infos = [image_info(Path(path)) for _, path in tiles]
    size = next((info[1] for info in infos if info and info[1]), None)
    layout = sheet_layout(len(infos), columns=columns, max_side=max_side,
                          image_size=size or (THUMB_WIDTH, 180), labels=labelled)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="contact-sheet-", dir=work_dir))
    try:
        sources: list[Path] = []
        for (shot_id, path), info in zip(tiles, infos, strict=True):
            converted = tmp / f"converted_{len(sources):05d}.jpg"
            if info is not None and info[0] == "mjpeg" and info[1] is not None:
                sources.append(Path(path).absolute())
            elif info is not None and info[0] != "mjpeg" and _to_jpeg(Path(path), info[0],
                                                                     converted, deadline):
                sources.append(converted)  # a PNG or WebP thumbnail
            else:
                log.warning("contact sheet: no thumbnail for %s (%s); blank tile", shot_id, path)
                sources.append(_blank_jpeg(tmp, deadline))
        raw, blanks = _raw_tiles(sources, tmp, layout, deadline)
        for i in blanks:
            log.warning("contact sheet: blank tile for %s (%s)", tiles[i][0], tiles[i][1])
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        script = None
        if labelled and isinstance(metrics, FontMetrics):
            script = tmp / "labels.ass"
            script.write_text(_label_script([clean_line(str(t[0])) for t in tiles], layout,
                                            metrics), encoding="utf-8")
        try:
            _sheet(raw, Path(out), layout, script,
                   Path(fontfile).parent if fontfile else None, deadline)
        except ff.FfmpegTimeout:
            raise
        except ff.FfmpegError as e:
            if script is None:
                raise
            log.warning("contact sheet: drawing the labels failed, sheet without them: %s", e)
            _sheet(raw, Path(out), layout, None, None, deadline)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Path(out)
