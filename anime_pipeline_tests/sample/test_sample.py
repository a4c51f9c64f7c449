"""The bundled sample episode: generated for real, validated, probed with ffmpeg, analysed."""

from __future__ import annotations

import hashlib
import re
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean

import pytest

from anime_pipeline.domain.audio import analyze, build_manifest, manifest_problems
from anime_pipeline.domain.episode import Episode, EpisodeBundle, load_episode
from anime_pipeline.media.audio_io import decode_audio
from anime_pipeline.media.ffmpeg import probe
from anime_pipeline.media.synth import draw_keyframe, find_font, keyframe_filtergraph
from anime_pipeline.sample import sample_shots, synthesize_mix, write_sample_episode

CJK = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> EpisodeBundle:
    root = write_sample_episode(tmp_path_factory.mktemp("sample") / "ep01")
    return load_episode(root)


def test_sample_episode_validates_with_the_expected_shape(sample: EpisodeBundle) -> None:
    ep = sample.episode
    assert sample.warnings == ()
    assert ep.key == "studio-a/moonlit-courier/ep01"
    assert (ep.format.width, ep.format.height, ep.format.fps) == (1280, 720, 24)
    assert len(ep.shots) == 12
    assert ep.duration_ms == 60_000
    assert len({s.duration_ms for s in ep.shots}) >= 5  # varied durations
    assert {s.type.value for s in ep.shots} == {
        "establishing", "dialogue", "action", "insert", "transition",
    }  # fmt: skip
    moves = {s.camera.move.value for s in ep.shots}
    assert len(moves) >= 5 and "shake" in moves
    assert all(s.camera.move.value == "shake" for s in ep.shots if s.criticality == "critical")
    assert any(s.type.value == "action" and s.camera.move.value == "shake" for s in ep.shots)
    assert {s.criticality.value for s in ep.shots} == {"low", "normal", "critical"}


def test_sample_dialogue_in_english_and_japanese(sample: EpisodeBundle) -> None:
    lines = [(s, d) for s in sample.episode.shots for d in s.dialogue]
    assert {d.speaker for _, d in lines} == {"Aki", "Ben"}
    assert any(CJK.search(d.text) for _, d in lines if d.speaker == "Aki")
    assert any(re.search(r"[A-Za-z]{3}", d.text) for _, d in lines if d.speaker == "Ben")
    for shot, d in lines:
        assert 0 <= d.start_ms < d.end_ms <= shot.duration_ms
    raw = (sample.root / "episode.yaml").read_text(encoding="utf-8")
    assert CJK.search(raw), "CJK text is written as UTF-8, not escaped"


def test_sample_creative_control(sample: EpisodeBundle) -> None:
    cc = sample.creative
    assert cc.mode.value == "standard"
    assert cc.budget.max_gpu_minutes == 38
    assert cc.sla.deadline is not None and cc.sla.deadline.tzinfo is not None
    # A week ahead of whenever it is written: the demo's plan is never staged by a date
    # that has passed.
    ahead = cc.sla.deadline - datetime.now(UTC)
    assert timedelta(days=6) < ahead <= timedelta(days=7)
    assert cc.style.prefer_smooth_motion and cc.style.min_fps == 8
    assert cc.feature_flags.enable_shot_level_budget


def test_a_sample_written_with_a_deadline_keeps_it(tmp_path: Path) -> None:
    due = datetime(2027, 3, 1, 9, tzinfo=UTC)
    folder = write_sample_episode(tmp_path / "ep", n_shots=2, shot_ms=500, deadline=due)
    assert "deadline: '2027-03-01T09:00:00Z'" in (folder / "creative_control.yaml").read_text(
        encoding="utf-8")


def test_sample_keyframes_are_real_distinct_pngs(sample: EpisodeBundle) -> None:
    digests = set()
    keyframed = [s for s in sample.episode.shots if s.keyframe]
    assert len(keyframed) == 11
    for shot in keyframed:
        assert shot.keyframe == f"keyframes/{shot.id}.png"
        path = sample.path(shot.keyframe)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        video = probe(path).first("video")
        assert video is not None and video.codec == "png"
        assert (video.width, video.height) == (1280, 720)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == len(keyframed)


