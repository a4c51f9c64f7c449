"""A protocol-faithful test double of a ComfyUI 0.3.64 server (HTTP + websocket).

It answers what a real ComfyUI 0.3.64 answered on this machine (``/work/shared/comfyui-api.md``
and the captures of ``/work/comfyui/capture/``, which it was compared with message by message),
so a client can be tested without torch, a GPU or model files:

* ``GET /system_stats``, ``/object_info``, ``/object_info/{cls}`` (``{}`` when unknown): the
  node specs are a real server's ``/object_info`` entries (``comfyui_nodes.json``); model-file
  combos are filled from ``model_files``, LoadImage's combo lists the uploaded images;
* ``POST /upload/image``: ``x (1).png`` for a new file under a taken name, the same name back
  for identical bytes, ``overwrite``, ``subfolder``, ``type``; 400 with no body without ``image``;
* ``POST /prompt``: ComfyUI's validation with its error bodies (``invalid_prompt``,
  ``prompt_no_outputs``, ``no_prompt``, ``prompt_outputs_failed_validation`` with node errors
  ``required_input_missing``, ``value_smaller_than_min``, ``value_bigger_than_max``,
  ``value_not_in_list`` (old-style list combos only: the ``COMBO`` inputs of new-style nodes,
  e.g. SaveVideo's format and codec, are not checked, and fail at run time), ``invalid_input_type``,
  ``return_type_mismatch``, ``bad_linked_input``, ``custom_validation_failed``,
  ``exception_during_inner_validation`` / ``exception_during_validation``); inputs converted
  in place; ``number`` counts every POST with a JSON body; malformed JSON is aiohttp's
  plain-text 500;
* one worker thread runs prompts in ``number`` order and sends what ComfyUI sends: ``status``
  (queue_remaining, to every socket, on queue, take, finish and delete), ``execution_start``,
  ``execution_cached``, per node ``progress_state`` (running) / ``executing`` / ``progress_state``
  (finished), ``progress`` from samplers, ``executed`` for output nodes (before their last
  ``progress_state``), ``execution_success`` | ``execution_error`` | ``execution_interrupted``,
  then ``status`` and ``executing {"node": null}``; to the prompt's ``client_id`` only
  (``progress_state``/``progress`` go to every socket when the prompt has none);
* ComfyUI's classic output cache: a node whose class, constant inputs, IS_CHANGED (LoadImage:
  the file's sha256) and ancestry are those of a node of the previous prompt is not run; a
  fully cached prompt sends only ``executed`` for its output node with the old file;
* ``GET /history``, ``/history/{id}`` (``{}`` until done), ``/view`` (404 wrong subfolder or
  file, 400 ``..``, 403 subfolder escape), ``/queue``, ``/prompt``, ``/features``;
  ``POST /queue`` (delete, clear), ``/interrupt`` (optional ``prompt_id``; checked when a node
  starts and at sampler steps, so it is ignored during the last node), ``/history``, ``/free``;
  every route also under ``/api``; ``feature_flags`` on the websocket.

Executing the weight-free graph (LoadImage -> ImageScale -> RepeatImageBatch -> ImageAddNoise
-> CreateVideo -> SaveVideo) renders a real H.264 MP4 (yuv420p, no stream encoder tag, the
prompt in the ``prompt`` tag) with the bundled ffmpeg: the uploaded image scaled like ImageScale,
``amount`` frames at CreateVideo's ``fps``, ImageAddNoise's seeded noise, written as
``<work_dir>/output/<subfolder of the prefix>/<name>_<counter:05>_.mp4`` with SaveVideo's
counter. An IMAGE is not a tensor here but a recipe (still, ffmpeg filters, size, frame
count) that SaveVideo (or SaveAnimatedWEBP) renders once. Odd sizes, other formats or codecs
fail in SaveVideo with the real exception type and message, and leave no file.

Graphs with model loaders validate only against the files ``model_files`` lists, as on a
server that has them (VAELoader always offers ``pixel_space``). Executing them renders the
same kind of clip: the latent nodes (WanImageToVideo, WanFirstLastFrameToVideo,
Wan22ImageToVideoLatent, HunyuanImageToVideo, EmptyHunyuanLatentVideo) fix the size (rounded
down to the VAE's 8 or 16 pixels) and length (``((length - 1) // 4) * 4 + 1`` frames, as those
VAEs decode), the sampler spends the generation time, VAEDecode(Tiled) turns the latent into
frames of the start image (or mid-grey) with light noise seeded by the sampler's seed. The
other model nodes (loaders, encoders, guiders...) pass opaque values.

Knobs and observations a real server does not have:

* ``gen_seconds_per_frame``: a sampler (KSampler, KSamplerAdvanced (its share of the steps),
  SamplerCustom(Advanced); ImageAddNoise in graphs without one) spends
  ``gen_seconds_per_frame * frames`` in ``steps`` steps, each ending like ComfyUI's progress
  hook: interrupt check, ``progress_state``, ``progress {"value", "max", "prompt_id", "node"}``.
  ImageAddNoise reports steps (one per frame) only when the knob is non-zero; the real one
  reports none and is not interruptible;
* ``node_latency_s``: slept by every node that runs (not interruptible, like a real node);
* ``fail_next`` / ``die_during_next``; ``prompts``, ``uploads``, ``executed``, ``interrupted``
  are kept across ``restart`` (the server's queue, history, cache and numbering are not).

Known differences: tracebacks name this module's frames; ``current_inputs`` show a stand-in
for tensors; a kill while ffmpeg is writing still completes that file (a killed ComfyUI leaves
a partial one); ``/view`` ignores ``preview``/``channel``; ``system_stats`` reports one
``cpu`` device whose VRAM is ``vram_total`` (RAM from this machine); timings are ffmpeg's, not
torch's (use ``gen_seconds_per_frame`` / ``node_latency_s`` for realistic durations).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import hashlib
import heapq
import json
import mimetypes
import os
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from anime_pipeline.media import ffmpeg

COMFYUI_VERSION = "0.3.64"
NODES_FILE = Path(__file__).with_name("comfyui_nodes.json")
MAX_UPLOAD_BYTES = 100 * 1024 * 1024  # ComfyUI's default --max-upload-size (100 MB)
MAXIMUM_HISTORY_SIZE = 10000
SLICE_S = 0.02  # sleeps are cut into slices this long so kill() and interrupts are prompt
FFMPEG_TIMEOUT_S = 300.0

#: Combo inputs whose values are model files on the server: (class, input) -> folder.
MODEL_FILE_INPUTS: dict[tuple[str, str], str] = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
}

SAMPLER_CLASSES = ("KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced", "SamplerCustom")
IMAGE_LOADERS = ("LoadImage", "LoadImageOutput")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
TEXT_EVENT = 3  # ComfyUI's BinaryEventTypes.TEXT (progress text, e.g. GetImageSize)


# --------------------------------------------------------------------------- node specs


@functools.lru_cache(maxsize=1)
def _base_specs() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(NODES_FILE.read_text(encoding="utf-8"))
    data.pop("_comment", None)
    return data


def _combo_options(decl: list[Any]) -> list[Any] | None:
    if isinstance(decl[0], list):
        return decl[0]
    if decl[0] == "COMBO" and len(decl) > 1 and isinstance(decl[1], dict):
        options = decl[1].get("options")
        return options if isinstance(options, list) else None
    return None


def _set_combo_options(decl: list[Any], options: list[Any]) -> None:
    if isinstance(decl[0], list) or decl[0] != "COMBO":
        decl[0] = options
    else:
        decl[1]["options"] = options


def _is_image_file(name: str) -> bool:
    guessed = mimetypes.guess_type(name)[0]
    return (guessed or "").startswith("image/") or name.lower().endswith(IMAGE_EXTENSIONS)


def _node_specs(model_files: Mapping[str, Sequence[str]], input_dir: Path) -> dict[str, Any]:
    """The /object_info of this server now: model combos and LoadImage's file list filled."""
    specs = copy.deepcopy(_base_specs())
    for (cls, name), _folder in MODEL_FILE_INPUTS.items():
        spec = specs.get(cls)
        if spec is None:
            continue
        for category in ("required", "optional"):
            decl = spec["input"].get(category, {}).get(name)
            if decl is None:
                continue
            fixed = _combo_options(decl) or []  # e.g. VAELoader's "pixel_space"
            files = model_files.get(f"{cls}.{name}", model_files.get(name, ()))
            options = sorted(str(f) for f in files)
            _set_combo_options(decl, options + [f for f in fixed if f not in options])
    load = specs.get("LoadImage")
    if load is not None:
        files = []
        if input_dir.is_dir():
            files = sorted(p.name for p in input_dir.iterdir() if p.is_file()
                           and _is_image_file(p.name))
        _set_combo_options(load["input"]["required"]["image"], files)
    return specs


