"""The composite with real ffmpeg: stream copy, soft and burned-in subtitles, re-encode,
exact frame counts, verification, odd file names, disk full, timeouts."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from anime_pipeline.domain.contracts import SOFTWARE_ENCODER
from anime_pipeline.media import composite as comp
from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media import render as media
from anime_pipeline_tests.conftest import write_wav
from anime_pipeline_tests.media.conftest import T

DELIVERY = media.Delivery(160, 90, 24)
SRT = "1\n00:00:00,100 --> 00:00:00,900\n聞こえた?\n\n2\n00:00:01,500 --> 00:00:02,400\nはい\n"
ASS_BOX = """[Script Info]
ScriptType: v4.00+
PlayResX: 160
PlayResY: 90

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, \
Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, \
Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,Arial,20,&H00FFFFFF,&H00FFFFFF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,0,\
0,7,0,0,0,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
Dialogue: 0,0:00:00.00,0:00:01.00,Default,,0,0,0,,{\\pos(0,0)\\p1}m 0 0 l 160 0 160 90 0 90{\\p0}
"""


def make_clip(path: Path, frames: int, *, source: str = "testsrc2", extra: tuple[str, ...] = ()
              ) -> Path:
    """A clip as the renderer makes them: delivery size and rate, the libx264 settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sep = ":" if "=" in source else "="
    args = ["-f", "lavfi", "-i", f"{source}{sep}size=160x90:rate=24", "-frames:v", str(frames),
            "-an"]
    for key, value in media.codec_args(SOFTWARE_ENCODER).items():
        args += [f"-{key}", str(value)]
    ff.run([*args, *extra, "-f", "mp4", str(path)], timeout=T)
    return path


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    path = tmp_path / "mix.wav"
    write_wav(path, seconds=2.0)  # shorter than the episodes below: padded with silence
    return path


def _compose(clips: list[Path], audio: Path, out: Path, duration_ms: int,
             **kw: object) -> comp.ComposeResult:
    return comp.compose(clips, audio, out, work_dir=out.parent / "work dir",
                        duration_ms=duration_ms, delivery=DELIVERY, timeout=T,
                        **kw)  # type: ignore[arg-type]


def _gray_frame(path: Path, n: int) -> np.ndarray:
    """Frame ``n`` (0-based, in decode order) of ``path`` as gray pixels."""
    raw = ff.run_stdout(["-i", str(path), "-vf", f"select=eq(n\\,{n})", "-frames:v", "1",
                         "-f", "rawvideo", "-pix_fmt", "gray", "-"], timeout=T)
    assert raw, f"{path} has no frame {n}"
    return np.frombuffer(raw, dtype=np.uint8)


def test_stream_copy_with_soft_subtitles_and_odd_names(tmp_path: Path, audio: Path) -> None:
    odd = tmp_path / "clips: it's [odd],; #1"
    clips = [make_clip(odd / "it's a clip.mp4", 24),
             make_clip(odd / "back\\slash 'q' \"dq\" é.mp4", 12),
             make_clip(odd / "line\nbreak.mp4", 30)]
    srt = tmp_path / "subs.srt"
    srt.write_text(SRT, encoding="utf-8")
    out = tmp_path / "ep 01.mp4"
    result = _compose(clips, audio, out, 2750, srt=srt, subtitle_language="jpn", title="テスト")
    assert result.video_frames == result.expected_frames == 66  # 24 + 12 + 30
    assert result.video_copied and result.reencode_reason is None
    assert (result.width, result.height, result.fps) == (160, 90, 24)
    assert result.duration_s is not None and abs(result.duration_s - 2.75) < 0.06
    assert result.video_duration_s == 2.75
    assert result.audio is not None and (result.audio.codec, result.audio.sample_rate) == (
        "aac", 48000)
    assert result.subtitles is not None and result.subtitles.codec == "mov_text"
    assert result.subtitles.language == "jpn"
    assert result.size_bytes == out.stat().st_size
    assert [s.kind for s in result.streams] == ["video", "audio", "subtitle"]
    subs = ff.run_stdout(["-i", str(out), "-map", "0:s:0", "-f", "srt", "-"], timeout=T)
    assert "聞こえた" in subs.decode("utf-8")
    listing = (tmp_path / "work dir" / comp.LIST_NAME).read_text(encoding="utf-8")
    assert "it'\\''s a clip.mp4" in listing and "concat_00002.mp4" in listing
    assert result.to_dict()["video_frames"] == 66


