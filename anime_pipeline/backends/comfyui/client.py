"""A client of one ComfyUI server, over its real HTTP and websocket API.

Every call has a timeout; requests pass a per-server token bucket. One prompt is run as
ComfyUI expects: connect the websocket first (``/ws?clientId=``), queue the API-format graph
with our own ``prompt_id``, follow the messages of that prompt id (progress is reported), then
read ``/history/{id}`` for its outputs — an HTTP 200 on ``/prompt`` proves nothing until the
prompt ran. Errors are typed so the caller knows what a retry can help:

* :class:`PromptRejected` (HTTP 400 with ``node_errors``): the workflow does not fit the
  server — a configuration error, never retried; the message names node, input and server;
* :class:`ExecutionFailed` (``execution_error``) and :class:`ServerLost` (connection refused,
  reset or dropped mid-prompt): retried, the latter on another server;
* :class:`PromptTimeout`, :class:`Cancelled`: the prompt is interrupted and dequeued first.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import connect

from anime_pipeline.backends.ratelimit import TokenBucket
from anime_pipeline.domain.rendering import NotRetryable

MAX_DOWNLOAD_BYTES = 4 << 30
WS_OPEN_TIMEOUT_S = 10.0
HISTORY_WAIT_S = 15.0


POLL_S = 0.25  # how often a quiet websocket is left to look at the stop signal and the clock
QUIET_CHECK_S = 5.0  # after this long without a message, the prompt's history is asked


class ComfyError(RuntimeError):
    def __init__(self, message: str, server: str) -> None:
        super().__init__(message)
        self.server = server
        # Set when the error ended a prompt the server had accepted (it may have cost):
        self.prompt_id: str | None = None
        self.wall_s: float | None = None
        self.execution_s: float | None = None


class ServerLost(ComfyError):
    """The server could not be reached, or went away mid-prompt."""


class PromptRejected(ComfyError, NotRetryable):
    """HTTP 400 on ``/prompt``: the graph does not validate on this server."""

    def __init__(self, message: str, server: str, body: Mapping[str, Any]) -> None:
        super().__init__(message, server)
        self.body = dict(body)


class ExecutionFailed(ComfyError):
    """The prompt was accepted and failed while running (``execution_error``)."""


class PromptTimeout(ComfyError):
    pass


class Cancelled(ComfyError):
    pass


@dataclass
class PromptResult:
    prompt_id: str
    outputs: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    cached_nodes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    execution_s: float | None = None  # the server's own start -> success time, if reported


def describe_rejection(body: Mapping[str, Any], *, server: str, template: str) -> str:
    """One line naming what the server refused: node, class, input, reason."""
    error = body.get("error") or {}
    parts: list[str] = []
    for node_id, node in (body.get("node_errors") or {}).items():
        for err in node.get("errors", []):
            details = err.get("details") or ""
            name = (err.get("extra_info") or {}).get("input_name") or ""
            what = f"node {node_id} ({node.get('class_type', '?')})"
            if name:
                what += f" input {name}"
            parts.append(f"{what}: {err.get('message', '')}"
                         + (f" ({details})" if details else "")
                         + f" [{err.get('type', '?')}]")
    if not parts:
        parts.append(f"{error.get('message', 'rejected')} [{error.get('type', '?')}]"
                     + (f": {error.get('details')}" if error.get("details") else ""))
    return (f"ComfyUI at {server} rejected workflow {template}: " + "; ".join(parts[:6])
            + (f" (+{len(parts) - 6} more)" if len(parts) > 6 else ""))


class ComfyClient:
    def __init__(self, url: str, *, timeout_s: float = 30.0,
                 bucket: TokenBucket | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.bucket = bucket
        self._http = httpx.Client(base_url=self.url, trust_env=False, timeout=httpx.Timeout(
            timeout_s, connect=min(5.0, timeout_s)))

    def close(self) -> None:
        self._http.close()

    # ----------------------------------------------------------------- plain calls

    def _request(self, method: str, path: str, *, timeout_s: float | None = None,
                 **kwargs: Any) -> httpx.Response:
        if self.bucket is not None:
            self.bucket.take()
        limit = self.timeout_s if timeout_s is None else timeout_s
        if timeout_s is not None:  # this call's own limit (a health probe answers quickly)
            kwargs["timeout"] = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError,
                httpx.WriteError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            raise ServerLost(f"ComfyUI at {self.url} unreachable ({type(e).__name__}: {e})",
                             self.url) from e
        except httpx.TimeoutException as e:
            raise ServerLost(f"ComfyUI at {self.url} did not answer {method} {path} within "
                             f"{limit:g} s", self.url) from e

    def _json(self, response: httpx.Response, what: str) -> Any:
        if response.status_code >= 500:
            raise ServerLost(f"ComfyUI at {self.url}: {what} answered HTTP "
                             f"{response.status_code}: {response.text[:200]}", self.url)
        if response.status_code >= 400:
            raise ComfyError(f"ComfyUI at {self.url}: {what} answered HTTP "
                             f"{response.status_code}: {response.text[:200]}", self.url)
        try:
            return response.json() if response.content else None
        except ValueError:
            raise ComfyError(f"ComfyUI at {self.url}: {what} answered non-JSON: "
                             f"{response.text[:200]!r}", self.url) from None

    def system_stats(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        data = self._json(self._request("GET", "/system_stats", timeout_s=timeout_s),
                          "GET /system_stats")
        return data if isinstance(data, dict) else {}

    def object_info(self) -> dict[str, Any]:
        data = self._json(self._request("GET", "/object_info"), "GET /object_info")
        return data if isinstance(data, dict) else {}

    def upload_image(self, path: Path, name: str) -> str:
        """Upload a start image; return the name the server stored it under (it renames
        when a file of that name with other bytes exists)."""
        with path.open("rb") as f:
            r = self._request("POST", "/upload/image", files={"image": (name, f, "image/png")},
                              data={"type": "input"})
        data = self._json(r, "POST /upload/image")
        if not isinstance(data, dict) or not data.get("name"):
            raise ComfyError(f"ComfyUI at {self.url}: upload answered {data!r}", self.url)
        sub = data.get("subfolder") or ""
        return f"{sub}/{data['name']}" if sub else str(data["name"])

    def queue_prompt(self, graph: Mapping[str, Any], *, prompt_id: str, client_id: str,
                     template: str) -> int:
        r = self._request("POST", "/prompt", json={"prompt": graph, "client_id": client_id,
                                                  "prompt_id": prompt_id})
        if r.status_code == 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": {"message": r.text[:300], "type": "bad_request"}}
            raise PromptRejected(describe_rejection(body, server=self.url, template=template),
                                 self.url, body)
        data = self._json(r, "POST /prompt")
        return int((data or {}).get("number", -1))

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        data = self._json(self._request("GET", f"/history/{prompt_id}"), "GET /history")
        if isinstance(data, dict) and prompt_id in data:
            entry = data[prompt_id]
            return entry if isinstance(entry, dict) else None
        return None

    def download(self, item: Mapping[str, Any], dest: Path) -> Path:
        """``GET /view`` one output file into ``dest`` (streamed, size-capped)."""
        params = {"filename": str(item.get("filename", "")),
                  "subfolder": str(item.get("subfolder", "")),
                  "type": str(item.get("type", "output"))}
        if self.bucket is not None:
            self.bucket.take()
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self._http.stream("GET", "/view", params=params) as r:
                if r.status_code != 200:
                    raise ComfyError(f"ComfyUI at {self.url}: GET /view {params['filename']} "
                                     f"answered HTTP {r.status_code}", self.url)
                size = 0
                with tmp.open("wb") as f:
                    for chunk in r.iter_bytes(1 << 20):
                        size += len(chunk)
                        if size > MAX_DOWNLOAD_BYTES:
                            raise ComfyError(f"ComfyUI at {self.url}: output larger than "
                                             f"{MAX_DOWNLOAD_BYTES} bytes", self.url)
                        f.write(chunk)
            tmp.replace(dest)
        except httpx.TransportError as e:
            raise ServerLost(f"ComfyUI at {self.url} lost while sending "
                             f"{params['filename']}: {e}", self.url) from e
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def cancel(self, prompt_id: str) -> None:
        """Take the prompt off the queue and interrupt it if it runs (best effort)."""
        for call in (lambda: self._request("POST", "/queue", json={"delete": [prompt_id]}),
                     lambda: self._request("POST", "/interrupt", json={"prompt_id": prompt_id})):
            try:
                call()
            except ComfyError:
                pass

    # ----------------------------------------------------------------- one prompt

    def _ws_url(self, client_id: str) -> str:
        base = "wss" + self.url[5:] if self.url.startswith("https") else "ws" + self.url[4:]
        return f"{base}/ws?clientId={client_id}"

    def run_prompt(
        self, graph: Mapping[str, Any], *, prompt_id: str, client_id: str, template: str,
        timeout_s: float, cancel: threading.Event | None = None,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> PromptResult:
        """Queue ``graph`` and follow it to its end; the outputs from its history entry."""
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            connection = connect(self._ws_url(client_id), open_timeout=WS_OPEN_TIMEOUT_S,
                                 max_size=16 << 20, proxy=None)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
            raise ServerLost(f"ComfyUI at {self.url}: websocket refused ({e})",
                             self.url) from e
        messages: list[dict[str, Any]] = []
        cached: list[str] = []
        exec_start: float | None = None
        exec_end: float | None = None
        queued = False
        last_heard = time.monotonic()
        with connection as ws:  # closed on the way out, whatever happened
            try:
                self.queue_prompt(graph, prompt_id=prompt_id, client_id=client_id,
                                  template=template)
                queued = True
                while True:
                    if cancel is not None and cancel.is_set():
                        self.cancel(prompt_id)
                        raise Cancelled(f"prompt {prompt_id} on {self.url} cancelled", self.url)
                    if time.monotonic() > deadline:
                        self.cancel(prompt_id)
                        raise PromptTimeout(f"prompt {prompt_id} on {self.url} still running after "
                                            f"{timeout_s:g} s: interrupted", self.url)
                    try:
                        raw = ws.recv(timeout=POLL_S)
                    except TimeoutError:
                        # A quiet socket may have missed the end (ComfyUI sends each client's
                        # messages to one socket): ask the history now and then.
                        if time.monotonic() - last_heard >= QUIET_CHECK_S:
                            last_heard = time.monotonic()
                            done = self._finished_without_ws(prompt_id, started)
                            if done is not None:
                                return done
                        continue
                    except ConnectionClosed as e:
                        done = self._finished_without_ws(prompt_id, started)
                        if done is not None:
                            return done
                        raise ServerLost(f"ComfyUI at {self.url} closed the websocket mid-prompt "
                                         f"({e})", self.url) from e
                    last_heard = time.monotonic()
                    if not isinstance(raw, str):
                        continue  # binary preview frames
                    try:
                        msg = json.loads(raw)
                    except ValueError:
                        continue
                    data = msg.get("data") or {}
                    if data.get("prompt_id") not in (None, prompt_id):
                        continue
                    kind = msg.get("type")
                    if data.get("prompt_id") != prompt_id and kind != "status":
                        continue
                    messages.append(msg)
                    if on_message is not None:
                        on_message(msg)
                    if kind == "execution_start":
                        exec_start = _ts(data)
                    elif kind == "execution_cached":
                        cached = [str(n) for n in data.get("nodes", [])]
                    elif kind == "execution_error":
                        exec_end = _ts(data)
                        raise ExecutionFailed(
                            f"ComfyUI at {self.url}: node {data.get('node_id')} "
                            f"({data.get('node_type')}) failed: {data.get('exception_type')}: "
                            f"{str(data.get('exception_message', '')).strip()[:300]}", self.url)
                    elif kind == "execution_interrupted":
                        raise Cancelled(f"prompt {prompt_id} on {self.url} was interrupted",
                                        self.url)
                    elif kind == "execution_success" or (
                            kind == "executing" and data.get("node") is None):
                        exec_end = _ts(data)
                        break
            except ConnectionClosed as e:
                lost = ServerLost(f"ComfyUI at {self.url} dropped the websocket ({e})",
                                  self.url)
                raise _spent(lost, queued, prompt_id, started, exec_start, exec_end) from e
            except ComfyError as e:
                _spent(e, queued, prompt_id, started, exec_start, exec_end)
                raise
        entry = self._wait_history(prompt_id, deadline)
        outputs = self._outputs(entry, prompt_id)
        execution = None
        if exec_start is not None and exec_end is not None and exec_end >= exec_start:
            execution = (exec_end - exec_start) / 1000.0
        else:
            execution = _execution_s(entry.get("status") or {})
        return PromptResult(prompt_id, outputs, messages, cached,
                            time.monotonic() - started, execution)

    def _wait_history(self, prompt_id: str, deadline: float) -> dict[str, Any]:
        until = min(deadline, time.monotonic() + HISTORY_WAIT_S)
        while True:
            entry = self.history(prompt_id)
            status = (entry or {}).get("status") or {}
            # A failed or interrupted prompt's entry says completed: false; both are final.
            if entry is not None and (status.get("completed") or status.get("status_str")):
                return entry
            if time.monotonic() > until:
                raise ComfyError(f"ComfyUI at {self.url}: prompt {prompt_id} finished but has "
                                 "no history entry", self.url)
            time.sleep(0.2)

    def _finished_without_ws(self, prompt_id: str, started: float) -> PromptResult | None:
        """Without the websocket's word (dropped or quiet): the prompt's result if its history
        says it finished, else None. ``started``: when the prompt was sent (its wall time)."""
        try:
            entry = self.history(prompt_id)
        except ComfyError:
            return None
        status = (entry or {}).get("status") or {}
        if entry is None or not (status.get("completed") or status.get("status_str")):
            return None
        return PromptResult(prompt_id, self._outputs(entry, prompt_id),
                            wall_s=time.monotonic() - started, execution_s=_execution_s(status))

    def _outputs(self, entry: Mapping[str, Any], prompt_id: str) -> dict[str, Any]:
        status = entry.get("status") or {}
        if status.get("status_str") == "error":
            errors = [m[1] for m in status.get("messages", [])
                      if isinstance(m, list) and len(m) > 1 and m[0] == "execution_error"]
            detail = errors[0] if errors else {}
            raise ExecutionFailed(
                f"ComfyUI at {self.url}: prompt {prompt_id} failed at node "
                f"{detail.get('node_id')} ({detail.get('node_type')}): "
                f"{detail.get('exception_message', 'see the server log')}", self.url)
        outputs = entry.get("outputs") or {}
        return outputs if isinstance(outputs, dict) else {}


def _spent(error: ComfyError, queued: bool, prompt_id: str, started: float,
           exec_start: float | None, exec_end: float | None) -> ComfyError:
    """``error`` with what the prompt it ended had cost, when the server had taken it."""
    if queued and error.prompt_id is None:
        error.prompt_id = prompt_id
        error.wall_s = time.monotonic() - started
        if exec_start is not None and exec_end is not None and exec_end >= exec_start:
            error.execution_s = (exec_end - exec_start) / 1000.0
    return error


def _execution_s(status: Mapping[str, Any]) -> float | None:
    """Seconds from ``execution_start`` to ``execution_success`` in a history entry."""
    stamps = {m[0]: m[1].get("timestamp") for m in status.get("messages", [])
              if isinstance(m, list) and len(m) > 1 and isinstance(m[1], dict)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    if isinstance(start, int | float) and isinstance(end, int | float) and end >= start:
        return (end - start) / 1000.0
    return None


def _ts(data: Mapping[str, Any]) -> float | None:
    value = data.get("timestamp")
    return float(value) if isinstance(value, int | float) else None


def output_files(outputs: Mapping[str, Any], node_id: str) -> list[dict[str, Any]]:
    """The files a node wrote, whatever key its output uses (``images``, ``videos``, ...)."""
    node = outputs.get(node_id) or {}
    files: list[dict[str, Any]] = []
    for value in node.values() if isinstance(node, dict) else []:
        if isinstance(value, list):
            files += [v for v in value if isinstance(v, dict) and v.get("filename")]
    return files