def _input_info(spec: Mapping[str, Any], name: str) -> tuple[Any, str | None, Any]:
    """(type, category, extra) of one input, as ComfyUI's get_input_info returns them."""
    for category in ("required", "optional", "hidden"):
        section = spec["input"].get(category) or {}
        if name in section:
            decl = section[name]
            extra = decl[1] if len(decl) > 1 else {}
            return decl[0], category, extra
    return None, None, None


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


def _types_match(received: Any, wanted: Any) -> bool:
    if not received != wanted:
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    if "*" in (received, wanted):
        return True
    got = {t.strip() for t in received.split(",")}
    return bool(got & {t.strip() for t in wanted.split(",")})


def _full_type_name(exc: BaseException) -> str:
    if isinstance(exc, _NodeFailure):
        return exc.type_name
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _annotated_path(name: str, dirs: Mapping[str, Path]) -> Path:
    """ComfyUI's annotated file names: ``x.png``, ``sub/x.png``, ``x.png [output]``."""
    for tag in ("output", "input", "temp"):
        suffix = f" [{tag}]"
        if name.endswith(suffix):
            return dirs[tag] / name[: -len(suffix)]
    return dirs["input"] / name


# --------------------------------------------------------------------------- validation


def _custom_validation(class_type: str, values: dict[str, Any],
                       dirs: Mapping[str, Path]) -> list[Any] | None:
    """A node's own VALIDATE_INPUTS (only LoadImage's, which LoadImageOutput inherits)."""
    if class_type not in IMAGE_LOADERS:
        return None
    if "image" not in values:
        raise TypeError(f"{class_type}.VALIDATE_INPUTS() missing 1 required positional "
                        "argument: 'image'")
    image = values["image"]
    if not isinstance(image, str):  # a link: ComfyUI validates it as None
        raise AttributeError(f"'{type(image).__name__}' object has no attribute 'endswith'")
    if not _annotated_path(image, dirs).exists():
        return [f"Invalid image file: {image}"]
    return [True]


def _validate_inputs(prompt: dict[str, Any], uid: str, validated: dict[str, Any],
                     specs: Mapping[str, Any], dirs: Mapping[str, Path]) -> tuple[Any, ...]:
    if uid in validated:
        return validated[uid]
    inputs = prompt[uid]["inputs"]
    class_type = prompt[uid]["class_type"]
    spec = specs[class_type]
    declared = spec["input"]
    names = list(declared.get("required") or {})
    names += [n for n in declared.get("optional") or {} if n not in names]
    custom_inputs = ("image",) if class_type in IMAGE_LOADERS else ()
    errors: list[dict[str, Any]] = []
    valid = True
    for x in names:
        input_type, category, extra = _input_info(spec, x)
        info = [input_type, extra]
        if x not in inputs:
            if category == "required":
                errors.append({"type": "required_input_missing",
                               "message": "Required input is missing", "details": f"{x}",
                               "extra_info": {"input_name": x}})
            continue
        val = inputs[x]
        if isinstance(val, list):
            if len(val) != 2:
                errors.append({"type": "bad_linked_input",
                               "message": "Bad linked input, must be a length-2 list of "
                                          "[node_id, slot_index]",
                               "details": f"{x}",
                               "extra_info": {"input_name": x, "input_config": info,
                                              "received_value": val}})
                continue
            o_id = val[0]
            o_class_type = prompt[o_id]["class_type"]
            received_type = specs[o_class_type]["output"][val[1]]
            if not _types_match(received_type, input_type):
                errors.append({"type": "return_type_mismatch",
                               "message": "Return type mismatch between linked nodes",
                               "details": f"{x}, received_type({received_type}) mismatch "
                                          f"input_type({input_type})",
                               "extra_info": {"input_name": x, "input_config": info,
                                              "received_type": received_type,
                                              "linked_node": val}})
                continue
            try:
                r = _validate_inputs(prompt, o_id, validated, specs, dirs)
                if r[0] is False:
                    valid = False
                    continue
            except Exception as ex:
                valid = False
                validated[o_id] = (False, [{
                    "type": "exception_during_inner_validation",
                    "message": "Exception when validating inner node",
                    "details": str(ex),
                    "extra_info": {"input_name": x, "input_config": info,
                                   "exception_message": str(ex),
                                   "exception_type": _full_type_name(ex),
                                   "traceback": traceback.format_tb(ex.__traceback__),
                                   "linked_node": val},
                }], o_id)
                continue
        else:
            try:
                if isinstance(val, dict) and "__value__" in val:
                    val = val["__value__"]
                    inputs[x] = val
                if input_type == "INT":
                    val = int(val)
                    inputs[x] = val
                if input_type == "FLOAT":
                    val = float(val)
                    inputs[x] = val
                if input_type == "STRING":
                    val = str(val)
                    inputs[x] = val
                if input_type == "BOOLEAN":
                    val = bool(val)
                    inputs[x] = val
            except Exception as ex:
                errors.append({"type": "invalid_input_type",
                               "message": f"Failed to convert an input value to a {input_type} "
                                          "value",
                               "details": f"{x}, {val}, {ex}",
                               "extra_info": {"input_name": x, "input_config": info,
                                              "received_value": val,
                                              "exception_message": str(ex)}})
                continue
            if x in custom_inputs:
                continue
            if "min" in extra and val < extra["min"]:
                errors.append({"type": "value_smaller_than_min",
                               "message": f"Value {val} smaller than min of {extra['min']}",
                               "details": f"{x}",
                               "extra_info": {"input_name": x, "input_config": info,
                                              "received_value": val}})
                continue
            if "max" in extra and val > extra["max"]:
                errors.append({"type": "value_bigger_than_max",
                               "message": f"Value {val} bigger than max of {extra['max']}",
                               "details": f"{x}",
                               "extra_info": {"input_name": x, "input_config": info,
                                              "received_value": val}})
                continue
            # Only old-style combos (the list itself as the type) are checked; the new
            # ("COMBO", {"options": ...}) ones are not, exactly like ComfyUI 0.3.64.
            if isinstance(input_type, list) and val not in input_type:
                input_config: Any = info
                if len(input_type) > 20:
                    list_info = f"(list of length {len(input_type)})"
                    input_config = None
                else:
                    list_info = str(input_type)
                errors.append({"type": "value_not_in_list", "message": "Value not in list",
                               "details": f"{x}: '{val}' not in {list_info}",
                               "extra_info": {"input_name": x, "input_config": input_config,
                                              "received_value": val}})
                continue
    if custom_inputs:
        values = {k: (None if isinstance(v, list) else v) for k, v in inputs.items()
                  if k in custom_inputs}
        results = _custom_validation(class_type, values, dirs) or []
        for x in values:
            for r in results:
                if r is not True:
                    details = f"{x}" if r is False else f"{x} - {r}"
                    errors.append({"type": "custom_validation_failed",
                                   "message": "Custom validation failed for node",
                                   "details": details, "extra_info": {"input_name": x}})
    ret = (False, errors, uid) if errors or valid is not True else (True, [], uid)
    validated[uid] = ret
    return ret


