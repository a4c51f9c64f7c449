"""Alerts and notifications: a short text per event, posted once as Slack-compatible JSON
(``{"text": ...}``) to ``$ANIME_PIPELINE_WEBHOOK_URL`` and written to the log.

Plain Python (no Dagster). The Dagster layer (``defs/notifications.py``, the ``package_zip``
step, the CLI) builds a :class:`Notification` with one of the builders below and hands it to a
:class:`Notifier`, which

* claims the notification's key in the ledger first: the claim is a unique row, so the same
  event seen by two processes (a daemon restarted, a CLI and a sensor, two daemons on one
  ledger) is sent by exactly one of them;
* posts it with a bounded time: at most ``timeout_s`` in all, retries included (a few
  attempts with backoff on a connection error, a timeout, HTTP 429 or 5xx) — a send never
  hangs a run;
* records the outcome: sent, or the error; :meth:`Notifier.retry_unsent` sends the failed ones
  again later (at most ``max_tries`` tries each).

Without a webhook, notifications are logged and recorded only. The webhook URL may hold a
secret token: it is never logged, only its scheme and host. Event text (titles, failure
reasons) is untrusted: fields are cleaned to one line without control characters, the JSON is
encoded by ``json`` and ``&``, ``<``, ``>`` are escaped as Slack asks, so no text can break the
message or mention ``@channel``.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import quote, urlsplit

import httpx

from anime_pipeline.ledger import BudgetStatus, Ledger

WEBHOOK_URL_ENV = "ANIME_PIPELINE_WEBHOOK_URL"
UI_URL_ENV = "ANIME_PIPELINE_UI_URL"

Kind = Literal["budget_80", "budget_100", "run_failed", "delivered",
               "delivered_with_placeholders", "degraded"]
KINDS: tuple[Kind, ...] = ("budget_80", "budget_100", "run_failed", "delivered",
                           "delivered_with_placeholders", "degraded")
BUDGET_THRESHOLDS = (80, 100)  # percent of a period's budget

PREFIX = "anime_pipeline"
MAX_TEXT = 3000  # characters of one message (Slack takes 40,000; a page is plenty)
MAX_FIELD = 500  # characters of one interpolated value (a failure reason, a title)
MAX_LISTED = 40  # shots named in one message
MAX_KEY = 255  # the ledger's key column
DEFAULT_TIMEOUT_S = 10.0
ATTEMPTS = 3
BACKOFF_S = 0.5
SENDING = "sending since"  # the mark of a notification a retrier has taken

logger = logging.getLogger("anime_pipeline.notify")

# C0/C1 controls (newlines, ANSI escapes), line and paragraph separators, zero-width and
# bidirectional-override characters: none belongs in a one-line field.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


class NotifierConfigError(ValueError):
    """A notifier setting that cannot work (a webhook that is not http(s), a bad timeout)."""


class LogLike(Protocol):
    """A ``logging.Logger`` or a Dagster ``context.log``."""

    def debug(self, msg: str, /) -> object: ...
    def info(self, msg: str, /) -> object: ...
    def warning(self, msg: str, /) -> object: ...
    def error(self, msg: str, /) -> object: ...


# --------------------------------------------------------------------------- text


def clean(value: object, limit: int = MAX_FIELD) -> str:
    """``value`` as one line safe in a log and a message: control characters become spaces,
    runs of white space one space, text that is not valid UTF-8 (lone surrogates) ``?``; at
    most ``limit`` characters."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def safe_text(text: str, limit: int = MAX_TEXT) -> str:
    """A whole message: each line cleaned, at most ``limit`` characters."""
    lines = [clean(line, limit) for line in str(text).splitlines()]
    out = "\n".join(line for line in lines if line)
    return out if len(out) <= limit else out[:limit - 1] + "…"


def slack_escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as Slack's control sequences need them: no mention, no link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def listing(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    shown = ", ".join(clean(i, 64) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# --------------------------------------------------------------------------- URLs


