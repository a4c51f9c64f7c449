"""Synthetic stills and footage drawn by ffmpeg's lavfi sources and filters.

Used by the bundled sample episode and by tests: no third-party media. Every still is one
ffmpeg call (``gradients`` sky, ``drawbox`` silhouettes, a few small ``geq`` discs for moons,
heads and seals, ``drawtext`` for the title card when a font is available). Output is
deterministic for a given binary and arguments.
"""

from __future__ import annotations

import functools
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from anime_pipeline.media.ffmpeg import run, timeout_for

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Bold.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",
)


@functools.lru_cache(maxsize=1)
def _find_font_cached(env_value: str | None) -> str | None:
    if env_value and Path(env_value).is_file():
        return env_value
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    for root in ("/usr/share/fonts", "/usr/local/share/fonts"):
        base = Path(root)
        if base.is_dir():
            found = sorted(base.rglob("*.ttf"))
            if found:
                return str(found[0])
    return None


def find_font() -> str | None:
    """A TrueType font for drawtext (``ANIME_PIPELINE_FONT`` first), or None: draw no text."""
    return _find_font_cached(os.environ.get("ANIME_PIPELINE_FONT") or None)


def _escape_filter_path(path: str) -> str:
    # Inside a single-quoted filter option only ' and \ need care; ':' is escaped for drawtext.
    return path.replace("\\", "/").replace("'", "").replace(":", "\\:")


def _safe_text(text: str) -> str:
    """ASCII letters, digits and a little punctuation: safe inside drawtext without escaping."""
    return re.sub(r"[^A-Za-z0-9 .#/-]+", " ", text).strip()


def _hex(rgb: tuple[int, int, int]) -> str:
    return "0x{:02X}{:02X}{:02X}".format(*rgb)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


# Sky palettes (top, bottom) per mood; shots pick one by type and index.
_SKIES: dict[str, list[tuple[tuple[int, int, int], tuple[int, int, int]]]] = {
    "establishing": [((8, 12, 48), (70, 40, 110)), ((12, 30, 70), (150, 90, 140)),
                     ((5, 8, 30), (40, 70, 130))],
    "dialogue": [((250, 140, 90), (120, 60, 130)), ((255, 190, 120), (200, 90, 110)),
                 ((90, 140, 200), (240, 170, 150))],
    "action": [((140, 10, 20), (255, 150, 40)), ((60, 0, 40), (250, 80, 30)),
               ((20, 20, 20), (230, 40, 40))],
    "insert": [((70, 45, 25), (140, 95, 55)), ((55, 40, 35), (120, 80, 60))],
    "transition": [((10, 80, 90), (20, 20, 70)), ((40, 10, 70), (10, 90, 110))],
}  # fmt: skip


@dataclass(frozen=True)
class _Disc:
    x: int
    y: int
    r: int
    rgb: tuple[int, int, int]


def _disc_source(d: _Disc) -> str:
    size = 2 * d.r + 2
    c = d.r + 0.5
    return (
        f"color=c=black:s={size}x{size}:d=1,format=rgba,"
        f"geq=r={d.rgb[0]}:g={d.rgb[1]}:b={d.rgb[2]}:"
        f"a='255*lte(hypot(X-{c},Y-{c}),{d.r})'"
    )


