"""Who may use the desk, and on what: tokens and their scopes, the login session, CSRF.

``ANIME_PIPELINE_DESK_TOKENS="TOKEN=SCOPE,TOKEN=NAME@SCOPE,..."``: each token opens one scope,
a tenant (``studio-b``) or a tenant's project (``studio-b/glass-harbor``); ``NAME`` (optional)
is the reviewer its decisions are recorded under, else the scope itself. Tokens are compared
in constant time (their SHA-256 digests with :func:`hmac.compare_digest`, every entry, no early
exit) and are never kept, logged or shown: errors name an entry by its position.

A browser logs in once with a token (a form) and gets a session cookie signed with the desk's
secret (itsdangerous; HttpOnly, SameSite=Lax, Secure over https) that names the token by a
digest and carries the session's CSRF token; every form POST must send that CSRF token back.
Scripts send ``Authorization: Bearer TOKEN`` instead (no cookie, no CSRF: a browser never adds
that header by itself).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import BaseModel, ConfigDict, ValidationError

from anime_pipeline.domain.episode import SLUG_PATTERN

TOKENS_ENV = "ANIME_PIPELINE_DESK_TOKENS"
MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 256
_TOKEN = re.compile(r"^[A-Za-z0-9._~-]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SLUG = re.compile(SLUG_PATTERN)

SESSION_COOKIE = "desk_session"
LOGIN_COOKIE = "desk_login"
SESSION_MAX_AGE_S = 12 * 3600
LOGIN_MAX_AGE_S = 3600
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


class DeskConfigError(ValueError):
    """A desk setting that cannot work (a malformed token list, an unusable secret)."""


class Scope(BaseModel):
    """What a token opens: every project of a tenant, or one project."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    project: str | None = None

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``tenant`` or ``tenant/project``; :class:`ValueError` saying what is wrong."""
        parts = text.strip().split("/")
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"scope {text.strip()!r} is not TENANT or TENANT/PROJECT")
        for part in parts:
            if not _SLUG.match(part):
                raise ValueError(f"scope {text.strip()!r}: {part!r} is not an id (lower-case "
                                 "letters, digits, '-' and '_', as in episode.yaml)")
        return cls(tenant=parts[0], project=parts[1] if len(parts) == 2 else None)

    def __str__(self) -> str:
        return self.tenant if self.project is None else f"{self.tenant}/{self.project}"

    def covers_project(self, tenant: str, project: str) -> bool:
        return tenant == self.tenant and (self.project is None or project == self.project)

    def covers(self, episode_key: str) -> bool:
        """Whether ``tenant/project/episode`` (three ids) lies in this scope."""
        parts = episode_key.split("/")
        return len(parts) == 3 and all(_SLUG.match(p) for p in parts) and \
            self.covers_project(parts[0], parts[1])


class Grant(BaseModel):
    """What one token allows: its scope, and who its decisions are recorded as."""

    model_config = ConfigDict(frozen=True)

    scope: Scope
    name: str | None = None
    token_id: str  # a digest of the token: names it in a session, never reveals it

    @property
    def reviewer(self) -> str:
        return self.name or str(self.scope)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenTable:
    """The tokens the desk accepts (their digests only) and the grant of each."""

    def __init__(self, entries: list[tuple[bytes, Grant]]) -> None:
        if not entries:
            raise DeskConfigError(f"{TOKENS_ENV}: no tokens")
        self._entries = entries

    @property
    def grants(self) -> list[Grant]:
        return [g for _, g in self._entries]

    @classmethod
    def parse(cls, text: str | None) -> TokenTable:
        """Read ``TOKEN=SCOPE,TOKEN=NAME@SCOPE,...``; :class:`DeskConfigError` naming the entry
        (by position, never the token) and what is wrong with it."""
        if not (text or "").strip():
            raise DeskConfigError(
                f"{TOKENS_ENV} is not set: the desk needs at least one token, e.g. "
                f'{TOKENS_ENV}="$(python -c \'import secrets; print(secrets.token_urlsafe(24))\')'
                '=studio-b" (SCOPE: a tenant, studio-b, or a tenant/project, '
                "studio-b/glass-harbor)")
        entries: list[tuple[bytes, Grant]] = []
        seen: dict[bytes, int] = {}
        for n, raw in enumerate((text or "").split(","), start=1):
            item = raw.strip()
            if not item:
                continue
            where = f"{TOKENS_ENV}: entry {n}"
            token, eq, target = item.partition("=")
            token, target = token.strip(), target.strip()
            if not eq:
                raise DeskConfigError(f"{where}: no '=' between the token and its scope "
                                      "(TOKEN=SCOPE; the entry is not shown: it holds a token)")
            if not target:
                raise DeskConfigError(f"{where}: no scope after '=' (TOKEN=SCOPE, SCOPE a "
                                      "tenant or tenant/project)")
            name, at, scope_text = target.rpartition("@")
            if at and not _NAME.match(name):
                raise DeskConfigError(f"{where}: the reviewer name before '@' must be letters, "
                                      "digits, '.', '_' or '-' (at most 64)")
            try:
                scope = Scope.parse(scope_text)
            except (ValueError, ValidationError) as e:
                raise DeskConfigError(f"{where}: {e}") from None
            label = f"{where} (scope {scope})"
            if not token:
                raise DeskConfigError(f"{label}: the token before '=' is empty")
            if not _TOKEN.match(token):
                raise DeskConfigError(f"{label}: the token may hold only letters, digits and "
                                      "'.', '_', '~', '-' (the token itself is not shown)")
            if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS:
                raise DeskConfigError(f"{label}: the token is {len(token)} characters; it needs "
                                      f"{MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} (the token itself "
                                      "is not shown)")
            digest = _digest(token)
            if digest in seen:
                raise DeskConfigError(f"{label}: the same token as entry {seen[digest]}; one "
                                      "token opens one scope")
            seen[digest] = n
            entries.append((digest, Grant(scope=scope, name=name or None,
                                          token_id=digest.hex()[:32])))
        if not entries:
            raise DeskConfigError(f"{TOKENS_ENV}: no tokens (only empty entries)")
        return cls(entries)

    def lookup(self, token: str) -> Grant | None:
        """The grant of ``token``, comparing against every entry in constant time."""
        digest = _digest(token)
        found: Grant | None = None
        for known, grant in self._entries:
            if hmac.compare_digest(digest, known):
                found = grant
        return found

    def by_id(self, token_id: str) -> Grant | None:
        """The grant a session names (a token removed since opens nothing)."""
        found: Grant | None = None
        for grant in self.grants:
            if hmac.compare_digest(token_id.encode(), grant.token_id.encode()):
                found = grant
        return found


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header ("" for another scheme)."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


class Session(BaseModel):
    """What the session cookie holds (signed, not secret from its holder)."""

    model_config = ConfigDict(frozen=True)

    token_id: str
    csrf: str


class Sessions:
    """Signed session cookies (and the login form's one-off nonce cookie)."""

    def __init__(self, secret: bytes, *, max_age_s: int = SESSION_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self._session = URLSafeTimedSerializer(secret, salt="anime-pipeline-desk-session")
        self._login = URLSafeTimedSerializer(secret, salt="anime-pipeline-desk-login")

    def issue(self, grant: Grant) -> tuple[str, Session]:
        session = Session(token_id=grant.token_id, csrf=secrets.token_urlsafe(24))
        return str(self._session.dumps(session.model_dump())), session

    def read(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._session.loads(cookie, max_age=self.max_age_s)
            return Session.model_validate(data)
        except (BadSignature, ValidationError, ValueError, TypeError):
            return None

    def login_nonce(self) -> tuple[str, str]:
        """A nonce for the login form and the cookie that vouches for it."""
        nonce = secrets.token_urlsafe(18)
        return nonce, str(self._login.dumps({"n": nonce, "t": int(time.time())}))

    def check_login_nonce(self, cookie: str | None, submitted: str | None) -> bool:
        if not cookie or not submitted:
            return False
        try:
            data = self._login.loads(cookie, max_age=LOGIN_MAX_AGE_S)
        except (BadSignature, ValueError, TypeError):
            return False
        nonce = data.get("n") if isinstance(data, dict) else None
        return isinstance(nonce, str) and hmac.compare_digest(nonce.encode(),
                                                              submitted.encode())


def csrf_ok(session: Session | None, submitted: str | None) -> bool:
    """Whether a form (or a cookie-authenticated API call) sent back its session's token."""
    if session is None or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())