def validate_url(url: str, what: str = WEBHOOK_URL_ENV) -> str:
    """``url`` stripped, or "" when empty; refuse anything but an http(s) URL with a host. The
    message never repeats the URL: it may hold a secret token."""
    url = (url or "").strip()
    if not url:
        return ""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise NotifierConfigError(f"{what}: the URL contains white space or control "
                                  "characters (the URL itself is not shown)")
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise NotifierConfigError(f"{what}: not a valid URL (the URL itself is not shown)"
                                  ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        got = f"a {clean(scheme, 16)!r} URL" if scheme else "no scheme"
        raise NotifierConfigError(f"{what}: must be an http:// or https:// URL, got {got} "
                                  "(the URL itself is not shown: it may hold a secret)")
    if not host:
        raise NotifierConfigError(f"{what}: the URL has no host (the URL itself is not shown)")
    return url


def redact_url(url: str) -> str:
    """Scheme and host of ``url`` only (a webhook's path or query is its secret)."""
    if not url:
        return "no webhook"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "?", parts.port
    except ValueError:
        return "an unparseable URL"
    host = f"[{host}]" if ":" in host else host
    tail = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{tail}"


def run_link(ui_base_url: str, run_id: str) -> str:
    """The run's page in the Dagster UI, when its base URL is known."""
    return f"{ui_base_url.rstrip('/')}/runs/{quote(run_id, safe='')}" if ui_base_url else ""


# --------------------------------------------------------------------------- notifications


@dataclass(frozen=True)
class Notification:
    """What to send: the event's ``key`` (sent once per key, ever), its kind and its text."""

    key: str
    kind: Kind
    text: str


def notification_key(*parts: object) -> str:
    """``parts`` joined by ``:``; a key too long for the ledger ends in a digest of it."""
    key = ":".join(str(p) for p in parts)
    if len(key) <= MAX_KEY:
        return key
    return key[:MAX_KEY - 17] + "#" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest(
    )[:16]


ON_EXCEED = {
    "alert": "renders go on (on_exceed: alert)",
    "degrade": "further renders use local backends only (on_exceed: degrade)",
    "refuse": "further renders are refused (on_exceed: refuse)",
}


def budget_key(status: BudgetStatus, threshold: int) -> str:
    b = status.budget
    return notification_key("budget", f"{b.tenant}/{b.project}", status.period_label, threshold)


def budget_notification(status: BudgetStatus, threshold: int) -> Notification:
    """``budget_80`` / ``budget_100``: a project reached ``threshold`` % of its period's GPU
    minutes (once per project, period and threshold)."""
    b = status.budget
    project = clean(f"{b.tenant}/{b.project}", 130)
    period = "in total" if status.period_label == "total" else f"in {status.period_label}"
    then = ON_EXCEED.get(b.on_exceed, f"on_exceed: {clean(b.on_exceed, 16)}")
    if threshold >= 100:
        kind: Kind = "budget_100"
        head = f"budget used up: {project}"
        tail = f"Now {then}."
    else:
        kind = "budget_80"
        head = f"budget {threshold}% used: {project}"
        tail = f"At 100%, {then}."
    text = (f"{PREFIX}: {head} spent {status.spent_gpu_sec / 60:.1f} of {b.gpu_minutes:g} "
            f"GPU minutes {period} ({status.used_fraction:.0%}). {tail}")
    return Notification(budget_key(status, threshold), kind, text)


def run_failed_key(run_id: str) -> str:
    return notification_key("run_failed", run_id)


def run_failed_notification(*, run_id: str, job: str, reason: str, episode: str | None = None,
                            ui_base_url: str = "") -> Notification:
    """``run_failed``: a run of the pipeline's jobs failed (the key is the run's: the CLI and
    the daemon's failure sensor send it once between them)."""
    what = clean(job, 64) + (f" for {clean(episode, 200)}" if episode else "")
    lines = [f"{PREFIX}: run failed: {what} (run {clean(run_id, 64)})",
             f"reason: {clean(reason) or 'unknown'}"]
    if link := run_link(ui_base_url, run_id):
        lines.append(link)
    return Notification(run_failed_key(run_id), "run_failed", "\n".join(lines))


def delivered_key(run_id: str, episode: str) -> str:
    return notification_key("delivered", run_id, episode)


def delivered_notification(*, run_id: str, episode: str, shots: int, duration_s: float,
                           title: str = "", package: str = "",
                           placeholder_shots: Sequence[str] = (),
                           degraded_shots: Sequence[str] = (),
                           ui_base_url: str = "") -> Notification:
    """``delivered``, or ``delivered_with_placeholders`` naming the shots that are slates (one
    of the two per delivery: the same key)."""
    name = clean(episode, 200) + (f" ({clean(title, 120)})" if clean(title) else "")
    if placeholder_shots:
        kind: Kind = "delivered_with_placeholders"
        lines = [f"{PREFIX}: delivered WITH PLACEHOLDERS: {name}: {len(placeholder_shots)} of "
                 f"{shots} shot(s) are placeholder slates: {listing(placeholder_shots)}",
                 "Fix their source and run rerender_shots for them to deliver them for real."]
    else:
        kind = "delivered"
        lines = [f"{PREFIX}: delivered: {name}: {shots} shot(s), {duration_s:.1f} s"]
    if degraded_shots:
        lines.append(f"rendered lower down their ladder: {listing(degraded_shots)}")
    if package:
        lines.append(f"package: {clean(package)}")
    lines.append(f"run {clean(run_id, 64)}")
    if link := run_link(ui_base_url, run_id):
        lines.append(link)
    return Notification(delivered_key(run_id, episode), kind, "\n".join(lines))


def degraded_key(at: float, kind: str) -> str:
    return notification_key("degraded", f"{at:.6f}", kind)


def degraded_notification(*, at: float, kind: str, reason: str, level: int,
                          manual: bool = False, where: str = "") -> Notification:
    """``degraded``: the execution policy went one step down (the monitor's step, keyed by
    when it was taken, so each step is sent once however often it is seen)."""
    when = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    on = f" on {clean(where, 128)}" if where else ""
    how = "manually " if manual else ""
    until = ("held until `anime-pipeline runtime restore`" if manual else
             "the monitor restores the baseline once the machine is healthy again")
    lines = [f"{PREFIX}: runtime degraded {how}to level {level}{on} ({clean(kind, 32)}): "
             f"{clean(reason)}",
             f"at {when}; renders go on with less concurrency or lower resolution; {until}."]
    return Notification(degraded_key(at, kind), "degraded", "\n".join(lines))


# --------------------------------------------------------------------------- sending


class Notifier:
    """Sends each notification once (the ledger's claim), bounded in time, and logs it."""

    def __init__(self, ledger: Ledger, webhook_url: str = "", *,
                 timeout_s: float = DEFAULT_TIMEOUT_S, ui_base_url: str = "",
                 attempts: int = ATTEMPTS, max_tries: int = 5,
                 abandoned_after_s: float = 600.0, log: LogLike | None = None) -> None:
        if not 0 < timeout_s <= 300:
            raise NotifierConfigError(f"notifier timeout_s must be in (0, 300] s, got "
                                      f"{timeout_s!r}")
        self.ledger = ledger
        self.webhook_url = validate_url(webhook_url, WEBHOOK_URL_ENV)
        self.ui_base_url = validate_url(ui_base_url, UI_URL_ENV)
        self.timeout_s = float(timeout_s)
        self.attempts = max(1, attempts)
        self.max_tries = max_tries
        self.abandoned_after_s = abandoned_after_s
        self.log: LogLike = log if log is not None else logger
        self.where = redact_url(self.webhook_url)

    def __repr__(self) -> str:
        return f"Notifier({self.where}, timeout_s={self.timeout_s:g})"

    @property
    def enabled(self) -> bool:
        """Whether notifications are posted (else only logged and recorded)."""
        return bool(self.webhook_url)

    def notify(self, notification: Notification) -> bool:
        return self.send(notification.key, notification.kind, notification.text)

    def send(self, key: str, kind: str, text: str) -> bool:
        """Send once: True when this call claimed ``key`` — the first anywhere to see this
        event; it was then posted, or why not is recorded for :meth:`retry_unsent`. False when
        ``key`` was claimed before (nothing posted), or the ledger could not be reached
        (nothing posted: at most once)."""
        text = safe_text(text)
        try:
            if self.ledger.has_notification(key) or not self.ledger.claim_notification(
                    key, kind, text):
                self._log("debug", f"notification {key}: sent before, not again")
                return False
        except Exception as e:  # the ledger is down: do not risk sending twice
            self._log("error", f"notification {key} not sent: the ledger failed: "
                               f"{type(e).__name__}: {clean(e, 300)}")
            return False
        self._log("info" if kind == "delivered" else "warning", f"[{kind}] {text}")
        self._send_claimed(key, text)
        return True

    def retry_unsent(self) -> list[str]:
        """Post again the notifications whose send failed (or whose sender died after its
        claim); the keys sent now. Two retriers never send one twice (each takes it from the
        ledger first). Nothing without a webhook."""
        if not self.webhook_url:
            return []
        sent: list[str] = []
        now = dt.datetime.now(dt.UTC)
        lease = dt.timedelta(seconds=max(60.0, 3 * self.timeout_s))
        for key, _kind, text, tries, error in self.ledger.notifications_to_retry(
                self.max_tries, abandoned_after_s=self.abandoned_after_s, now=now):
            if error and error.startswith(SENDING):
                try:
                    since = dt.datetime.fromisoformat(error.removeprefix(SENDING).strip())
                except ValueError:
                    since = now - lease
                if now - since < lease:
                    continue  # another retrier is sending it
            mark = f"{SENDING} {dt.datetime.now(dt.UTC).isoformat()}"
            if not self.ledger.take_notification(key, tries=tries, error=error, mark=mark):
                continue
            if self._send_claimed(key, text, retry=tries + 1) is None:
                sent.append(key)
        return sent

    # ------------------------------------------------------------------ internals

    def _send_claimed(self, key: str, text: str, retry: int = 0) -> str | None:
        """Post a claimed notification and record the outcome; the error, or None."""
        again = f" (try {retry})" if retry else ""
        error = self._deliver(key, text) if self.webhook_url else None
        try:
            self.ledger.notification_done(key, error=error)
        except Exception as e:
            self._log("error", f"notification {key}: the ledger failed to record the send: "
                               f"{type(e).__name__}: {clean(e, 300)}")
        if not self.webhook_url:
            self._log("info", f"notification {key}: no webhook set ({WEBHOOK_URL_ENV}); "
                              "logged and recorded only")
        elif error is None:
            self._log("info", f"notification {key}: posted to {self.where}{again}")
        else:
            self._log("warning", f"notification {key}: {self.where} failed{again}: {error}; "
                                 "it is retried later")
        return error

    def _log(self, level: Literal["debug", "info", "warning", "error"], message: str) -> None:
        try:
            getattr(self.log, level)(message)
        except Exception:  # a log that fails must not stop the send or its record
            logger.exception("notifier log failed")

    def _deliver(self, key: str, text: str) -> str | None:
        """POST ``{"text": text}``: a few attempts, ``timeout_s`` in all; the error or None."""
        body = json.dumps({"text": slack_escape(text)}, ensure_ascii=False).encode("utf-8")
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "anime-pipeline-notify/1",
            # Receivers that deduplicate may use it; the key itself stays in the ledger.
            "Idempotency-Key": hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:32],
        }
        deadline = time.monotonic() + self.timeout_s
        error = "not attempted"
        for attempt in range(self.attempts):
            remaining = deadline - time.monotonic()
            if remaining < 0.05:
                break
            failure, retry = _post_bounded(self.webhook_url, body, headers, remaining)
            if failure is None:
                return None
            error = self._scrub(failure)
            if not retry:
                break
            pause = min(BACKOFF_S * 2 ** attempt, deadline - time.monotonic() - 0.1)
            if pause <= 0:
                break
            time.sleep(pause)
        return error

    def _scrub(self, text: str) -> str:
        """``text`` without the webhook URL or its path (an error may quote them)."""
        url = self.webhook_url
        text = text.replace(url, self.where)
        try:
            parts = urlsplit(url)
        except ValueError:
            return text
        userinfo = parts.netloc.rpartition("@")[0]
        for secret in (parts.path, parts.query, parts.fragment, userinfo):
            if len(secret) > 1:
                text = text.replace(secret, "…")
        return text


