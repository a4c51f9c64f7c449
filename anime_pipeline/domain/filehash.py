"""sha256 of local files, hashed once per process while a file stays the same file.

:class:`FileHashes` remembers a digest under the file's identity and state as ``stat`` gives
them — device, inode, size, modification and change times in nanoseconds. Any write to the
file changes its change time (``st_ctime_ns``, which ``utime`` cannot set back), a new file in
its place has another inode, so a remembered digest is only ever reused for the very bytes it
was computed from. Two guards close the remaining gaps:

* a file is stat'ed before and after it is read; when the two differ (it was written while
  being hashed) the digest is returned but not remembered;
* a file changed less than :data:`RACY_S` seconds before it was hashed is not remembered
  either: file system timestamps are coarser than a write (a second write within the same
  clock tick, of the same size, would keep every field of ``stat``), the "racy" case git's
  index handles the same way.

Thread-safe (render threads share one). Plain Python: no Dagster.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path

CHUNK = 1 << 20
RACY_S = 2.0
MAX_ENTRIES = 8192

_Key = tuple[str, int, int, int, int, int]


def _identity(path: str, st: os.stat_result) -> _Key:
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileHashes:
    """sha256 hex digests of regular files, remembered by :func:`_identity` (LRU-bounded)."""

    def __init__(self, *, max_entries: int = MAX_ENTRIES, racy_s: float = RACY_S) -> None:
        self.max_entries = max_entries
        self.racy_s = racy_s
        self._digests: OrderedDict[_Key, str] = OrderedDict()
        self._lock = threading.Lock()
        self.hashed = 0  # files read and hashed (not answered from memory)

    def sha256(self, path: str | Path) -> str | None:
        """The file's digest, or None when ``path`` is not a regular file (missing, a
        directory, a FIFO: never opened). Symlinks are followed, as ``open`` does."""
        name = os.fspath(path)
        try:
            before = os.stat(name)
        except OSError:
            return None
        if not stat.S_ISREG(before.st_mode):
            return None
        key = _identity(name, before)
        with self._lock:
            known = self._digests.get(key)
            if known is not None:
                self._digests.move_to_end(key)
                return known
        h = hashlib.sha256()
        with open(name, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
            after = os.fstat(f.fileno())
        digest = h.hexdigest()
        with self._lock:
            self.hashed += 1
            changed_at = max(after.st_mtime_ns, after.st_ctime_ns) / 1e9
            if _identity(name, after) == key and time.time() - changed_at >= self.racy_s:
                self._digests[key] = digest
                while len(self._digests) > self.max_entries:
                    self._digests.popitem(last=False)
        return digest

    def clear(self) -> None:
        with self._lock:
            self._digests.clear()


#: The process's file hashes (clip fingerprints use it).
FILE_HASHES = FileHashes()
