"""Dialogue -> subtitle cues on the episode timeline, written as SRT and ASS with pysubs2.

No Dagster. Both files are built with pysubs2; what pysubs2 does not do is make text safe for
the readers downstream, so every piece of text is cleaned and escaped per format here.

Common to both formats (:func:`_lines`): every line break a reader could honour (``\\r\\n``,
``\\r``, ``\\n``, ``\\v``, ``\\f``, U+0085, U+2028, U+2029, ...) splits the text into lines; lines
are stripped and empty ones dropped (a blank line ends an SRT cue); other control characters
are removed (a tab becomes a space); lone surrogates become U+FFFD. Unicode text is otherwise
kept as it is (Japanese, Korean, emoji ...). Single-line fields (speaker, title, font) have
every run of whitespace, line breaks included, collapsed to one space.

ASS, for libass (``--burn-subtitles``) and editors:

* ``{`` -> ``\\{`` + U+2060 and ``}`` -> ``\\}``: libass shows ``\\{`` / ``\\}`` as literal braces,
  so typed override blocks (``{\\fs80}``, ``{\\p1}`` drawings, ``{\\an8}``) are shown, never
  applied. The invisible WORD JOINER keeps ffmpeg's own ASS parser (``ass_split``, used when an
  ``.ass`` is converted by ffmpeg) from seeing ``{\\`` either.
* ``\\`` -> ``\\`` + U+2060: a typed ``\\N``, ``\\n`` or ``\\h`` is shown as typed instead of
  breaking the line (libass has no escape for a backslash itself).
* a line break -> ``\\N``.
* speaker (the Name field of a comma-separated event line): ``,`` -> U+201A SINGLE LOW-9
  QUOTATION MARK (looks like a comma; the field has no escape for a comma). The Name field is
  not drawn. Commas in the font name are dropped. Text commas need nothing: Text is the last
  field.

SRT, for the soft ``mov_text`` track (ffmpeg's SubRip demuxer and decoder) and players:

* no line of a cue is blank (blank lines end cues for most readers).
* U+2060 WORD JOINER after every ``<``, ``{`` and ``\\``: ffmpeg's SubRip decoder interprets
  ``<font ...>``, ``<b>``/``<i>``/``<u>``/``<s>``, ``< b >``, ``<br>``, drops other tag-like
  ``<...>``, drops ``{\\...}`` and ``{Y:...}`` blocks (keeping a first ``{\\an8}``), and its ASS
  stage turns ``\\N``/``\\n`` into line breaks; the SubRip format has no escape at all. With the
  invisible joiner none of these forms exists any more and the text reaches the MP4 as typed.
* U+2060 in front of a line that starts with a number (``[+-]?[0-9]``): ffmpeg's demuxer reads
  such a line as a possible cue number or timing line (``00:00:05,000 --> ...``), i.e. it would
  start a new cue or be dropped.
* U+2060 after a ``:`` between digits and inside ``-->``: readers that look for timestamps
  anywhere in a line (pysubs2, some players) must not find a timing line in the text either.

The characters therefore carried with an invisible U+2060 next to them are ``<``, ``{``,
``\\``, a leading digit, ``:`` between digits and ``-->`` (SRT) and ``{``, ``\\`` (ASS); the one
character replaced is ``,`` in the ASS Name field (-> U+201A). Everything else is carried as
is; :func:`visible` removes the joiners again (what a viewer reads).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import pysubs2

from anime_pipeline.domain.episode import Episode

WORD_JOINER = "\u2060"  # zero width, no line break opportunity: invisible in every renderer
NAME_COMMA = "\u201a"  # SINGLE LOW-9 QUOTATION MARK, stands in for ',' in the ASS Name field
DEFAULT_FONT = "Noto Sans CJK JP"


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


def track_language(cues: Sequence[Cue]) -> str:
    langs = {c.language for c in cues}
    if not langs:
        return "und"
    return langs.pop() if len(langs) == 1 else "mul"


# --------------------------------------------------------------------------- cleaning


def _clean(text: str) -> str:
    """No control characters (tab -> space), no lone surrogates; line breaks are not here."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch == "\t":
            out.append(" ")
        elif cat == "Cc":
            continue
        elif cat == "Cs":
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def _lines(text: str) -> list[str]:
    """The text's lines: split at every line break, cleaned, stripped, none empty."""
    lines = (_clean(raw).strip() for raw in text.splitlines())
    return [line for line in lines if line]


