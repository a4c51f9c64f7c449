"""A webhook receiver on loopback for the notification tests: a real HTTP server in a thread
that records what is posted to it, and can answer an error, answer late or trickle."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "T0000/B0000/s3cr3t-t0ken"


class Receiver:
    """``with Receiver() as hook: ... hook.url ... hook.texts()``.

    ``status``: the answer (200, 500...); ``delay_s``: wait this long before answering;
    ``trickle_s``: answer one byte at a time, this long apart (defeats per-read timeouts).
    Every POST is recorded in ``posts`` (body, headers, path), whatever the answer."""

    def __init__(self, port: int = 0, *, status: int = 200, delay_s: float = 0.0,
                 trickle_s: float = 0.0) -> None:
        self.port = port
        self.status = status
        self.delay_s = delay_s
        self.trickle_s = trickle_s
        self.posts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/{SECRET}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver._lock:
                    receiver.posts.append({"raw": raw, "headers": dict(self.headers),
                                           "path": self.path, "status": receiver.status})
                if receiver.delay_s:
                    receiver._stopping.wait(receiver.delay_s)
                answer = b"ok" if receiver.status < 400 else b"boom"
                head = (f"HTTP/1.1 {receiver.status} X\r\nContent-Type: text/plain\r\n"
                        f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n")
                data = head.encode() + answer
                if receiver.trickle_s:
                    for i in range(len(data)):
                        if receiver._stopping.wait(receiver.trickle_s):
                            return
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                else:
                    self.wfile.write(data)
                self.close_connection = True

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._stopping.clear()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what came

    def ok_posts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [p for p in self.posts if p["status"] < 400]

    def bodies(self) -> list[Any]:
        """The JSON bodies answered with success, parsed strictly."""
        return [json.loads(p["raw"].decode("utf-8")) for p in self.ok_posts()]

    def texts(self) -> list[str]:
        return [b["text"] for b in self.bodies()]

    def wait_for(self, n: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.ok_posts()) < n:
            assert time.monotonic() < deadline, f"{len(self.ok_posts())} of {n} posts came"
            time.sleep(0.02)
