"""The audio event manifest is analysed once per set of inputs: an unchanged mix and timeline
reuse the stored manifest; new mix bytes (even of the same size), a changed timeline or new
analysis code make a new one."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from anime_pipeline.domain.records import AudioManifest
from anime_pipeline.pipeline import catalog, planning
from anime_pipeline_tests.conftest import write_wav
from anime_pipeline_tests.pipeline.conftest import Planned


@pytest.fixture
def analyses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = planning._analyse_audio

    def spy(bundle: Any) -> AudioManifest:
        seen.append(bundle.episode.key)
        return real(bundle)

    monkeypatch.setattr(planning, "_analyse_audio", spy)
    return seen


def test_an_unchanged_mix_is_not_analysed_again(planned: Planned, analyses: list[str]) -> None:
    first = planning.read_audio_manifest(planned.store, planned.bundle.episode.key)
    assert first.inputs_sha256 == planning.audio_inputs(planned.bundle)
    again = planning.write_audio_manifest(planned.store, planned.bundle)
    assert analyses == [] and again == first


def test_new_mix_bytes_of_the_same_size_are_analysed(planned: Planned,
                                                     analyses: list[str]) -> None:
    mix = planned.folder / "audio" / "mix.wav"
    st = mix.stat()
    time.sleep(0.05)
    write_wav(mix, seconds=2.0, rate=8000)  # the same length...
    data = bytearray(mix.read_bytes())
    data[-200:] = bytes(200)  # ...with other samples at the end
    mix.write_bytes(bytes(data))
    os.utime(mix, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert mix.stat().st_size == st.st_size
    planning.write_audio_manifest(planned.store, planned.bundle)
    assert len(analyses) == 1


def test_a_changed_timeline_or_analysis_is_analysed(planned: Planned, analyses: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = planned.folder / "episode.yaml"
    doc = yaml.safe_load(path.read_text("utf-8"))
    doc["shots"][1]["duration_ms"] = 700
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    bundle = catalog.register(planned.store, planned.folder)
    made = planning.write_audio_manifest(planned.store, bundle)
    assert len(analyses) == 1 and made.shots[1].end_ms == 1700
    planning.write_audio_manifest(planned.store, bundle)
    assert len(analyses) == 1  # and reused from then on
    monkeypatch.setattr(planning, "_analysis_code", lambda: "another analyser")
    planning.write_audio_manifest(planned.store, bundle)
    assert len(analyses) == 2


def test_a_playlist_mix_is_never_reused(tmp_path: Path, make_planned: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its segments are other files: the playlist's own bytes do not fingerprint the mix."""
    p = make_planned("hls")
    stored = planning.read_audio_manifest(p.store, p.bundle.episode.key)
    analyses: list[str] = []
    monkeypatch.setattr(planning, "_analyse_audio",
                        lambda bundle: analyses.append(bundle.episode.key) or stored)
    (p.folder / "audio" / "a.wav").write_bytes((p.folder / "audio" / "mix.wav").read_bytes())
    (p.folder / "audio" / "mix.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\na.wav\n#EXT-X-ENDLIST\n", "utf-8")
    path = p.folder / "episode.yaml"
    doc = yaml.safe_load(path.read_text("utf-8"))
    doc["audio"] = "audio/mix.m3u8"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    bundle = catalog.register(p.store, p.folder)
    assert planning.audio_inputs(bundle) is None
    planning.write_audio_manifest(p.store, bundle)
    planning.write_audio_manifest(p.store, bundle)
    assert len(analyses) == 2
