"""A hostile-input corpus for the episode validator.

Each attack is built in tmp_path at test time (symlinks, FIFOs, YAML bombs, playlists) and
must be refused with a problem naming the file and the field, and nothing may be written.
The attacks that hung or blew up memory before (FIFOs, /dev/zero, alias bombs, deep nesting,
huge numbers) run ``load_episode`` in a child process with a wall-clock timeout and an
address-space cap, so a regression fails the test instead of hanging or swapping the
machine; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from anime_pipeline.domain import playlists, safe_yaml
from anime_pipeline.domain.episode import (
    CREATIVE_FILE,
    EPISODE_FILE,
    MAX_PROBLEMS,
    EpisodeValidationError,
    load_episode,
    sniff_image,
)
from anime_pipeline_tests.conftest import minimal_episode

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60
CHILD_MEMORY_BYTES = 1 << 30

# An MPEG-TS-like segment: binary, with NUL bytes early, like real media.
SEGMENT = b"G\x40\x00\x10" + b"\x00" * 184


# --------------------------------------------------------------------------- helpers


def _sub(folder: Path, old: str, new: str, name: str = EPISODE_FILE) -> None:
    path = folder / name
    text = path.read_text(encoding="utf-8")
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _append(folder: Path, extra: str, name: str = EPISODE_FILE) -> None:
    with (folder / name).open("a", encoding="utf-8") as f:
        f.write(extra)


def _creative(folder: Path, text: str) -> None:
    (folder / CREATIVE_FILE).write_text(text, encoding="utf-8")


def _edit(folder: Path, fn: Callable[[dict[str, Any]], Any]) -> None:
    doc = yaml.safe_load((folder / EPISODE_FILE).read_text(encoding="utf-8"))
    fn(doc)
    (folder / EPISODE_FILE).write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")


def _source(folder: Path, uri: str) -> None:
    """Shot 1 is cut from ``uri`` instead of drawn from its keyframe."""
    _edit(folder, lambda d: (d["shots"][1].pop("keyframe"),
                             d["shots"][1].update(source={"uri": uri, "in_ms": 0})))


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def _playlist(*lines: str) -> str:
    return "\n".join(["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2", *lines,
                      "#EXT-X-ENDLIST", ""])


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under root (never following links, never opening anything)."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _refusal(folder: Path) -> list[tuple[str, str, str]]:
    with pytest.raises(EpisodeValidationError) as exc:
        load_episode(folder)
    return [(p.file, p.field, p.message) for p in exc.value.problems]


CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
    from anime_pipeline.domain.episode import EpisodeValidationError, load_episode
    try:
        bundle = load_episode(sys.argv[1])
    except EpisodeValidationError as e:
        print(json.dumps([[p.file, p.field, p.message] for p in e.problems]))
    else:
        print(json.dumps(None))
""")


