"""The MP4 header reader: tracks, sample counts, codec configuration, cut-short files."""

from __future__ import annotations

from pathlib import Path

import pytest

from anime_pipeline.media import ffmpeg as ff
from anime_pipeline.media import mp4
from anime_pipeline_tests.media.conftest import T
from anime_pipeline_tests.media.test_composite import make_clip


def test_a_clip_as_the_renderer_makes_it(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", 30)
    movie = mp4.read_movie(clip)
    video = movie.first("video")
    assert video is not None and [t.kind for t in movie.tracks] == ["video"]
    assert (video.codec, video.width, video.height) == ("avc1", 160, 90)
    assert video.samples == 30 and video.timescale == 90000
    assert video.sample_delta == 3750 and video.delta_range == (3750, 3750)
    assert video.fps == 24 and video.sar == (1, 1)
    assert video.config[:1] == b"\x01"  # an avcC record: configurationVersion 1
    assert abs(video.presented_s - 1.25) < 1e-9 and abs(movie.duration_s - 1.25) < 1e-9
    # the same settings make the same codec configuration, whatever the picture
    other = mp4.read_movie(make_clip(tmp_path / "b.mp4", 12, source="color=c=red"))
    assert other.first("video").config == video.config  # type: ignore[union-attr]


def test_an_aac_track_hides_its_priming(tmp_path: Path) -> None:
    out = tmp_path / "a.m4a"
    ff.run(["-f", "lavfi", "-i", "sine=f=440:r=48000:d=2.75", "-c:a", "aac", "-f", "mp4",
            str(out)], timeout=T)
    audio = mp4.read_movie(out).first("audio")
    assert audio is not None and (audio.codec, audio.timescale) == ("mp4a", 48000)
    assert audio.media_start == 1024  # the encoder's priming, skipped by the edit list
    assert audio.presented_s == 2.75  # exactly: 132,000 samples


def test_a_file_cut_short_is_refused(tmp_path: Path) -> None:
    whole = make_clip(tmp_path / "whole.mp4", 48)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) - 100])  # the header (first: +faststart) is intact
    with pytest.raises(mp4.Mp4Error, match="cut short"):
        mp4.read_movie(cut)
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x10notanmp4" + b"\0" * 64)
    with pytest.raises(mp4.Mp4Error, match="not an MP4"):
        mp4.read_movie(tmp_path / "junk.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(mp4.Mp4Error, match="no moov"):
        mp4.read_movie(tmp_path / "empty.mp4")
