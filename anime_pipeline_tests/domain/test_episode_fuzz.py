"""Fuzzing the episode validator with hypothesis.

Whatever episode.yaml and creative_control.yaml hold, ``load_episode`` either returns a
bundle whose contents the pipeline can use (dumpable as UTF-8 JSON, deadline convertible to
UTC, dialogue inside its shot, finite numbers) or raises ``EpisodeValidationError`` with at
least one one-line problem naming one of the YAML files; never any other exception and never
the validator's "internal error" safety net.

Documents are (a) random mutations of a valid episode (fields replaced by random values of
random types, dropped or added, raw YAML snippets such as deep nesting, huge integers,
escapes for lone surrogates, anchors and tags), random text, YAML token soup and random
bytes, and (b) random creative_control documents. Outcomes are counted in ``OUTCOMES``
(also reported as hypothesis events) and printed by the last test of this module.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anime_pipeline.domain import safe_yaml
from anime_pipeline.domain.episode import (
    CREATIVE_FILE,
    EPISODE_FILE,
    EpisodeBundle,
    EpisodeValidationError,
    load_episode,
)
from anime_pipeline_tests.conftest import minimal_episode

OUTCOMES: Counter[str] = Counter()

# 500 examples per test keeps this file around 10-15 s on 2 cores; set EPISODE_FUZZ_EXAMPLES
# for a longer hunt.
FUZZ = settings(
    max_examples=int(os.environ.get("EPISODE_FUZZ_EXAMPLES", "500")),
    deadline=None,
    database=None,  # write nothing into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One valid episode folder, reused: each example rewrites only the YAML files."""
    root = minimal_episode(tmp_path_factory.mktemp("fuzz") / "ep")
    (root / "footage").mkdir()
    (root / "footage" / "take.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    (root / "footage" / "x.m3u8").write_text("#EXTM3U\n#EXTINF:1,\ntake.mp4\n")
    return root


@pytest.fixture(scope="module")
def base_doc(folder: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((folder / EPISODE_FILE).read_text(encoding="utf-8"))
    return doc


# --------------------------------------------------------------------------- values


class Raw:
    """A raw YAML snippet (one line, flow style) spliced into the dumped document."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Dumper(yaml.SafeDumper):
    pass


def _dump(doc: Any) -> str:
    raws: list[str] = []

    def represent_raw(dumper: yaml.SafeDumper, raw: Raw) -> yaml.Node:
        raws.append(raw.text)
        return dumper.represent_scalar("tag:yaml.org,2002:str", f"rawsnippet{len(raws) - 1}x")

    class Dumper(_Dumper):
        pass

    Dumper.add_representer(Raw, represent_raw)
    text = yaml.dump(doc, Dumper=Dumper, allow_unicode=True, width=10_000)
    for i, raw in enumerate(raws):
        text = text.replace(f"rawsnippet{i}x", raw, 1)
    return text


INTERESTING_STRINGS = [
    "", " ", "S01", "S 01", "establishing", "critical", "push_in", "preview", "MEDIUM",
    "keyframes/S01.png", "keyframes/S02.png", "audio/mix.wav", "footage/take.mp4",
    "footage/x.m3u8", "../outside.png", "/etc/passwd", "C:\\x", "file:///etc/passwd",
    "https://cdn.example.invalid/a.m3u8", "ftp://x/y", "concat:a|b", "keyframes",
    "k" * 300, "a/" * 600, "9999-12-31T23:59:59-23:59", "2026-12-01T12:00:00Z",
    "2026-12-01T12:00:00", "1e400", "30000", "0x10", "テスト", "\u202e", "a\nb",
]

RAW_SNIPPETS = st.one_of(
    st.integers(10, 1200).map(lambda n: Raw("[" * n + "]" * n)),
    st.integers(10, 1200).map(lambda n: Raw("{a: " * n + "1" + "}" * n)),
    st.integers(90, 6000).map(lambda n: Raw("9" * n)),
    st.sampled_from([
        '"\\ud800"', '"a\\udfffb"', '"\\0"', '"\\x07"', '"\\U0010FFFF"', "&a [1]", "*a",
        "&b {c: 1}", "!!python/object/apply:os.system [id]", "!!binary aGVsbG8=",
        "0x" + "f" * 150, "1:2:3", "190:20:30", "!!set {a: null}", "{<<: {a: 1}}",
        ".nan", ".inf", "-.inf", "!!timestamp 2026-02-30", "2026-02-30", "2026-12-01",
        "9999-12-31T23:59:59-23:59", "2026-12-01T12:00:00+25:00", "!!int 12x",
        "!!bool maybe", "!!float x", "=", "~", "{? [1]: 2}", "[1, 2", "!custom x",
        "!!str 12", "!!int '7'", "1_000_000", "0o777", "-0", "+12", "12.0",
        "1e3", "'30000'", "30000.0", "true", "no", "null",
    ]).map(Raw),
)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(INTERESTING_STRINGS),
    st.dates(),
)

VALUES = st.recursive(
    st.one_of(SCALARS, RAW_SNIPPETS),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(
            ["id", "type", "duration_ms", "keyframe", "source", "uri", "in_ms", "dialogue",
             "start_ms", "end_ms", "speaker", "text", "camera", "move", "strength"])),
            inner, max_size=4),
    ),
    max_leaves=8,
)


BOUNDS = [-1, 0, 1, 16, 100, 199, 200, 320, 899, 900, 1000, 1001, 120_000, 120_001,
          86_400_000, 86_400_001]


def _near(value: Any) -> st.SearchStrategy[Any]:
    """Values of the same kind as ``value``, near the contract's bounds."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.sampled_from(BOUNDS), st.integers(value - 2, value + 2),
                         st.integers(0, 200_000))
    if isinstance(value, float):
        return st.one_of(st.sampled_from([0.0, 0.3, 1.0, 1.0001, 0.9999, -0.1]),
                         st.floats(-1, 2))
    if isinstance(value, str):
        return st.one_of(st.just(value), st.sampled_from(INTERESTING_STRINGS),
                         st.text(min_size=1, max_size=20))
    if isinstance(value, list):
        return st.lists(st.sampled_from(value), max_size=len(value) + 1) if value \
            else st.just([])
    return st.just(value)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*path, i))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def _mutate(data: st.DataObject, doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        op = data.draw(st.sampled_from(["tweak", "tweak", "replace", "drop", "add"]),
                       label="op")
        parent = _parent(doc, path)
        if op == "tweak":  # a value of the same kind, often near a bound: mostly plausible
            parent[path[-1]] = data.draw(_near(parent[path[-1]]), label="tweak")
        elif op == "replace":
            parent[path[-1]] = data.draw(VALUES, label="value")
        elif op == "drop":
            del parent[path[-1]]
        else:
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[data.draw(st.text(max_size=10), label="key")] = data.draw(VALUES)
            elif isinstance(target, list):
                target.append(data.draw(VALUES, label="item"))
            else:
                parent[path[-1]] = [target, data.draw(VALUES)]
    return doc


# --------------------------------------------------------------------------- the oracle


def _write(folder: Path, name: str, content: str | bytes | None) -> None:
    path = folder / name
    if content is None:
        path.unlink(missing_ok=True)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8", "surrogatepass"))


def _check(folder: Path, kind: str) -> None:
    try:
        bundle = load_episode(folder)
    except EpisodeValidationError as e:
        assert e.problems, "refused without a problem"
        for p in e.problems:
            assert p.file in (EPISODE_FILE, CREATIVE_FILE), p
            assert p.message and "internal validator error" not in p.message, p
            line = str(p)
            assert "\n" not in line and "\r" not in line, line
            line.encode("utf-8")
        OUTCOMES[f"{kind}: refused"] += 1
        event(f"{kind}: refused")
        return
    except Exception as e:  # the property: nothing else ever escapes
        OUTCOMES[f"{kind}: CRASH {type(e).__name__}"] += 1
        raise
    _usable(bundle)
    OUTCOMES[f"{kind}: accepted"] += 1
    event(f"{kind}: accepted")


def _usable(bundle: EpisodeBundle) -> None:
    """What the rest of the pipeline relies on for an accepted episode."""
    ep, cc = bundle.episode, bundle.creative
    json.dumps([ep.model_dump(mode="json"), cc.model_dump(mode="json"),
                [str(w) for w in bundle.warnings]], ensure_ascii=False).encode("utf-8")
    assert 1 <= ep.format.fps <= 120 and math.isfinite(ep.format.fps)
    assert ep.duration_ms == sum(s.duration_ms for s in ep.shots) > 0
    for shot in ep.shots:
        assert type(shot.duration_ms) is int
        for line in shot.dialogue:
            assert type(line.end_ms) is int and 0 <= line.start_ms < line.end_ms
            assert line.end_ms <= shot.duration_ms
        for rel in (shot.keyframe, shot.source.uri if shot.source else None):
            if rel and not rel.startswith(("http://", "https://")):
                real = os.path.realpath(bundle.path(rel))
                assert real.startswith(os.path.realpath(bundle.root) + os.sep)
    if cc.sla.deadline is not None:
        assert 2000 <= cc.sla.deadline.astimezone(UTC).year <= 2200
    if cc.budget.max_gpu_minutes is not None:
        assert math.isfinite(cc.budget.max_gpu_minutes)


# --------------------------------------------------------------------------- (a) episode.yaml


@FUZZ
@given(data=st.data())
def test_mutated_episode_documents(folder: Path, base_doc: dict[str, Any],
                                   data: st.DataObject) -> None:
    doc = _mutate(data, base_doc)
    _write(folder, EPISODE_FILE, _dump(doc))
    _write(folder, CREATIVE_FILE, None)
    _check(folder, "episode mutation")


TOKENS = ["a:", "shots:", "- ", "[", "]", "{", "}", ": ", ", ", "&a ", "*a", "!!str ",
          "!!python/name:os.system ", '"', "'", "\n", "  ", "# c", "---\n", "...\n", "? ",
          "|\n", ">-\n", '"\\ud800"', "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "1", "-1.5e3",
          "9" * 200, "<<: ", "~", "\t", "\ufeff", "id: S01", "duration_ms: 1000"]


@FUZZ
@given(content=st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(TOKENS), max_size=60).map("".join),
    st.binary(max_size=300),
    st.text(max_size=50).map(lambda t: "\ufeff" + t),
))
def test_random_episode_text_and_bytes(folder: Path, base_doc: dict[str, Any],
                                       content: str | bytes) -> None:
    _write(folder, EPISODE_FILE, content)
    _write(folder, CREATIVE_FILE, None)
    _check(folder, "episode text/bytes")


