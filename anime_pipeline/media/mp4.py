"""What an MP4's header says, read in Python: tracks, codec configuration, sample counts.

imageio-ffmpeg ships no ffprobe, and ffmpeg's header dump omits what deciding a stream copy
needs (the codec configuration record itself, the exact sample count, each track's
presented length), so the ISO base media boxes are read directly: ``moov`` and what it
holds, never the media data. Reading a 3 s clip's header takes well under a millisecond.

:func:`read_movie` also walks the top-level boxes to the end of the file: a file cut short
(a box that claims more bytes than are left) is refused, so a truncated clip is never taken
for a whole one because its header, written first (``+faststart``), survived.

Nothing here runs ffmpeg and nothing is decoded: what a header claims is checked against
what decoding found elsewhere (clips are decode-verified when rendered).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

#: Sample entries whose child boxes start after a VisualSampleEntry's fixed fields.
VISUAL_ENTRIES = {b"avc1", b"avc3", b"hvc1", b"hev1", b"mp4v", b"av01", b"vp09"}
#: The codec configuration boxes of those entries.
CONFIG_BOXES = {b"avcC", b"hvcC", b"esds", b"av1C", b"vpcC"}
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
MAX_HEADER_BYTES = 256 << 20  # a moov bigger than this is not one of ours


class Mp4Error(ValueError):
    """Not an MP4 this module can read, or one cut short."""


@dataclass(frozen=True)
class Track:
    """One track as its header describes it."""

    kind: str  # the handler: "video", "audio", "subtitle" or the raw handler type
    codec: str  # the sample entry's four-character code (avc1, mp4a, tx3g...)
    timescale: int  # of the media (mdhd)
    samples: int  # stsz: one per video frame, AAC packet, subtitle sample
    media_duration: int  # sum of the stts deltas, in ``timescale``
    sample_delta: int | None  # the one delta every sample has, None when they vary
    delta_range: tuple[int, int]  # the shortest and longest sample delta
    presented_s: float  # how long the track plays: its edit list, else its media duration
    media_start: int = 0  # the first edit's media time (AAC priming: 1024), in ``timescale``
    width: int | None = None
    height: int | None = None
    sar: tuple[int, int] | None = None  # pasp, when written
    config: bytes = field(default=b"", repr=False)  # avcC/hvcC/... payload, byte for byte

    @property
    def fps(self) -> float | None:
        """The mean sample rate (frames per second for video)."""
        return self.samples * self.timescale / self.media_duration if self.media_duration \
            else None


@dataclass(frozen=True)
class Movie:
    path: str
    size: int
    timescale: int
    duration_s: float  # mvhd
    tracks: list[Track]

    def first(self, kind: str) -> Track | None:
        return next((t for t in self.tracks if t.kind == kind), None)

    def of_kind(self, kind: str) -> list[Track]:
        return [t for t in self.tracks if t.kind == kind]


_HANDLERS = {b"vide": "video", b"soun": "audio", b"sbtl": "subtitle", b"text": "subtitle",
             b"subt": "subtitle"}


def _boxes(data: bytes, start: int = 0, end: int | None = None):  # type: ignore[no-untyped-def]
    """``(type, payload_start, payload_end)`` of each box in ``data[start:end]``."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise Mp4Error("a box header is cut short")
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Mp4Error(f"box {kind!r} claims {size} bytes, {end - pos} are left")
        yield kind, pos + header, pos + size
        pos += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, s, e in _boxes(data, start, end):
        if k == kind:
            return s, e
    return None


def _top_level(f: BinaryIO, size: int) -> tuple[bytes, int]:
    """The ``moov`` payload (and where it starts); every top-level box must fit the file."""
    pos = 0
    moov: tuple[bytes, int] | None = None
    while pos < size:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            raise Mp4Error(f"{size - pos} stray byte(s) at the end of the file")
        box_size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if box_size == 1:
            if len(head) < 16:
                raise Mp4Error("a box header is cut short")
            box_size = struct.unpack_from(">Q", head, 8)[0]
            header = 16
        elif box_size == 0:
            box_size = size - pos
        if pos == 0 and kind != b"ftyp":
            raise Mp4Error(f"not an MP4 (first box {kind!r})")
        if box_size < header:
            raise Mp4Error(f"box {kind!r} has an impossible size {box_size}")
        if pos + box_size > size:
            raise Mp4Error(f"the file is cut short: box {kind.decode('latin-1')!r} needs "
                           f"{box_size} bytes, {size - pos} are left")
        if kind == b"moov":
            if box_size > MAX_HEADER_BYTES:
                raise Mp4Error(f"moov of {box_size} bytes")
            f.seek(pos)
            moov = (f.read(box_size), header)
        pos += box_size
    if moov is None:
        raise Mp4Error("no moov box")
    return moov


def _full(data: bytes, start: int) -> tuple[int, int]:
    """A full box's (version, start of its fields)."""
    return data[start], start + 4


