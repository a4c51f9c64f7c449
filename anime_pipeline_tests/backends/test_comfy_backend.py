"""One shot on a ComfyUI farm, the way the plan says: exact frames, segments from the last
frame, a seed per attempt, rejections not retried, lost servers re-queued, cancel interrupts."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from anime_pipeline.backends import AnimaticBackend, SlateBackend
from anime_pipeline.backends.comfyui.backend import ComfyBackend, NeedsKeyframe
from anime_pipeline.backends.comfyui.client import ExecutionFailed, PromptRejected, PromptTimeout
from anime_pipeline.backends.comfyui.farm import FarmExhausted
from anime_pipeline.backends.comfyui.templates import TemplateMismatch, load_template
from anime_pipeline.budget import get_ladder
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.records import ClipStatus
from anime_pipeline.domain.rendering import (
    RenderAborted,
    RenderBackend,
    RenderOutcome,
    render_shot,
)
from anime_pipeline.media.ffmpeg import verify_clip
from anime_pipeline_tests.backends.conftest import backend_on, job_for
from anime_pipeline_tests.support.comfyui_double import ComfyDouble

Doubles = Callable[..., ComfyDouble]


def _verify(bundle: EpisodeBundle, shot_id: str, path: Path) -> int:
    ep = bundle.episode
    shot = ep.shot(shot_id)
    frames = round(shot.duration_ms * ep.format.fps / 1000)
    probe = verify_clip(path, expected_frames=frames, width=ep.format.width,
                        height=ep.format.height, fps=ep.format.fps, timeout=60)
    return probe.frames


def _through_the_ladder(backend: ComfyBackend, bundle: EpisodeBundle, tmp_path: Path, *,
                        retry_budget: int, fallback: bool = True) -> RenderOutcome:
    """S01 as a clips run renders it: retries, then the standard ladder (with the animatic
    as the next backend when ``fallback``), then the slate."""
    backends: dict[str, RenderBackend] = {"comfyui_i2v": backend}
    if fallback:
        backends["animatic"] = AnimaticBackend()
    return render_shot(
        job_for(bundle), tmp_path / "S01.mp4", backends=backends,
        backend_preference=list(backends), retry_budget=retry_budget,
        ladder=get_ladder("DL_STANDARD_V1"), slate=SlateBackend(),
        verify=lambda p: _verify(bundle, "S01", p))


def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _seeds(d: ComfyDouble) -> list[int]:
    return [int(p["prompt"]["4"]["inputs"]["seed"]) for p in d.prompts]


def test_a_shot_is_generated_and_conformed_to_its_exact_frames(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    d = doubles()
    backend = backend_on(d)
    out = tmp_path / "S01.mp4"
    info = backend.render(job_for(bundle, "S01", fps=8, thumbnail=tmp_path / "t.jpg"), out)
    assert _verify(bundle, "S01", out) == 24  # 1 s at 24 fps, generated at 8 fps
    assert (tmp_path / "t.jpg").stat().st_size > 0
    assert info.server == d.url
    [usage] = info.usage
    body = d.prompts[0]
    assert usage.prompt_id == body["prompt_id"]
    assert body["client_id"] == f"{backend.client_id}-{usage.prompt_id[:8]}"
    assert usage.server == d.url and usage.frames == 8 and usage.video_sec == 1.0
    assert usage.gpu_sec is not None and 0 <= usage.gpu_sec <= usage.wall_sec
    graph = body["prompt"]
    assert (graph["2"]["inputs"]["width"], graph["2"]["inputs"]["height"]) == (320, 180)
    assert graph["5"]["inputs"]["fps"] == 8.0
    # The keyframe went up under our name, and the graph loads the name the server returned.
    assert graph["1"]["inputs"]["image"] in d.uploads
    assert graph["6"]["inputs"]["filename_prefix"].startswith("anime_pipeline/S01_")
    backend.farm.close()


def test_segments_start_from_the_previous_segments_last_frame(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    d = doubles()
    backend = backend_on(d)
    out = tmp_path / "S01.mp4"
    info = backend.render(job_for(bundle, "S01", fps=12, segment_max_ms=250), out)
    assert _verify(bundle, "S01", out) == 24
    assert len(d.prompts) == 4 and len(info.usage) == 4  # 12 frames in windows of 3
    # Segment k+1 starts from segment k's last frame: one upload per segment, the later
    # ones frames of the video (not the keyframe), and each later segment generates one
    # frame more (its repeated start, dropped when stitching).
    images = [p["prompt"]["1"]["inputs"]["image"] for p in d.prompts]
    assert len(set(images)) == 4 and all(i in d.uploads for i in images)
    keyframe = (bundle.root / "keyframes" / "S01.png").read_bytes()
    assert d.uploads[images[0]] == keyframe
    assert all(d.uploads[i] != keyframe for i in images[1:])
    assert [u.frames for u in info.usage] == [3, 4, 4, 4]
    assert len(set(_seeds(d))) == 4
    backend.farm.close()


def test_every_attempt_has_its_own_seed_and_file_name_so_nothing_comes_from_the_cache(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    d = doubles()
    backend = backend_on(d)
    for attempt in (0, 1):
        backend.render(job_for(bundle, "S01", attempt=attempt), tmp_path / f"a{attempt}.mp4")
    backend.render(job_for(bundle, "S01", run_id="run-2"), tmp_path / "b.mp4")
    assert len(set(_seeds(d))) == 3
    prefixes = {p["prompt"]["6"]["inputs"]["filename_prefix"] for p in d.prompts}
    assert len(prefixes) == 3
    assert d.executed == [p["prompt_id"] for p in d.prompts]  # all three really ran
    backend.farm.close()


def test_a_rejected_workflow_is_not_retried_and_names_node_input_and_server(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    d = doubles()
    base = load_template("weightfree_i2v")
    graph = {**base.graph, "4": {"class_type": "ImageAddNoise",
                                 "inputs": {**base.graph["4"]["inputs"], "strength": 50}}}
    backend = backend_on(d, template=base.model_copy(update={"graph": graph}))
    with pytest.raises(PromptRejected) as e:
        backend.render(job_for(bundle), tmp_path / "x.mp4")
    message = str(e.value)
    assert "node 4" in message and "strength" in message and d.url in message
    # Through the ladder: no retry of the same thing, straight down to the animatic.
    outcome = _through_the_ladder(backend, bundle, tmp_path, retry_budget=2)
    assert len(d.prompts) == 2  # one per render: never retried
    assert outcome.status is ClipStatus.degraded and outcome.backend == "animatic"
    assert "strength" in (outcome.reason or "")
    backend.farm.close()


def test_a_template_the_server_cannot_run_is_refused_before_queueing(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    d = doubles()  # no model files
    backend = backend_on(d, template=load_template("wan_i2v"))
    with pytest.raises(TemplateMismatch) as e:
        backend.render(job_for(bundle), tmp_path / "x.mp4")
    assert "wan2.1_i2v_480p_14B_fp16.safetensors" in str(e.value) and d.url in str(e.value)
    assert d.prompts == []
    base = load_template("weightfree_i2v")
    graph = {**base.graph, "7": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(TemplateMismatch, match="class NoSuchNode is not installed"):
        backend_on(d, template=base.model_copy(update={"graph": graph})).render(
            job_for(bundle), tmp_path / "y.mp4")
    assert d.prompts == []
    backend.farm.close()


def test_an_execution_error_is_retried_with_a_new_seed(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    d = doubles()
    d.fail_next(message="CUDA out of memory (double)")
    backend = backend_on(d)
    with pytest.raises(ExecutionFailed, match="CUDA out of memory"):
        backend.render(job_for(bundle, run_id="run-0"), tmp_path / "x.mp4")
    d.fail_next(message="CUDA out of memory (double)")
    outcome = _through_the_ladder(backend, bundle, tmp_path, retry_budget=1, fallback=False)
    assert outcome.status is ClipStatus.ok and outcome.backend == "comfyui_i2v"
    assert [a.ok for a in outcome.attempts] == [False, True]
    # The failed prompt ran on the server: it is in the usage, marked, with its time.
    [spent] = outcome.attempts[0].usage
    assert outcome.attempts[0].server == d.url and spent.server == d.url
    assert spent.outcome == "failed" and spent.frames == 0 and spent.gpu_sec is not None
    assert spent.prompt_id == d.prompts[1]["prompt_id"]
    assert [u.outcome for u in outcome.attempts[1].usage] == ["ok"]
    assert len(set(_seeds(d))) == 3
    backend.farm.close()


def test_a_server_that_dies_mid_shot_has_the_shot_requeued_on_another(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    a, b = doubles(node_latency_s=0.05), doubles(node_latency_s=0.05)
    backend = backend_on(a, b)
    a.die_during_next()
    b_first = backend.farm.servers[1]
    b_first.inflight = 1  # b busy: the shot goes to a first
    worker = threading.Thread(target=lambda: (time.sleep(0.5), setattr(b_first, "inflight", 0)))
    worker.start()
    info = backend.render(job_for(bundle), tmp_path / "S01.mp4")
    worker.join()
    assert not a.alive and len(a.prompts) == 1
    assert [(u.server, u.outcome) for u in info.usage] == [(a.url, "lost"), (b.url, "ok")]
    assert info.server == b.url and len(b.prompts) == 1
    assert _verify(bundle, "S01", tmp_path / "S01.mp4") == 24
    stats = backend.farm.stats()
    assert stats[a.url]["lost"] == 1 and stats[a.url]["healthy"] is False
    assert stats[b.url]["shots_ok"] == 1
    backend.farm.close()


def test_a_server_that_fails_three_shots_is_left_out_for_the_run(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    a = doubles()
    backend = backend_on(a)
    for i in range(3):
        a.fail_next()
        with pytest.raises(ExecutionFailed):
            backend.render(job_for(bundle, attempt=i), tmp_path / f"{i}.mp4")
    assert backend.farm.stats()[a.url]["excluded"] is True
    with pytest.raises(FarmExhausted, match="failed 3 shots"):
        backend.render(job_for(bundle, attempt=9), tmp_path / "x.mp4")
    assert len(a.prompts) == 3
    backend.farm.close()


def test_a_farm_with_no_live_server_is_exhausted_not_hung(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    a = doubles()
    a.kill()
    backend = backend_on(a)
    t0 = time.monotonic()
    with pytest.raises(FarmExhausted, match=a.url):
        backend.render(job_for(bundle), tmp_path / "x.mp4")
    assert time.monotonic() - t0 < 15
    backend.farm.close()


def test_stopping_the_run_interrupts_and_dequeues_our_prompts(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    d = doubles(gen_seconds_per_frame=1.0)  # 8 frames: 8 s
    backend = backend_on(d, max_inflight=2)
    cancel = threading.Event()
    errors: list[BaseException] = []

    def render(shot: str) -> None:
        try:
            backend.render(job_for(bundle, shot, cancel=cancel), tmp_path / f"{shot}.mp4")
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            errors.append(e)

    threads = [threading.Thread(target=render, args=(s,)) for s in ("S01", "S02")]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while (len(d.prompts) < 2 or not d.executed) and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    cancel.set()
    for t in threads:
        t.join(30)
    assert time.monotonic() - t0 < 10
    assert len(errors) == 2 and all(isinstance(e, RenderAborted) for e in errors)
    running, pending = d.prompts[0]["prompt_id"], d.prompts[1]["prompt_id"]
    _until(lambda: running in d.interrupted)  # at the sampler's next step
    # The pending one was taken off the queue (or, had it just started, interrupted too):
    # nothing of ours is left on the server.
    assert pending not in d.executed or pending in d.interrupted
    _until(lambda: httpx.get(f"{d.url}/queue", timeout=5).json() == {
        "queue_running": [], "queue_pending": []})
    assert not list((tmp_path).glob(".S0*"))  # the work folders are gone
    backend.farm.close()


def test_a_prompt_past_its_timeout_is_interrupted(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    d = doubles(gen_seconds_per_frame=1.0)
    backend = backend_on(d, timeout_s=1.5)
    t0 = time.monotonic()
    with pytest.raises(PromptTimeout):
        backend.render(job_for(bundle), tmp_path / "x.mp4")
    assert time.monotonic() - t0 < 10
    _until(lambda: d.interrupted == [d.prompts[0]["prompt_id"]])
    backend.farm.close()


def test_a_shot_without_a_keyframe_is_not_sent(doubles: Doubles, bundle: EpisodeBundle,
                                               tmp_path: Path) -> None:
    # A shot cut from footage has no keyframe; a generative backend cannot start it.
    d = doubles()
    job = job_for(bundle)
    job = dataclasses.replace(job, shot=job.shot.model_copy(update={"keyframe": None}))
    with pytest.raises(NeedsKeyframe, match="S01 has no keyframe"):
        backend_on(d).render(job, tmp_path / "x.mp4")
    assert d.prompts == []


WAN_FILES = {"unet_name": ["wan2.1_i2v_480p_14B_fp16.safetensors"],
             "CLIPLoader.clip_name": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],
             "vae_name": ["wan_2.1_vae.safetensors"],
             "CLIPVisionLoader.clip_name": ["clip_vision_h.safetensors"]}


def test_a_server_without_the_models_passes_the_shot_to_one_that_has_them(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    bare, full = doubles(), doubles(model_files=WAN_FILES)
    backend = backend_on(bare, full, template=load_template("wan_i2v"))
    backend.farm.servers[1].inflight = 1  # the bare one is asked first
    threading.Timer(0.5, lambda: setattr(backend.farm.servers[1], "inflight", 0)).start()
    info = backend.render(job_for(bundle, "S01", fps=16), tmp_path / "S01.mp4")
    assert info.server == full.url and bare.prompts == [] and len(full.prompts) == 1
    assert _verify(bundle, "S01", tmp_path / "S01.mp4") == 24
    backend.farm.close()


def test_a_workflow_no_server_can_run_goes_down_the_ladder_without_retries(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    d = doubles()
    backend = backend_on(d, template=load_template("wan_i2v"))
    outcome = _through_the_ladder(backend, bundle, tmp_path, retry_budget=3)
    assert outcome.status is ClipStatus.degraded and outcome.backend == "animatic"
    assert [a.backend for a in outcome.attempts] == ["comfyui_i2v", "animatic"]
    assert "wan2.1_i2v_480p_14B_fp16.safetensors" in (outcome.reason or "")
    assert d.prompts == []
    backend.farm.close()


def test_two_prompts_in_flight_on_one_server_both_finish(
        doubles: Doubles, bundle: EpisodeBundle, tmp_path: Path) -> None:
    # ComfyUI sends a client's messages to the socket it connected last: prompts sharing a
    # client id would starve each other. Each prompt has its own.
    d = doubles(node_latency_s=0.1)
    backend = backend_on(d, max_inflight=2)
    results: dict[str, object] = {}

    def render(shot: str) -> None:
        results[shot] = backend.render(job_for(bundle, shot), tmp_path / f"{shot}.mp4")

    threads = [threading.Thread(target=render, args=(s,)) for s in ("S01", "S02")]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["S01", "S02"] and time.monotonic() - t0 < 20
    assert len({p["client_id"] for p in d.prompts}) == 2
    backend.farm.close()


def test_a_prompt_whose_socket_was_taken_over_still_finishes(
        doubles: Doubles, tmp_path: Path) -> None:
    from anime_pipeline.backends.comfyui.client import ComfyClient
    from anime_pipeline_tests.conftest import tiny_png
    from anime_pipeline_tests.support.comfyui_double import weight_free_graph

    d = doubles(node_latency_s=0.2)
    start = tmp_path / "s.png"
    start.write_bytes(tiny_png(64, 36))
    client = ComfyClient(d.url)
    name = client.upload_image(start, "s.png")
    results: dict[str, float] = {}

    def run(tag: str, seed: int) -> None:
        graph = weight_free_graph(name, frames=4)
        graph["4"]["inputs"]["seed"] = seed
        t0 = time.monotonic()
        client.run_prompt(graph, prompt_id=f"00000000-0000-0000-0000-00000000000{seed}",
                          client_id="shared", template="t", timeout_s=60)
        results[tag] = time.monotonic() - t0

    first = threading.Thread(target=run, args=("first", 1))
    first.start()
    time.sleep(0.3)
    run("second", 2)  # its socket replaces the first's on the server
    first.join(60)
    assert sorted(results) == ["first", "second"]
    assert results["first"] < 30  # found in the history, not left to time out
    client.close()