def validate_prompt(prompt: dict[str, Any], specs: Mapping[str, Any], dirs: Mapping[str, Path],
                    partial: Sequence[str] | None = None
                    ) -> tuple[bool, dict[str, Any] | None, list[str], dict[str, Any]]:
    """ComfyUI's validate_prompt: (ok, error, outputs to execute, node_errors)."""
    outputs: list[str] = []
    for x in prompt:
        if "class_type" not in prompt[x]:
            return (False, {"type": "invalid_prompt",
                            "message": "Cannot execute because a node is missing the class_type "
                                       "property.",
                            "details": f"Node ID '#{x}'", "extra_info": {}}, [], {})
        class_type = prompt[x]["class_type"]
        spec = specs.get(class_type) if isinstance(class_type, str) else None
        if spec is None:
            return (False, {"type": "invalid_prompt",
                            "message": f"Cannot execute because node {class_type} does not "
                                       "exist.",
                            "details": f"Node ID '#{x}'", "extra_info": {}}, [], {})
        if spec.get("output_node") is True and (partial is None or x in partial):
            outputs.append(x)
    if not outputs:
        return (False, {"type": "prompt_no_outputs", "message": "Prompt has no outputs",
                        "details": "", "extra_info": {}}, [], {})
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    validated: dict[str, Any] = {}
    for o in outputs:
        try:
            ok, reasons, _ = _validate_inputs(prompt, o, validated, specs, dirs)
        except Exception as ex:
            ok = False
            reasons = [{"type": "exception_during_validation",
                        "message": "Exception when validating node", "details": str(ex),
                        "extra_info": {"exception_type": _full_type_name(ex),
                                       "traceback": traceback.format_tb(ex.__traceback__)}}]
            validated[o] = (False, reasons, o)
        if ok is True:
            good.append(o)
            continue
        failed.append((o, reasons))
        for node_id, result in validated.items():
            if result[0] is not True and result[1]:
                if node_id not in node_errors:
                    node_errors[node_id] = {"errors": result[1], "dependent_outputs": [],
                                            "class_type": prompt[node_id]["class_type"]}
                node_errors[node_id]["dependent_outputs"].append(o)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errs in failed for e in errs)
        return (False, {"type": "prompt_outputs_failed_validation",
                        "message": "Prompt outputs failed validation", "details": details,
                        "extra_info": {}}, [], node_errors)
    return True, None, good, node_errors


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Frames:
    """An IMAGE batch as a recipe: a still (or mid-grey), ffmpeg filters, size, frame count."""

    source: str | None
    base_width: int
    base_height: int
    width: int
    height: int
    count: int
    filters: tuple[str, ...] = ()

    def then(self, flt: str, **changes: Any) -> Frames:
        return replace(self, filters=(*self.filters, flt), **changes)

    def __str__(self) -> str:  # execution_error's current_inputs show str(tensor)
        return f"tensor(<IMAGE batch of {self.count}, {self.height}x{self.width}, 3 channels>)"


@dataclass(frozen=True)
class Video:
    frames: Frames
    fps: float

    def __str__(self) -> str:  # what a real server shows in current_inputs
        return ("<comfy_api.latest._input_impl.video_types.VideoFromComponents object at "
                f"0x{id(self):x}>")


@dataclass(frozen=True)
class Latent:
    width: int  # pixel size once decoded
    height: int
    frames: int  # decoded frames per batch item
    batch: int
    start: Frames | None = None
    seed: int | None = None

    def __str__(self) -> str:
        return f"LATENT[{self.batch}, {self.frames}, {self.height}, {self.width}]"


@dataclass(frozen=True)
class Opaque:
    """A value the double does not model (MODEL, CLIP, CONDITIONING...), with its origin."""

    type: str
    cls: str
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)

    def __str__(self) -> str:
        return f"<{self.type} from {self.cls}>"


class _NodeFailure(Exception):
    """An exception a real node would raise, with the type name ComfyUI would report."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class _Interrupted(Exception):
    pass


class _Dead(BaseException):
    """The server died under this execution: stop at once, report nothing."""


def _png_size(path: Path) -> tuple[int, int] | None:
    with path.open("rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    return None


def _image_size(path: Path) -> tuple[int, int]:
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    size = _png_size(path)
    if size is not None:
        return size
    try:
        video = ffmpeg.probe(path, timeout=30).first("video")
    except ffmpeg.FfmpegError:
        video = None
    if video is None or not video.width or not video.height:
        raise _NodeFailure("PIL.UnidentifiedImageError", f"cannot identify image file '{path}'")
    return video.width, video.height


_SCALE_FLAGS = {"nearest-exact": "neighbor", "bilinear": "bilinear", "area": "area",
                "bicubic": "bicubic", "lanczos": "lanczos", "bislerp": "bicubic"}


def _scaled(frames: Frames, width: int, height: int, method: str, crop: str) -> Frames:
    if width == 0 and height == 0:
        return frames
    if width == 0:
        width = max(1, round(frames.width * height / frames.height))
    elif height == 0:
        height = max(1, round(frames.height * width / frames.width))
    flags = _SCALE_FLAGS.get(method, "bilinear")
    if crop == "center":
        flt = (f"scale={width}:{height}:force_original_aspect_ratio=increase:flags={flags},"
               f"crop={width}:{height},setsar=0")
    else:
        flt = f"scale={width}:{height}:flags={flags},setsar=0"
    return frames.then(flt, width=width, height=height)


def _noisy(frames: Frames, seed: int, strength: float) -> Frames:
    amount = min(100, round(strength * 255))
    if amount <= 0:
        return frames
    return frames.then(f"noise=alls={amount}:allf=t+u:all_seed={seed % 2147483647}")


def _decode_latent(latent: Latent) -> Frames:
    w, h = latent.width, latent.height
    if latent.start is not None:
        frames = _scaled(latent.start, w, h, "bilinear", "center")
    else:
        frames = Frames(None, w, h, w, h, 1)
    frames = replace(frames, count=latent.frames * latent.batch)
    return _noisy(frames, latent.seed or 0, 0.02)


def _wan_frames(length: int) -> int:
    return ((length - 1) // 4) * 4 + 1


def _render(frames: Frames, fps: float, out: Path, metadata: Mapping[str, Any] | None) -> None:
    rate = f"{round(fps * 1000)}/1000"
    if frames.source is not None:
        source = ["-loop", "1", "-framerate", rate, *ffmpeg.input_args(frames.source)]
    else:
        source = ["-f", "lavfi", "-i",
                  f"color=c=0x808080:s={frames.base_width}x{frames.base_height}:r={rate}"]
    meta: list[str] = []
    for key, value in (metadata or {}).items():
        meta += ["-metadata", f"{key}={json.dumps(value)}"]
    vf = ",".join((*frames.filters, "format=yuv420p"))
    ffmpeg.run([*source, "-vf", vf, "-frames:v", str(frames.count), "-r", rate,
                "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                "-metadata:s:v:0", "encoder=",  # PyAV writes no stream encoder tag
                "-movflags", "+use_metadata_tags", *meta, "-f", "mp4", str(out)],
               timeout=FFMPEG_TIMEOUT_S)


def _save_path(prefix: str, output_dir: Path, width: int, height: int
               ) -> tuple[Path, str, int, str]:
    """Where SaveVideo writes: (folder, file name stem, counter, subfolder)."""
    if "%" in prefix:
        now = time.localtime()
        for key, value in (("%width%", str(width)), ("%height%", str(height)),
                           ("%year%", str(now.tm_year)), ("%month%", f"{now.tm_mon:02}"),
                           ("%day%", f"{now.tm_mday:02}"), ("%hour%", f"{now.tm_hour:02}"),
                           ("%minute%", f"{now.tm_min:02}"), ("%second%", f"{now.tm_sec:02}")):
            prefix = prefix.replace(key, value)
    normalized = os.path.normpath(prefix)
    subfolder = os.path.dirname(normalized)
    stem = os.path.basename(normalized)
    folder = output_dir / subfolder
    root = str(output_dir)
    if os.path.commonpath((root, os.path.abspath(folder))) != root:
        raise _NodeFailure("Exception", "**** ERROR: Saving image outside the output folder is "
                           f"not allowed.\n full_output_folder: {os.path.abspath(folder)}"
                           f"\n         output_dir: {root}\n         commonpath: "
                           f"{os.path.commonpath((root, os.path.abspath(folder)))}")
    counter = 1
    if folder.is_dir():
        numbers = []
        for name in os.listdir(folder):
            head = name[: len(stem) + 1]
            if head[:-1].lower() == stem.lower() and head[-1:] == "_":
                try:
                    numbers.append(int(name[len(stem) + 1:].split("_")[0]))
                except ValueError:
                    numbers.append(0)
        if numbers:
            counter = max(numbers) + 1
    else:
        folder.mkdir(parents=True, exist_ok=True)
    return folder, stem, counter, subfolder


# --------------------------------------------------------------------------- execution


def _format_value(x: Any) -> Any:
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


class _ExecutionList:
    """ComfyUI's topological dissolve: which node runs next (output nodes first)."""

    def __init__(self, prompt: Mapping[str, Any], specs: Mapping[str, Any],
                 is_cached: Callable[[str], bool]) -> None:
        self.prompt = prompt
        self.specs = specs
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[Any, bool]]] = {}

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, Any, str]] = []
        while stack:
            uid = stack.pop()
            if uid in self.pending:
                continue
            self.pending[uid] = True
            self.block_count[uid] = 0
            self.blocking[uid] = {}
            for value in self.prompt[uid]["inputs"].values():
                if _is_link(value) and not self.is_cached(value[0]):
                    stack.append(value[0])
                    links.append((value[0], value[1], uid))
        for link in links:
            self.add_strong_link(*link)

    def add_strong_link(self, from_id: str, socket_index: Any, to_id: str) -> None:
        if self.is_cached(from_id):
            return
        self.add_node(from_id)
        if to_id not in self.blocking[from_id]:
            self.blocking[from_id][to_id] = {}
            self.block_count[to_id] += 1
        self.blocking[from_id][to_id][socket_index] = True

    def _is_output(self, node_id: str) -> bool:
        spec = self.specs[self.prompt[node_id]["class_type"]]
        return spec.get("output_node") is True

    def next_node(self) -> str:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        for n in ready:
            if self._is_output(n):
                return n
        for n in ready:
            if any(self._is_output(b) for b in self.blocking[n]):
                return n
        for n in ready:
            if any(self._is_output(b2) for b in self.blocking[n] for b2 in self.blocking[b]):
                return n
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id):
            self.block_count[blocked] -= 1