def keyframe_filtergraph(
    *,
    shot_id: str,
    shot_type: str,
    index: int = 0,
    seed: int = 7,
    width: int = 1280,
    height: int = 720,
    title: str | None = None,
    font: str | None = None,
) -> str:
    """The ``-filter_complex`` graph drawing one keyframe (output label ``[out]``)."""
    rng = random.Random(f"{seed}:{index}:{shot_id}:{shot_type}")
    w, h = width, height
    kind = shot_type if shot_type in _SKIES else "establishing"
    top, bottom = _SKIES[kind][index % len(_SKIES[kind])]
    grad_type = "radial" if kind == "action" else "linear"
    if kind == "action":
        sky = (
            f"gradients=s={w}x{h}:d=1:c0={_hex(bottom)}:c1={_hex(top)}:nb_colors=2:"
            f"x0={w // 2 + rng.randint(-w // 6, w // 6)}:y0={h // 2}:x1=0:y1=0:type={grad_type}"
        )
    else:
        sky = (
            f"gradients=s={w}x{h}:d=1:c0={_hex(top)}:c1={_hex(bottom)}:nb_colors=2:"
            f"x0={w // 2}:y0=0:x1={w // 2}:y1={h}:type={grad_type}"
        )
    boxes: list[str] = []
    discs: list[_Disc] = []

    def box(x: int, y: int, bw: int, bh: int, color: str) -> None:
        boxes.append(f"drawbox=x={x}:y={y}:w={max(1, bw)}:h={max(1, bh)}:color={color}:t=fill")

    silhouette = _hex(_mix(top, (0, 0, 0), 0.8))
    if kind in ("establishing", "transition"):
        moon_r = rng.randint(h // 14, h // 9)
        discs.append(_Disc(rng.randint(w // 8, w - w // 4), rng.randint(h // 12, h // 4),
                           moon_r, (250, 245, 215)))  # fmt: skip
        for _ in range(24):  # stars
            s = rng.randint(2, 4)
            box(rng.randint(0, w - 4), rng.randint(0, h // 2), s, s, "0xFFFFF0@0.8")
        x = 0
        while x < w:  # skyline with lit windows
            bw = rng.randint(w // 22, w // 9)
            bh = rng.randint(h // 6, h // 2)
            box(x, h - bh, bw, bh, silhouette)
            for _ in range(rng.randint(2, 7)):
                box(x + rng.randint(4, max(5, bw - 14)), h - bh + rng.randint(8, max(9, bh - 20)),
                    8, 10, "0xFFD070@0.9")  # fmt: skip
            x += bw + rng.randint(0, w // 60)
        if kind == "transition":
            for i in range(6):  # wipe bars
                alpha = 0.15 + 0.1 * (i % 3)
                box(0, int(h * (0.1 + 0.14 * i)), w, h // 40, f"0xFFFFFF@{alpha:.2f}")
    elif kind == "dialogue":
        box(0, int(h * 0.78), w, h, _hex(_mix(bottom, (0, 0, 0), 0.7)))  # rooftop ledge
        n_chars = 2 if index % 2 == 0 else 1
        for c in range(n_chars):
            cx = int(w * (0.3 + 0.4 * c)) if n_chars == 2 else int(w * rng.uniform(0.35, 0.65))
            body_w, body_h = w // 9, int(h * 0.42)
            head_r = w // 28
            box(cx - body_w // 2, int(h * 0.78) - body_h + head_r, body_w, body_h, silhouette)
            discs.append(_Disc(cx, int(h * 0.78) - body_h, head_r, _mix(top, (0, 0, 0), 0.8)))
        bx = int(w * rng.uniform(0.08, 0.5))
        box(bx, h // 12, w // 3, h // 7, "0xFFFFFF@0.85")  # speech balloon
        for i in range(3):
            box(bx + 20, h // 12 + 18 + i * 22, w // 3 - 40 - 50 * (i == 2), 8, "0x303040@0.8")
    elif kind == "action":
        for _ in range(28):  # speed streaks
            y = rng.randint(0, h)
            length = rng.randint(w // 8, w // 2)
            box(rng.randint(-w // 4, w), y, length, rng.randint(2, 6), "0xFFFFFF@0.55")
        cx, cy = int(w * rng.uniform(0.35, 0.65)), int(h * rng.uniform(0.35, 0.55))
        box(cx - w // 24, cy, w // 12, h // 4, "0x101010")  # leaping figure
        box(cx - w // 7, cy + h // 30, w // 7, h // 40, "0x101010")  # outstretched arm
        box(cx + w // 24, cy + h // 5, w // 8, h // 36, "0x101010")  # trailing leg
        discs.append(_Disc(cx, cy - w // 40, w // 32, (16, 16, 16)))
        box(0, int(h * 0.86), w, h, "0x100808")
    elif kind == "insert":
        px, py, pw, ph = w // 5, h // 8, int(w * 0.6), int(h * 0.74)
        box(px + 14, py + 14, pw, ph, "0x000000@0.35")  # shadow
        box(px, py, pw, ph, "0xF4ECD8")  # the letter
        for i in range(9):
            box(px + 50, py + 60 + i * 42, pw - 100 - (120 if i % 4 == 3 else 0), 6, "0x50483C")
        discs.append(_Disc(px + pw - 90, py + ph - 90, h // 14, (170, 20, 30)))  # wax seal
    # Title card band with the shot id (text only when a font exists).
    band_h = max(24, h // 8)
    box(0, h - band_h, w, band_h, "0x000000@0.55")
    box(0, h - band_h, w // 90 + 4, band_h, _hex(_mix(bottom, (255, 255, 255), 0.3)))

    inputs = [f"{sky}[sky]"]
    chain = "[sky]"
    for i, d in enumerate(discs):
        inputs.append(f"{_disc_source(d)}[d{i}]")
        label = f"[o{i}]"
        inputs.append(f"{chain}[d{i}]overlay=x={d.x - d.r}:y={d.y - d.r}:format=auto{label}")
        chain = label
    steps = list(boxes)
    if font:
        fontfile = _escape_filter_path(font)
        size = max(12, band_h // 2)
        label = _safe_text(f"{shot_id}  {shot_type.upper()}")
        steps.append(
            f"drawtext=fontfile='{fontfile}':text='{label}':fontsize={size}:fontcolor=white:"
            f"x={w // 40 + 10}:y={h - band_h}+({band_h}-text_h)/2"
        )
        if title and _safe_text(title):
            steps.append(
                f"drawtext=fontfile='{fontfile}':text='{_safe_text(title)}':"
                f"fontsize={max(10, size * 2 // 3)}:fontcolor=0xDDDDDD:"
                f"x=w-text_w-{w // 40}:y={h - band_h}+({band_h}-text_h)/2"
            )
    steps.append("format=rgb24")
    inputs.append(f"{chain}{','.join(steps)}[out]")
    return ";".join(inputs)


def draw_keyframe(
    path: str | Path,
    *,
    shot_id: str,
    shot_type: str,
    index: int = 0,
    seed: int = 7,
    width: int = 1280,
    height: int = 720,
    title: str | None = None,
    text: bool = True,
) -> Path:
    """Draw one keyframe still (PNG, or JPEG/WebP by extension) and return its path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = keyframe_filtergraph(
        shot_id=shot_id, shot_type=shot_type, index=index, seed=seed, width=width,
        height=height, title=title, font=find_font() if text else None,
    )  # fmt: skip
    args = ["-v", "error", "-filter_complex", graph, "-map", "[out]", "-frames:v", "1",
            "-update", "1", "-fflags", "+bitexact"]  # fmt: skip
    if out.suffix.lower() == ".png":
        args += ["-c:v", "png", "-compression_level", "3"]
    run([*args, str(out)], timeout=120)
    return out


def make_footage(
    path: str | Path,
    *,
    duration_s: float = 5.0,
    width: int = 1280,
    height: int = 720,
    fps: int = 24,
    pattern: str = "testsrc2",
) -> Path:
    """A short H.264 MP4 (no audio) from a lavfi pattern (``testsrc2`` or ``mandelbrot``).

    A keyframe every second so that cuts with ``-ss`` land precisely.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if pattern not in ("testsrc2", "mandelbrot", "testsrc", "smptehdbars"):
        raise ValueError(f"unknown footage pattern {pattern!r}")
    src = f"{pattern}=s={width}x{height}:r={fps}"
    if pattern != "mandelbrot":
        src += f":d={duration_s:.3f}"
    args = [
        "-v", "error", "-f", "lavfi", "-i", src, "-t", f"{duration_s:.3f}",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "30", "-pix_fmt", "yuv420p",
        "-g", str(fps),
        "-threads", "2", "-map_metadata", "-1", "-fflags", "+bitexact",
        "-flags:v", "+bitexact", "-movflags", "+faststart", str(out),
    ]  # fmt: skip
    # mandelbrot is slow to draw: never less than five minutes.
    frames = round(duration_s * fps)
    run(args, timeout=max(300.0, timeout_for(duration_s, pixels_per_frame=width * height,
                                             frames=frames)))
    return out