def test_burned_in_subtitles_are_drawn(tmp_path: Path, audio: Path) -> None:
    clips = [make_clip(tmp_path / "a.mp4", 24, source="color=c=black"),
             make_clip(tmp_path / "b.mp4", 24, source="color=c=black")]
    ass = tmp_path / "it's: [a],b;c.ass"  # every character the filter graph cares about
    ass.write_text(ASS_BOX, encoding="utf-8")
    out = tmp_path / "burn.mp4"
    result = _compose(clips, audio, out, 2000, burn_in_ass=ass)
    assert result.video_frames == 48 and not result.video_copied
    assert result.reencode_reason == "subtitles burned in"
    assert result.subtitles is None
    assert _gray_frame(out, 12).mean() > 200  # the box covers the picture while it shows
    assert _gray_frame(out, 36).mean() < 40


def test_mixed_encoders_reencode(tmp_path: Path, audio: Path) -> None:
    clips = [make_clip(tmp_path / "a.mp4", 24),
             make_clip(tmp_path / "b.mp4", 24, extra=("-profile:v", "baseline", "-crf", "30"))]
    result = _compose(clips, audio, tmp_path / "mixed.mp4", 2000, reencode=True)
    assert result.video_frames == 48 and not result.video_copied
    assert result.reencode_reason == "clips made with different encoders"


@pytest.mark.parametrize("verified", [False, True])
def test_clips_a_frame_short_are_extended_and_still_copied(tmp_path: Path, audio: Path,
                                                           verified: bool) -> None:
    """Shots of 1000, 1000 and 980 ms are 24 + 24 + 24 frames, but 2.98 s is 72 frames
    (71.52): each shot's count is rounded on its own. A hold clip fills the gap (made like
    the clips: the copy of verified clips stays verified by its packets)."""
    clips = [make_clip(tmp_path / f"{i}.mp4", n) for i, n in enumerate((24, 24, 23))]
    out = tmp_path / "short.mp4"
    result = _compose(clips, audio, out, 2980, clips_verified=verified)
    assert result.expected_frames == 72 and result.video_frames == 72
    assert result.video_copied and result.reencode_reason is None
    assert result.verified_by == ("packets" if verified else "decode")
    last_clip_frame = _gray_frame(clips[-1], 22).astype(float)
    held = _gray_frame(out, 71).astype(float)
    assert np.abs(held - last_clip_frame).mean() < 3  # the last picture, held


def test_clips_short_by_an_unknown_encoder_are_reencoded(tmp_path: Path, audio: Path) -> None:
    tag = ("-metadata:s:v:0", "encoder=mystery")
    clips = [make_clip(tmp_path / f"{i}.mp4", n, extra=tag) for i, n in enumerate((24, 23))]
    result = _compose(clips, audio, tmp_path / "short.mp4", 1980)  # 47.52 -> 48
    assert result.video_frames == 48 and not result.video_copied
    assert "last frame held" in (result.reencode_reason or "")


def test_surplus_frames_are_cut_exactly_in_a_copy(tmp_path: Path, audio: Path) -> None:
    clips = [make_clip(tmp_path / "a.mp4", 24), make_clip(tmp_path / "b.mp4", 24)]
    result = _compose(clips, audio, tmp_path / "cut.mp4", 1950)  # 46.8 -> 47 frames
    assert result.video_frames == 47 and result.video_copied


def test_clips_far_too_short_are_refused(tmp_path: Path, audio: Path) -> None:
    out = tmp_path / "ep.mp4"
    with pytest.raises(comp.CompositeError, match="hold 24 video frames, the episode needs 120"):
        _compose([make_clip(tmp_path / "a.mp4", 24)], audio, out, 5000)
    assert not out.exists()