def _track(data: bytes, start: int, end: int, movie_timescale: int) -> Track | None:
    mdia = _child(data, start, end, b"mdia")
    if mdia is None:
        return None
    mdhd = _child(data, *mdia, b"mdhd")
    hdlr = _child(data, *mdia, b"hdlr")
    minf = _child(data, *mdia, b"minf")
    if mdhd is None or hdlr is None or minf is None:
        raise Mp4Error("a track without mdhd, hdlr or minf")
    version, p = _full(data, mdhd[0])
    timescale = struct.unpack_from(">I", data, p + (16 if version == 1 else 8))[0]
    if not timescale:
        raise Mp4Error("a track with timescale 0")
    handler = data[hdlr[0] + 8:hdlr[0] + 12]
    stbl = _child(data, *minf, b"stbl")
    if stbl is None:
        raise Mp4Error("a track without stbl")
    codec, width, height, sar, config = "", None, None, None, b""
    stsd = _child(data, *stbl, b"stsd")
    if stsd is not None:
        entries = list(_boxes(data, stsd[0] + 8, stsd[1]))
        if entries:
            kind, s, e = entries[0]
            codec = kind.decode("latin-1")
            if kind in VISUAL_ENTRIES and e - s >= 78:
                width, height = struct.unpack_from(">HH", data, s + 24)
                for child, cs, ce in _boxes(data, s + 78, e):
                    if child in CONFIG_BOXES:
                        config = bytes(data[cs:ce])
                    elif child == b"pasp" and ce - cs >= 8:
                        h_spacing, v_spacing = struct.unpack_from(">II", data, cs)
                        sar = (h_spacing, v_spacing)
    deltas: set[int] = set()
    media_duration = 0
    stts = _child(data, *stbl, b"stts")
    if stts is not None:
        (count,) = struct.unpack_from(">I", data, stts[0] + 4)
        for i in range(count):
            n, delta = struct.unpack_from(">II", data, stts[0] + 8 + 8 * i)
            media_duration += n * delta
            if n:
                deltas.add(delta)
    samples = 0
    stsz = _child(data, *stbl, b"stsz")
    stz2 = _child(data, *stbl, b"stz2")
    if stsz is not None:
        samples = struct.unpack_from(">I", data, stsz[0] + 8)[0]
    elif stz2 is not None:
        samples = struct.unpack_from(">I", data, stz2[0] + 8)[0]
    presented = media_duration / timescale
    media_start = 0
    edts = _child(data, start, end, b"edts")
    elst = _child(data, *edts, b"elst") if edts is not None else None
    if elst is not None:
        version, p = _full(data, elst[0])
        (count,) = struct.unpack_from(">I", data, p)
        total = 0
        first_media: int | None = None
        for i in range(count):
            if version == 1:
                seg, media_time = struct.unpack_from(">Qq", data, p + 4 + 20 * i)
            else:
                seg, media_time = struct.unpack_from(">Ii", data, p + 4 + 12 * i)
            if media_time >= 0 and first_media is None:
                first_media = media_time
            if seg == 0 and media_time >= 0:  # "the rest of the media" (fragmented files)
                seg = round((media_duration - media_time) * movie_timescale / timescale)
            total += seg
        presented = total / movie_timescale if movie_timescale else presented
        media_start = first_media or 0
    return Track(
        kind=_HANDLERS.get(handler, handler.decode("latin-1")), codec=codec,
        timescale=timescale, samples=samples, media_duration=media_duration,
        sample_delta=next(iter(deltas)) if len(deltas) == 1 else None,
        delta_range=(min(deltas), max(deltas)) if deltas else (0, 0), presented_s=presented,
        media_start=media_start, width=width, height=height, sar=sar, config=config,
    )


def read_movie(path: str | Path) -> Movie:
    """The header of the MP4 at ``path``; raises :class:`Mp4Error` (or ``OSError``)."""
    p = Path(path)
    size = p.stat().st_size
    with p.open("rb") as f:
        moov, header = _top_level(f, size)
    try:
        mvhd = _child(moov, header, len(moov), b"mvhd")
        if mvhd is None:
            raise Mp4Error("no mvhd box")
        version, q = _full(moov, mvhd[0])
        if version == 1:
            timescale, duration = struct.unpack_from(">IQ", moov, q + 16)
        else:
            timescale, duration = struct.unpack_from(">II", moov, q + 8)
        tracks = []
        for kind, s, e in _boxes(moov, header, len(moov)):
            if kind == b"trak":
                track = _track(moov, s, e, timescale)
                if track is not None:
                    tracks.append(track)
    except struct.error as e:
        raise Mp4Error(f"a header box is cut short ({e})") from None
    return Movie(path=str(p), size=size, timescale=timescale,
                 duration_s=duration / timescale if timescale else 0.0, tracks=tracks)