def _one_line(text: str) -> str:
    """A single-line field: whitespace runs (line breaks too) -> one space, cleaned."""
    return _clean(" ".join(text.split())).strip()


# --------------------------------------------------------------------------- SRT


_SRT_MARKUP = re.compile(r"([<{\\])")
_SRT_CLOCK = re.compile(r"(?<=[0-9]):(?=[0-9])")
_SRT_NUMBER_START = re.compile(r"[+-]?[0-9]")


def _srt_line(line: str) -> str:
    line = _SRT_MARKUP.sub(r"\1" + WORD_JOINER, line)
    line = _SRT_CLOCK.sub(":" + WORD_JOINER, line).replace("-->", "--" + WORD_JOINER + ">")
    if _SRT_NUMBER_START.match(line):
        line = WORD_JOINER + line
    return line


def visible(text: str) -> str:
    """``text`` without the invisible joiners this module adds (what a viewer reads)."""
    return text.replace(WORD_JOINER, "")


def srt_text(speaker: str, text: str) -> str:
    """The text of one SRT cue, lines joined with ``\\n`` ("" when nothing is visible)."""
    lines = _lines(text)
    who = _one_line(speaker)
    if lines and who:
        lines[0] = f"{who}: {lines[0]}"
    return "\n".join(_srt_line(line) for line in lines)


def to_srt(cues: Sequence[Cue]) -> str:
    """SubRip text; cues without visible text are left out (numbering stays contiguous)."""
    subs = pysubs2.SSAFile()
    for c in cues:
        body = srt_text(c.speaker, c.text)
        if body:
            # \N is pysubs2's line break; no other backslash is left unescaped in ``body``.
            subs.append(pysubs2.SSAEvent(start=c.start_ms, end=c.end_ms,
                                         text=body.replace("\n", r"\N")))
    if not subs.events:
        return ""
    # keep_ssa_tags: write the text as given (pysubs2 would otherwise drop "{...}" groups).
    return subs.to_string("srt", keep_ssa_tags=True)


# --------------------------------------------------------------------------- ASS


def _ass_escape(line: str) -> str:
    out = []
    for ch in line:
        if ch == "\\":
            out.append("\\" + WORD_JOINER)
        elif ch == "{":
            out.append("\\{" + WORD_JOINER)
        elif ch == "}":
            out.append("\\}")
        else:
            out.append(ch)
    return "".join(out)


def ass_text(text: str) -> str:
    """The Text field of one ASS event: escaped lines joined with ``\\N``."""
    return r"\N".join(_ass_escape(line) for line in _lines(text))


def ass_name(speaker: str) -> str:
    """The Name field of one ASS event: one line, no comma."""
    return _one_line(speaker).replace(",", NAME_COMMA)


def to_ass(cues: Sequence[Cue], *, width: int, height: int, font: str = DEFAULT_FONT,
           title: str = "") -> str:
    size = max(16, height // 18)
    margin = max(10, height // 24)
    subs = pysubs2.SSAFile()
    subs.info.clear()
    subs.info.update({
        "Title": _one_line(title),
        "ScriptType": "v4.00+",
        "PlayResX": str(int(width)),
        "PlayResY": str(int(height)),
        "WrapStyle": "0",
        "ScaledBorderAndShadow": "yes",
    })
    subs.styles.clear()
    subs.styles["Default"] = pysubs2.SSAStyle(
        fontname=_one_line(font).replace(",", "") or DEFAULT_FONT,
        fontsize=size,
        primarycolor=pysubs2.Color(255, 255, 255, 0),
        secondarycolor=pysubs2.Color(255, 0, 0, 0),
        outlinecolor=pysubs2.Color(16, 16, 16, 0),
        backcolor=pysubs2.Color(0, 0, 0, 0x80),
        bold=False, italic=False, underline=False, strikeout=False,
        scalex=100, scaley=100, spacing=0, angle=0,
        borderstyle=1, outline=2, shadow=1,
        alignment=pysubs2.Alignment.BOTTOM_CENTER,
        marginl=margin, marginr=margin, marginv=margin, encoding=1,
    )
    for c in cues:
        text = ass_text(c.text)
        if text:
            subs.append(pysubs2.SSAEvent(start=c.start_ms, end=c.end_ms, text=text,
                                         style="Default", name=ass_name(c.speaker)))
    return subs.to_string("ass", header_notice="")