def _post_bounded(url: str, body: bytes, headers: dict[str, str], timeout_s: float
                  ) -> tuple[str | None, bool]:
    """One POST, given up after ``timeout_s`` whatever the receiver does (a receiver that
    trickles bytes defeats per-read timeouts: the post runs in a daemon thread, abandoned at
    the deadline). (error or None, worth retrying)."""
    outcome: list[tuple[str | None, bool]] = []

    def work() -> None:
        outcome.append(_post_once(url, body, headers, timeout_s))

    thread = threading.Thread(target=work, name="webhook-post", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"no answer within {timeout_s:.1f} s", True
    return outcome[0]


@functools.cache
def _tls() -> ssl.SSLContext:
    """One verifying TLS context per process (loading the CA bundle takes ~0.1 s)."""
    return httpx.create_ssl_context()


def _post_once(url: str, body: bytes, headers: dict[str, str], timeout_s: float
               ) -> tuple[str | None, bool]:
    # A bare transport: no proxy taken from the environment, no redirect followed, and no
    # client log line (httpx's client logs every request's URL at INFO: the secret).
    request = httpx.Request("POST", url, content=body, headers=headers,
                            extensions={"timeout": httpx.Timeout(timeout_s).as_dict()})
    try:
        with httpx.HTTPTransport(verify=_tls(), retries=0) as transport:
            response = transport.handle_request(request)
            try:
                status = response.status_code
                answer = b""
                if not 200 <= status < 300:
                    for chunk in response.iter_raw(512):
                        answer = chunk[:512]
                        break
            finally:
                response.close()
    except httpx.TimeoutException:
        return f"no answer within {timeout_s:.1f} s", True
    except httpx.TransportError as e:
        return f"{type(e).__name__}: {clean(e, 200) or 'connection failed'}", True
    except Exception as e:  # never let a notification break its caller
        return f"{type(e).__name__}: {clean(e, 200)}", False
    if 200 <= status < 300:
        return None, False
    said = clean(answer.decode("utf-8", "replace"), 200)
    return f"HTTP {status}" + (f": {said}" if said else ""), status >= 500 or status == 429


# --------------------------------------------------------------------------- budgets


def check_budgets(ledger: Ledger, notifier: Notifier, tenant: str | None = None,
                  project: str | None = None, *, now: dt.datetime | None = None) -> list[str]:
    """Send the budget alerts due: ``budget_80`` when a project has spent 80 % of its current
    period's GPU minutes, ``budget_100`` at 100 % — each once per project and period (a new
    period alerts again). Every budget, a tenant's, or one project's (``tenant`` and
    ``project``). The keys sent by this call (others sent them before, or they are not due).

    Cheap enough to call after every shot's usage is recorded: one sum per budget, and a
    claim only for a threshold reached and not yet sent."""
    if project is not None:
        if tenant is None:
            raise ValueError("check_budgets: a project needs its tenant")
        one = ledger.budget(tenant, project)
        budgets = [one] if one is not None else []
    else:
        budgets = ledger.all_budgets(tenant)
    sent: list[str] = []
    for budget in budgets:
        status = ledger.status(budget, now)
        for threshold in BUDGET_THRESHOLDS:
            if status.spent_gpu_sec < status.limit_gpu_sec * threshold / 100:
                break
            n = budget_notification(status, threshold)
            if notifier.notify(n):  # a read first: a claim only when it was never sent
                sent.append(n.key)
    return sent
