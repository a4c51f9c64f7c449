"""A farm of ComfyUI servers behind one backend name, for the length of one clips run.

Shots go to the usable server with the fewest of our prompts in flight (relative to its
``max_inflight``); servers are health-checked with ``/system_stats`` before first use and
again after they failed to answer; a server that fails three shots in a run is left out for
the rest of the run; a server that dies mid-shot has the shot re-queued on another by the
caller (:class:`~anime_pipeline.backends.comfyui.backend.ComfyBackend`). Every server has its
own token bucket of requests per second.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from anime_pipeline.backends.comfyui.client import ComfyClient, ComfyError
from anime_pipeline.backends.config import ComfyBackendConfig
from anime_pipeline.backends.ratelimit import TokenBucket
from anime_pipeline.domain.rendering import NotRetryable

log = logging.getLogger("anime_pipeline.progress")

HEALTH_TTL_S = 10.0  # an unhealthy server is probed again after this long
MAX_SHOT_FAILURES = 3  # failed shots after which a server is left out for the run
PROBE_TIMEOUT_S = 5.0


class FarmExhausted(ComfyError, NotRetryable):
    """No server of the backend can take the shot (all dead or left out)."""


@dataclass
class Server:
    url: str
    max_inflight: int
    client: ComfyClient
    inflight: int = 0
    healthy: bool | None = None  # None: not probed yet
    checked_at: float = 0.0
    shot_failures: int = 0
    excluded: bool = False
    shots_ok: int = 0
    lost: int = 0
    object_info: dict[str, Any] | None = None
    why: str = ""
    probing: bool = False  # a thread is asking /system_stats now: the others wait for it

    @property
    def load(self) -> float:
        return self.inflight / self.max_inflight


@dataclass
class Farm:
    name: str
    config: ComfyBackendConfig
    servers: list[Server] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def create(cls, name: str, config: ComfyBackendConfig) -> Farm:
        servers = []
        for s in config.servers:
            bucket = (TokenBucket(config.requests_per_second)
                      if config.requests_per_second else None)
            servers.append(Server(s.url, s.max_inflight, ComfyClient(s.url, bucket=bucket)))
        return cls(name, config, servers)

    def close(self) -> None:
        for s in self.servers:
            s.client.close()

    # ----------------------------------------------------------------- health

    def _probe(self, server: Server) -> None:
        """Probe outside the lock (it waits on the network)."""
        try:
            server.client.system_stats(timeout_s=PROBE_TIMEOUT_S)
            ok, why = True, ""
        except ComfyError as e:
            ok, why = False, str(e)
        with self._cond:
            server.probing = False
            was = server.healthy
            server.healthy, server.why, server.checked_at = ok, why, time.monotonic()
            if was is not None and was != ok:
                log.warning("%s: server %s is %s", self.name, server.url,
                            "back" if ok else f"down ({why})")
            self._cond.notify_all()

    def _stale(self, server: Server) -> bool:
        return server.healthy is None or (
            not server.healthy and time.monotonic() - server.checked_at > HEALTH_TTL_S)

    # ----------------------------------------------------------------- scheduling

    def acquire(self, *, exclude: set[str], cancel: threading.Event | None = None,
                timeout_s: float = 3600.0) -> Server:
        """The server the next prompt goes to, its in-flight slot taken; blocks while every
        usable server is full. :class:`FarmExhausted` when none is usable at all."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                candidates = [s for s in self.servers if s.url not in exclude and not s.excluded]
                to_probe = [s for s in candidates if self._stale(s) and not s.probing]
                for s in to_probe:
                    s.probing = True  # one thread probes a server; the others wait for it
                if not to_probe:
                    usable = [s for s in candidates if s.healthy]
                    probing = any(s.probing for s in candidates)
                    if not usable and not probing:
                        reasons = "; ".join(f"{s.url}: {s.why or 'left out'}"
                                            for s in self.servers) or "no servers"
                        raise FarmExhausted(f"{self.name}: no server can take the shot "
                                            f"({reasons})", self.name)
                    free = [s for s in usable if s.inflight < s.max_inflight]
                    if free:
                        best = min(free, key=lambda s: (s.load, s.inflight))
                        best.inflight += 1
                        return best
                    if cancel is not None and cancel.is_set():
                        raise FarmExhausted(f"{self.name}: cancelled while waiting for a "
                                            "server", self.name)
                    if time.monotonic() > deadline:
                        raise FarmExhausted(f"{self.name}: every server stayed busy for "
                                            f"{timeout_s:g} s", self.name)
                    self._cond.wait(timeout=1.0)
                    continue
            for server in to_probe:
                self._probe(server)

    def release(self, server: Server, *, ok: bool | None = None, lost: bool = False,
                why: str = "") -> None:
        """Give the slot back: ``ok`` True for a rendered shot, False for a failed one (three
        and the server is left out), None for neither; ``lost`` when it stopped answering."""
        with self._cond:
            server.inflight = max(0, server.inflight - 1)
            if lost:
                server.lost += 1
                server.healthy, server.why = False, why or "stopped answering"
                server.checked_at = time.monotonic()
            if ok is True:
                server.shots_ok += 1
            elif ok is False:
                server.shot_failures += 1
                if server.shot_failures >= MAX_SHOT_FAILURES and not server.excluded:
                    server.excluded = True
                    server.why = f"failed {server.shot_failures} shots in this run"
                    log.warning("%s: server %s left out for the rest of the run: %s",
                                self.name, server.url, server.why)
            self._cond.notify_all()

    def object_info(self, server: Server) -> dict[str, Any]:
        """The server's node classes (fetched once per server and run)."""
        if server.object_info is None:
            server.object_info = server.client.object_info()
        return server.object_info

    def stats(self) -> dict[str, dict[str, Any]]:
        with self._cond:
            return {s.url: {"shots_ok": s.shots_ok, "shot_failures": s.shot_failures,
                            "lost": s.lost, "excluded": s.excluded, "healthy": s.healthy}
                    for s in self.servers}
