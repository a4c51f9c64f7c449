"""The ComfyUI test double, driven the way a client drives a real server (httpx + websockets).

What is asserted is what a real ComfyUI 0.3.64 answered in the captures (message order, error
bodies, history shape, file naming), so the double can stand in for one in client tests.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

from anime_pipeline.media import ffmpeg
from anime_pipeline_tests.conftest import tiny_png
from anime_pipeline_tests.support.comfyui_double import ComfyDouble, weight_free_graph

WS_TIMEOUT_S = 30.0


@pytest.fixture
def double(tmp_path: Path) -> Iterator[ComfyDouble]:
    d = ComfyDouble(work_dir=tmp_path / "comfy")
    d.start()
    yield d
    d.stop()


def ws_connect(d: ComfyDouble, client_id: str) -> ClientConnection:
    return connect(d.url.replace("http://", "ws://") + f"/ws?clientId={client_id}",
                   open_timeout=10)


def upload(d: ComfyDouble, name: str = "start.png", data: bytes | None = None,
           **fields: str) -> httpx.Response:
    data = data if data is not None else tiny_png(80, 45)
    return httpx.post(f"{d.url}/upload/image", files={"image": (name, data, "image/png")},
                      data=fields, timeout=10)


def queue(d: ComfyDouble, graph: dict[str, Any], client_id: str = "c",
          prompt_id: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"prompt": graph, "client_id": client_id}
    if prompt_id is not None:
        body["prompt_id"] = prompt_id
    return httpx.post(f"{d.url}/prompt", json=body, timeout=10)


def follow(ws: ClientConnection, prompt_id: str) -> list[dict[str, Any]]:
    """Every JSON message until this prompt's ``executing {"node": null}``."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + WS_TIMEOUT_S
    while True:
        raw = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(raw, bytes):
            continue
        msg = json.loads(raw)
        seen.append(msg)
        data = msg["data"]
        if (msg["type"] == "executing" and data.get("node") is None
                and data.get("prompt_id") == prompt_id):
            return seen


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


