"""Requests per second per remote host."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from anime_pipeline.backends.ratelimit import HostBuckets, TokenBucket, host_of
from anime_pipeline_tests.backends.conftest import farm_of
from anime_pipeline_tests.support.comfyui_double import ComfyDouble


def test_a_bucket_holds_a_host_to_its_rate_and_hosts_apart() -> None:
    hosts = HostBuckets(rate=20, burst=1)
    t0 = time.monotonic()
    for _ in range(11):
        hosts.take("https://cdn.example/a.m3u8")
    assert time.monotonic() - t0 >= 0.45  # 10 waits of 1/20 s
    t1 = time.monotonic()
    hosts.take("https://other.example/b.mp4")  # another host has its own bucket
    assert time.monotonic() - t1 < 0.05
    assert host_of("https://CDN.example/x") == host_of("https://cdn.example:443/y")
    assert host_of("http://h/x") != host_of("http://h:8080/x")


def test_a_stop_ends_the_wait() -> None:
    bucket = TokenBucket(rate=0.01, burst=1)
    bucket.take()
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(InterruptedError):
        bucket.take(cancel)


def test_requests_per_second_applies_to_every_call_to_a_server(
        doubles: Callable[..., ComfyDouble], tmp_path: Path) -> None:
    d = doubles()
    farm = farm_of(d, rps=4)
    client = farm.servers[0].client
    t0 = time.monotonic()
    for _ in range(9):  # a burst of 4, then 1 every 1/4 s
        client.system_stats()
    assert time.monotonic() - t0 >= 1.1
    farm.close()
