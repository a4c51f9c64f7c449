"""Subtitles: SRT and ASS written with pysubs2 and escaped per format.

End to end with the bundled ffmpeg: the SRT is muxed as ``mov_text`` (as the composite does)
and extracted back; the ASS is burned in with libass and a frame is decoded.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pysubs2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anime_pipeline.domain.episode import load_episode
from anime_pipeline.domain.subtitles import (
    NAME_COMMA,
    WORD_JOINER,
    Cue,
    cues_for,
    guess_language,
    srt_text,
    to_ass,
    to_srt,
    track_language,
    visible,
)
from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media.synth import find_font

W, H = 320, 180
DRAWING = r"{\p1}m 0 0 l 320 0 320 180 0 180{\p0}"  # a filled rectangle over the whole frame
INJECTED_EVENT = f"Dialogue: 0,0:00:00.00,0:00:09.00,Default,,0,0,0,,{DRAWING}"

needs_font = pytest.mark.skipif(find_font() is None, reason="no font: libass draws no text")


def cue(i: int, speaker: str, text: str, start_ms: int | None = None) -> Cue:
    start = (i - 1) * 1000 if start_ms is None else start_ms
    return Cue(i, start, start + 800, "S01", speaker, text, guess_language(text))


def parse_srt_blocks(text: str) -> list[list[str]]:
    """SubRip as most players read it: cues are separated by blank lines."""
    blocks = [b for b in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").strip()) if b.strip()]
    return [b.split("\n") for b in blocks]


# --------------------------------------------------------------------------- SRT -> mov_text

# (speaker, text as typed, what a viewer must read)
HOSTILE = [
    ("Aki", r"{\fs80}big {\p1}m 0 0 l 100 0{\p0} {\an8}top {Y:i}x {c:$0000ff}y",
     r"Aki: {\fs80}big {\p1}m 0 0 l 100 0{\p0} {\an8}top {Y:i}x {c:$0000ff}y"),
    ("Bo", '<font size="80" color="red">x</font> <b>b</b> <i>i</i> a < b > c <br> <blink>',
     'Bo: <font size="80" color="red">x</font> <b>b</b> <i>i</i> a < b > c <br> <blink>'),
    ("Cy", r"line\Nbreak \n \h end\ ", r"Cy: line\Nbreak \n \h end\ ".strip()),
    ("Di", "first\n\n99\n00:00:09,000 --> 00:00:09,500\ninjected",
     "Di: first\n99\n00:00:09,000 --> 00:00:09,500\ninjected"),
    ("Ed\n\n98\n00:00:09,600 --> 00:00:09,900\nX", "hello",
     "Ed 98 00:00:09,600 --> 00:00:09,900 X: hello"),
    ("Fy", "one\rtwo\r\nthree\u2028four", "Fy: one\ntwo\nthree\nfour"),
    ("アキ", "聞こえた?「テスト」　한국어 中文 😀", "アキ: 聞こえた?「テスト」　한국어 中文 😀"),
    ("Gu", "countdown\n3", "Gu: countdown\n3"),
    ("Ha", "100% %{bogus} &amp; 'q' \"dq\" : ; , [x]",
     "Ha: 100% %{bogus} &amp; 'q' \"dq\" : ; , [x]"),
    ("12", "meet at 10:30", "12: meet at 10:30"),
]


@pytest.fixture(scope="module")
def mov_text_roundtrip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[list[str]]]:
    """Our SRT, muxed as mov_text into an MP4 and extracted back to SRT by ffmpeg."""
    d = tmp_path_factory.mktemp("movtext")
    cues = [cue(i, s, t) for i, (s, t, _) in enumerate(HOSTILE, 1)]
    srt = d / "dialogue.srt"
    srt.write_text(to_srt(cues), encoding="utf-8")
    mp4 = d / "muxed.mp4"
    seconds = f"{len(cues) + 1:.3f}"
    ff.run(["-f", "lavfi", "-i", f"color=c=black:s=64x36:r=24:d={seconds}", "-i", str(srt),
            "-map", "0:v:0", "-map", "1:s:0", "-c:s", "mov_text",
            "-metadata:s:s:0", "language=mul", "-metadata:s:s:0", "title=Dialogue",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-t", seconds, "-movflags", "+faststart",
            "-f", "mp4", str(mp4)], timeout=60)
    info = ff.probe(mp4)
    assert [s.codec for s in info.of_kind("subtitle")] == ["mov_text"]
    back = d / "extracted.srt"
    ff.run(["-i", str(mp4), "-map", "0:s:0", "-f", "srt", str(back)], timeout=60)
    return srt.read_text(encoding="utf-8"), parse_srt_blocks(back.read_text(encoding="utf-8"))


def test_mov_text_keeps_every_cue_and_no_more(
        mov_text_roundtrip: tuple[str, list[list[str]]]) -> None:
    """Blank lines in text or speaker and timing lines in the text inject no cue."""
    written, extracted = mov_text_roundtrip
    assert len(parse_srt_blocks(written)) == len(HOSTILE)
    assert len(pysubs2.SSAFile.from_string(written, format_="srt").events) == len(HOSTILE)
    assert len(extracted) == len(HOSTILE)
    assert [b[0] for b in extracted] == [str(i) for i in range(1, len(HOSTILE) + 1)]


@pytest.mark.parametrize("i", range(len(HOSTILE)), ids=[h[0][:3] for h in HOSTILE])
def test_mov_text_carries_text_literally(mov_text_roundtrip: tuple[str, list[list[str]]],
                                          i: int) -> None:
    """Tags typed in dialogue reach the MP4 as text: no <font size="80">, no dropped {...}."""
    written, extracted = mov_text_roundtrip
    speaker, text, expected = HOSTILE[i]
    body = "\n".join(extracted[i][2:])
    assert body == srt_text(speaker, text)  # the MP4 holds exactly the text we wrote
    assert visible(body) == expected  # and a viewer reads what was typed
    assert parse_srt_blocks(written)[i][2:] == srt_text(speaker, text).split("\n")


def test_srt_timing_and_numbering() -> None:
    out = to_srt([cue(1, "A", "x", 0), cue(2, "B", "y", 3_723_456)])
    assert out.startswith("1\n00:00:00,000 --> 00:00:00,800\nA: x\n\n2\n"
                          "01:02:03,456 --> 01:02:04,256\nB: y\n")
    assert to_srt([]) == ""
    # a cue with nothing visible is left out, numbering stays contiguous
    blocks = parse_srt_blocks(to_srt([cue(1, "A", " \n\t "), cue(2, "B", "y")]))
    assert [b[0] for b in blocks] == ["1"] and blocks[0][2] == "B: y"


# --------------------------------------------------------------------------- ASS structure


def _dialogue_lines(ass: str) -> list[str]:
    # splitlines: \r, \x85, \u2028 ... are line breaks for some reader; none may split an event
    return [line for line in ass.splitlines() if line.startswith("Dialogue:")]


def test_ass_title_newline_injects_nothing() -> None:
    ass = to_ass([cue(1, "A", "hello")], width=W, height=H,
                 title=f"Episode 1\n[Events]\r\n{INJECTED_EVENT}\u2028[V4+ Styles]")
    assert len(_dialogue_lines(ass)) == 1
    assert [line for line in ass.splitlines() if line.startswith("[")] == [
        "[Script Info]", "[V4+ Styles]", "[Events]"]
    titles = [line for line in ass.splitlines() if line.startswith("Title:")]
    assert len(titles) == 1 and "Episode 1 [Events]" in titles[0]


@pytest.mark.parametrize("text", [
    f"hi\r{INJECTED_EVENT}", f"hi\n{INJECTED_EVENT}", f"hi\r\n\r\n{INJECTED_EVENT}",
    f"hi\x85{INJECTED_EVENT}", f"hi\u2028{INJECTED_EVENT}\u2029x", f"hi\x0b\x0c{INJECTED_EVENT}",
])
def test_ass_line_breaks_in_dialogue_inject_no_event(text: str) -> None:
    ass = to_ass([cue(1, "A", text)], width=W, height=H)
    assert len(_dialogue_lines(ass)) == 1
    ev = pysubs2.SSAFile.from_string(ass).events
    assert len(ev) == 1 and ev[0].text.startswith(r"hi\N")


def test_ass_speaker_commas_and_newlines_keep_the_fields() -> None:
    speaker = "Aki, Bo,,0,0\nDialogue: 0,0:00:00.00,0:00:09.00,Default,,0,0,0,,x"
    ass = to_ass([cue(1, speaker, "text, with, commas")], width=W, height=H)
    assert len(_dialogue_lines(ass)) == 1
    (ev,) = pysubs2.SSAFile.from_string(ass).events
    assert ev.style == "Default" and ev.effect == "" and ev.layer == 0
    assert (ev.marginl, ev.marginr, ev.marginv) == (0, 0, 0)
    assert ev.name == f"Aki{NAME_COMMA} Bo{NAME_COMMA}{NAME_COMMA}0{NAME_COMMA}0 Dialogue: " \
                      f"0{NAME_COMMA}0:00:00.00{NAME_COMMA}0:00:09.00{NAME_COMMA}Default" \
                      f"{NAME_COMMA}{NAME_COMMA}0{NAME_COMMA}0{NAME_COMMA}0{NAME_COMMA}{NAME_COMMA}x"
    assert ev.text == "text, with, commas"


def test_ass_escapes_override_blocks_and_backslashes() -> None:
    ass = to_ass([cue(1, "A", r"{\fs80}x {\p1}m{\p0} a\Nb \h }")], width=W, height=H)
    (ev,) = pysubs2.SSAFile.from_string(ass).events
    wj = WORD_JOINER
    assert ev.text == (rf"\{{{wj}\{wj}fs80\}}x \{{{wj}\{wj}p1\}}m\{{{wj}\{wj}p0\}} "
                       rf"a\{wj}Nb \{wj}h \}}")
    # no override block is left for libass to apply: every "{" is escaped as "\{"
    assert re.search(r"(?<!\\)\{", ev.text) is None


def test_ass_keeps_unicode_and_the_style() -> None:
    ass = to_ass([cue(1, "アキ", "聞こえた?\n「テスト」")], width=1920, height=1080,
                 font="Noto Sans CJK JP", title="月の配達人 第1話")
    subs = pysubs2.SSAFile.from_string(ass)
    assert subs.info["Title"] == "月の配達人 第1話"
    assert (subs.info["PlayResX"], subs.info["PlayResY"]) == ("1920", "1080")
    style = subs.styles["Default"]
    assert style.fontname == "Noto Sans CJK JP" and style.fontsize == 60
    assert style.alignment == pysubs2.Alignment.BOTTOM_CENTER
    (ev,) = subs.events
    assert ev.text == r"聞こえた?\N「テスト」" and ev.name == "アキ"
    assert (ev.start, ev.end) == (0, 800)


@settings(max_examples=150, deadline=None)
@given(speaker=st.text(min_size=1, max_size=40), text=st.text(min_size=1, max_size=80),
       title=st.text(max_size=40))
def test_any_text_yields_exactly_its_cues(speaker: str, text: str, title: str) -> None:
    cues = [cue(1, speaker, text), cue(2, "B", "fixed")]
    srt_blocks = parse_srt_blocks(to_srt(cues))
    expected = 2 if srt_text(speaker, text) else 1
    assert len(srt_blocks) == expected
    assert srt_blocks[-1][2:] == ["B: fixed"]
    assert len(pysubs2.SSAFile.from_string(to_srt(cues), format_="srt").events) == expected
    for block in srt_blocks:
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", block[1])
        for line in block[2:]:
            assert line.strip() and not re.match(r"\s*[+-]?[0-9]", line)
            assert not re.search(r"<(?!\u2060)|\{(?!\u2060)|\\(?!\u2060)|[0-9]:[0-9]|-->", line)
    ass = to_ass(cues, width=W, height=H, title=title)
    assert len(_dialogue_lines(ass)) == (2 if srt_text("", text) else 1)
    assert [line for line in ass.splitlines() if line.startswith("[")] == [
        "[Script Info]", "[V4+ Styles]", "[Events]"]
    events = pysubs2.SSAFile.from_string(ass).events
    assert all(ev.style == "Default" and ev.marginl == 0 for ev in events)
    assert events[-1].text == "fixed" and events[-1].name == "B"


def test_cues_for_and_language(episode_dir: Path) -> None:
    cues = cues_for(load_episode(episode_dir).episode)
    assert [(c.index, c.start_ms, c.end_ms, c.shot_id, c.language) for c in cues] == [
        (1, 100, 900, "S01", "jpn")]
    assert track_language(cues) == "jpn" and track_language([]) == "und"
    assert track_language([*cues, cue(2, "A", "hello")]) == "mul"


# --------------------------------------------------------------------------- burned in (libass)


def _burn(tmp_path: Path, ass_text: str, at_s: float = 0.5) -> np.ndarray:
    ass = tmp_path / "burn.ass"
    ass.write_text(ass_text, encoding="utf-8")
    escaped = str(ass).replace("\\", "/").replace(":", "\\:").replace("'", "\\'")
    raw = ff.run_stdout(["-f", "lavfi", "-i", f"color=c=0x204060:s={W}x{H}:r=24:d=2",
                         "-vf", f"ass='{escaped}',format=gray", "-ss", f"{at_s:.3f}",
                         "-frames:v", "1", "-f", "rawvideo", "-"], timeout=60)
    return np.frombuffer(raw, dtype=np.uint8).reshape(H, W)


def _bright(frame: np.ndarray) -> np.ndarray:
    return frame > 150  # text and drawings are white; the background is ~57


@needs_font
def test_burned_control_draws_the_drawing(tmp_path: Path) -> None:
    """The check below means something: an unescaped {\\p1} drawing does cover the frame."""
    raw = (to_ass([cue(1, "A", "x", 0)], width=W, height=H).rstrip("\n")
           + "\n" + INJECTED_EVENT + "\n")
    assert _bright(_burn(tmp_path, raw)).mean() > 0.6


@needs_font
@pytest.mark.parametrize("where", ["text", "title", "speaker", "cr"])
def test_burned_drawing_is_text_not_a_drawing(tmp_path: Path, where: str) -> None:
    text, title, speaker = f"see {DRAWING} here", "Ep", "Aki"
    if where == "title":
        text, title = "hello", f"Ep\n[Events]\n{INJECTED_EVENT}"
    elif where == "speaker":
        text, speaker = "hello", f"Aki\n{INJECTED_EVENT}"
    elif where == "cr":
        text = f"hello\r{INJECTED_EVENT}"
    frame = _burn(tmp_path, to_ass([cue(1, speaker, text, 0)], width=W, height=H, title=title))
    bright = _bright(frame)
    assert bright.any(), "the dialogue itself must be drawn"
    assert bright.mean() < 0.08, f"{bright.mean():.0%} of the frame is covered"
    assert not bright[: H // 3].any()  # drawn as a subtitle line at the bottom, nothing above


@needs_font
def test_burned_font_size_tag_is_shown_not_applied(tmp_path: Path) -> None:
    frame = _burn(tmp_path, to_ass([cue(1, "A", r"{\fs200}W {\an8}", 0)], width=W, height=H))
    rows = np.flatnonzero(_bright(frame).any(axis=1))
    assert rows.size, "the dialogue itself must be drawn"
    # the style's 16 px text at the bottom, not 200 px glyphs nor the top (\an8)
    assert rows.max() - rows.min() < 40 and rows.min() > H // 2
