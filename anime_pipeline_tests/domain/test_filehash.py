"""The per-process file hashes behind clip fingerprints: a file is read once while it is the
same file, and a changed file is always hashed again (same size, restored mtime, new inode)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from anime_pipeline.domain.episode import Format, Shot, ShotType
from anime_pipeline.domain.filehash import FileHashes
from anime_pipeline.domain.rendering import clip_fingerprint


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """New bytes of the same size, the modification time set back as it was."""
    st = path.stat()
    time.sleep(0.05)  # past the file system's timestamp tick: the change time moves on
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_an_unchanged_file_is_read_once(tmp_path: Path) -> None:
    f = tmp_path / "k.png"
    f.write_bytes(b"a" * 1000)
    hashes = FileHashes(racy_s=0.0)
    assert hashes.sha256(f) == sha(b"a" * 1000)
    assert hashes.sha256(f) == sha(b"a" * 1000)
    assert hashes.sha256(str(f)) == sha(b"a" * 1000)
    assert hashes.hashed == 1


def test_new_bytes_of_the_same_size_with_the_old_mtime_are_hashed_again(tmp_path: Path) -> None:
    f = tmp_path / "k.png"
    f.write_bytes(b"a" * 1000)
    hashes = FileHashes(racy_s=0.0)
    assert hashes.sha256(f) == sha(b"a" * 1000)
    rewrite_keeping_mtime(f, b"b" * 1000)  # only the change time (ctime) tells
    assert hashes.sha256(f) == sha(b"b" * 1000)
    assert hashes.hashed == 2


def test_a_new_mtime_or_a_file_put_in_its_place_is_hashed_again(tmp_path: Path) -> None:
    f = tmp_path / "k.png"
    f.write_bytes(b"a" * 1000)
    hashes = FileHashes(racy_s=0.0)
    hashes.sha256(f)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert hashes.sha256(f) == sha(b"a" * 1000) and hashes.hashed == 2
    other = tmp_path / "new.png"
    other.write_bytes(b"c" * 1000)
    os.replace(other, f)  # another inode under the same name
    assert hashes.sha256(f) == sha(b"c" * 1000) and hashes.hashed == 3


def test_a_file_changed_just_now_is_not_remembered(tmp_path: Path) -> None:
    """Within the racy window two writes could leave every stat field equal: re-hash."""
    f = tmp_path / "k.png"
    f.write_bytes(b"a" * 1000)
    hashes = FileHashes(racy_s=60.0)
    hashes.sha256(f)
    hashes.sha256(f)
    assert hashes.hashed == 2


def test_what_is_not_a_regular_file_has_no_digest(tmp_path: Path) -> None:
    hashes = FileHashes()
    assert hashes.sha256(tmp_path / "missing.png") is None
    assert hashes.sha256(tmp_path) is None
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert hashes.sha256(fifo) is None  # never opened: no wait on a writer


def test_the_memory_is_bounded(tmp_path: Path) -> None:
    hashes = FileHashes(racy_s=0.0, max_entries=3)
    files = []
    for i in range(5):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(bytes([i]) * 10)
        hashes.sha256(files[-1])
    hashes.sha256(files[-1])  # still known
    assert hashes.hashed == 5
    hashes.sha256(files[0])  # forgotten: read again
    assert hashes.hashed == 6


@pytest.mark.parametrize("change", ["same size, old mtime", "new size"])
def test_a_clip_fingerprint_follows_its_keyframe(tmp_path: Path, change: str) -> None:
    (tmp_path / "k").mkdir()
    key = tmp_path / "k" / "S01.png"
    key.write_bytes(b"\x89PNG" + b"a" * 100)
    shot = Shot(id="S01", type=ShotType.action, duration_ms=1000, keyframe="k/S01.png")
    fmt = Format(width=320, height=180, fps=24)
    hashes = FileHashes(racy_s=0.0)
    before = clip_fingerprint(shot, tmp_path, fmt, {"target_fps": 12}, hashes)
    assert clip_fingerprint(shot, tmp_path, fmt, {"target_fps": 12}, hashes) == before
    if change == "new size":
        key.write_bytes(b"\x89PNG" + b"b" * 101)
    else:
        rewrite_keeping_mtime(key, b"\x89PNG" + b"b" * 100)
    assert clip_fingerprint(shot, tmp_path, fmt, {"target_fps": 12}, hashes) != before