def test_a_truncated_clip_fails_the_composite(tmp_path: Path, audio: Path) -> None:
    whole = make_clip(tmp_path / "whole.mp4", 48)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "ep.mp4"
    with pytest.raises(ff.FfmpegError) as info:
        _compose([make_clip(tmp_path / "a.mp4", 24), cut], audio, out, 3000)
    assert isinstance(info.value, comp.CompositeError | comp.CompositeVerificationError)
    assert not out.exists()


def test_verification_counts_the_video_stream_not_the_container(tmp_path: Path) -> None:
    """The audio runs 60 s, the video stops at 26 s: the container looks complete."""
    out = tmp_path / "short_video.mp4"
    ff.run(["-f", "lavfi", "-i", "color=c=gray:size=160x90:rate=24:duration=26",
            "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "60",
            "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-b:a", "16k",
            str(out)], timeout=T)
    with pytest.raises(comp.CompositeVerificationError) as info:
        comp.verify_composite(out, duration_ms=60_000, delivery=DELIVERY, timeout=T)
    message = str(info.value)
    assert "624 frames (26.000 s), expected 1440 (60.000 s)" in message
    assert "although the container lasts 60.0" in message
    assert "; " not in message.split("failed verification: ")[1]  # nothing else is wrong
    assert ff.probe(out, count_frames=True).video_frames == 624


def test_verification_wants_the_subtitle_track_it_was_promised(tmp_path: Path,
                                                              audio: Path) -> None:
    clips = [make_clip(tmp_path / "a.mp4", 24)]
    out = tmp_path / "ep.mp4"
    _compose(clips, audio, out, 1000)
    info = comp.verify_composite(out, duration_ms=1000, delivery=DELIVERY, timeout=T)
    assert info.video_frames == 24
    with pytest.raises(comp.CompositeVerificationError, match="expected one mov_text"):
        comp.verify_composite(out, duration_ms=1000, delivery=DELIVERY, subtitles=True,
                              subtitle_language="jpn", timeout=T)
    with pytest.raises(comp.CompositeVerificationError, match="frame size 160x90"):
        comp.verify_composite(out, duration_ms=1000, delivery=media.Delivery(320, 180, 24),
                              timeout=T)


def test_disk_full_writing_the_concat_list(tiny_fs: Path, tmp_path: Path,
                                           audio: Path) -> None:
    with (tiny_fs / "filler").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    with pytest.raises(ff.DiskFullError) as info:
        comp.compose([make_clip(tmp_path / "a.mp4", 24)], audio, tmp_path / "ep.mp4",
                     work_dir=tiny_fs, duration_ms=1000, delivery=DELIVERY, timeout=T)
    assert info.value.errno == errno.ENOSPC and "concat.txt" in str(info.value)


def test_disk_full_writing_the_composite(tiny_fs: Path, tmp_path: Path, audio: Path) -> None:
    clips = [make_clip(tmp_path / f"{i}.mp4", 48) for i in range(3)]
    assert sum(c.stat().st_size for c in clips) > 16 * 1024
    filler = tiny_fs / "filler"
    with filler.open("wb", buffering=0) as f:  # fill the filesystem, then give 16 KiB back
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - 16 * 1024)
    assert shutil.disk_usage(tiny_fs).free >= 16 * 1024
    out = tiny_fs / "ep.mp4"
    with pytest.raises(ff.DiskFullError) as info:
        _compose(clips, audio, out, 6000)
    assert info.value.filename == str(out) and str(out) in str(info.value)
    assert "No space left on device" in str(info.value)
    assert not out.exists()  # the partial file is removed, its space given back


def test_compose_runs_under_its_timeout(tmp_path: Path, audio: Path) -> None:
    clips = [make_clip(tmp_path / "a.mp4", 24)]
    with pytest.raises(ff.FfmpegTimeout):
        comp.compose(clips, audio, tmp_path / "ep.mp4", work_dir=tmp_path / "w",
                     duration_ms=1000, delivery=DELIVERY, timeout=0.001)
    assert not (tmp_path / "ep.mp4").exists()