def test_sample_has_a_shot_cut_from_generated_footage(sample: EpisodeBundle) -> None:
    cut = [s for s in sample.episode.shots if s.source is not None]
    assert len(cut) == 1
    shot = cut[0]
    assert shot.keyframe is None
    assert shot.source is not None
    assert (shot.source.uri, shot.source.in_ms) == ("footage/take1.mp4", 1000)
    info = probe(sample.path(shot.source.uri))
    video = info.first("video")
    assert video is not None and video.codec == "h264"
    assert info.duration_s is not None
    assert info.duration_s * 1000 >= shot.source.in_ms + shot.duration_ms


def test_sample_audio_is_48k_stereo_16bit_and_covers_the_episode(sample: EpisodeBundle) -> None:
    path = sample.path(sample.episode.audio)
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (48000, 2, 2)
        seconds = w.getnframes() / w.getframerate()
    assert 60.0 <= seconds <= 62.0
    audio = probe(path).first("audio")
    assert audio is not None and audio.sample_rate == 48000


def test_sample_audio_has_a_clear_120_bpm_beat_and_busier_action(sample: EpisodeBundle) -> None:
    ep = sample.episode
    analysis = analyze(decode_audio(sample.path(ep.audio)), 22050)
    assert analysis.tempo_bpm is not None
    assert abs(analysis.tempo_bpm - 120.0) / 120.0 < 0.02
    manifest = build_manifest(analysis, ep, ep.audio).model_dump(mode="json")
    assert manifest_problems(manifest) == []
    # beats every 0.5 s on the grid the mix was written on
    beats = analysis.beat_times
    assert beats.size >= 100
    assert max(abs(b - round(b * 2) / 2) for b in beats) < 0.03
    by_type: dict[str, list[dict[str, float]]] = {}
    for shot, row in zip(ep.shots, manifest["shots"], strict=True):
        by_type.setdefault(shot.type.value, []).append(row)
    action = by_type.pop("action")
    calm = [row for rows in by_type.values() for row in rows]
    assert min(r["event_density"] for r in action) > max(r["event_density"] for r in calm)
    assert mean(r["peak_energy"] for r in action) > mean(r["peak_energy"] for r in calm) + 0.2


def test_sixty_shot_variant_plan() -> None:
    shots = sample_shots(60, 3000)
    assert len(shots) == 60
    assert {s["duration_ms"] for s in shots} == {3000}
    assert [s["id"] for s in shots][:2] == ["S01", "S02"] and shots[-1]["id"] == "S60"
    ep = Episode.model_validate(
        {
            "tenant_id": "studio-a", "project_id": "moonlit-courier", "episode_id": "bench",
            "format": {"width": 1280, "height": 720, "fps": 24}, "audio": "audio/mix.wav",
            "shots": shots,
        }
    )  # fmt: skip
    assert ep.duration_ms == 180_000
    with pytest.raises(ValueError):
        sample_shots(0)
    with pytest.raises(ValueError):
        sample_shots(3, 100)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    timeline = [("dialogue", 2000), ("action", 2000)]
    a, b = synthesize_mix(timeline, seed=7), synthesize_mix(timeline, seed=7)
    assert a.shape == (int(5.0 * 48000), 2)
    assert (a == b).all()
    assert not (a == synthesize_mix(timeline, seed=8)).all()
    one = draw_keyframe(tmp_path / "a.png", shot_id="S05", shot_type="action", index=4)
    two = draw_keyframe(tmp_path / "b.png", shot_id="S05", shot_type="action", index=4)
    assert one.read_bytes() == two.read_bytes()


def test_keyframe_without_font_still_draws(tmp_path: Path) -> None:
    graph = keyframe_filtergraph(shot_id="S01", shot_type="insert", font=None)
    assert "drawtext" not in graph
    if find_font():
        assert "drawtext" in keyframe_filtergraph(shot_id="S01", shot_type="insert",
                                                  font=find_font())  # fmt: skip
    out = draw_keyframe(tmp_path / "k.png", shot_id="S01", shot_type="insert", text=False,
                        width=320, height=180)  # fmt: skip
    video = probe(out).first("video")
    assert video is not None and (video.width, video.height) == (320, 180)