def history(d: ComfyDouble, prompt_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{d.url}/history/{prompt_id}", timeout=10).json()
    return body


def run(d: ComfyDouble, graph: dict[str, Any], client_id: str | None = None
        ) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    client_id = client_id or uuid.uuid4().hex
    with ws_connect(d, client_id) as ws:
        r = queue(d, graph, client_id)
        assert r.status_code == 200, r.text
        prompt_id = r.json()["prompt_id"]
        messages = follow(ws, prompt_id)
    return prompt_id, messages, history(d, prompt_id)[prompt_id]


# The order a real server sent for the six-node graph (ws_success.jsonl), after the first
# status: queued, taken, then per node progress_state/executing/progress_state, SaveVideo's
# executed before its last progress_state, success, the queue update and executing null.
REAL_SUCCESS_ORDER = (
    ["status", "status", "execution_start", "execution_cached"]
    + ["progress_state", "executing", "progress_state"] * 5
    + ["progress_state", "executing", "executed", "progress_state"]
    + ["execution_success", "status", "executing"]
)


def test_weight_free_graph_renders_the_clip_the_real_server_renders(double: ComfyDouble
                                                                     ) -> None:
    stats = httpx.get(f"{double.url}/system_stats", timeout=10).json()
    assert stats["system"]["comfyui_version"] == "0.3.64"
    assert stats["devices"][0]["vram_total"] == 8 << 30
    assert 0 < stats["devices"][0]["vram_free"] <= stats["devices"][0]["vram_total"]
    assert httpx.get(f"{double.url}/object_info/NoSuchNode", timeout=10).json() == {}
    info = httpx.get(f"{double.url}/object_info", timeout=10).json()
    assert {"LoadImage", "SaveVideo", "WanImageToVideo", "HunyuanImageToVideo"} <= set(info)
    assert info["SaveVideo"]["output_node"] is True

    assert upload(double).json() == {"name": "start.png", "subfolder": "", "type": "input"}
    assert httpx.get(f"{double.url}/object_info/LoadImage", timeout=10).json()[
        "LoadImage"]["input"]["required"]["image"][0] == ["start.png"]
    graph = weight_free_graph("start.png", width=64, height=36, frames=12, fps=12,
                              prefix="video/shot")
    with ws_connect(double, "client-1") as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first == {"type": "status", "data": {
            "status": {"exec_info": {"queue_remaining": 0}}, "sid": "client-1"}}
        r = queue(double, graph, "client-1", prompt_id="p-1")
        assert r.status_code == 200
        assert r.json() == {"prompt_id": "p-1", "number": 0, "node_errors": {}}
        messages = follow(ws, "p-1")

    assert types(messages) == REAL_SUCCESS_ORDER
    for m in messages:
        if m["type"] not in ("status",):
            assert m["data"]["prompt_id"] == "p-1"
    executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
    assert executing == ["1", "2", "3", "4", "5", "6", None]
    last_state = [m for m in messages if m["type"] == "progress_state"][-1]["data"]["nodes"]
    assert set(last_state) == {"1", "2", "3", "4", "5", "6"}
    assert last_state["6"] == {"value": 1.0, "max": 1.0, "state": "finished", "node_id": "6",
                               "prompt_id": "p-1", "display_node_id": "6",
                               "parent_node_id": None, "real_node_id": "6"}
    output = {"images": [{"filename": "shot_00001_.mp4", "subfolder": "video",
                          "type": "output"}], "animated": [True]}
    executed = next(m for m in messages if m["type"] == "executed")["data"]
    assert executed == {"node": "6", "display_node": "6", "output": output, "prompt_id": "p-1"}

    entry = history(double, "p-1")["p-1"]
    assert list(entry) == ["prompt", "outputs", "status", "meta"]
    number, prompt_id, prompt, extra, outputs = entry["prompt"]
    assert (number, prompt_id, extra, outputs) == (0, "p-1", {"client_id": "client-1"}, ["6"])
    assert prompt["5"]["inputs"]["fps"] == 12.0  # converted by validation, like the real one
    assert entry["outputs"] == {"6": output}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == [
        "execution_start", "execution_cached", "execution_success"]
    assert all(isinstance(m[1]["timestamp"], int) for m in entry["status"]["messages"])
    assert entry["meta"] == {"6": {"node_id": "6", "display_node": "6", "parent_node": None,
                                   "real_node_id": "6"}}

    path = double.output_dir / "video" / "shot_00001_.mp4"
    info_ = ffmpeg.probe(path, count_frames=True, timeout=60)
    video = info_.first("video")
    assert video is not None and (video.codec, video.width, video.height) == ("h264", 64, 36)
    assert video.fps == 12.0 and info_.video_frames == 12
    assert double.executed == ["p-1"]

    view = httpx.get(f"{double.url}/view", params={"filename": "shot_00001_.mp4",
                                                    "subfolder": "video", "type": "output"})
    assert view.status_code == 200 and view.headers["content-type"] == "video/mp4"
    assert view.content == path.read_bytes()
    assert view.headers["content-disposition"] == 'filename="shot_00001_.mp4"'
    for params, status in (({"filename": "shot_00001_.mp4"}, 404),
                           ({"filename": "shot_00001_.mp4", "subfolder": "other"}, 404),
                           ({"filename": "missing.mp4", "subfolder": "video"}, 404),
                           ({"filename": "../shot_00001_.mp4", "subfolder": "video"}, 400)):
        assert httpx.get(f"{double.url}/view", params=params).status_code == status, params
    assert httpx.get(f"{double.url}/queue").json() == {"queue_running": [],
                                                       "queue_pending": []}


def _graph_with(change: str) -> dict[str, Any]:
    g = weight_free_graph("start.png")
    if change == "unknown_class":
        g["4"]["class_type"] = "NoSuchNode"
    elif change == "no_outputs":
        del g["6"]
    elif change == "missing_required":
        del g["2"]["inputs"]["width"]
    elif change == "below_min":
        g["5"]["inputs"]["fps"] = 0
    elif change == "above_max":
        g["2"]["inputs"]["width"] = 99999
    elif change == "not_in_list":
        g["2"]["inputs"]["upscale_method"] = "magic"
    elif change == "wrong_type":
        g["2"]["inputs"]["width"] = "wide"
    elif change == "missing_image":
        g["1"]["inputs"]["image"] = "does_not_exist.png"
    elif change == "dangling_link":
        g["3"]["inputs"]["image"] = ["99", 0]
    return g


@pytest.mark.parametrize(("change", "error_type", "node_id", "node_error"), [
    ("unknown_class", "invalid_prompt", None, None),
    ("no_outputs", "prompt_no_outputs", None, None),
    ("missing_required", "prompt_outputs_failed_validation", "2", "required_input_missing"),
    ("below_min", "prompt_outputs_failed_validation", "5", "value_smaller_than_min"),
    ("above_max", "prompt_outputs_failed_validation", "2", "value_bigger_than_max"),
    ("not_in_list", "prompt_outputs_failed_validation", "2", "value_not_in_list"),
    ("wrong_type", "prompt_outputs_failed_validation", "2", "invalid_input_type"),
    ("missing_image", "prompt_outputs_failed_validation", "1", "custom_validation_failed"),
    ("dangling_link", "prompt_outputs_failed_validation", "3",
     "exception_during_inner_validation"),
])
def test_validation_errors_have_the_real_bodies(double: ComfyDouble, change: str,
                                                error_type: str, node_id: str | None,
                                                node_error: str | None) -> None:
    upload(double)
    r = queue(double, _graph_with(change))
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert set(body) == {"error", "node_errors"}
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    assert body["error"]["type"] == error_type
    if node_id is None:
        assert body["node_errors"] == {}
        return
    assert body["error"]["details"] == ""  # the output node itself has no errors of its own
    assert list(body["node_errors"]) == [node_id]
    entry = body["node_errors"][node_id]
    assert entry["dependent_outputs"] == ["6"]
    assert entry["class_type"] == _graph_with(change)[node_id]["class_type"]
    (error,) = entry["errors"]
    assert error["type"] == node_error
    expected = {  # exactly what the real server answered (error_*.json in the captures)
        "missing_required": ("Required input is missing", "width"),
        "below_min": ("Value 0.0 smaller than min of 1.0", "fps"),
        "above_max": ("Value 99999 bigger than max of 16384", "width"),
        "not_in_list": ("Value not in list", "upscale_method: 'magic' not in "
                        "['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']"),
        "wrong_type": ("Failed to convert an input value to a INT value",
                       "width, wide, invalid literal for int() with base 10: 'wide'"),
        "missing_image": ("Custom validation failed for node",
                          "image - Invalid image file: does_not_exist.png"),
        "dangling_link": ("Exception when validating inner node", "'99'"),
    }[change]
    assert (error["message"], error["details"]) == expected
    if change == "dangling_link":
        extra = error["extra_info"]
        assert (extra["exception_type"], extra["linked_node"]) == ("KeyError", ["3", 0])
        assert extra["input_config"] == ["IMAGE", {}]
    if change == "below_min":
        assert error["extra_info"]["input_config"] == [
            "FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}]


def test_prompt_numbers_count_rejected_posts_and_bad_json_is_a_plain_500(double: ComfyDouble
                                                                         ) -> None:
    upload(double)
    assert queue(double, _graph_with("unknown_class")).status_code == 400
    no_prompt = httpx.post(f"{double.url}/prompt", json={"client_id": "c"})
    assert no_prompt.status_code == 400
    assert no_prompt.json()["error"]["type"] == "no_prompt"
    bad = httpx.post(f"{double.url}/prompt", content=b"{not json",
                     headers={"content-type": "application/json"})
    assert bad.status_code == 500 and bad.headers["content-type"].startswith("text/plain")
    assert bad.text == "500 Internal Server Error\n\nServer got itself in trouble"
    ok = queue(double, weight_free_graph("start.png"))
    assert ok.json()["number"] == 2  # 0 and 1 were rejected, the malformed one had no number
    assert len(double.prompts) == 3


def test_an_identical_graph_is_served_from_cache_and_a_new_seed_renders_again(
        double: ComfyDouble) -> None:
    upload(double)
    graph = weight_free_graph("start.png", prefix="video/take")
    first, _, entry1 = run(double, graph)
    second, messages, entry2 = run(double, graph)
    assert types(messages) == ["status", "status", "status", "execution_start",
                               "execution_cached", "executed", "progress_state",
                               "execution_success", "status", "executing"]
    cached = next(m for m in messages if m["type"] == "execution_cached")["data"]["nodes"]
    assert cached == ["1", "2", "3", "4", "5", "6"]
    state = next(m for m in messages if m["type"] == "progress_state")["data"]["nodes"]
    assert state["6"]["value"] == 1 and state["6"]["state"] == "finished"
    assert entry2["outputs"] == entry1["outputs"]
    assert entry2["outputs"]["6"]["images"][0]["filename"] == "take_00001_.mp4"
    assert sorted(p.name for p in (double.output_dir / "video").iterdir()) == [
        "take_00001_.mp4"]
    assert double.executed == [first]

    reseeded = weight_free_graph("start.png", prefix="video/take", seed=7)
    third, messages, entry3 = run(double, reseeded)
    assert next(m for m in messages if m["type"] == "execution_cached")["data"]["nodes"] == [
        "1", "2", "3"]
    assert [m["data"]["node"] for m in messages if m["type"] == "executing"] == [
        "4", "5", "6", None]
    assert entry3["outputs"]["6"]["images"][0]["filename"] == "take_00002_.mp4"
    assert double.executed == [first, third]
    assert second not in double.executed


def test_upload_renames_like_comfyui(double: ComfyDouble) -> None:
    a, b = tiny_png(8, 8), tiny_png(8, 8, b"\x00\x00\xff")
    assert upload(double, "dup.png", a).json()["name"] == "dup.png"
    assert upload(double, "dup.png", b).json()["name"] == "dup (1).png"
    assert upload(double, "dup.png", b).json()["name"] == "dup (1).png"  # same bytes: kept
    assert upload(double, "dup.png", b, overwrite="true").json()["name"] == "dup.png"
    assert upload(double, "dup.png", a, subfolder="shots").json() == {
        "name": "dup.png", "subfolder": "shots", "type": "input"}
    missing = httpx.post(f"{double.url}/upload/image", files={"other": ("x.png", a)})
    assert (missing.status_code, missing.content) == (400, b"")
    assert double.uploads == {"dup.png": b, "dup (1).png": b, "shots/dup.png": a}
    assert (double.input_dir / "shots" / "dup.png").read_bytes() == a


def _post_when(d: ComfyDouble, ws: ClientConnection, prompt_id: str, event: str, node: str,
               path: str, body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Follow the prompt; at the first ``event`` about ``node``, POST ``path``."""
    seen: list[dict[str, Any]] = []
    while True:
        msg = json.loads(ws.recv(timeout=WS_TIMEOUT_S))
        seen.append(msg)
        if msg["type"] == event and msg["data"]["node"] == node:
            r = httpx.post(f"{d.url}{path}", json=body or {}, timeout=10)
            assert (r.status_code, r.content) == (200, b"")
            return seen + follow(ws, prompt_id)


def test_interrupt_takes_effect_between_nodes_and_not_during_the_last(tmp_path: Path) -> None:
    d = ComfyDouble(work_dir=tmp_path / "comfy", gen_seconds_per_frame=0.05)
    d.start()
    try:
        upload(d)
        with ws_connect(d, "c") as ws:
            r = queue(d, weight_free_graph("start.png", frames=40), "c", prompt_id="long")
            assert r.status_code == 200
            messages = _post_when(d, ws, "long", "progress", "4", "/interrupt",
                                  {"prompt_id": "long"})
        progress = [m["data"] for m in messages if m["type"] == "progress"]
        assert progress and progress[0] == {"value": 1, "max": 40, "prompt_id": "long",
                                            "node": "4"}
        assert len(progress) < 40
        interrupted = next(m for m in messages if m["type"] == "execution_interrupted")["data"]
        assert {k: interrupted[k] for k in ("node_id", "node_type", "executed")} == {
            "node_id": "4", "node_type": "ImageAddNoise", "executed": ["1", "2", "3"]}
        entry = history(d, "long")["long"]
        assert entry["status"]["status_str"] == "error"
        assert entry["status"]["completed"] is False and entry["outputs"] == {}
        assert [m[0] for m in entry["status"]["messages"]] == [
            "execution_start", "execution_cached", "execution_interrupted"]
        assert d.interrupted == ["long"]
        assert not (d.output_dir / "video").exists()

        # during the last node: ignored, the prompt succeeds
        d.gen_seconds_per_frame, d.node_latency_s = 0.0, 0.3
        with ws_connect(d, "c") as ws:
            queue(d, weight_free_graph("start.png", seed=5), "c", prompt_id="last")
            messages = _post_when(d, ws, "last", "executing", "6", "/interrupt")
        assert "execution_success" in types(messages)
        assert history(d, "last")["last"]["status"]["status_str"] == "success"
    finally:
        d.stop()


def test_a_deleted_pending_prompt_never_runs(tmp_path: Path) -> None:
    d = ComfyDouble(work_dir=tmp_path / "comfy", node_latency_s=0.1)
    d.start()
    try:
        upload(d)
        with ws_connect(d, "c") as ws:
            for name, seed in (("A", 1), ("B", 2), ("C", 3)):
                assert queue(d, weight_free_graph("start.png", seed=seed, prefix=f"video/{name}"),
                             "c", prompt_id=name).status_code == 200
            q = httpx.get(f"{d.url}/queue").json()
            assert [item[1] for item in q["queue_running"]] == ["A"]
            assert [item[1] for item in q["queue_pending"]] == ["B", "C"]
            number, _, prompt, extra, outputs = q["queue_pending"][0]
            assert (number, extra, outputs) == (1, {"client_id": "c"}, ["6"])
            assert prompt["4"]["inputs"]["seed"] == 2
            assert history(d, "A") == {} and history(d, "B") == {}  # running, queued
            r = httpx.post(f"{d.url}/queue", json={"delete": ["B"]})
            assert (r.status_code, r.content) == (200, b"")
            assert [i[1] for i in httpx.get(f"{d.url}/queue").json()["queue_pending"]] == ["C"]
            follow(ws, "A")
            follow(ws, "C")
        assert history(d, "B") == {}
        assert d.executed == ["A", "C"]
        assert sorted(p.name for p in (d.output_dir / "video").iterdir()) == [
            "A_00001_.mp4", "C_00001_.mp4"]
    finally:
        d.stop()


def test_runtime_failures_look_like_the_real_ones(double: ComfyDouble) -> None:
    upload(double)
    _, messages, entry = run(double, weight_free_graph("start.png", width=65, height=36))
    error = next(m for m in messages if m["type"] == "execution_error")["data"]
    assert (error["node_id"], error["node_type"]) == ("6", "SaveVideo")
    assert error["exception_type"] == "av.error.ExternalError"
    assert error["exception_message"] == ("[Errno 542398533] Generic error in an external "
                                          "library: 'avcodec_open2(\"libx264\", {})'\n")
    assert error["executed"] == ["1", "2", "3", "4", "5"]
    assert set(error["current_inputs"]) == {"video", "filename_prefix", "format", "codec"}
    assert isinstance(error["traceback"], list) and sorted(error["current_outputs"]) == [
        "1", "2", "3", "4", "5", "6"]
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
    assert types(messages)[-3:] == ["execution_error", "status", "executing"]
    assert not list((double.output_dir / "video").iterdir())

    double.fail_next(exception_type="torch.OutOfMemoryError", message="CUDA out of memory")
    _, messages, entry = run(double, weight_free_graph("start.png", seed=9))
    error = next(m for m in messages if m["type"] == "execution_error")["data"]
    assert (error["node_id"], error["exception_type"]) == ("4", "torch.OutOfMemoryError")
    assert error["exception_message"].startswith("CUDA out of memory\nThis error means")
    assert entry["status"]["status_str"] == "error"
    _, _, entry = run(double, weight_free_graph("start.png", seed=9))  # the fault is spent
    assert entry["status"]["status_str"] == "success"


def test_kill_mid_prompt_drops_connections_and_restart_comes_back_empty(double: ComfyDouble
                                                                       ) -> None:
    upload(double)
    double.die_during_next()
    with ws_connect(double, "c") as ws:
        assert queue(double, weight_free_graph("start.png"), "c",
                     prompt_id="doomed").status_code == 200
        seen: list[str] = []
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                seen.append(json.loads(ws.recv(timeout=WS_TIMEOUT_S))["type"])
        assert closed.value.rcvd is None  # no close frame, like kill -9
        assert seen[:4] == ["status", "status", "status", "execution_start"]
        assert "executing" in seen and "execution_success" not in seen
    for path in ("/system_stats", "/history/doomed", "/queue"):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{double.url}{path}", timeout=5)
    with pytest.raises(ConnectionRefusedError):
        ws_connect(double, "c")
    assert double.executed == ["doomed"]
    assert not (double.output_dir / "video").exists()

    url = double.url
    assert double.restart() == url
    assert httpx.get(f"{url}/queue").json() == {"queue_running": [], "queue_pending": []}
    assert history(double, "doomed") == {}
    assert queue(double, _graph_with("unknown_class")).json()["error"]["type"] == "invalid_prompt"
    prompt_id, _, entry = run(double, weight_free_graph("start.png"))
    assert entry["prompt"][0] == 1  # numbering restarts with the server
    assert entry["outputs"]["6"]["images"][0]["filename"] == "ComfyUI_00001_.mp4"


def test_kill_while_idle_resets_open_connections(double: ComfyDouble) -> None:
    with ws_connect(double, "idle") as ws:
        ws.recv(timeout=10)
        double.kill()
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{double.url}/system_stats", timeout=5)
    double.restart()
    assert httpx.get(f"{double.url}/system_stats", timeout=5).status_code == 200


def _wan_graph(image: str, *, length: int = 9) -> dict[str, Any]:
    return {
        "1": {"class_type": "UNETLoader",
              "inputs": {"unet_name": "wan2.1_i2v_480p_14B_fp8.safetensors",
                         "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader",
              "inputs": {"clip_name": "umt5_xxl_fp8.safetensors", "type": "wan"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_2.1_vae.safetensors"}},
        "4": {"class_type": "CLIPVisionLoader",
              "inputs": {"clip_name": "clip_vision_h.safetensors"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": image}},
        "6": {"class_type": "CLIPVisionEncode",
              "inputs": {"clip_vision": ["4", 0], "image": ["5", 0], "crop": "none"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a courier", "clip": ["2", 0]}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "9": {"class_type": "WanImageToVideo",
              "inputs": {"positive": ["7", 0], "negative": ["8", 0], "vae": ["3", 0],
                         "width": 64, "height": 48, "length": length, "batch_size": 1,
                         "clip_vision_output": ["6", 0], "start_image": ["5", 0]}},
        "10": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "11": {"class_type": "KSampler",
               "inputs": {"model": ["10", 0], "seed": 3, "steps": 4, "cfg": 6.0,
                          "sampler_name": "uni_pc", "scheduler": "simple",
                          "positive": ["9", 0], "negative": ["9", 1],
                          "latent_image": ["9", 2], "denoise": 1.0}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["3", 0]}},
        "13": {"class_type": "CreateVideo", "inputs": {"images": ["12", 0], "fps": 16}},
        "14": {"class_type": "SaveVideo",
               "inputs": {"video": ["13", 0], "filename_prefix": "video/wan", "format": "auto",
                          "codec": "auto"}},
    }


def test_model_graphs_validate_only_against_the_listed_files(tmp_path: Path) -> None:
    bare = ComfyDouble(work_dir=tmp_path / "bare")
    bare.start()
    try:
        upload(bare)
        r = queue(bare, _wan_graph("start.png"))
        assert r.status_code == 400
        errors = r.json()["node_errors"]
        assert sorted(errors) == ["1", "2", "3", "4"]
        assert errors["1"]["errors"][0]["details"] == (
            "unet_name: 'wan2.1_i2v_480p_14B_fp8.safetensors' not in []")
        assert errors["3"]["errors"][0]["details"] == (
            "vae_name: 'wan_2.1_vae.safetensors' not in ['pixel_space']")
    finally:
        bare.stop()

    files = {"unet_name": ["wan2.1_i2v_480p_14B_fp8.safetensors"],
             "CLIPLoader.clip_name": ["umt5_xxl_fp8.safetensors"],
             "vae_name": ["wan_2.1_vae.safetensors"],
             "CLIPVisionLoader.clip_name": ["clip_vision_h.safetensors"]}
    d = ComfyDouble(work_dir=tmp_path / "farm", model_files=files,
                    gen_seconds_per_frame=0.01)
    d.start()
    try:
        info = httpx.get(f"{d.url}/object_info/VAELoader").json()["VAELoader"]
        assert info["input"]["required"]["vae_name"][0] == ["wan_2.1_vae.safetensors",
                                                            "pixel_space"]
        upload(d)
        _, messages, entry = run(d, _wan_graph("start.png", length=11))
        assert entry["status"]["status_str"] == "success", entry["status"]
        progress = [m["data"] for m in messages if m["type"] == "progress"]
        assert [(p["value"], p["max"], p["node"]) for p in progress] == [
            (1, 4, "11"), (2, 4, "11"), (3, 4, "11"), (4, 4, "11")]
        executing = [m["data"]["node"] for m in messages if m["type"] == "executing"]
        assert executing[-1] is None and executing[-2] == "14" and len(executing) == 15
        path = d.output_dir / "video" / "wan_00001_.mp4"
        probe = ffmpeg.probe(path, count_frames=True, timeout=60)
        video = probe.first("video")
        assert video is not None and (video.width, video.height, video.fps) == (64, 48, 16.0)
        assert probe.video_frames == 9  # Wan decodes ((length - 1) // 4) * 4 + 1 frames
    finally:
        d.stop()


def test_one_prompt_at_a_time_in_order(tmp_path: Path) -> None:
    d = ComfyDouble(work_dir=tmp_path / "comfy", node_latency_s=0.02)
    d.start()
    try:
        upload(d)
        results: list[str] = []
        ids = [f"p{i}" for i in range(3)]
        with ws_connect(d, "c") as ws:
            for i, prompt_id in enumerate(ids):
                queue(d, weight_free_graph("start.png", seed=i), "c", prompt_id=prompt_id)
            for prompt_id in ids:
                messages = follow(ws, prompt_id)
                starts = [m["data"]["prompt_id"] for m in messages
                          if m["type"] == "execution_start"]
                results += starts
        assert results == ids and d.executed == ids
        t = threading.Thread(target=d.stop)
        t.start()
        t.join(15)
        assert not t.is_alive()
    finally:
        d.stop()


def test_hunyuan_graph_with_a_custom_sampler_renders_its_length(tmp_path: Path) -> None:
    files = {"unet_name": ["hunyuan_video_i2v_720p_bf16.safetensors"],
             "clip_name1": ["llava_llama3_fp8_scaled.safetensors"],
             "clip_name2": ["clip_l.safetensors"],
             "vae_name": ["hunyuan_video_vae_bf16.safetensors"],
             "CLIPVisionLoader.clip_name": ["llava_llama3_vision.safetensors"]}
    graph = {
        "1": {"class_type": "UNETLoader",
              "inputs": {"unet_name": files["unet_name"][0], "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader",
              "inputs": {"clip_name1": files["clip_name1"][0],
                         "clip_name2": files["clip_name2"][0], "type": "hunyuan_video"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": files["vae_name"][0]}},
        "4": {"class_type": "CLIPVisionLoader",
              "inputs": {"clip_name": files["CLIPVisionLoader.clip_name"][0]}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "start.png"}},
        "6": {"class_type": "CLIPVisionEncode",
              "inputs": {"clip_vision": ["4", 0], "image": ["5", 0], "crop": "none"}},
        "7": {"class_type": "TextEncodeHunyuanVideo_ImageToVideo",
              "inputs": {"clip": ["2", 0], "clip_vision_output": ["6", 0],
                         "prompt": "a courier", "image_interleave": 2}},
        "8": {"class_type": "HunyuanImageToVideo",
              "inputs": {"positive": ["7", 0], "vae": ["3", 0], "width": 48, "height": 32,
                         "length": 13, "batch_size": 1, "guidance_type": "v2 (replace)",
                         "start_image": ["5", 0]}},
        "9": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 7.0}},
        "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": 11}},
        "11": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "12": {"class_type": "BasicScheduler",
               "inputs": {"model": ["9", 0], "scheduler": "simple", "steps": 3,
                          "denoise": 1.0}},
        "13": {"class_type": "BasicGuider",
               "inputs": {"model": ["9", 0], "conditioning": ["8", 0]}},
        "14": {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["10", 0], "guider": ["13", 0], "sampler": ["11", 0],
                          "sigmas": ["12", 0], "latent_image": ["8", 1]}},
        "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["3", 0]}},
        "16": {"class_type": "GetImageSize", "inputs": {"image": ["15", 0]}},
        "17": {"class_type": "CreateVideo", "inputs": {"images": ["15", 0], "fps": 24}},
        "18": {"class_type": "SaveVideo",
               "inputs": {"video": ["17", 0], "filename_prefix": "hy/shot", "format": "mp4",
                          "codec": "h264"}},
    }
    d = ComfyDouble(work_dir=tmp_path / "farm", model_files=files)
    d.start()
    try:
        upload(d)
        _, messages, entry = run(d, graph)
        assert entry["status"]["status_str"] == "success", entry["status"]
        assert [(m["data"]["value"], m["data"]["max"]) for m in messages
                if m["type"] == "progress"] == [(1, 3), (2, 3), (3, 3)]
        assert entry["outputs"] == {"18": {"images": [{"filename": "shot_00001_.mp4",
                                                       "subfolder": "hy", "type": "output"}],
                                           "animated": [True]}}
        probe = ffmpeg.probe(d.output_dir / "hy" / "shot_00001_.mp4", count_frames=True,
                             timeout=60)
        video = probe.first("video")
        assert video is not None and (video.width, video.height) == (48, 32)
        assert probe.video_frames == 13
    finally:
        d.stop()


def test_a_prompt_without_client_id_shows_only_progress_state_to_everyone(double: ComfyDouble
                                                                          ) -> None:
    upload(double)
    with ws_connect(double, "observer") as ws:
        ws.recv(timeout=10)
        r = httpx.post(f"{double.url}/prompt",
                       json={"prompt": weight_free_graph("start.png"), "prompt_id": "anon"})
        assert r.status_code == 200
        seen: list[dict[str, Any]] = []
        while not (seen and seen[-1]["type"] == "status"
                   and seen[-1]["data"]["status"]["exec_info"]["queue_remaining"] == 0):
            seen.append(json.loads(ws.recv(timeout=WS_TIMEOUT_S)))
    assert set(types(seen)) == {"status", "progress_state"}  # as ws_observer_other_clients
    assert all(m["data"]["prompt_id"] == "anon" for m in seen if m["type"] == "progress_state")
    assert history(double, "anon")["anon"]["status"]["status_str"] == "success"