LOADERS = [yaml.SafeLoader, *([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])]


@FUZZ
@given(content=st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
    st.builds(_dump, VALUES),
), loader=st.sampled_from(LOADERS))
def test_yaml_layer_agrees_with_safe_load(content: str, loader: Any) -> None:
    """Differential: whatever safe_yaml accepts, yaml.safe_load reads the same way."""
    try:
        ours = safe_yaml.load_yaml(content, loader=loader)
    except safe_yaml.YamlRefused as e:
        assert "\n" not in e.message and e.message
        OUTCOMES["yaml layer: refused"] += 1
        return
    theirs = yaml.load(content, Loader=loader)
    assert repr(ours) == repr(theirs)
    OUTCOMES["yaml layer: accepted, same as safe_load"] += 1


# --------------------------------------------------------------------------- (b) creative


CC_VALUES = st.one_of(
    SCALARS, RAW_SNIPPETS,
    st.sampled_from(["preview", "standard", "final", "LOW", "MEDIUM", "HIGH", 38, 0.5, 8, 1,
                     120, 121, -1, True, False, "2026-12-01T12:00:00Z",
                     "2026-12-01T12:00:00+09:00", "2199-12-31T23:59:59Z",
                     "1999-12-31T23:59:59Z", "2026-12-01", 1.7e9]),
)
CC_SECTION = st.dictionaries(
    st.one_of(st.sampled_from([
        "max_gpu_minutes", "deadline", "prefer_smooth_motion", "min_fps",
        "enable_shot_level_budget", "enable_dynamic_fps", "enable_backend_priority_assignment",
    ]), st.text(max_size=8)),
    CC_VALUES, max_size=4,
)
PLAUSIBLE_CREATIVE = st.fixed_dictionaries({}, optional={
    "mode": st.sampled_from(["preview", "standard", "final", "rush"]),
    "global_profile": st.sampled_from(["LOW", "MEDIUM", "HIGH", None, "low"]),
    "budget": st.fixed_dictionaries({}, optional={"max_gpu_minutes": st.one_of(
        st.floats(-1, 1e7), st.integers(-1, 10**7), st.none())}),
    "sla": st.fixed_dictionaries({}, optional={"deadline": st.one_of(
        st.datetimes(timezones=st.timezones()), st.datetimes().map(lambda d: d.isoformat()),
        st.sampled_from(["2026-12-01T12:00:00Z", "9999-12-31T23:59:59-23:59", None]))}),
    "style": st.fixed_dictionaries({}, optional={
        "prefer_smooth_motion": st.booleans(),
        "min_fps": st.one_of(st.floats(0, 200), st.integers(0, 200), st.none())}),
    "feature_flags": st.fixed_dictionaries({}, optional={
        k: st.one_of(st.booleans(), st.sampled_from(["yes", "maybe", 1, 2]))
        for k in ("enable_shot_level_budget", "enable_dynamic_fps",
                  "enable_backend_priority_assignment")}),
    "extra_key": VALUES,
})
CREATIVE_DOCS = st.one_of(
    PLAUSIBLE_CREATIVE,
    PLAUSIBLE_CREATIVE,
    st.dictionaries(
        st.one_of(st.sampled_from(["mode", "global_profile", "budget", "sla", "style",
                                   "feature_flags"]), st.text(max_size=8)),
        st.one_of(CC_VALUES, CC_SECTION, st.lists(CC_VALUES, max_size=3)),
        max_size=6,
    ),
    VALUES,
)


@FUZZ
@given(doc=CREATIVE_DOCS)
def test_random_creative_control_documents(folder: Path, base_doc: dict[str, Any],
                                           doc: Any) -> None:
    _write(folder, EPISODE_FILE, _dump(base_doc))
    _write(folder, CREATIVE_FILE, _dump(doc))
    _check(folder, "creative_control")


def test_fuzz_report(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this module: print the outcome counts and check every kind ran."""
    total = sum(OUTCOMES.values())
    with capsys.disabled():
        print(f"\nepisode fuzz: {total} cases")
        for key, n in sorted(OUTCOMES.items()):
            print(f"  {key}: {n}")
    if total == 0:
        pytest.skip("the fuzz tests did not run (deselected)")
    assert not [k for k in OUTCOMES if "CRASH" in k]
    assert OUTCOMES["episode mutation: accepted"] > 0
    assert OUTCOMES["episode mutation: refused"] > 0
    assert OUTCOMES["creative_control: accepted"] > 0
    assert OUTCOMES["creative_control: refused"] > 0
