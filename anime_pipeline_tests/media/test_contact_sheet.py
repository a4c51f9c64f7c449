"""The contact sheet with real ffmpeg: one tile per shot, in order, exactly once, from the
thumbnails; labels safe for any text; broken thumbnails keep their place; 2,000 tiles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media.contact_sheet import (
    MAX_SIDE,
    MISSING_COLOUR,
    SHEET_COLOUR,
    contact_sheet,
    image_info,
    sheet_layout,
)
from anime_pipeline.media.synth import find_font

FONT = find_font()
PALETTE = ["ff0000", "00ff00", "0000ff", "ffff00", "ff00ff", "00ffff",
           "ff8000", "8000ff", "008000", "800000", "000080", "ffffff"]


def _rgb(hex_colour: str) -> np.ndarray:
    v = int(hex_colour.removeprefix("0x"), 16)
    return np.array([(v >> 16) & 255, (v >> 8) & 255, v & 255])


def _thumb(path: Path, colour: str, size: str = "320x180") -> Path:
    """A thumbnail as the clip render writes it: a small JPEG from a yuv420p picture."""
    ff.run(["-f", "lavfi", "-i", f"color=c=0x{colour}:s={size}", "-frames:v", "1",
            "-pix_fmt", "yuv420p", "-q:v", "5", "-update", "1", str(path)], timeout=30)
    return path


def _decode(path: Path) -> np.ndarray:
    v = ff.probe(path).first("video")
    assert v is not None and v.width and v.height
    raw = ff.run_stdout(["-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                        timeout=120)
    return np.frombuffer(raw, np.uint8).reshape(v.height, v.width, 3).astype(int)


def _centre(sheet: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box  # the middle quarter: inside the picture even when it is letterboxed
    return sheet[y + 3 * h // 8: y + 5 * h // 8 + 1,
                 x + 3 * w // 8: x + 5 * w // 8 + 1].reshape(-1, 3).mean(0)


def _nearest(colour: np.ndarray, palette: list[str]) -> int:
    return int(np.argmin([np.abs(colour - _rgb(c)).sum() for c in palette]))


@pytest.fixture(scope="module")
def twelve(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, Path]]:
    d = tmp_path_factory.mktemp("thumbs")
    return [(f"S{i + 1:02d}", _thumb(d / f"S{i + 1:02d}.jpg", c)) for i, c in enumerate(PALETTE)]


@pytest.mark.parametrize("columns", [None, 5, 1, 12])
def test_each_shot_once_in_order(tmp_path: Path, twelve: list[tuple[str, Path]],
                                 columns: int | None) -> None:
    out = contact_sheet(twelve, tmp_path / "sheet.jpg", work_dir=tmp_path / "work",
                        columns=columns, timeout=60)
    layout = sheet_layout(12, columns=columns, labels=FONT is not None)
    sheet = _decode(out)
    assert sheet.shape[:2] == (layout.height, layout.width)
    found = [_nearest(_centre(sheet, layout.image_box(i)), PALETTE) for i in range(12)]
    assert found == list(range(12))  # tile i holds shot i: in order, each exactly once
    for i in range(12):
        assert np.abs(_centre(sheet, layout.image_box(i)) - _rgb(PALETTE[i])).max() < 24
    # cells past the last shot are empty sheet
    for i in range(12, layout.columns * layout.rows):
        assert np.abs(_centre(sheet, layout.image_box(i)) - _rgb(SHEET_COLOUR)).max() < 12
    assert list((tmp_path / "work").iterdir()) == []  # intermediate files are removed


@pytest.mark.skipif(FONT is None, reason="no font: tiles carry no labels")
def test_every_tile_is_labelled_inside_its_strip(tmp_path: Path,
                                                 twelve: list[tuple[str, Path]]) -> None:
    hostile = ["S01", "S02_%{bogus}", r"{\p1}m 0 0 l 9999 0 9999 9999 0 9999{\p0}",
               "a\\Nb\nc 'q' \"dq\" : ; , = [x]", "聞こえた", "W" * 64, "", " ", "{\\an8}top",
               "%s%n%d%%", "<b>b</b>", "S12"]
    tiles = [(label, path) for label, (_, path) in zip(hostile, twelve, strict=True)]
    out = contact_sheet(tiles, tmp_path / "sheet.jpg", work_dir=tmp_path, timeout=60)
    layout = sheet_layout(12, labels=True)
    sheet = _decode(out)
    bright = sheet.min(axis=-1) > 170
    ink = np.zeros_like(bright)
    for i in range(12):
        x, y, w, h = layout.label_box(i)
        strip = bright[y:y + h, x:x + w]
        ink[y:y + h, x:x + w] = strip
        if hostile[i].strip():
            assert strip.any(), f"label {i} ({hostile[i]!r}) is not drawn"
            assert strip.mean() < 0.5, f"label {i} ({hostile[i]!r}) is a filled shape"
        else:
            assert not strip.any()
        # the picture keeps its colour: no drawing or \an8 label over it
        assert _nearest(_centre(sheet, layout.image_box(i)), PALETTE) == i
    # white text only in label strips and in the white tile's picture
    white = layout.image_box(11)
    bright[white[1]:white[1] + white[3], white[0]:white[0] + white[2]] = False
    assert not (bright & ~ink).any(), "a label leaks out of its strip"


def test_broken_thumbnails_keep_every_position(tmp_path: Path,
                                               twelve: list[tuple[str, Path]]) -> None:
    tiles = list(twelve)
    ok = twelve[0][1].read_bytes()
    dht = ok.index(b"\xff\xc4")
    undecodable = tmp_path / "S03.jpg"  # a valid header, Huffman tables destroyed
    undecodable.write_bytes(ok[:dht + 4] + b"\xff" * 60 + ok[dht + 64:])
    assert image_info(undecodable) == ("mjpeg", (320, 180))
    garbage = tmp_path / "S05.jpg"
    garbage.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    png = tmp_path / "S07.png"
    ff.run(["-f", "lavfi", "-i", f"color=c=0x{PALETTE[6]}:s=200x300", "-frames:v", "1",
            "-update", "1", str(png)], timeout=30)
    tall = _thumb(tmp_path / "S08.jpg", PALETTE[7], "180x320")  # another aspect ratio
    tiles[2] = ("S03", undecodable)
    tiles[3] = ("S04", tmp_path / "missing.jpg")
    tiles[4] = ("S05", garbage)
    tiles[6] = ("S07", png)
    tiles[7] = ("S08", tall)
    out = contact_sheet(tiles, tmp_path / "sheet.jpg", work_dir=tmp_path / "w", timeout=60)
    layout = sheet_layout(12, labels=FONT is not None)
    sheet = _decode(out)
    missing = _rgb(MISSING_COLOUR)
    for i in range(12):
        centre = _centre(sheet, layout.image_box(i))
        if i in (2, 3, 4):
            assert np.abs(centre - missing).max() < 12, i
        else:
            assert np.abs(centre - _rgb(PALETTE[i])).max() < 24, i


def test_a_path_with_pattern_characters(tmp_path: Path) -> None:
    d = tmp_path / "ep %d %05d 100% 'q' : [x]; y=z"
    d.mkdir()
    tiles = [(f"S{i}", _thumb(d / f"S{i}%d.jpg", c)) for i, c in enumerate(PALETTE[:3])]
    out = contact_sheet(tiles, d / "sheet %d.jpg", work_dir=d, timeout=60)
    layout = sheet_layout(3, labels=FONT is not None)
    sheet = _decode(out)
    assert [_nearest(_centre(sheet, layout.image_box(i)), PALETTE) for i in range(3)] == [0, 1, 2]


def test_no_font_gives_tiles_without_labels(tmp_path: Path,
                                            twelve: list[tuple[str, Path]]) -> None:
    out = contact_sheet(twelve[:4], tmp_path / "sheet.jpg", work_dir=tmp_path, timeout=60,
                        font=None)
    layout = sheet_layout(4, labels=False)
    assert layout.label_height == 0
    sheet = _decode(out)
    assert sheet.shape[:2] == (layout.height, layout.width)
    assert [_nearest(_centre(sheet, layout.image_box(i)), PALETTE) for i in range(4)] == [
        0, 1, 2, 3]


def test_the_timeout_bounds_the_whole_sheet(tmp_path: Path,
                                            twelve: list[tuple[str, Path]]) -> None:
    with pytest.raises(ff.FfmpegError):
        contact_sheet(twelve, tmp_path / "sheet.jpg", work_dir=tmp_path, timeout=0.001)


def _index_colour(i: int) -> np.ndarray:
    return np.array([(i % 16) * 16 + 8, (i // 16 % 16) * 16 + 8, (i // 256) * 32 + 16])


def test_two_thousand_tiles(tmp_path: Path) -> None:
    """2,000 shots: every tile in its place (the colour encodes the index), sides capped."""
    n = 2000
    thumbs = tmp_path / "thumbs"
    thumbs.mkdir()
    ff.run(["-f", "lavfi", "-i", "color=c=black:s=32x18:r=25", "-frames:v", str(n), "-vf",
            "format=rgb24,geq=r='mod(N\\,16)*16+8':g='mod(floor(N/16)\\,16)*16+8'"
            ":b='floor(N/256)*32+16',scale=320:180:flags=neighbor,format=yuv420p",
            "-q:v", "4", "-start_number", "0", str(thumbs / "t_%04d.jpg")], timeout=120)
    tiles = [(f"SHOT_{i:04d}_with_a_long_name_x", thumbs / f"t_{i:04d}.jpg") for i in range(n)]
    out = contact_sheet(tiles, tmp_path / "sheet.jpg", work_dir=tmp_path, timeout=300)
    layout = sheet_layout(n, labels=FONT is not None)
    assert layout.width <= MAX_SIDE and layout.height <= MAX_SIDE
    assert layout.tile_width < 320  # scaled down to fit
    sheet = _decode(out)
    assert sheet.shape[:2] == (layout.height, layout.width)
    centres = np.array([_centre(sheet, layout.image_box(i)) for i in range(n)])
    expected = np.array([_index_colour(i) for i in range(n)])
    assert np.abs(centres - expected).max() < 6  # levels are 16 (r, g) and 32 (b) apart


# --------------------------------------------------------------------------- layout


def test_layout_shapes() -> None:
    one = sheet_layout(1)
    assert (one.columns, one.rows, one.tile_width, one.image_height) == (1, 1, 320, 180)
    assert sheet_layout(12).columns * sheet_layout(12).rows >= 12
    assert sheet_layout(12, columns=6).rows == 2
    assert sheet_layout(3, columns=10).columns == 3
    assert sheet_layout(1, image_size=(64, 36)).tile_width == 64  # never upscaled
    with pytest.raises(ValueError):
        sheet_layout(0)


@settings(max_examples=200, deadline=None)
@given(count=st.integers(1, 2000), width=st.integers(16, 640), height=st.integers(16, 640),
       columns=st.one_of(st.none(), st.integers(1, 60)), labels=st.booleans())
def test_layout_stays_within_the_sides(count: int, width: int, height: int,
                                       columns: int | None, labels: bool) -> None:
    layout = sheet_layout(count, columns=columns, image_size=(width, height), labels=labels)
    assert layout.width <= MAX_SIDE and layout.height <= MAX_SIDE
    if columns is not None and layout.columns != min(columns, count):
        # the columns asked for cannot fit even the smallest tiles: a 16:9 sheet instead
        assert layout == sheet_layout(count, image_size=(width, height), labels=labels)
    assert layout.columns * layout.rows >= count > layout.columns * (layout.rows - 1)
    assert layout.tile_width % 2 == 0 and layout.tile_height % 2 == 0
    last = layout.image_box(count - 1)
    assert last[0] + last[2] <= layout.width and last[1] + last[3] <= layout.height
    if columns is None and count >= 4:  # roughly a 16:9 sheet
        assert 0.5 < layout.width / layout.height < 6 or layout.columns in (1, count)
    assert math.isclose(layout.tile_width / layout.image_height,
                        min(8.0, max(1 / 8, width / height)), rel_tol=0.25) or (
        layout.image_height == 2 or layout.tile_width == 16)
