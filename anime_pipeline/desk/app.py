"""The desk's routes (Starlette): thin, each one ``authenticate → service → page or JSON``.

Pages: ``/login``, ``/episodes``, ``/episodes/TENANT/PROJECT/EPISODE`` and its approve and
reject forms. Files: ``/files/KEY?exp=&scope=&sig=`` (signed links, local storage). JSON for
scripts: ``GET /api/episodes``, ``GET /api/episodes/T/P/E``,
``POST /api/episodes/T/P/E/shots/S/approve|reject``. See the README's "The desk".
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from anime_pipeline.desk.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    LOGIN_MAX_AGE_S,
    SESSION_COOKIE,
    Grant,
    Session,
    Sessions,
    TokenTable,
    bearer_token,
    csrf_ok,
)
from anime_pipeline.desk.config import DeskSettings, S3StorageSettings
from anime_pipeline.desk.services import DeskError, DeskService, EpisodeView, NotFound
from anime_pipeline.desk.signing import LinkRefused, load_secret, subkey
from anime_pipeline.domain.episode import PackageParts
from anime_pipeline.review.machine import Decision

logger = logging.getLogger("anime_pipeline.desk")
TEMPLATES = Path(__file__).parent / "templates"
MAX_REASON_CHARS = 2000
ACTIONS: dict[str, Decision] = {"approve": "approved", "reject": "rejected"}
REFUSED_LINK = "403: this link is not valid (tampered with, expired, or not a file of yours).\n"


@dataclass(frozen=True)
class Caller:
    grant: Grant
    session: Session | None  # None: a Bearer token (scripts)


class Desk:
    """What every route needs: the service, the tokens, the sessions, the templates."""

    def __init__(self, service: DeskService, tokens: TokenTable, sessions: Sessions) -> None:
        self.service = service
        self.tokens = tokens
        self.sessions = sessions
        env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
        env.filters["size"] = _size
        env.filters["when"] = _when
        self.templates = Jinja2Templates(env=env)

    def caller(self, request: Request) -> Caller | None:
        """Who is asking: a Bearer token (which alone decides when present), else the
        session cookie; None for anybody else."""
        token = bearer_token(request.headers.get("authorization"))
        if token is not None:
            grant = self.tokens.lookup(token) if token else None
            return Caller(grant, None) if grant else None
        session = self.sessions.read(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        grant = self.tokens.by_id(session.token_id)
        return Caller(grant, session) if grant else None

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return self.templates.TemplateResponse(request, name, context, status_code=status)


def _size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _when(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _safe_next(value: str | None) -> str:
    """Only a path of this desk (no scheme, no host, no ``//``) is followed after login."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value \
            or any(c.isspace() or not c.isprintable() for c in value):
        return "/episodes"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/episodes"


def _episode_key(request: Request) -> str:
    p = request.path_params
    return f"{p['tenant']}/{p['project']}/{p['episode']}"


def _json(model: BaseModel | dict[str, Any], status: int = 200) -> JSONResponse:
    body = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    return JSONResponse(body, status_code=status)


def _absolute(view: EpisodeView, base: str) -> dict[str, Any]:
    """The episode as JSON with the desk's own links made absolute (for scripts)."""
    data = view.model_dump(mode="json")

    def fix(link: dict[str, Any] | None) -> None:
        if link and str(link["url"]).startswith("/"):
            link["url"] = base + link["url"]

    fix(data["composite"])
    for d in data["downloads"]:
        fix(d)
    for shot in data["shots"]:
        fix(shot["clip"])
        fix(shot["thumbnail"])
    return data


# ---------------------------------------------------------------------------- pages


async def home(request: Request) -> Response:
    return RedirectResponse("/episodes", status_code=303)


async def stylesheet(request: Request) -> Response:
    return FileResponse(TEMPLATES / "desk.css", media_type="text/css",
                        headers={"cache-control": "public, max-age=300"})


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok\n")


def _login_page(desk: Desk, request: Request, *, next_path: str, error: str | None = None,
                status: int = 200) -> Response:
    nonce, cookie = desk.sessions.login_nonce()
    response = desk.page(request, "login.html", status, nonce=nonce, next_path=next_path,
                         error=error)
    response.set_cookie(LOGIN_COOKIE, cookie, max_age=LOGIN_MAX_AGE_S, httponly=True,
                        samesite="lax", secure=request.url.scheme == "https", path="/login")
    return response


async def login_form(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    next_path = _safe_next(request.query_params.get("next"))
    if desk.caller(request) is not None:
        return RedirectResponse(next_path, status_code=303)
    return _login_page(desk, request, next_path=next_path)


async def login(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    form = await request.form(max_files=0, max_fields=10)
    next_path = _safe_next(str(form.get("next") or ""))
    if not desk.sessions.check_login_nonce(request.cookies.get(LOGIN_COOKIE),
                                           str(form.get("nonce") or "")):
        return _login_page(desk, request, next_path=next_path, status=403,
                           error="This login form has expired or did not come from this desk; "
                                 "try again.")
    grant = desk.tokens.lookup(str(form.get("token") or "").strip())
    if grant is None:
        logger.info("desk: a login with an unknown token from %s",
                    request.client.host if request.client else "?")
        return _login_page(desk, request, next_path=next_path, status=401,
                           error="That token opens nothing here.")
    cookie, _ = desk.sessions.issue(grant)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, max_age=desk.sessions.max_age_s, httponly=True,
                        samesite="lax", secure=request.url.scheme == "https", path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


async def logout(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    caller = desk.caller(request)
    form = await request.form(max_files=0, max_fields=10)
    if caller is None or not csrf_ok(caller.session, str(form.get(CSRF_FIELD) or "")):
        return desk.page(request, "error.html", 403, caller=caller, title="Refused",
                         message="This form did not come from this desk.")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


async def episodes_page(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    caller = desk.caller(request)
    if caller is None:
        return _login_redirect(request)
    episodes = await run_in_threadpool(desk.service.episodes, caller.grant)
    return desk.page(request, "episodes.html", caller=caller, episodes=episodes)


def _notice(request: Request, view: EpisodeView) -> str | None:
    done, shot = request.query_params.get("done"), request.query_params.get("shot")
    if shot not in {s.shot_id for s in view.shots}:
        return None
    if done == "approved":
        return f"{shot} approved."
    if done == "rejected":
        return (f"{shot} rejected. The review loop renders it again; the new version comes "
                "back here for review.")
    return None


async def _episode_response(desk: Desk, request: Request, caller: Caller, *, status: int = 200,
                            error: str | None = None) -> Response:
    try:
        view = await run_in_threadpool(desk.service.episode_view, caller.grant,
                                       _episode_key(request))
    except DeskError as e:
        return desk.page(request, "error.html", e.status, caller=caller,
                         title="Not found" if e.status == 404 else "Cannot show the episode",
                         message=str(e))
    return desk.page(request, "episode.html", status, caller=caller, ep=view, error=error,
                     notice=None if error else _notice(request, view))


async def episode_page(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    caller = desk.caller(request)
    if caller is None:
        return _login_redirect(request)
    return await _episode_response(desk, request, caller)


async def decide_form(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    caller = desk.caller(request)
    if caller is None:
        return _login_redirect(request)
    form = await request.form(max_files=0, max_fields=10)
    if not csrf_ok(caller.session, str(form.get(CSRF_FIELD) or "")):
        return desk.page(request, "error.html", 403, caller=caller, title="Refused",
                         message="This form has expired or did not come from this desk: "
                                 "reload the page and try again.")
    action = request.path_params["action"]
    shot = request.path_params["shot"]
    if action not in ACTIONS:
        return desk.page(request, "error.html", 404, caller=caller, title="Not found",
                         message=f"no action {action!r}: approve or reject")
    reason = str(form.get("reason") or "").strip() or None
    version = str(form.get("version") or "") or None
    try:
        if reason and len(reason) > MAX_REASON_CHARS:
            raise DeskError(f"the reason is {len(reason)} characters; at most "
                            f"{MAX_REASON_CHARS}")
        await run_in_threadpool(desk.service.decide, caller.grant, _episode_key(request), shot,
                                ACTIONS[action], reason=reason, version=version)
    except DeskError as e:
        if e.status == 404:
            return desk.page(request, "error.html", 404, caller=caller, title="Not found",
                             message=str(e))
        return await _episode_response(desk, request, caller, status=e.status, error=str(e))
    target = (f"/episodes/{_episode_key(request)}?done={ACTIONS[action]}&shot={quote(shot)}"
              f"#shot-{quote(shot)}")
    return RedirectResponse(target, status_code=303)


# ---------------------------------------------------------------------------- projects


def _project(request: Request) -> tuple[str, str]:
    return request.path_params["tenant"], request.path_params["project"]


async def _project_response(desk: Desk, request: Request, caller: Caller, *,
                            status: int = 200, error: str | None = None,
                            notice: str | None = None) -> Response:
    try:
        view = await run_in_threadpool(desk.service.project_view, caller.grant,
                                       *_project(request))
    except DeskError as e:
        return desk.page(request, "error.html", e.status, caller=caller, title="Not found",
                         message=str(e))
    return desk.page(request, "project.html", status, caller=caller, pv=view, error=error,
                     notice=notice or request.query_params.get("done"))


async def project_page(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    caller = desk.caller(request)
    if caller is None:
        return _login_redirect(request)
    return await _project_response(desk, request, caller)


async def project_form(request: Request) -> Response:
    """The forms of a project's page: ``settings`` (review mode, package parts),
    ``schedules`` (add one) and ``schedules/ID/enable|disable|remove``."""
    desk: Desk = request.app.state.desk
    caller = desk.caller(request)
    if caller is None:
        return _login_redirect(request)
    form = await request.form(max_files=0, max_fields=20)
    if not csrf_ok(caller.session, str(form.get(CSRF_FIELD) or "")):
        return desk.page(request, "error.html", 403, caller=caller, title="Refused",
                         message="This form has expired or did not come from this desk: "
                                 "reload the page and try again.")
    tenant, project = _project(request)
    what = request.path_params["what"]
    try:
        if what == "settings":
            parts = {name: form.get(f"part_{name}") == "on" for name in PackageParts.model_fields}
            await run_in_threadpool(desk.service.save_project, caller.grant, tenant, project,
                                    review_mode=str(form.get("review_mode") or ""),
                                    package=parts)
            done = "settings saved"
        elif what == "schedules":
            schedule = await run_in_threadpool(
                desk.service.add_schedule, caller.grant, tenant, project,
                cron=str(form.get("cron") or ""), timezone=str(form.get("timezone") or ""),
                target=str(form.get("target") or ""), action=str(form.get("action") or ""))
            done = f"schedule {schedule.id} added"
        elif what.startswith("schedules/") and what.count("/") == 2:
            _, schedule_id, action = what.split("/")
            await run_in_threadpool(desk.service.change_schedule, caller.grant, tenant,
                                    project, schedule_id, action)
            done = f"schedule {schedule_id}: {action.rstrip('e')}ed"
        else:
            raise NotFound(f"no form {what!r}")
    except DeskError as e:
        if e.status == 404:
            return desk.page(request, "error.html", 404, caller=caller, title="Not found",
                             message=str(e))
        return await _project_response(desk, request, caller, status=e.status, error=str(e))
    return RedirectResponse(f"/projects/{tenant}/{project}?done={quote(done)}", status_code=303)


# ---------------------------------------------------------------------------- files


async def file_download(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    key = request.path_params["key"]
    q = request.query_params
    try:
        path, name, media = await run_in_threadpool(
            desk.service.resolve_file, key, exp=q.get("exp"), scope=q.get("scope"),
            sig=q.get("sig"))
    except LinkRefused as e:
        logger.info("desk: refused a file link: %s", e)
        return PlainTextResponse(REFUSED_LINK, status_code=403)
    inline = path.suffix.lower() in (".mp4", ".jpg", ".jpeg", ".png")
    return FileResponse(path, media_type=media, filename=name,
                        content_disposition_type="inline" if inline else "attachment",
                        headers={"cache-control": "private, max-age=300"})


# ---------------------------------------------------------------------------- API


def _api_caller(desk: Desk, request: Request) -> Caller | Response:
    caller = desk.caller(request)
    if caller is None:
        return JSONResponse({"error": "unauthorized: send Authorization: Bearer TOKEN"},
                            status_code=401, headers={"www-authenticate": "Bearer"})
    return caller


async def api_episodes(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    caller = _api_caller(desk, request)
    if isinstance(caller, Response):
        return caller
    episodes = await run_in_threadpool(desk.service.episodes, caller.grant)
    return _json({"scope": str(caller.grant.scope), "reviewer": caller.grant.reviewer,
                  "episodes": [e.model_dump(mode="json") for e in episodes]})


async def api_episode(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    caller = _api_caller(desk, request)
    if isinstance(caller, Response):
        return caller
    try:
        view = await run_in_threadpool(desk.service.episode_view, caller.grant,
                                       _episode_key(request))
    except DeskError as e:
        return _json({"error": str(e)}, e.status)
    return _json(_absolute(view, str(request.base_url).rstrip("/")))


async def api_decide(request: Request) -> Response:
    desk: Desk = request.app.state.desk
    caller = _api_caller(desk, request)
    if isinstance(caller, Response):
        return caller
    if request.path_params["action"] not in ACTIONS:
        return _json({"error": "not found: approve or reject"}, 404)
    if caller.session is not None and not csrf_ok(caller.session,
                                                  request.headers.get(CSRF_HEADER)):
        return _json({"error": f"a call with the session cookie needs the {CSRF_HEADER} "
                               "header (or use Authorization: Bearer)"}, 403)
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return _json({"error": "the body is not JSON"}, 400)
    if not isinstance(body, dict):
        return _json({"error": 'the body must be a JSON object: {"reason": "..."}'}, 400)
    reason, version = body.get("reason"), body.get("version")
    if reason is not None and not isinstance(reason, str) or \
            version is not None and not isinstance(version, str):
        return _json({"error": "reason and version must be strings"}, 400)
    if reason and len(reason) > MAX_REASON_CHARS:
        return _json({"error": f"the reason is {len(reason)} characters; at most "
                               f"{MAX_REASON_CHARS}"}, 400)
    try:
        event = await run_in_threadpool(
            desk.service.decide, caller.grant, _episode_key(request),
            request.path_params["shot"], ACTIONS[request.path_params["action"]],
            reason=reason, version=version)
    except DeskError as e:
        return _json({"error": str(e)}, e.status)
    return _json({"event": event.model_dump(mode="json")})


# ---------------------------------------------------------------------------- the app


class SecurityHeaders:
    """No framing, no sniffing, no referrer (links are signed); pages are never cached."""

    def __init__(self, app: ASGIApp, media_sources: str) -> None:
        self.app = app
        self.csp = ("default-src 'self'; " f"img-src {media_sources}; media-src {media_sources}; "
                    "style-src 'self'; script-src 'none'; object-src 'none'; "
                    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_file = str(scope.get("path", "")).startswith(("/files/", "/desk.css"))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"),
                         (b"x-frame-options", b"DENY"),
                         (b"referrer-policy", b"no-referrer"),
                         (b"content-security-policy", self.csp.encode())]
                if not is_file and b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = headers + [h for h in extra if h[0] not in names]
            await send(message)

        await self.app(scope, receive, with_headers)


def _media_sources(settings: DeskSettings) -> str:
    s = settings.storage
    if isinstance(s, S3StorageSettings):
        if s.endpoint_url:
            parts = urlsplit(s.endpoint_url)
            return f"'self' {parts.scheme}://{parts.netloc}"
        return "'self' https:"
    return "'self'"


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if request.url.path.startswith("/api/"):
        return _json({"error": "not found" if status == 404 else "method not allowed"}, status)
    return PlainTextResponse("not found\n" if status == 404 else "method not allowed\n",
                             status_code=status)


def create_app(settings: DeskSettings, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The desk for ``settings``. Refuses (``DeskConfigError``) a malformed token list or an
    unusable secret, before anything listens."""
    tokens = TokenTable.parse(settings.tokens.get_secret_value())
    secret = load_secret(settings.home,
                         settings.secret.get_secret_value() if settings.secret else None)
    desk = Desk(DeskService(settings, secret, clock), tokens,
                Sessions(subkey(secret, "sessions"), max_age_s=settings.session_max_age_s))
    episode = "/episodes/{tenant}/{project}/{episode}"
    routes = [
        Route("/", home),
        Route("/healthz", healthz),
        Route("/desk.css", stylesheet),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/episodes", episodes_page),
        Route(episode, episode_page),
        Route(episode + "/shots/{shot}/{action:str}", decide_form, methods=["POST"]),
        Route("/projects/{tenant}/{project}", project_page),
        Route("/projects/{tenant}/{project}/{what:path}", project_form, methods=["POST"]),
        Route("/files/{key:path}", file_download),
        Route("/api/episodes", api_episodes),
        Route("/api" + episode, api_episode),
        Route("/api" + episode + "/shots/{shot}/{action:str}", api_decide, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_found},
                    middleware=[Middleware(SecurityHeaders,
                                           media_sources=_media_sources(settings))])
    app.state.desk = desk
    return app