def _to_key(value: Any) -> Any:
    if isinstance(value, Mapping):
        return [[_to_key(k), _to_key(v)] for k, v in sorted(value.items())]
    if isinstance(value, (list, tuple)):
        return [_to_key(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _Cache:
    """ComfyUI's classic output cache: entries keyed by input signature, and only those of
    the prompt being executed survive (so a graph is cached against the previous prompt)."""

    def __init__(self) -> None:
        self.outputs: dict[str, list[Any]] = {}
        self.ui: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, str] = {}

    def set_prompt(self, keys: dict[str, str]) -> None:
        self.keys = keys
        used = set(keys.values())
        for store in (self.outputs, self.ui):
            for key in [k for k in store if k not in used]:
                del store[key]

    def get(self, node_id: str) -> list[Any] | None:
        return self.outputs.get(self.keys[node_id])

    def get_ui(self, node_id: str) -> dict[str, Any] | None:
        return self.ui.get(self.keys[node_id])


class _Run:
    """One prompt being executed by the worker thread."""

    def __init__(self, server: _Server, item: tuple[Any, ...]) -> None:
        self.server = server
        self.double = server.double
        self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs = item
        self.client_id = self.extra_data.get("client_id")
        self.specs = server.specs()
        self.status_messages: list[list[Any]] = []
        self.success = True
        self.executed: list[str] = []
        self.progress: dict[str, dict[str, Any]] = {}
        self.ran_any = False
        self.samplers = [n for n, node in self.prompt.items()
                         if node["class_type"] in SAMPLER_CLASSES]
        if not self.samplers:
            self.samplers = [n for n, node in self.prompt.items()
                             if node["class_type"] == "ImageAddNoise"]
        self.fault: dict[str, Any] | None = None
        self.die_at: int | None = None
        self.started = 0
        self.is_changed: dict[str, Any] = {}
        self.task_index = -1  # the worker's key in the server's running table

    # -- messages

    def send(self, event: str, data: Any) -> None:
        self.server.send_sync(event, data, self.client_id)

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.status_messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.send(event, data)

    def _progress_state(self) -> None:
        nodes = {nid: {"value": st["value"], "max": st["max"], "state": st["state"],
                       "node_id": nid, "prompt_id": self.prompt_id, "display_node_id": nid,
                       "parent_node_id": None, "real_node_id": nid}
                 for nid, st in self.progress.items() if st["state"] != "pending"}
        self.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})

    def progress_start(self, nid: str) -> None:
        self.progress[nid] = {"state": "running", "value": 0.0, "max": 1.0}
        self._progress_state()

    def progress_update(self, nid: str, value: float, maximum: float) -> None:
        self.progress[nid] = {"state": "running", "value": value, "max": maximum}
        self._progress_state()

    def progress_finish(self, nid: str) -> None:
        entry = self.progress.setdefault(nid, {"state": "pending", "value": 0, "max": 1})
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._progress_state()

    # -- time, interrupts, death

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + max(0.0, seconds)
        while True:
            self.server.check_alive()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(SLICE_S, left))

    def check_interrupt(self) -> None:
        self.server.check_alive()
        if self.server.take_interrupt():
            raise _Interrupted()

    def generate(self, nid: str, frames: int, steps: int, fraction: float = 1.0) -> None:
        """A sampler's work: ``steps`` steps, each ending in ComfyUI's progress hook."""
        steps = max(1, int(steps))
        per_step = self.double.gen_seconds_per_frame * frames * fraction / steps
        for step in range(steps):
            self.sleep(per_step)
            self.check_interrupt()  # the progress hook checks first
            self.progress_update(nid, step + 1, steps)
            self.send("progress", {"value": step + 1, "max": steps,
                                   "prompt_id": self.prompt_id, "node": nid})

    def metadata_prompt(self) -> dict[str, Any]:
        """The prompt a real SaveVideo embeds: ComfyUI has by then stored each IS_CHANGED
        result in the node itself (``"is_changed": [...]``)."""
        prompt = copy.deepcopy(self.prompt)
        for nid, value in self.is_changed.items():
            if value is not False and nid in prompt:
                prompt[nid]["is_changed"] = [value]
        return prompt

    # -- the prompt

    def run(self) -> None:
        server = self.server
        self.add_message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        keys = server.signatures(self.prompt, self.specs, self.is_changed)
        cache = server.cache
        cache.set_prompt(keys)
        cached_nodes = [n for n in self.prompt if cache.get(n) is not None]
        self.add_message("execution_cached", {"nodes": cached_nodes,
                                              "prompt_id": self.prompt_id}, broadcast=False)
        current_outputs = list(self.prompt)
        execution = _ExecutionList(self.prompt, self.specs, lambda n: cache.get(n) is not None)
        for node_id in self.outputs:
            execution.add_node(node_id)
        to_run = [n for n in execution.pending if cache.get(n) is None]
        self.fault = self.double._take_fault(to_run, self.samplers, self.prompt, self.specs)
        if to_run and self.double._take_die():
            self.die_at = len(to_run) // 2
        failed = False
        while execution.pending:
            nid = execution.next_node()
            error = self.execute(nid)
            self.success = error is None
            if error is not None:
                self.handle_error(nid, error, current_outputs)
                failed = True
                break
            execution.complete(nid)
        if not failed:
            self.add_message("execution_success", {"prompt_id": self.prompt_id},
                             broadcast=False)
        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for nid in self.prompt:
            ui = cache.get_ui(nid)
            if ui is not None:
                outputs[nid] = ui["output"]
                meta[nid] = ui["meta"]
        server.last_node_id = None
        server.task_done(self, {"outputs": outputs, "meta": meta})

    def execute(self, nid: str) -> BaseException | None:
        server = self.server
        cache = server.cache
        node = self.prompt[nid]
        class_type = node["class_type"]
        spec = self.specs[class_type]
        if cache.get(nid) is not None:
            if self.client_id is not None:
                ui = cache.get_ui(nid) or {}
                self.send("executed", {"node": nid, "display_node": nid,
                                       "output": ui.get("output"), "prompt_id": self.prompt_id})
            self.progress_finish(nid)
            return None
        values: dict[str, Any] = {}
        try:
            self.progress_start(nid)
            for name, value in node["inputs"].items():
                if _is_link(value):
                    values[name] = cache.get(value[0])[int(value[1])]  # type: ignore[index]
                elif _input_info(spec, name)[1] is not None:
                    values[name] = value
            hidden = spec["input"].get("hidden") or {}
            for name, kind in hidden.items():
                if kind == "UNIQUE_ID":
                    values[name] = nid
            if self.client_id is not None:
                server.last_node_id = nid
                self.send("executing", {"node": nid, "display_node": nid,
                                        "prompt_id": self.prompt_id})
            self.check_interrupt()  # ComfyUI's before_node_execution
            if not self.ran_any:
                self.ran_any = True
                self.double.executed.append(self.prompt_id)
            if self.die_at is not None and self.started == self.die_at:
                server.die()
                raise _Dead()
            self.started += 1
            if self.fault is not None and self.fault["node_id"] == nid:
                fault, self.fault = self.fault, None
                raise _NodeFailure(fault["exception_type"], fault["message"])
            self.sleep(self.double.node_latency_s)
            impl = NODE_IMPLS.get(class_type, _generic)
            result, ui = impl(self, nid, spec, **values)
            if ui:
                cache.ui[cache.keys[nid]] = {
                    "meta": {"node_id": nid, "display_node": nid, "parent_node": None,
                             "real_node_id": nid},
                    "output": ui}
                if self.client_id is not None:
                    self.send("executed", {"node": nid, "display_node": nid, "output": ui,
                                           "prompt_id": self.prompt_id})
            cache.outputs[cache.keys[nid]] = list(result)
        except _Dead:
            raise
        except Exception as ex:
            formatted = {k: [_format_value(v)] for k, v in values.items()}
            ex.current_inputs = formatted  # type: ignore[attr-defined]
            return ex
        self.progress_finish(nid)
        self.executed.append(nid)
        return None

    def handle_error(self, nid: str, ex: BaseException, current_outputs: list[str]) -> None:
        class_type = self.prompt[nid]["class_type"]
        if isinstance(ex, _Interrupted):
            self.double.interrupted.append(self.prompt_id)
            self.add_message("execution_interrupted", {
                "prompt_id": self.prompt_id, "node_id": nid, "node_type": class_type,
                "executed": list(self.executed)}, broadcast=True)
            return
        tips = ""
        if _full_type_name(ex) == "torch.OutOfMemoryError":
            tips = ("This error means you ran out of memory on your GPU.\n\nTIPS: If the "
                    "workflow worked before you might have accidentally set the batch_size to "
                    "a large number.")
        self.add_message("execution_error", {
            "prompt_id": self.prompt_id, "node_id": nid, "node_type": class_type,
            "executed": list(self.executed),
            "exception_message": f"{ex}\n{tips}",
            "exception_type": _full_type_name(ex),
            "traceback": traceback.format_tb(ex.__traceback__),
            "current_inputs": getattr(ex, "current_inputs", {}),
            "current_outputs": current_outputs}, broadcast=False)