def _refusal_isolated(folder: Path) -> list[tuple[str, str, str]]:
    """load_episode in a child process: at most 60 s, at most 1 GiB of address space."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(CHILD_MEMORY_BYTES)],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result is not None, "the hostile episode was accepted"
    return [tuple(p) for p in result]


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Attack:
    id: str
    build: Callable[[Path, Path], object]  # (episode folder, a folder outside it)
    file: str
    field: str  # exact, or a prefix when it ends with "*"
    fragments: tuple[str, ...]
    isolated: bool = False  # hang or memory risk: run in a capped child process


def _deep_flow(folder: Path, _: Path) -> None:
    _sub(folder, "title: テスト", "title: " + "[" * 900 + "]" * 900)


def _deep_block(folder: Path, _: Path) -> None:
    _sub(folder, "title: テスト", "title:\n  " + "- " * 950 + "x")


def _deep_creative(folder: Path, _: Path) -> None:
    _creative(folder, "style: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n")


def _laughs(folder: Path, _: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefghi", "bcdefghij", strict=True):
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    _append(folder, "\n".join(lines) + "\n")


def _fifo(name: str) -> Callable[[Path, Path], None]:
    def build(folder: Path, _: Path) -> None:
        (folder / name).unlink(missing_ok=True)
        os.mkfifo(folder / name)
    return build


def _dev_zero(name: str) -> Callable[[Path, Path], None]:
    def build(folder: Path, _: Path) -> None:
        (folder / name).unlink(missing_ok=True)
        os.symlink("/dev/zero", folder / name)
    return build


def _directory(name: str) -> Callable[[Path, Path], None]:
    def build(folder: Path, _: Path) -> None:
        (folder / name).unlink(missing_ok=True)
        (folder / name).mkdir()
    return build


def _fifo_via_inner_link(folder: Path, _: Path) -> None:
    os.mkfifo(folder / "pipe")
    os.symlink("pipe", folder / CREATIVE_FILE)


def _outside_yaml(name: str) -> Callable[[Path, Path], None]:
    def build(folder: Path, outside: Path) -> None:
        if name == EPISODE_FILE:
            target = _write(outside / "ep.yaml", (folder / EPISODE_FILE).read_text("utf-8")
                            + "secret_api_key: sk-outside\n")
        else:
            target = _write(outside / "cc.yaml", "mode: preview\nsecret_api_key: sk-outside\n")
        (folder / name).unlink(missing_ok=True)
        os.symlink(target, folder / name)
    return build


def _hls(rel: str, *lines: str, audio: bool = False) -> Callable[[Path, Path], None]:
    """A local playlist at ``rel`` used as footage of shot 1 (or as the audio mix)."""
    def build(folder: Path, outside: Path) -> None:
        _write(outside / "secret.ts", SEGMENT)
        _write(folder / "footage" / "ok.ts", SEGMENT)
        body = [line.replace("{outside}", str(outside)) for line in lines]
        _write(folder / rel, _playlist(*body))
        if audio:
            _edit(folder, lambda d: d.update(audio=rel))
        else:
            _source(folder, rel)
    return build


def _hls_symlinked_segment(folder: Path, outside: Path) -> None:
    _write(outside / "secret.ts", SEGMENT)
    (folder / "footage").mkdir()
    os.symlink(outside / "secret.ts", folder / "footage" / "seg.ts")
    _write(folder / "footage" / "x.m3u8", _playlist("#EXTINF:1,", "seg.ts"))
    _source(folder, "footage/x.m3u8")


def _hls_variant(folder: Path, outside: Path) -> None:
    _write(folder / "footage" / "master.m3u8",
           "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS=\"avc1.4d401f,mp4a.40.2\"\n"
           "low/index.m3u8\n")
    _write(folder / "footage" / "low" / "index.m3u8",
           _playlist("#EXTINF:1,", "https://attacker.invalid/x.ts"))
    _source(folder, "footage/master.m3u8")


def _hls_cycle(folder: Path, _: Path) -> None:
    _write(folder / "footage" / "loop.m3u8",
           "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nloop.m3u8\n")
    _source(folder, "footage/loop.m3u8")


def _hls_too_deep(folder: Path, _: Path) -> None:
    for i in range(8):
        _write(folder / "footage" / f"p{i}.m3u8",
               f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\np{i + 1}.m3u8\n")
    _write(folder / "footage" / "p8.m3u8", _playlist("#EXTINF:1,", "ok.ts"))
    _write(folder / "footage" / "ok.ts", SEGMENT)
    _source(folder, "footage/p0.m3u8")


def _manifest(rel: str, text: str, audio: bool = False) -> Callable[[Path, Path], None]:
    def build(folder: Path, _: Path) -> None:
        _write(folder / rel, text)
        if audio:
            _edit(folder, lambda d: d.update(audio=rel))
        else:
            _source(folder, rel)
    return build


E, C = EPISODE_FILE, CREATIVE_FILE
ATTACKS: list[Attack] = [
    # 1. nesting
    Attack("nesting-flow-900", _deep_flow, E, "title[0][0]*", ("nested deeper than 64",),
           isolated=True),
    Attack("nesting-block-950", _deep_block, E, "title[0][0]*", ("nested deeper than 64",),
           isolated=True),
    Attack("nesting-creative-1000", _deep_creative, C, "style.a.a*", ("nest",), isolated=True),
    # 2. integers beyond Python's int-string limit
    Attack("int-4301-digits", lambda f, _: _sub(f, "duration_ms: 500", "duration_ms: "
                                                + "9" * 4301),
           E, "shots[1].duration_ms", ("integer with 4301 characters is too long",),
           isolated=True),
    Attack("int-100000-digits-creative", lambda f, _: _creative(
        f, "budget:\n  max_gpu_minutes: " + "7" * 100_000 + "\n"),
           C, "budget.max_gpu_minutes", ("too long",), isolated=True),
    # 3. path lengths
    Attack("long-component-keyframe", lambda f, _: _edit(f, lambda d: d["shots"][0].update(
        keyframe="keyframes/" + "k" * 256 + ".png")),
           E, "shots[0].keyframe", ("path component of 260 bytes is too long",)),
    Attack("long-component-audio", lambda f, _: _edit(f, lambda d: d.update(
        audio="audio/" + "é" * 128)),
           E, "audio", ("path component of 256 bytes is too long",)),
    Attack("long-component-source", lambda f, _: _source(f, "footage/" + "x" * 300 + ".mp4"),
           E, "shots[1].source.uri", ("path component of 304 bytes",)),
    Attack("long-total-path", lambda f, _: _edit(f, lambda d: d.update(
        audio="a/" * 2100 + "mix.wav")),
           E, "audio", ("path of 4207 bytes is too long",)),
    # 4. the YAML files as something other than a small regular file
    Attack("creative-is-directory", _directory(C), C, "", ("regular file", "a directory")),
    Attack("episode-is-directory", _directory(E), E, "", ("regular file", "a directory")),
    Attack("creative-symlink-dev-zero", _dev_zero(C), C, "", ("outside the episode folder",),
           isolated=True),
    Attack("episode-symlink-dev-zero", _dev_zero(E), E, "", ("outside the episode folder",),
           isolated=True),
    Attack("creative-fifo", _fifo(C), C, "", ("a FIFO",), isolated=True),
    Attack("episode-fifo", _fifo(E), E, "", ("a FIFO",), isolated=True),
    Attack("creative-link-to-fifo-inside", _fifo_via_inner_link, C, "", ("a FIFO",),
           isolated=True),
    Attack("creative-over-1-MiB", lambda f, _: _creative(
        f, "mode: preview\n" + "#" * (1 << 20) + "\n"),
           C, "", ("larger than 1048576 bytes",)),
    Attack("episode-over-8-MiB", lambda f, _: _append(f, "#" * (8 << 20) + "\n"),
           E, "", ("larger than 8388608 bytes",)),
    # 5. anchors and aliases
    Attack("circular-alias", lambda f, _: _creative(f, "style: &a [*a]\n"),
           C, "style", ("anchors (&a) are not supported",), isolated=True),
    Attack("billion-laughs", _laughs, E, "a", ("anchors (&a) are not supported",),
           isolated=True),
    Attack("alias-without-anchor", lambda f, _: _sub(f, "title: テスト", "title: *nothing"),
           E, "title", ("aliases (*nothing) are not supported",)),
    # 6. lone surrogates (libyaml refuses the escape; the Python parser's value is refused)
    Attack("lone-surrogate-title", lambda f, _: _sub(f, "title: テスト", 'title: "\\ud800"'),
           E, "title", ("Unicode",)),
    Attack("lone-surrogate-speaker", lambda f, _: _sub(f, "speaker: Aki", 'speaker: "A\\udfff"'),
           E, "shots[0].dialogue[0].speaker", ("Unicode",)),
    Attack("nul-escape-title", lambda f, _: _sub(f, "title: テスト", 'title: "a\\0b"'),
           E, "title", ("control character U+0000",)),
    # 7. deadlines that cannot become UTC
    Attack("deadline-overflows-utc", lambda f, _: _creative(
        f, "sla:\n  deadline: 9999-12-31T23:59:59-23:59\n"),
           C, "sla.deadline", ("cannot be converted to UTC",)),
    Attack("deadline-overflows-utc-quoted", lambda f, _: _creative(
        f, "sla:\n  deadline: '9999-12-31T23:59:59-23:59'\n"),
           C, "sla.deadline", ("cannot be converted to UTC",)),
    Attack("deadline-year-2999", lambda f, _: _creative(
        f, "sla:\n  deadline: 2999-01-01T00:00:00Z\n"),
           C, "sla.deadline", ("outside 2000..2200",)),
    Attack("deadline-impossible-date", lambda f, _: _creative(
        f, "sla:\n  deadline: 2026-02-30T00:00:00Z\n"),
           C, "sla.deadline", ("not a valid timestamp",)),
    # 8. frame rates
    Attack("fps-0.0001", lambda f, _: _sub(f, "fps: 24", "fps: 0.0001"),
           E, "format.fps", ("greater than or equal to 1",)),
    Attack("fps-nan", lambda f, _: _sub(f, "fps: 24", "fps: .nan"),
           E, "format.fps", ("finite",)),
    Attack("min-fps-0.0001", lambda f, _: _creative(f, "style:\n  min_fps: 0.0001\n"),
           C, "style.min_fps", ("greater than or equal to 1",)),
    # 9. milliseconds that are not YAML integers
    Attack("end-ms-float", lambda f, _: _sub(f, "end_ms: 900", "end_ms: 30000.0"),
           E, "shots[0].dialogue[0].end_ms", ("30000.0 is not an integer",)),
    Attack("end-ms-string", lambda f, _: _sub(f, "end_ms: 900", "end_ms: '30000'"),
           E, "shots[0].dialogue[0].end_ms", ("'30000' is not an integer",)),
    Attack("start-ms-float", lambda f, _: _sub(f, "start_ms: 100", "start_ms: 100.5"),
           E, "shots[0].dialogue[0].start_ms", ("not an integer",)),
    Attack("duration-ms-string", lambda f, _: _sub(f, "duration_ms: 1000", "duration_ms: '1e9'"),
           E, "shots[0].duration_ms", ("not an integer",)),
    Attack("in-ms-float", lambda f, _: _edit(f, lambda d: d["shots"][0].update(
        source={"uri": "https://cdn.example.invalid/a.mp4", "in_ms": 1.5})),
           E, "shots[0].source.in_ms", ("not an integer",)),
    Attack("end-ms-past-shot", lambda f, _: _sub(f, "end_ms: 900", "end_ms: 30000"),
           E, "shots[0].dialogue[0].end_ms", ("past the end of shot S01",)),
    # 10. the YAML files as symlinks leaving the folder
    Attack("creative-symlink-outside", _outside_yaml(C), C, "", ("outside the episode folder",)),
    Attack("episode-symlink-outside", _outside_yaml(E), E, "", ("outside the episode folder",)),
    # 11. local playlists and manifests naming files outside the folder
    Attack("hls-absolute-segment", _hls("footage/x.m3u8", "#EXTINF:1,", "{outside}/secret.ts"),
           E, "shots[1].source.uri", ("'footage/x.m3u8'", "HLS playlist line 5",
                                      "absolute paths are not allowed")),
    Attack("hls-file-url-segment", _hls("footage/x.m3u8", "#EXTINF:1,",
                                        "file://{outside}/secret.ts"),
           E, "shots[1].source.uri", ("HLS playlist line 5", "URL schemes are not allowed")),
    Attack("hls-dotdot-segment", _hls("footage/x.m3u8", "#EXTINF:1,", "../../outside/secret.ts"),
           E, "shots[1].source.uri", ("HLS playlist line 5", "'..' is not allowed")),
    Attack("hls-symlinked-segment", _hls_symlinked_segment, E, "shots[1].source.uri",
           ("'seg.ts'", "resolves outside the episode folder")),
    Attack("hls-by-content-as-audio", _hls("audio/mix.wav", "#EXTINF:1,", "{outside}/secret.ts",
                                           audio=True),
           E, "audio", ("'audio/mix.wav'", "HLS playlist line 5", "absolute")),
    Attack("hls-key-uri", _hls("footage/x.m3u8", '#EXT-X-KEY:METHOD=AES-128,URI="/etc/passwd"',
                               "#EXTINF:1,", "ok.ts"),
           E, "shots[1].source.uri", ("HLS playlist line 4", "'/etc/passwd'", "absolute")),
    Attack("hls-map-uri", _hls("footage/x.m3u8", '#EXT-X-MAP:URI="../init.mp4"',
                               "#EXTINF:1,", "ok.ts"),
           E, "shots[1].source.uri", ("HLS playlist line 4", "'..' is not allowed")),
    Attack("hls-media-uri", _hls("footage/x.m3u8",
                                 '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="en",'
                                 'URI="http://attacker.invalid/a.m3u8"'),
           E, "shots[1].source.uri", ("HLS playlist line 4", "URL schemes")),
    Attack("hls-iframe-uri", _hls("footage/x.m3u8",
                                  '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1,'
                                  'URI="data:application/x-mpegurl;base64,AAAA"'),
           E, "shots[1].source.uri", ("HLS playlist line 4", "URL schemes")),
    Attack("hls-variant-remote", _hls_variant, E, "shots[1].source.uri",
           ("HLS playlist line 3: 'low/index.m3u8': HLS playlist line 5", "URL schemes")),
    Attack("hls-cycle", _hls_cycle, E, "shots[1].source.uri", ("cycle",)),
    Attack("hls-nested-too-deep", _hls_too_deep, E, "shots[1].source.uri", ("nested more",)),
    Attack("hls-missing-segment", _hls("footage/x.m3u8", "#EXTINF:1,", "gone.ts"),
           E, "shots[1].source.uri", ("'gone.ts'", "file not found")),
    Attack("dash-manifest", _manifest("footage/take.mp4",
                                      '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:'
                                      'mpd:2011"><BaseURL>file:///etc/</BaseURL></MPD>\n'),
           E, "shots[1].source.uri", ("DASH manifest",)),
    Attack("ffconcat-list", _manifest("audio/mix.wav", "ffconcat version 1.0\nfile /etc/passwd\n",
                                      audio=True),
           E, "audio", ("ffconcat list",)),
    Attack("sdp-description", _manifest("footage/take.mp4",
                                        "v=0\no=- 0 0 IN IP4 127.0.0.1\nc=IN IP4 10.0.0.1\n"
                                        "m=video 5004 RTP/AVP 96\n"),
           E, "shots[1].source.uri", ("SDP session description",)),
    Attack("hls-backslash-in-tag", _hls("footage/x.m3u8",
                                        '#EXT-X-KEY:METHOD=AES-128,URI="\\/etc/passwd"',
                                        "#EXTINF:1,", "ok.ts"),
           E, "shots[1].source.uri", ("HLS playlist line 4: backslashes are not allowed",)),
    Attack("script-format", _manifest("footage/take.vpy", "import os\n"),
           E, "shots[1].source.uri", ("script formats",)),
    Attack("frame-number-pattern", lambda f, _: _source(f, "footage/img%03d.png"),
           E, "shots[1].source.uri", ("'%' is not allowed",)),
    Attack("url-like-local-path", lambda f, _: _source(f, "concat:footage/a.mp4|/etc/passwd"),
           E, "shots[1].source.uri", ("only http(s):// URLs or paths inside the folder",)),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_hostile_input_is_refused_naming_file_and_field(attack: Attack, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = minimal_episode(tmp_path / "ep")
    attack.build(folder, outside)
    before = _snapshot(tmp_path)

    problems = _refusal_isolated(folder) if attack.isolated else _refusal(folder)

    assert _snapshot(tmp_path) == before, "validation wrote something"

    def matches(p: tuple[str, str, str]) -> bool:
        file, fld, message = p
        field_ok = (fld.startswith(attack.field[:-1]) if attack.field.endswith("*")
                    else fld == attack.field)
        return file == attack.file and field_ok and all(f in message for f in attack.fragments)

    assert any(matches(p) for p in problems), problems
    for file, fld, message in problems:
        assert file in (EPISODE_FILE, CREATIVE_FILE) and message
        assert "\n" not in file + fld + message and len(message) <= 500


# --------------------------------------------------------------------------- around the corpus


def test_valid_local_hls_inside_the_folder_is_accepted(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    _write(folder / "footage" / "master.m3u8",
           "#EXTM3U\n"
           '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="ja",URI="audio/ja.m3u8"\n'
           '#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS="avc1.4d401f,mp4a.40.2",AUDIO="aud"\n'
           "low/index.m3u8\n")
    _write(folder / "footage" / "low" / "index.m3u8", "\ufeff" + _playlist(  # BOM: fine
        '#EXT-X-KEY:METHOD=AES-128,URI="key.bin",IV=0x00000000000000000000000000000001',
        '#EXT-X-MAP:URI="init.mp4"', "#EXTINF:1.0,", "seg0.ts", "#EXTINF:1.0,", "./seg1.ts"))
    _write(folder / "footage" / "audio" / "ja.m3u8", _playlist("#EXTINF:1.0,", "a0.aac"))
    for rel in ("low/key.bin", "low/init.mp4", "low/seg0.ts", "low/seg1.ts", "audio/a0.aac"):
        _write(folder / "footage" / rel, SEGMENT)
    _source(folder, "footage/master.m3u8")
    shot = load_episode(folder).episode.shots[1]
    assert shot.source is not None and shot.source.uri == "footage/master.m3u8"


def test_unknown_keys_are_warned_about_and_never_dumped(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    _creative(folder, "mode: preview\nsecret_api_key: sk-live-123\nstyle:\n  min_fps: 8\n"
                      "  token: abc\n")
    _edit(folder, lambda d: (d.update(api_key="k"), d["shots"][0].update(lens="35mm"),
                             d["shots"][0]["camera"].update(rig="crane")))
    bundle = load_episode(folder)
    assert [str(w) for w in bundle.warnings] == [
        "episode.yaml: api_key: unknown field (ignored)",
        "episode.yaml: shots[0].camera.rig: unknown field (ignored)",
        "episode.yaml: shots[0].lens: unknown field (ignored)",
        "creative_control.yaml: secret_api_key: unknown field (ignored)",
        "creative_control.yaml: style.token: unknown field (ignored)",
    ]
    dumped = json.dumps([bundle.episode.model_dump(mode="json"),
                         bundle.creative.model_dump(mode="json")])
    for secret in ("api_key", "sk-live-123", "lens", "rig", "token"):
        assert secret not in dumped
    assert bundle.creative.style.min_fps == 8


def test_yaml_symlink_inside_the_folder_is_followed(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    _write(folder / "config" / "cc.yaml", "mode: final\n")
    os.symlink("config/cc.yaml", folder / CREATIVE_FILE)
    assert load_episode(folder).creative.mode.value == "final"


def test_problems_are_capped_and_memory_stays_bounded(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    (folder / EPISODE_FILE).write_text(
        "tenant_id: a\nproject_id: b\nepisode_id: c\nformat: {width: 320, height: 180, fps: 24}"
        "\naudio: audio/mix.wav\nshots:\n"
        + "".join("- {dialogue: [" + "{}, " * 999 + "{}]}\n" for _ in range(400)),
        encoding="utf-8")
    problems = _refusal_isolated(folder)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1][2].startswith("more problems not shown")


def test_too_many_yaml_nodes_are_refused(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    _sub(folder, "title: テスト", "title: [" + "1," * 600_000 + "1]")
    problems = _refusal_isolated(folder)
    assert any(f == EPISODE_FILE and fld.startswith("title[") and "too many values" in m
               for f, fld, m in problems), problems


SNIFF_CHILD = textwrap.dedent("""
    import os, resource, sys
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from anime_pipeline.domain.episode import sniff_image
    from anime_pipeline.domain.playlists import LocalPathError, read_regular, read_text_prefix
    for path in sys.argv[1:]:
        assert sniff_image(Path(path)) is None, path
        for read in (lambda p: read_regular(p, 100), read_text_prefix):
            try:
                read(path)
            except LocalPathError as e:
                print(path, e)
            else:
                raise SystemExit(f"{path} was read")
