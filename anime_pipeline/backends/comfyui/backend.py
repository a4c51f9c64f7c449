"""Image-to-video shots on a ComfyUI farm, executed as the plan says.

One shot: its keyframe is uploaded, the workflow template is bound (start image, size, frame
count, fps, a seed and a file name prefix of its own for every attempt, prompts built from
the shot) and checked against the server's ``/object_info``, queued, followed on the
websocket, and its video fetched from ``/view``. A shot whose plan splits it into segments is
generated segment by segment, each starting from the previous one's last frame. The pieces are
then stitched and conformed to the delivery format (exact frame count) like every other clip.
A server that dies mid-shot has the shot re-queued on another server of the farm.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from anime_pipeline.backends.comfyui.client import (
    Cancelled,
    ComfyError,
    PromptRejected,
    PromptTimeout,
    ServerLost,
    output_files,
)
from anime_pipeline.backends.comfyui.farm import Farm, FarmExhausted, Server
from anime_pipeline.backends.comfyui.prompts import positive_prompt
from anime_pipeline.backends.comfyui.templates import (
    TemplateMismatch,
    WorkflowTemplate,
    check_against,
)
from anime_pipeline.backends.local import delivery_of
from anime_pipeline.domain.records import Usage
from anime_pipeline.domain.rendering import (
    NotRetryable,
    RenderAborted,
    RenderInfo,
    ShotJob,
)
from anime_pipeline.media import render as media
from anime_pipeline.media.ffmpeg import timeout_for

log = logging.getLogger("anime_pipeline.progress")
PROGRESS_EVERY_S = 5.0
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif", ".webp")


class NeedsKeyframe(ValueError, NotRetryable):
    pass


class NoVideoOutput(ComfyError):
    pass


@dataclass
class ComfyBackend:
    """The ``render`` of one generative backend name (``comfyui_i2v``, ``wan_i2v``)."""

    name: str
    farm: Farm
    template: WorkflowTemplate
    prompt_timeout_s: float = 1800.0
    # How local ffmpeg work (stitching, conforming) takes a slot of the machine's cores.
    local_slot: Callable[[threading.Event | None], AbstractContextManager[object]] | None = None
    # The prefix of every prompt's client id (one per prompt; see ``_run``).
    client_id: str = field(default_factory=lambda: f"anime-pipeline-{uuid.uuid4().hex[:12]}")

    # ----------------------------------------------------------------- the plan's shape

    def segment_frames(self, job: ShotJob, fps: float) -> list[int]:
        """Frames of each generated segment, at the generation rate (their sum is the shot):
        windows of the plan's ``segments.max_ms``, and never more than one prompt gives."""
        total = max(1, round(job.shot.duration_ms * fps / 1000))
        per = self.template.limits.max_output_frames - 1  # -1: a segment may repeat its start
        if job.segment_max_ms:
            per = min(per, max(1, round(job.segment_max_ms * fps / 1000)))
        count = math.ceil(total / max(1, per))
        base, extra = divmod(total, count)
        return [base + (1 if i < extra else 0) for i in range(count)]

    def generation_fps(self, job: ShotJob) -> float:
        fixed = self.template.limits.fps
        return float(fixed) if fixed else min(job.spec.fps, job.delivery.fps)

    # ----------------------------------------------------------------- render

    def render(self, job: ShotJob, out: Path) -> RenderInfo:
        shot = job.shot
        if not shot.keyframe:
            raise NeedsKeyframe(f"shot {shot.id} has no keyframe: {self.name} generates from "
                                "one")
        fps = self.generation_fps(job)
        width, height = self.template.limits.size_for(*job.generation_size)
        usage: list[Usage] = []
        servers: list[str] = []  # the server of each prompt (the last one tried on failure)
        parts: list[tuple[Path, bool]] = []
        start = job.episode_root / shot.keyframe
        token = hashlib.sha256(
            f"{job.run_id}:{shot.id}:{job.attempt}:{job.take}".encode()).hexdigest()
        segments = self.segment_frames(job, fps)
        work = out.parent / f".{shot.id}-{token[:10]}"
        work.mkdir(parents=True, exist_ok=True)
        try:
            for k, frames in enumerate(segments):
                first_is_start = k > 0
                want = self.template.limits.frames_for(frames + (1 if first_is_start else 0))
                tag = f"{token[:12]}_s{k:03d}"
                # Its own seed and file name per attempt and segment: ComfyUI caches an
                # identical prompt and writes nothing.
                seed = int(hashlib.sha256(tag.encode()).hexdigest()[:8], 16)
                values = {
                    "width": width, "height": height, "frames": want, "fps": fps,
                    "seed": seed, "positive_prompt": positive_prompt(shot, job.note),
                    "negative_prompt": self.template.negative_prompt,
                    "filename_prefix": f"anime_pipeline/{shot.id}_{tag}",
                }
                video = work / f"segment_{k:03d}.mp4"
                self._generate(job, start, values, video, usage, servers, tag=tag, segment=k,
                               of=len(segments))
                parts.append((video, first_is_start))
                if k + 1 < len(segments):
                    start = work / f"segment_{k:03d}_last.png"
                    media.render(media.last_frame_args(video, start), timeout=60)
            with self.local_slot(job.cancel) if self.local_slot else nullcontext():
                media.render(media.generated_args(
                    parts, out, duration_ms=shot.duration_ms,
                    delivery=delivery_of(job.delivery), thumbnail=job.thumbnail,
                    encoder=job.spec.encoder,
                ), timeout=timeout_for(shot.duration_ms / 1000))
        except Exception as e:
            # What the failed attempt cost still counts (render_shot records ``e.info``).
            e.info = RenderInfo(servers[-1] if servers else None, tuple(usage))  # type: ignore[attr-defined]
            raise
        finally:
            for p in work.iterdir():
                p.unlink(missing_ok=True)
            work.rmdir()
        return RenderInfo(servers[-1] if servers else None, tuple(usage))

    def _generate(self, job: ShotJob, start: Path, values: dict[str, object], dest: Path,
                  usage: list[Usage], servers: list[str], *, tag: str, segment: int,
                  of: int) -> str:
        """One prompt to the farm; another server when one dies; the server that made it.
        Every prompt a server took is in ``usage``, delivered or not."""
        tried: set[str] = set()
        mismatches: list[TemplateMismatch] = []
        while True:
            try:
                server = self.farm.acquire(exclude=tried, cancel=job.cancel)
            except FarmExhausted:
                if mismatches:  # no server has what the workflow needs: say what is missing
                    raise mismatches[0] from None
                raise
            servers.append(server.url)
            try:
                self._check(server)
                name = server.client.upload_image(start, f"{job.shot.id}_{tag}.png")
                graph = self.template.bind({**values, "image": name})
                result = self._run(job, server, graph, segment, of)
                self._fetch(server, result.outputs, dest)
            except ComfyError as e:
                self._spent(e, server, usage)
                self._release_after(e, server)
                if isinstance(e, Cancelled):
                    raise RenderAborted(str(e)) from e
                if not isinstance(e, ServerLost):
                    raise
                tried.add(server.url)
                log.warning("%s %s: %s; re-queued on another server", job.shot.id, self.name, e)
                continue
            except TemplateMismatch as e:
                # Servers of a farm may differ in their nodes and model files: try the others.
                self.farm.release(server)
                mismatches.append(e)
                tried.add(server.url)
                continue
            except Exception:
                self.farm.release(server, ok=False)
                raise
            self.farm.release(server, ok=True)
            frames = int(values["frames"])  # type: ignore[call-overload]
            usage.append(Usage(provider=self.name, server=server.url,
                               prompt_id=result.prompt_id, frames=frames,
                               video_sec=round(frames / float(values["fps"]), 3),  # type: ignore[arg-type]
                               wall_sec=round(result.wall_s, 3),
                               gpu_sec=None if result.execution_s is None
                               else round(result.execution_s, 3)))
            return server.url

    def _release_after(self, e: ComfyError, server: Server) -> None:
        """The server's slot back, counting what ``e`` says of the server: lost when it
        stopped answering, a failed shot when it failed one, neither when the shot (a
        rejected workflow) or the run (a stop) was the cause."""
        if isinstance(e, ServerLost):
            self.farm.release(server, lost=True, why=str(e))
        elif isinstance(e, (PromptRejected, Cancelled)):
            self.farm.release(server)
        else:
            self.farm.release(server, ok=False)

    def _spent(self, e: ComfyError, server: Server, usage: list[Usage]) -> None:
        """A prompt the server took and that delivered nothing still counts."""
        if e.prompt_id is None:
            return
        outcome = ("lost" if isinstance(e, ServerLost) else
                   "interrupted" if isinstance(e, (Cancelled, PromptTimeout)) else "failed")
        usage.append(Usage(provider=self.name, server=server.url, prompt_id=e.prompt_id,
                           wall_sec=round(e.wall_s or 0.0, 3),
                           gpu_sec=None if e.execution_s is None else round(e.execution_s, 3),
                           outcome=outcome))

    def _check(self, server: Server) -> None:
        try:
            info = self.farm.object_info(server)
        except ServerLost:
            raise
        except ComfyError as e:
            raise ServerLost(str(e), server.url) from e
        check_against(self.template.graph, info, server=server.url, template=self.template.name,
                      bound=self.template.bound_inputs)

    def _run(self, job: ShotJob, server: Server, graph: dict[str, dict[str, object]],
             segment: int, of: int):  # type: ignore[no-untyped-def]
        last = [0.0]
        label = f"{job.shot.id} on {server.url}" + (f" (segment {segment + 1}/{of})"
                                                    if of > 1 else "")

        def progress(msg: dict[str, object]) -> None:
            data = msg.get("data") or {}
            if msg.get("type") == "progress" and isinstance(data, dict):
                now = time.monotonic()
                done, top = data.get("value"), data.get("max")
                if now - last[0] >= PROGRESS_EVERY_S or done == top:
                    last[0] = now
                    log.info("%s: node %s %s/%s", label, data.get("node"), done, top)
            elif msg.get("type") == "execution_cached" and isinstance(data, dict):
                log.info("%s: %d node(s) cached", label, len(data.get("nodes") or []))

        prompt_id = str(uuid.uuid4())
        # A client id of its own per prompt: ComfyUI sends a client's messages to the socket
        # it connected last, so two prompts sharing one would starve the first.
        return server.client.run_prompt(
            graph, prompt_id=prompt_id, client_id=f"{self.client_id}-{prompt_id[:8]}",
            template=self.template.name, timeout_s=self.prompt_timeout_s, cancel=job.cancel,
            on_message=progress)

    def _fetch(self, server: Server, outputs: dict[str, object], dest: Path) -> None:
        files = [f for f in output_files(outputs, self.template.output)
                 if str(f.get("filename", "")).lower().endswith(VIDEO_SUFFIXES)]
        if not files:
            raise NoVideoOutput(f"ComfyUI at {server.url}: node {self.template.output} of "
                                f"{self.template.name} wrote no video", server.url)
        server.client.download(files[0], dest)