# --------------------------------------------------------------------------- node behaviour

NodeImpl = Callable[..., tuple[Sequence[Any], dict[str, Any] | None]]


def _generic(run: _Run, nid: str, spec: Mapping[str, Any], **inputs: Any
             ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    cls = spec["name"]
    params = tuple(sorted((k, v) for k, v in inputs.items()
                          if isinstance(v, (int, float, str, bool)) or v is None))
    carried = tuple((k, v) for k, v in sorted(inputs.items())
                    if isinstance(v, (Opaque, Frames, Latent)))
    return [Opaque(t if isinstance(t, str) else "COMBO", cls, params + carried)
            for t in spec["output"]], None


def _load_image(run: _Run, nid: str, spec: Mapping[str, Any], image: str, **_: Any
                ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    path = _annotated_path(image, run.server.dirs)
    width, height = _image_size(path)
    return [Frames(str(path), width, height, width, height, 1), Opaque("MASK", "LoadImage")], None


def _image_scale(run: _Run, nid: str, spec: Mapping[str, Any], image: Frames,
                 upscale_method: str, width: int, height: int, crop: str, **_: Any
                 ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    return [_scaled(image, width, height, upscale_method, crop)], None


def _repeat(run: _Run, nid: str, spec: Mapping[str, Any], image: Frames, amount: int, **_: Any
            ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    return [replace(image, count=image.count * amount)], None


def _from_batch(run: _Run, nid: str, spec: Mapping[str, Any], image: Frames, batch_index: int,
                length: int, **_: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    index = min(image.count - 1, batch_index)
    return [replace(image, count=min(image.count - index, length))], None


def _add_noise(run: _Run, nid: str, spec: Mapping[str, Any], image: Frames, seed: int,
               strength: float, **_: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    if nid in run.samplers and run.double.gen_seconds_per_frame > 0:
        run.generate(nid, image.count, image.count)
    return [_noisy(image, seed, strength)], None


def _image_size_node(run: _Run, nid: str, spec: Mapping[str, Any], image: Frames,
                     unique_id: str | None = None, **_: Any
                     ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    if unique_id:
        text = f"width: {image.width}, height: {image.height}\n batch size: {image.count}"
        node = unique_id.encode()
        # ComfyUI's send_progress_text is called without a sid here: every socket gets it.
        run.server.send_sync(TEXT_EVENT, struct.pack(">I", len(node)) + node + text.encode())
    return [image.width, image.height, image.count], None


def _create_video(run: _Run, nid: str, spec: Mapping[str, Any], images: Frames, fps: float,
                  audio: Any = None, **_: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    return [Video(images, float(fps))], None


def _save_video(run: _Run, nid: str, spec: Mapping[str, Any], video: Video, filename_prefix: str,
                format: str, codec: str, **_: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    frames = video.frames
    output_dir = run.server.dirs["output"]
    folder, stem, counter, subfolder = _save_path(filename_prefix, output_dir, frames.width,
                                                  frames.height)
    if format not in ("auto", "mp4"):
        raise ValueError(f"'{format}' is not a valid VideoContainer")
    if codec not in ("auto", "h264"):
        raise ValueError("Only H264 codec is supported for now")
    file = f"{stem}_{counter:05}_.mp4"
    path = folder / file
    metadata: dict[str, Any] = dict(run.extra_data.get("extra_pnginfo") or {})
    metadata["prompt"] = run.metadata_prompt()
    if frames.width % 2 or frames.height % 2:  # libx264 + yuv420p: as PyAV reports it
        raise _NodeFailure("av.error.ExternalError",
                           "[Errno 542398533] Generic error in an external library: "
                           "'avcodec_open2(\"libx264\", {})'")
    _render(frames, video.fps, path, metadata)
    run.server.check_alive()
    return [], {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}],
                "animated": [True]}


def _save_webp(run: _Run, nid: str, spec: Mapping[str, Any], images: Frames,
               filename_prefix: str, fps: float, lossless: bool, quality: int, method: str,
               **_: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    folder, stem, counter, subfolder = _save_path(filename_prefix, run.server.dirs["output"],
                                                  images.width, images.height)
    file = f"{stem}_{counter:05}_.webp"
    rate = f"{round(fps * 1000)}/1000"
    if images.source is not None:
        source = ["-loop", "1", "-framerate", rate, *ffmpeg.input_args(images.source)]
    else:
        source = ["-f", "lavfi", "-i",
                  f"color=c=0x808080:s={images.base_width}x{images.base_height}:r={rate}"]
    ffmpeg.run([*source, "-vf", ",".join((*images.filters, "format=rgb24")),
                "-frames:v", str(images.count), "-c:v", "libwebp_anim",
                "-lossless", "1" if lossless else "0", "-quality", str(quality), "-loop", "0",
                str(folder / file)], timeout=FFMPEG_TIMEOUT_S)
    run.server.check_alive()
    return [], {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}],
                "animated": [True]}


def _latent_size(width: int, height: int, spatial: int) -> tuple[int, int]:
    return (width // spatial) * spatial, (height // spatial) * spatial


def _wan_i2v(run: _Run, nid: str, spec: Mapping[str, Any], positive: Any, negative: Any,
             vae: Any, width: int, height: int, length: int, batch_size: int,
             start_image: Frames | None = None, **_: Any
             ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    w, h = _latent_size(width, height, 8)
    return [positive, negative, Latent(w, h, _wan_frames(length), batch_size, start_image)], None


def _wan_flf(run: _Run, nid: str, spec: Mapping[str, Any], positive: Any, negative: Any,
             vae: Any, width: int, height: int, length: int, batch_size: int,
             start_image: Frames | None = None, end_image: Frames | None = None, **_: Any
             ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    w, h = _latent_size(width, height, 8)
    start = start_image if start_image is not None else end_image
    return [positive, negative, Latent(w, h, _wan_frames(length), batch_size, start)], None


def _wan22_latent(run: _Run, nid: str, spec: Mapping[str, Any], vae: Any, width: int,
                  height: int, length: int, batch_size: int, start_image: Frames | None = None,
                  **_: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    w, h = _latent_size(width, height, 16)
    return [Latent(w, h, _wan_frames(length), batch_size, start_image)], None


def _hunyuan_i2v(run: _Run, nid: str, spec: Mapping[str, Any], positive: Any, vae: Any,
                 width: int, height: int, length: int, batch_size: int,
                 start_image: Frames | None = None, **_: Any
                 ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    w, h = _latent_size(width, height, 8)
    return [positive, Latent(w, h, _wan_frames(length), batch_size, start_image)], None


def _empty_video_latent(run: _Run, nid: str, spec: Mapping[str, Any], width: int, height: int,
                        length: int, batch_size: int, **_: Any
                        ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    w, h = _latent_size(width, height, 8)
    return [Latent(w, h, _wan_frames(length), batch_size)], None


def _as_latent(value: Any) -> Latent:
    if isinstance(value, Latent):
        return value
    return Latent(512, 512, 1, 1)


def _ksampler(run: _Run, nid: str, spec: Mapping[str, Any], latent_image: Any, seed: int,
              steps: int, **_: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    latent = _as_latent(latent_image)
    run.generate(nid, latent.frames * latent.batch, steps)
    return [replace(latent, seed=seed)], None


def _ksampler_advanced(run: _Run, nid: str, spec: Mapping[str, Any], latent_image: Any,
                       noise_seed: int, steps: int, start_at_step: int, end_at_step: int,
                       **_: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    latent = _as_latent(latent_image)
    end = min(end_at_step, steps)
    run_steps = max(0, end - start_at_step)
    if run_steps:
        run.generate(nid, latent.frames * latent.batch, run_steps, run_steps / max(1, steps))
    return [replace(latent, seed=noise_seed)], None


def _sampler_custom_advanced(run: _Run, nid: str, spec: Mapping[str, Any], noise: Any,
                             guider: Any, sampler: Any, sigmas: Any, latent_image: Any,
                             **_: Any) -> tuple[Sequence[Any], dict[str, Any] | None]:
    latent = _as_latent(latent_image)
    steps = sigmas.param("steps", 20) if isinstance(sigmas, Opaque) else 20
    seed = noise.param("noise_seed", 0) if isinstance(noise, Opaque) else 0
    run.generate(nid, latent.frames * latent.batch, steps)
    out = replace(latent, seed=seed)
    return [out, out], None


def _sampler_custom(run: _Run, nid: str, spec: Mapping[str, Any], noise_seed: int,
                    sigmas: Any, latent_image: Any, **_: Any
                    ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    latent = _as_latent(latent_image)
    steps = sigmas.param("steps", 20) if isinstance(sigmas, Opaque) else 20
    run.generate(nid, latent.frames * latent.batch, steps)
    out = replace(latent, seed=noise_seed)
    return [out, out], None


def _vae_decode(run: _Run, nid: str, spec: Mapping[str, Any], samples: Any, **_: Any
                ) -> tuple[Sequence[Any], dict[str, Any] | None]:
    return [_decode_latent(_as_latent(samples))], None


NODE_IMPLS: dict[str, NodeImpl] = {
    "LoadImage": _load_image,
    "LoadImageOutput": _load_image,
    "ImageScale": _image_scale,
    "RepeatImageBatch": _repeat,
    "ImageFromBatch": _from_batch,
    "ImageAddNoise": _add_noise,
    "GetImageSize": _image_size_node,
    "CreateVideo": _create_video,
    "SaveVideo": _save_video,
    "SaveAnimatedWEBP": _save_webp,
    "WanFirstLastFrameToVideo": _wan_flf,
    "SamplerCustom": _sampler_custom,
    "WanImageToVideo": _wan_i2v,
    "Wan22ImageToVideoLatent": _wan22_latent,
    "HunyuanImageToVideo": _hunyuan_i2v,
    "EmptyHunyuanLatentVideo": _empty_video_latent,
    "KSampler": _ksampler,
    "KSamplerAdvanced": _ksampler_advanced,
    "SamplerCustomAdvanced": _sampler_custom_advanced,
    "VAEDecode": _vae_decode,
    "VAEDecodeTiled": _vae_decode,
}


# --------------------------------------------------------------------------- the server


async def _send_quietly(send: Callable[..., Any], message: Any) -> None:
    try:
        await send(message)
    except (ConnectionError, RuntimeError, OSError):
        pass
    except Exception:  # aiohttp's ClientError family when the peer went away
        pass


_KILL = object()


class _Server:
    """One life of the server: its port, queue, history, cache and sockets."""

    def __init__(self, double: ComfyDouble, port: int) -> None:
        self.double = double
        self.port = port
        self.dirs = {"input": double.work_dir / "input", "output": double.work_dir / "output",
                     "temp": double.work_dir / "temp"}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.queue: list[tuple[Any, ...]] = []
        self.running: dict[int, tuple[Any, ...]] = {}
        self.task_counter = 0
        self.history: dict[str, Any] = {}
        self.number = 0
        self.cache = _Cache()
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.sockets_metadata: dict[str, dict[str, Any]] = {}
        self.all_ws: set[web.WebSocketResponse] = set()
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.interrupt_flag = False
        self.dead = False
        self.closing = False  # a kill or stop has been scheduled on the loop
        self.loop = asyncio.new_event_loop()
        self.messages: asyncio.Queue[tuple[Any, Any, str | None]] | None = None
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.publisher: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name=f"comfy-double-loop-{port}")
        self.worker = threading.Thread(target=self._work, daemon=True,
                                       name=f"comfy-double-worker-{port}")

    # -- life

    def start(self) -> int:
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            raise
        self.worker.start()
        return self.port

    async def _start(self) -> None:
        self.messages = asyncio.Queue()
        app = web.Application(client_max_size=MAX_UPLOAD_BYTES)
        self._add_routes(app)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await self.site.start()
        server = self.site._server
        assert isinstance(server, asyncio.Server) and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        self.publisher = asyncio.create_task(self._publish())

    def _mark_dead(self) -> None:
        with self.mutex:
            self.dead = True
            self.not_empty.notify_all()

    def _abort_connections(self) -> None:
        """What the kernel does to a killed process's sockets: listener gone, peers reset."""
        if self.site is not None and self.site._server is not None:
            self.site._server.close()
        connections = dict(self.runner.server._connections) if (
            self.runner is not None and self.runner.server is not None) else {}
        for transport in connections.values():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            transport.abort()

    async def _teardown(self) -> None:
        current = asyncio.current_task()
        if self.publisher is not None and self.publisher is not current:
            self.publisher.cancel()
        if self.runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.runner.cleanup(), 5)
        self.loop.call_soon(self.loop.stop)

    async def _kill(self) -> None:
        self._mark_dead()
        self._abort_connections()
        await self._teardown()

    async def _stop(self) -> None:
        self._mark_dead()
        for ws in list(self.all_ws):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=1001, message=b"Server shutdown"), 2)
        await self._teardown()

    def _finish(self, coro: Callable[[], Any]) -> None:
        with self.mutex:
            closing, self.closing = self.closing, True
        if self.thread.is_alive() and not closing:
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(coro(), self.loop)
        self.thread.join(10)
        if not self.thread.is_alive() and not self.loop.is_closed():
            self.loop.close()

    def kill(self) -> None:
        self._finish(self._kill)

    def stop(self) -> None:
        self._finish(self._stop)

    def die(self) -> None:
        """kill() from the worker, once the messages sent so far have reached the clients."""
        with self.mutex:
            self.closing = True
        self._mark_dead()
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._put_message, (_KILL, None, None))

    def check_alive(self) -> None:
        if self.dead:
            raise _Dead()

    # -- messages

    def _put_message(self, message: tuple[Any, Any, str | None]) -> None:
        if self.messages is not None:
            self.messages.put_nowait(message)

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        if self.dead:
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone
            self.loop.call_soon_threadsafe(self._put_message, (event, data, sid))

    async def _publish(self) -> None:
        assert self.messages is not None
        while True:
            event, data, sid = await self.messages.get()
            if event is _KILL:
                await self._flush_sockets()
                await self._kill()
                return
            await self.send(event, data, sid)

    async def _flush_sockets(self) -> None:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            pending = 0
            for ws in list(self.all_ws):
                transport = ws._req.transport if ws._req is not None else None  # noqa: SLF001
                if transport is not None and not transport.is_closing():
                    pending += transport.get_write_buffer_size()
            if not pending:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    async def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        if isinstance(event, int):
            message: Any = struct.pack(">I", event) + bytes(data)
            method = "send_bytes"
        else:
            message = {"type": event, "data": data}
            method = "send_json"
        targets = list(self.sockets.values()) if sid is None else (
            [self.sockets[sid]] if sid in self.sockets else [])
        for ws in targets:
            await _send_quietly(getattr(ws, method), message)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.tasks_remaining()}}

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.queue_info()})

    # -- the queue

    def tasks_remaining(self) -> int:
        with self.mutex:
            return len(self.queue) + len(self.running)

    def put(self, item: tuple[Any, ...]) -> None:
        with self.mutex:
            heapq.heappush(self.queue, item)
            self.queue_updated()
            self.not_empty.notify()

    def _get(self) -> tuple[tuple[Any, ...], int] | None:
        with self.not_empty:
            while not self.queue and not self.dead:
                self.not_empty.wait(1.0)
            if self.dead:
                return None
            item = heapq.heappop(self.queue)
            index = self.task_counter
            self.running[index] = copy.deepcopy(item)
            self.task_counter += 1
            self.queue_updated()
            return item, index

    def task_done(self, run: _Run, result: dict[str, Any]) -> None:
        self.check_alive()
        with self.mutex:
            item = self.running.pop(run.task_index)
            if len(self.history) > MAXIMUM_HISTORY_SIZE:
                self.history.pop(next(iter(self.history)))
            for key in SENSITIVE_EXTRA_DATA_KEYS:
                item[3].pop(key, None)
            entry = {"prompt": list(item), "outputs": {},
                     "status": {"status_str": "success" if run.success else "error",
                                "completed": run.success, "messages": run.status_messages}}
            entry.update(result)
            self.history[item[1]] = entry
            self.queue_updated()

    def wipe_queue(self) -> None:
        with self.mutex:
            self.queue = []
            self.queue_updated()

    def delete_queue_item(self, prompt_id: Any) -> bool:
        with self.mutex:
            for i, item in enumerate(self.queue):
                if item[1] == prompt_id:
                    if len(self.queue) == 1:
                        self.wipe_queue()
                    else:
                        self.queue.pop(i)
                        heapq.heapify(self.queue)
                    self.queue_updated()
                    return True
        return False

    def take_interrupt(self) -> bool:
        with self.mutex:
            flag, self.interrupt_flag = self.interrupt_flag, False
            return flag

    def _work(self) -> None:
        while True:
            got = self._get()
            if got is None:
                return
            item, index = got
            with self.mutex:
                self.interrupt_flag = False
            self.client_id = item[3].get("client_id")
            run = _Run(self, item)
            run.task_index = index
            try:
                run.run()
            except _Dead:
                return
            except Exception:  # a bug in the double: fail loudly in the test's log
                traceback.print_exc()
                return
            if self.client_id is not None:
                self.send_sync("executing", {"node": None, "prompt_id": item[1]},
                               self.client_id)

    # -- state shared with the worker

    def specs(self) -> dict[str, Any]:
        return _node_specs(self.double.model_files, self.dirs["input"])

    def signatures(self, prompt: Mapping[str, Any], specs: Mapping[str, Any],
                   changed: dict[str, Any]) -> dict[str, str]:
        """ComfyUI's input signatures (class, IS_CHANGED, constant inputs, ancestry), one per
        node; ``changed`` receives the IS_CHANGED results."""

        def is_changed(nid: str) -> Any:
            if nid not in changed:
                node = prompt[nid]
                changed[nid] = False
                if node["class_type"] in IMAGE_LOADERS:
                    try:
                        path = _annotated_path(str(node["inputs"]["image"]), self.dirs)
                        changed[nid] = hashlib.sha256(path.read_bytes()).hexdigest()
                    except Exception:
                        changed[nid] = f"nan-{uuid.uuid4().hex}"  # never equal, like NaN
            return changed[nid]

        def ancestry(nid: str, order: dict[str, int], out: list[str]) -> None:
            if nid not in prompt:
                return
            inputs = prompt[nid]["inputs"]
            for key in sorted(inputs):
                value = inputs[key]
                if _is_link(value) and value[0] not in order:
                    out.append(value[0])
                    order[value[0]] = len(out) - 1
                    ancestry(value[0], order, out)

        def immediate(nid: str, order: dict[str, int]) -> list[Any]:
            if nid not in prompt:
                return [f"nan-{uuid.uuid4().hex}"]
            node = prompt[nid]
            spec = specs[node["class_type"]]
            signature: list[Any] = [node["class_type"], is_changed(nid)]
            if "UNIQUE_ID" in (spec["input"].get("hidden") or {}).values():
                signature.append(nid)
            for key in sorted(node["inputs"]):
                value = node["inputs"][key]
                if _is_link(value):
                    signature.append([key, ["ANCESTOR", order[value[0]], value[1]]])
                else:
                    signature.append([key, value])
            return signature

        keys = {}
        for nid in prompt:
            order: dict[str, int] = {}
            ancestors: list[str] = []
            ancestry(nid, order, ancestors)
            signature = [immediate(nid, order)] + [immediate(a, order) for a in ancestors]
            keys[nid] = json.dumps(_to_key(signature), default=str)
        return keys

    # -- HTTP and websocket

    def _add_routes(self, app: web.Application) -> None:
        routes = [
            ("GET", "/ws", self.h_ws),
            ("GET", "/system_stats", self.h_system_stats),
            ("GET", "/features", self.h_features),
            ("GET", "/prompt", self.h_get_prompt),
            ("POST", "/prompt", self.h_post_prompt),
            ("GET", "/object_info", self.h_object_info),
            ("GET", "/object_info/{node_class}", self.h_object_info_node),
            ("GET", "/history", self.h_history),
            ("GET", "/history/{prompt_id}", self.h_history_id),
            ("POST", "/history", self.h_post_history),
            ("GET", "/queue", self.h_queue),
            ("POST", "/queue", self.h_post_queue),
            ("POST", "/interrupt", self.h_interrupt),
            ("POST", "/free", self.h_free),
            ("POST", "/upload/image", self.h_upload),
            ("GET", "/view", self.h_view),
            ("GET", "/embeddings", self.h_embeddings),
            ("GET", "/extensions", self.h_embeddings),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, "/api" + path, handler)
            app.router.add_route(method, path, handler)

    async def h_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self.sockets[sid] = ws
        self.sockets_metadata[sid] = {"feature_flags": {}}
        self.all_ws.add(ws)
        try:
            await self.send("status", {"status": self.queue_info(), "sid": sid}, sid)
            if self.client_id == sid and self.last_node_id is not None:
                await self.send("executing", {"node": self.last_node_id}, sid)
            first = True
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                        self.sockets_metadata[sid]["feature_flags"] = data.get("data", {})
                        await self.send("feature_flags", self.features(), sid)
                    first = False
                except (ValueError, KeyError):
                    pass
        finally:
            # Like ComfyUI: whichever socket now holds this sid is forgotten.
            self.sockets.pop(sid, None)
            self.sockets_metadata.pop(sid, None)
            self.all_ws.discard(ws)
        return ws

    @staticmethod
    def features() -> dict[str, Any]:
        return {"supports_preview_metadata": True, "max_upload_size": float(MAX_UPLOAD_BYTES)}

    async def h_features(self, request: web.Request) -> web.Response:
        return web.json_response(self.features())

    async def h_system_stats(self, request: web.Request) -> web.Response:
        total = self.double.vram_total
        free = total - min(total // 16, 512 << 20)
        ram_total, ram_free = _ram()
        return web.json_response({
            "system": {
                "os": os.name, "ram_total": ram_total, "ram_free": ram_free,
                "comfyui_version": COMFYUI_VERSION, "required_frontend_version": "1.27.10",
                "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95",
                "python_version": sys.version, "pytorch_version": "2.13.0+cpu",
                "embedded_python": False,
                "argv": ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                         "--disable-auto-launch"],
            },
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": total,
                         "vram_free": free, "torch_vram_total": total,
                         "torch_vram_free": free}],
        })

    async def h_get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self.queue_info())

    async def h_object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.specs())

    async def h_object_info_node(self, request: web.Request) -> web.Response:
        name = request.match_info.get("node_class", "")
        specs = self.specs()
        return web.json_response({name: specs[name]} if name in specs else {})

    async def h_post_prompt(self, request: web.Request) -> web.Response:
        json_data = await request.json()  # malformed JSON: aiohttp's plain-text 500
        self.double.prompts.append(copy.deepcopy(json_data))
        if "number" in json_data:
            number: Any = float(json_data["number"])
        else:
            number = self.number
            if json_data.get("front"):
                number = -number
            self.number += 1
        if "prompt" not in json_data:
            no_prompt = {"type": "no_prompt", "message": "No prompt provided",
                         "details": "No prompt provided", "extra_info": {}}
            return web.json_response({"error": no_prompt, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        partial = json_data.get("partial_execution_targets")
        ok, error, outputs, node_errors = validate_prompt(prompt, self.specs(), self.dirs,
                                                          partial)
        extra_data = dict(json_data.get("extra_data") or {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        self.put((number, prompt_id, prompt, extra_data, outputs))
        return web.json_response({"prompt_id": prompt_id, "number": number,
                                  "node_errors": node_errors})

    async def h_history(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        with self.mutex:
            if offset < 0 and max_items is not None:
                offset = len(self.history) - max_items
            out: dict[str, Any] = {}
            for i, (key, entry) in enumerate(self.history.items()):
                if i >= offset:
                    out[key] = entry
                    if max_items is not None and len(out) >= max_items:
                        break
            return web.json_response(copy.deepcopy(out))

    async def h_history_id(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info.get("prompt_id", "")
        with self.mutex:
            entry = self.history.get(prompt_id)
            body = {prompt_id: copy.deepcopy(entry)} if entry is not None else {}
        return web.json_response(body)

    async def h_post_history(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        with self.mutex:
            if json_data.get("clear"):
                self.history = {}
            for prompt_id in json_data.get("delete", ()):
                self.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def h_queue(self, request: web.Request) -> web.Response:
        with self.mutex:
            running = [list(x) for x in self.running.values()]
            pending = [list(x) for x in self.queue]
            return web.json_response({"queue_running": running, "queue_pending": pending})

    async def h_post_queue(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        if json_data.get("clear"):
            self.wipe_queue()
        for prompt_id in json_data.get("delete", ()) if "delete" in json_data else ():
            self.delete_queue_item(prompt_id)
        return web.Response(status=200)

    async def h_interrupt(self, request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except ValueError:
            json_data = {}
        prompt_id = json_data.get("prompt_id") if isinstance(json_data, dict) else None
        with self.mutex:
            if prompt_id:
                if any(item[1] == prompt_id for item in self.running.values()):
                    self.interrupt_flag = True
            else:
                self.interrupt_flag = True
        return web.Response(status=200)

    async def h_free(self, request: web.Request) -> web.Response:
        await request.json()
        return web.Response(status=200)

    async def h_embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def h_upload(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        upload_type = post.get("type") or "input"
        if upload_type not in self.dirs:
            raise RuntimeError(f"cannot access local variable 'type_dir' ({upload_type!r})")
        upload_dir = str(self.dirs[str(upload_type)])
        if not image or not image.file:  # type: ignore[union-attr]
            return web.Response(status=400)
        filename = image.filename  # type: ignore[union-attr]
        if not filename:
            return web.Response(status=400)
        subfolder = str(post.get("subfolder", ""))
        folder = os.path.join(upload_dir, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((upload_dir, filepath)) != upload_dir:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()  # type: ignore[union-attr]
        duplicate = False
        if overwrite not in ("true", "1"):
            stem, ext = os.path.splitext(filename)
            i = 1
            while os.path.exists(filepath):
                if Path(filepath).read_bytes() == data:
                    duplicate = True
                    break
                filename = f"{stem} ({i}){ext}"
                filepath = os.path.join(folder, filename)
                i += 1
        if not duplicate:
            Path(filepath).write_bytes(data)
        if upload_type == "input":
            key = f"{subfolder.strip('/')}/{filename}" if subfolder.strip("/") else filename
            self.double.uploads[key] = data
        return web.json_response({"name": filename, "subfolder": subfolder,
                                  "type": upload_type})

    async def h_view(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename = query["filename"]
        base: Path | None = None
        for tag in ("output", "input", "temp"):
            if filename.endswith(f" [{tag}]"):
                filename, base = filename[: -len(tag) - 3], self.dirs[tag]
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if base is None:
            base = self.dirs.get(query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        output_dir = str(base)
        if "subfolder" in query:
            full = os.path.join(output_dir, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), output_dir)) != output_dir:
                return web.Response(status=403)
            output_dir = full
        filename = os.path.basename(filename)
        file = os.path.join(output_dir, filename)
        if not os.path.isfile(file):
            return web.Response(status=404)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml",
                            "text/javascript", "text/css"}:
            content_type = "application/octet-stream"
        return web.FileResponse(file, headers={"Content-Disposition": f'filename="{filename}"',
                                               "Content-Type": content_type})


def _ram() -> tuple[int, int]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except Exception:  # pragma: no cover - psutil is a dependency of the project
        return 16 << 30, 8 << 30


# --------------------------------------------------------------------------- the double


class ComfyDouble:
    """A ComfyUI server in a background thread, with faults to inject and things to observe.

    ``start()`` serves on ``127.0.0.1:<free port>`` and returns the URL; ``stop()`` shuts down
    gracefully (websockets get a close frame); ``kill()`` dies like ``kill -9`` (listener gone,
    open connections reset, websockets dropped without a close frame, queue and history lost);
    ``restart()`` comes back on the same port with an empty queue, history and cache (files
    under ``work_dir`` remain, so the next SaveVideo counter follows the files on disk).
    """

    def __init__(self, *, work_dir: Path, gen_seconds_per_frame: float = 0.0,
                 node_latency_s: float = 0.0,
                 model_files: Mapping[str, Sequence[str]] | None = None,
                 vram_total: int = 8 << 30) -> None:
        self.work_dir = Path(work_dir).absolute()
        self.gen_seconds_per_frame = gen_seconds_per_frame
        self.node_latency_s = node_latency_s
        self.model_files: dict[str, list[str]] = {k: list(v) for k, v in
                                                  (model_files or {}).items()}
        self.vram_total = vram_total
        self.url = ""
        self.port = 0
        self.prompts: list[dict[str, Any]] = []
        self.uploads: dict[str, bytes] = {}
        self.executed: list[str] = []
        self.interrupted: list[str] = []
        self._faults: list[dict[str, Any]] = []
        self._die_next = False
        self._lock = threading.Lock()
        self._server: _Server | None = None

    # -- life

    def start(self) -> str:
        if self._server is not None and not self._server.dead:
            return self.url
        server = _Server(self, self.port)
        self.port = server.start()
        self._server = server
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def kill(self) -> None:
        if self._server is not None:
            self._server.kill()

    def restart(self) -> str:
        if self._server is not None and not self._server.dead:
            self._server.stop()
        elif self._server is not None:
            self._server.kill()  # a death from die_during_next may still be finishing
        return self.start()

    @property
    def alive(self) -> bool:
        return self._server is not None and not self._server.dead

    def __enter__(self) -> ComfyDouble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults

    def fail_next(self, *, node_id: str | None = None, exception_type: str = "RuntimeError",
                  message: str = "injected failure") -> None:
        """The next prompt that runs ``node_id`` (default: its sampler, else its output node)
        fails there at run time: ``execution_error`` on the websocket, ``status_str: "error"``
        in its history. A prompt that runs no such node leaves the fault armed."""
        with self._lock:
            self._faults.append({"node_id": node_id, "exception_type": exception_type,
                                 "message": message})

    def die_during_next(self) -> None:
        """The next prompt that runs anything kills the server when its middle node starts
        (after that node's ``executing`` message reached the client)."""
        with self._lock:
            self._die_next = True

    def _take_fault(self, to_run: Sequence[str], samplers: Sequence[str],
                    prompt: Mapping[str, Any], specs: Mapping[str, Any]
                    ) -> dict[str, Any] | None:
        with self._lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            target = fault["node_id"]
            if target is None:
                target = next((n for n in to_run if n in samplers), None) or next(
                    (n for n in to_run if specs[prompt[n]["class_type"]].get("output_node")),
                    None)
            if target is None or target not in to_run:
                return None
            self._faults.pop(0)
            return {**fault, "node_id": target}

    def _take_die(self) -> bool:
        with self._lock:
            die, self._die_next = self._die_next, False
            return die

    # -- helpers for tests

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.work_dir / "input"


def weight_free_graph(image: str, *, width: int = 64, height: int = 36, frames: int = 8,
                      fps: float = 24.0, seed: int = 0, strength: float = 0.02,
                      prefix: str = "video/ComfyUI") -> dict[str, Any]:
    """The weight-free image-to-video graph, in API format (node ids "1".."6")."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageScale",
              "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": width,
                         "height": height, "crop": "center"}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": frames}},
        "4": {"class_type": "ImageAddNoise",
              "inputs": {"image": ["3", 0], "seed": seed, "strength": strength}},
        "5": {"class_type": "CreateVideo", "inputs": {"images": ["4", 0], "fps": fps}},
        "6": {"class_type": "SaveVideo",
              "inputs": {"video": ["5", 0], "filename_prefix": prefix, "format": "auto",
                         "codec": "auto"}},
    }


__all__ = ["ComfyDouble", "Frames", "Latent", "Opaque", "Video", "validate_prompt",
           "weight_free_graph"]