""")


def test_low_level_readers_never_read_fifos_or_devices(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    proc = subprocess.run([sys.executable, "-c", SNIFF_CHILD, str(tmp_path / "pipe"),
                           "/dev/zero", str(tmp_path)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "a FIFO" in out and "a character device" in out and "a directory" in out
    assert sniff_image(tmp_path / "missing.png") is None


# --------------------------------------------------------------------------- the YAML layer

LOADERS = [pytest.param(yaml.SafeLoader, id="python")]
if hasattr(yaml, "CSafeLoader"):
    LOADERS.insert(0, pytest.param(yaml.CSafeLoader, id="libyaml"))

YAML_ATTACKS: list[tuple[str, str, str, str]] = [
    ("depth", "a: " + "[" * 500 + "]" * 500,  # deep paths are shortened in the middle
     "a" + "[0]" * 9 + "...(52 more levels)...[0][0]", "nested deeper than 64 levels"),
    ("alias", "a: &x [1]\nb: *x\n", "a", "anchors (&x) are not supported"),
    ("merge", "a: {<<: {b: 1}}\n", "a", "merge keys"),
    ("int", "a: [" + "1" * 5000 + "]\n", "a[0]", "integer with 5000 characters"),
    ("hex-int", "a: 0x" + "f" * 200 + "\n", "a", "too long"),
    ("sexagesimal", "a: " + "1:" * 300 + "1\n", "a", "too long"),
    ("surrogate", 'a: {b: "\\udc00"}\n', "a.b", "Unicode"),
    ("nul", 'a: "\\0"\n', "a", "U+0000"),
    ("nul-key", '"k\\0": 1\n', "", "U+0000"),
    ("python-tag", "a: !!python/object/apply:os.system [echo hi]\n", "a", "unsupported YAML tag"),
    ("set-tag", "a: !!set {x: null}\n", "a", "unsupported YAML tag"),
    ("bad-bool", "a: !!bool maybe\n", "a", "not a valid bool"),
    ("bad-date", "a: 2026-13-01\n", "a", "not a valid timestamp"),
    ("tz-offset", "a: 2026-01-01T00:00:00+25:00\n", "a", "not a valid timestamp"),
    ("duplicate", "a: 1\nb: 2\na: 3\n", "a", "duplicate key 'a'"),
    ("complex-key", "? [1, 2]\n: x\n", "", "mapping keys must be plain values"),
    ("two-docs", "a: 1\n---\nb: 2\n", "", "single YAML document"),
    ("syntax", "a:\n  b: [1, 2\n", "a.b", "invalid YAML: line"),
    ("control-char", "a: \x07\n", "", "invalid YAML: line 1"),
]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("text,path,fragment", [a[1:] for a in YAML_ATTACKS],
                         ids=[a[0] for a in YAML_ATTACKS])
def test_safe_yaml_refuses_with_path(loader: Any, text: str, path: str, fragment: str) -> None:
    with pytest.raises(safe_yaml.YamlRefused) as exc:
        safe_yaml.load_yaml(text, loader=loader)
    assert exc.value.path == path
    assert fragment in exc.value.message
    assert "\n" not in exc.value.message


@pytest.mark.parametrize("loader", LOADERS)
def test_safe_yaml_reads_what_safe_load_reads(loader: Any) -> None:
    text = textwrap.dedent("""\
        a: [1, -2, 0x1f, 0o17, 1_000, 1.5, .inf, -.nan, true, no, ~, null, "s", 'q']
        b: {nested: {deeper: [x, {y: z}]}}
        c: 2026-12-01T12:00:00Z
        d: 2026-12-01
        e: !!str 12
        f: |
          multi
          line
        "quoted key": "\\u00e9\\U0001F600"
        1: numeric key
    """)
    ours = safe_yaml.load_yaml(text, loader=loader)
    theirs = yaml.safe_load(text)
    assert repr(ours) == repr(theirs)  # repr: nan != nan


def test_playlist_attribute_parsing_matches_ffmpeg() -> None:
    attrs = playlists.hls_attributes(
        'METHOD=AES-128,URI="a,b \\"c\\".bin", IV=0x01 KEYFORMAT="identity"')
    assert attrs == [("METHOD", "AES-128"), ("URI", 'a,b "c".bin'), ("IV", "0x01"),
                     ("KEYFORMAT", "identity")]


@pytest.mark.parametrize("head,kind", [
    (b"#EXTM3U\n", "an HLS playlist"),
    (b"\xef\xbb\xbf  #EXTM3U\r\n", "an HLS playlist"),
    (b"ffconcat version 1.0\n", "an ffconcat list"),
    (b"<?xml version='1.0'?><mpd>", "a DASH manifest (MPD)"),
    (b"<CompositionPlaylist xmlns='x'>", "an IMF composition playlist"),
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\n", "an SDP session description"),
    (b"RIFF", None),
    (b"", None),
])
def test_manifest_kind_by_content(head: bytes, kind: str | None) -> None:
    assert playlists.manifest_kind(head) == kind
