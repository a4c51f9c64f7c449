"""Dialogue -> subtitle cues on the episode timeline, written as SRT and ASS. No Dagster."""

from __future__ import annotations

import re
from dataclasses import dataclass

from anime_pipeline.domain.episode import Episode


@dataclass(frozen=True)
class Cue:
    index: int
    start_ms: int
    end_ms: int
    shot_id: str
    speaker: str
    text: str
    language: str  # ISO 639-2 (eng, jpn, zho, kor)


_KANA = re.compile(r"[\u3040-\u30ff]")
_HAN = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")


def guess_language(text: str) -> str:
    """A script-based guess, enough to tag a subtitle track (ISO 639-2)."""
    if _KANA.search(text):
        return "jpn"
    if _HANGUL.search(text):
        return "kor"
    if _HAN.search(text):
        return "zho"
    return "eng"


def cues_for(episode: Episode) -> list[Cue]:
    starts = episode.shot_starts_ms()
    cues: list[Cue] = []
    for shot in episode.shots:
        t0 = starts[shot.id]
        for line in sorted(shot.dialogue, key=lambda d: d.start_ms):
            cues.append(
                Cue(
                    index=len(cues) + 1,
                    start_ms=t0 + line.start_ms,
                    end_ms=t0 + line.end_ms,
                    shot_id=shot.id,
                    speaker=line.speaker,
                    text=line.text,
                    language=guess_language(line.text),
                )
            )
    return cues


def track_language(cues: list[Cue]) -> str:
    langs = {c.language for c in cues}
    if not langs:
        return "und"
    return langs.pop() if len(langs) == 1 else "mul"


def _srt_time(ms: int) -> str:
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms_ = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms_:03d}"


def _ass_time(ms: int) -> str:
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms_ = divmod(rem, 1000)
    return f"{h:d}:{m:02d}:{s:02d}.{ms_ // 10:02d}"


def to_srt(cues: list[Cue]) -> str:
    blocks = []
    for c in cues:
        text = c.text.replace("\r", "").strip()
        blocks.append(f"{c.index}\n{_srt_time(c.start_ms)} --> {_srt_time(c.end_ms)}\n"
                      f"{c.speaker}: {text}\n")
    return "\n".join(blocks)


def _ass_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("{", "\\{").replace("}", "\\}").replace("\n", "\\N")


def to_ass(cues: list[Cue], *, width: int, height: int, font: str = "Noto Sans CJK JP",
           title: str = "") -> str:
    size = max(16, height // 18)
    margin = max(10, height // 24)
    lines = [
        "[Script Info]",
        f"Title: {title}",
        "ScriptType: v4.00+",
        f"PlayResX: {width}",
        f"PlayResY: {height}",
        "WrapStyle: 0",
        "ScaledBorderAndShadow: yes",
        "",
        "[V4+ Styles]",
        "Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, "
        "BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, "
        "BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding",
        f"Style: Default,{font},{size},&H00FFFFFF,&H000000FF,&H00101010,&H80000000,0,0,0,0,"
        f"100,100,0,0,1,2,1,2,{margin},{margin},{margin},1",
        "",
        "[Events]",
        "Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text",
    ]
    for c in cues:
        lines.append(
            f"Dialogue: 0,{_ass_time(c.start_ms)},{_ass_time(c.end_ms)},Default,"
            f"{_ass_escape(c.speaker)},0,0,0,,{_ass_escape(c.text)}"
        )
    return "\n".join(lines) + "\n"
