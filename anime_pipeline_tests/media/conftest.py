"""Shared media fixtures: generated footage (MP4 and HLS) and a Range-capable HTTP server."""

from __future__ import annotations

import functools
import http.server
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from anime_pipeline.media import ffmpeg as ff

T = 120.0  # timeout for the small ffmpeg calls the tests make themselves


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of 320x240 testsrc2 at 30 fps as ``take.mp4`` and as HLS ``take.m3u8``."""
    d = tmp_path_factory.mktemp("footage")
    ff.run(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30", "-t", "4", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", "-g", "30", str(d / "take.mp4")], timeout=T)
    ff.run(["-i", str(d / "take.mp4"), "-c", "copy", "-f", "hls", "-hls_time", "1",
            "-hls_list_size", "0", str(d / "take.m3u8")], timeout=T)
    return d


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte-range support (RFC 7233), as a CDN serves them."""

    def send_head(self):  # type: ignore[no-untyped-def]
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        start_s, _, end_s = rng.removeprefix("bytes=").partition("-")
        start = int(start_s or 0)
        end = min(int(end_s) if end_s else size - 1, size - 1)
        f = path.open("rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):  # type: ignore[no-untyped-def]
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            chunk = source.read(min(65536, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(footage: Path) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` serving the footage folder."""
    handler = functools.partial(RangeHandler, directory=str(footage))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def write_script(path: Path, body: str) -> Path:
    """An executable ``/bin/sh`` script (used as ``$FFMPEG_BINARY`` wrappers)."""
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mnt = tmp_path / "tiny_fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)
