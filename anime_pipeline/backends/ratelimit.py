"""Requests per second per remote host: a token bucket per host (ComfyUI servers, and the
http(s)/HLS hosts that source footage is cut from)."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

SOURCE_REQUESTS_PER_SECOND = 5.0  # cuts opened per second on one footage host


class TokenBucket:
    """At most ``rate`` requests per second on average, bursts of ``burst``; thread-safe."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = threading.Lock()

    def take(self, cancel: threading.Event | None = None) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            if cancel is not None and cancel.is_set():
                raise InterruptedError("cancelled while waiting to send a request")
            time.sleep(min(wait, 0.25))


def host_of(url: str) -> str:
    """``scheme://host:port`` of ``url`` (the unit a bucket limits)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


class HostBuckets:
    """One :class:`TokenBucket` per host, made on first use."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def bucket(self, url: str) -> TokenBucket:
        host = host_of(url)
        with self._lock:
            if host not in self._buckets:
                self._buckets[host] = TokenBucket(self.rate, self.burst)
            return self._buckets[host]

    def take(self, url: str, cancel: threading.Event | None = None) -> None:
        self.bucket(url).take(cancel)


# Shared by every source-clip render of the process (clips steps of one run worker).
SOURCE_HOSTS = HostBuckets(SOURCE_REQUESTS_PER_SECOND)