def test_compose_checks_its_inputs(tmp_path: Path, audio: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", 24)
    with pytest.raises(FileNotFoundError, match="audio"):
        _compose([clip], tmp_path / "none.wav", tmp_path / "ep.mp4", 1000)
    with pytest.raises(FileNotFoundError, match="clip"):
        _compose([clip, tmp_path / "gone.mp4"], audio, tmp_path / "ep.mp4", 1000)
    with pytest.raises(ValueError):
        _compose([], audio, tmp_path / "ep.mp4", 1000)


def test_filter_path_escapes_both_levels() -> None:
    assert comp.filter_path("/a/b.ass") == "/a/b.ass"
    assert comp.filter_path("C:/x.ass") == "C\\\\:/x.ass"
    assert comp.filter_path("it's,[x];") == "it\\\\\\'s\\,\\[x\\]\\;"


# --------------------------------------------------------------------------- the mix, copied


def _click_wav(path: Path, *, at_s: float, seconds: float = 2.0, rate: int = 48000) -> Path:
    """Silence with one full-scale click at ``at_s``: where it lands shows the sync."""
    samples = np.zeros(int(seconds * rate), dtype="<i2")
    samples[int(at_s * rate)] = 32000
    path.parent.mkdir(parents=True, exist_ok=True)
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def _pcm(path: Path) -> np.ndarray:
    raw = ff.run_stdout(["-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", "48000",
                         "-f", "s16le", "-"], timeout=T)
    return np.frombuffer(raw, dtype="<i2").astype(np.int32)


def _frame_hashes(path: Path) -> list[str]:
    """The MD5 of each decoded picture of ``path``'s video, in order."""
    out = ff.run_stdout(["-i", str(path), "-map", "0:v:0", "-f", "framemd5", "-"], timeout=T)
    return [line.rsplit(",", 1)[-1].strip() for line in out.decode().splitlines()
            if line and not line.startswith("#")]


def test_the_mix_is_encoded_once_to_the_episode_and_copied_in_sync(tmp_path: Path) -> None:
    """The mix (2 s, a click at 0.5 s) is encoded to a 2.75 s episode: padded exactly;
    copied into a stream-copied composite, the click is still at 0.5 s (the encoder's
    priming hidden by the edit list, not delayed), the audio plays exactly 2.75 s, and the
    picture is the clips' pictures, frame for frame."""
    mix = comp.encode_mix(_click_wav(tmp_path / "mix.wav", at_s=0.5), tmp_path / "mix.m4a",
                          duration_ms=2750, timeout=T)
    assert mix.duration_s == 2.75 and mix.size_bytes == (tmp_path / "mix.m4a").stat().st_size
    clips = [make_clip(tmp_path / "a.mp4", 24), make_clip(tmp_path / "b.mp4", 12),
             make_clip(tmp_path / "c.mp4", 30, source="color=c=blue")]
    srt = tmp_path / "subs.srt"
    srt.write_text(SRT, encoding="utf-8")
    out = tmp_path / "ep.mp4"
    result = _compose(clips, mix.path, out, 2750, srt=srt, subtitle_language="jpn",
                      audio_encoded=True, clips_verified=True)
    assert result.video_copied and result.audio_copied and result.verified_by == "packets"
    assert result.video_frames == result.expected_frames == 66
    assert [s.kind for s in result.streams] == ["video", "audio", "subtitle"]
    pcm = _pcm(out)
    assert len(pcm) == 2750 * 48  # exactly the episode, sample for sample
    assert abs(int(np.argmax(np.abs(pcm))) - 24000) <= 48  # the click within 1 ms of 0.5 s
    assert np.array_equal(pcm, _pcm(mix.path))  # a copy: the very samples of the mix
    assert _frame_hashes(out) == [h for c in clips for h in _frame_hashes(c)]
    assert comp.verify_mix(mix.path, duration_ms=2750, timeout=T) == 2.75
    with pytest.raises(comp.CompositeVerificationError, match="expected 3.000 s"):
        comp.verify_mix(mix.path, duration_ms=3000, timeout=T)


def test_the_encoded_mix_is_resampled_to_48k_exactly(tmp_path: Path, audio: Path) -> None:
    """An 8 kHz mono mix shorter than the episode: padded, resampled, the episode long."""
    mix = comp.encode_mix(audio, tmp_path / "mix.m4a", duration_ms=2980, timeout=T)
    assert mix.duration_s == 2.98
    assert len(_pcm(mix.path)) == 2980 * 48


def test_packet_verification_still_finds_what_a_decode_would(tmp_path: Path) -> None:
    """Reading the packets instead of decoding still counts the video stream (not the
    container), and a file cut short is never taken for a composite."""
    out = tmp_path / "short_video.mp4"
    ff.run(["-f", "lavfi", "-i", "color=c=gray:size=160x90:rate=24:duration=26",
            "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono", "-t", "60",
            "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-c:a", "aac", "-b:a", "16k",
            "-movflags", "+faststart", str(out)], timeout=T)
    with pytest.raises(comp.CompositeVerificationError,
                       match=r"624 frames \(26.000 s\), expected 1440"):
        comp.verify_composite(out, duration_ms=60_000, delivery=DELIVERY, timeout=T,
                              decode=False)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(out.read_bytes()[: out.stat().st_size * 2 // 3])
    with pytest.raises(comp.CompositeVerificationError, match="cut short"):
        comp.verify_composite(cut, duration_ms=26_000, delivery=DELIVERY, timeout=T,
                              decode=False)


def test_audio_of_the_wrong_length_fails_verification(tmp_path: Path) -> None:
    out = tmp_path / "short_audio.mp4"
    ff.run(["-f", "lavfi", "-i", "color=c=gray:size=160x90:rate=24:duration=2",
            "-f", "lavfi", "-i", "anullsrc=r=48000:cl=mono:d=1.5",
            "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(out)], timeout=T)
    with pytest.raises(comp.CompositeVerificationError, match="its audio plays 1.500 s"):
        comp.verify_composite(out, duration_ms=2000, delivery=DELIVERY, timeout=T)


def test_clips_that_cannot_be_joined_by_a_copy_are_reencoded(tmp_path: Path,
                                                             audio: Path) -> None:
    """Same encoder name, but another time base: the headers say no to a copy."""
    clips = [make_clip(tmp_path / "a.mp4", 24),
             make_clip(tmp_path / "b.mp4", 24, extra=("-video_track_timescale", "12288"))]
    result = _compose(clips, audio, tmp_path / "ep.mp4", 2000, clips_verified=True)
    assert not result.video_copied and result.verified_by == "decode"
    assert "time base" in (result.reencode_reason or "")
    assert result.video_frames == 48


def test_concat_compatibility(tmp_path: Path) -> None:
    from anime_pipeline.media import mp4

    same = [mp4.read_movie(make_clip(tmp_path / f"{i}.mp4", 12)) for i in range(2)]
    assert comp.concat_compatibility(same, DELIVERY) == (None, True)
    bigger = mp4.read_movie(make_clip(tmp_path / "big.mp4", 12, source="testsrc2",
                                      extra=("-vf", "scale=320:180")))
    reason, _ = comp.concat_compatibility([*same, bigger], DELIVERY)
    assert reason and "320x180" in reason
    other = mp4.read_movie(make_clip(tmp_path / "crf.mp4", 12,
                                     extra=("-profile:v", "main", "-crf", "30")))
    assert comp.concat_compatibility([*same, other], DELIVERY) == (None, False)


def test_verified_clips_with_different_configurations_are_decoded(tmp_path: Path,
                                                                  audio: Path) -> None:
    """Copyable (the parameter sets go in band) but not byte-identical: a decode proves it."""
    clips = [make_clip(tmp_path / "a.mp4", 24),
             make_clip(tmp_path / "b.mp4", 24, extra=("-profile:v", "main"))]
    result = _compose(clips, audio, tmp_path / "ep.mp4", 2000, clips_verified=True)
    assert result.video_copied and result.verified_by == "decode"
    assert _frame_hashes(tmp_path / "ep.mp4") == [h for c in clips for h in _frame_hashes(c)]
