"""The desk's plain parts: the token list and its errors, scopes, sessions, the secret, link
signing and the checks that keep a link on its own episode's files."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest

from anime_pipeline.desk.auth import (
    DeskConfigError,
    Scope,
    Sessions,
    TokenTable,
    bearer_token,
    csrf_ok,
)
from anime_pipeline.desk.signing import (
    SECRET_FILE,
    LinkRefused,
    LinkSigner,
    artifact_keys,
    episode_of,
    expiry,
    load_secret,
    local_file,
    safe_key,
)

GOOD = "abcdefghijklmnop-0123"
OTHER = "qrstuvwxyzABCDEF_4567"


def test_tokens_scopes_and_names() -> None:
    table = TokenTable.parse(f" {GOOD}=studio-b , {OTHER}=mei@studio-b/glass-harbor,")
    a, b = table.lookup(GOOD), table.lookup(OTHER)
    assert a and b and table.lookup("nope" * 5) is None and table.lookup("") is None
    assert (str(a.scope), a.reviewer) == ("studio-b", "studio-b")
    assert (str(b.scope), b.reviewer, b.name) == ("studio-b/glass-harbor", "mei", "mei")
    assert GOOD not in a.token_id and table.by_id(a.token_id) == a
    assert table.by_id("0" * 32) is None
    assert a.scope.covers("studio-b/glass-harbor/ep01") and a.scope.covers("studio-b/x/ep01")
    assert not a.scope.covers("studio-a/glass-harbor/ep01")
    assert b.scope.covers("studio-b/glass-harbor/ep01")
    assert not b.scope.covers("studio-b/other/ep01")
    for bad in ("studio-b/glass-harbor", "studio-b", "studio-b/glass-harbor/ep01/S01", "",
                "studio-bb/glass-harbor/ep01", "../glass-harbor/ep01"):
        assert not b.scope.covers(bad)


@pytest.mark.parametrize(("text", "message"), [
    ("", "is not set: the desk needs at least one token"),
    (" , ", "no tokens (only empty entries)"),
    (f"{GOOD}", "entry 1: no '=' between the token and its scope"),
    (f"{GOOD}=", "entry 1: no scope after '='"),
    (f"{GOOD}=studio-b,{OTHER}=Studio-B", "entry 2: scope 'Studio-B': 'Studio-B' is not an id"),
    (f"{GOOD}=a/b/c", "entry 1: scope 'a/b/c' is not TENANT or TENANT/PROJECT"),
    (f"{GOOD}=studio-b/", "is not TENANT or TENANT/PROJECT"),
    ("=studio-b", "entry 1 (scope studio-b): the token before '=' is empty"),
    ("short-token=studio-b", "the token is 11 characters; it needs 16 to 256"),
    (f"{GOOD}!!=studio-b", "the token may hold only letters, digits"),
    (f"{GOOD}=studio-b,{GOOD}=studio-a", "entry 2 (scope studio-a): the same token as entry 1"),
    (f"{GOOD}=bad name@studio-b", "the reviewer name before '@'"),
])
def test_malformed_token_lists_are_refused_clearly(text: str, message: str) -> None:
    with pytest.raises(DeskConfigError, match=re.escape(message)) as err:
        TokenTable.parse(text)
    assert "ANIME_PIPELINE_DESK_TOKENS" in str(err.value)
    assert GOOD not in str(err.value) and OTHER not in str(err.value)  # never the token


def test_scope_parse() -> None:
    assert Scope.parse("studio-b") == Scope(tenant="studio-b")
    assert Scope.parse(" studio-b/glass-harbor ") == Scope(tenant="studio-b",
                                                          project="glass-harbor")
    for bad in ("", "/", "a//b", "A", "a/../b", "..", "a b"):
        with pytest.raises(ValueError):
            Scope.parse(bad)


def test_bearer_header() -> None:
    assert bearer_token(None) is None
    assert bearer_token("Bearer  abc ") == "abc" and bearer_token("bearer abc") == "abc"
    assert bearer_token("Basic abc") == ""


def test_sessions_are_signed_and_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    table = TokenTable.parse(f"{GOOD}=studio-b")
    grant = table.grants[0]
    sessions = Sessions(b"k" * 32, max_age_s=60)
    cookie, session = sessions.issue(grant)
    assert GOOD not in cookie
    assert sessions.read(cookie) == session
    assert csrf_ok(session, session.csrf) and not csrf_ok(session, "x") \
        and not csrf_ok(None, session.csrf) and not csrf_ok(session, "")
    assert sessions.read(cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")) is None
    assert Sessions(b"x" * 32).read(cookie) is None  # another secret
    assert sessions.read("garbage") is None and sessions.read(None) is None
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)
    assert sessions.read(cookie) is None  # past max_age
    nonce, vouch = sessions.login_nonce()
    assert sessions.check_login_nonce(vouch, nonce)
    assert not sessions.check_login_nonce(vouch, nonce + "x")
    assert not sessions.check_login_nonce(None, nonce)


def test_the_secret_is_made_once_with_0600(tmp_path: Path) -> None:
    first = load_secret(tmp_path / "home")
    path = tmp_path / "home" / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(tmp_path / "home") == first and len(first) == 64
    assert load_secret(tmp_path / "home", "x" * 20) == b"x" * 20
    with pytest.raises(DeskConfigError, match="at least 16"):
        load_secret(tmp_path / "home", "short")
    os.chmod(path, 0o644)
    with pytest.raises(DeskConfigError, match="readable by others .*chmod 600"):
        load_secret(tmp_path / "home")


SIGNER = LinkSigner(b"s" * 32)
KEY = "studio-a/moonlit-courier/ep99/clips/S01.mp4"
A = Scope(tenant="studio-a")
NOW = 1_800_000_000.0


def _verify(key: str = KEY, **kw: str) -> tuple[str, Scope]:
    params = SIGNER.params(KEY, A, expiry(NOW, 3600))
    params.update(kw)
    return SIGNER.verify(key, exp=params["exp"], scope=params["scope"], sig=params["sig"],
                         now=NOW)


def test_links_verify_and_every_tampering_is_refused() -> None:
    assert _verify() == ("studio-a/moonlit-courier/ep99", A)
    params = SIGNER.params(KEY, A, expiry(NOW, 3600))
    assert int(params["exp"]) % 60 == 0 and int(params["exp"]) >= NOW + 3600
    cases = [
        ({"key": KEY.replace("S01", "S02")}, "bad signature"),
        ({"exp": str(int(params["exp"]) + 60)}, "bad signature"),
        ({"scope": "studio-b"}, "bad signature"),
        ({"sig": "0" * 64}, "bad signature"),
        ({"sig": ""}, "incomplete"),
        ({"exp": "-1"}, "incomplete"),
    ]
    for change, reason in cases:
        key = change.pop("key", KEY)
        with pytest.raises(LinkRefused, match=reason):
            _verify(key, **change)
    with pytest.raises(LinkRefused, match="expired"):
        SIGNER.verify(KEY, exp=params["exp"], scope="studio-a", sig=params["sig"],
                      now=float(params["exp"]))
    assert LinkSigner(b"t" * 32).signature(KEY, 1, "studio-a") != SIGNER.signature(
        KEY, 1, "studio-a")


def test_a_link_is_signed_only_inside_its_scope() -> None:
    with pytest.raises(LinkRefused, match="outside scope"):
        SIGNER.params("studio-b/glass-harbor/ep01/clips/S01.mp4", A, 10)
    # signed for a scope that does not cover its key (cannot come from the desk): refused
    key = "studio-b/glass-harbor/ep01/clips/S01.mp4"
    sig = SIGNER.signature(key, int(NOW) + 60, "studio-a")
    with pytest.raises(LinkRefused, match="outside scope"):
        SIGNER.verify(key, exp=str(int(NOW) + 60), scope="studio-a", sig=sig, now=NOW)


@pytest.mark.parametrize("key", [
    "../etc/passwd", "/etc/passwd", "studio-a/moonlit-courier/ep99/clips/../../../../x",
    "studio-a/./moonlit-courier/ep99/x", "studio-a//moonlit-courier/ep99/x",
    "studio-a\\moonlit-courier\\ep99\\x", "studio-a/moonlit-courier/ep99/x\x00.mp4",
    "studio-a/moonlit-courier/ep99/", "", "studio-a/moonlit-courier/ep99/x\n",
])
def test_path_escaping_keys_are_refused(key: str) -> None:
    with pytest.raises(LinkRefused):
        safe_key(key)
    sig = SIGNER.signature(key, int(NOW) + 60, "studio-a")  # even with a valid signature
    with pytest.raises(LinkRefused):
        SIGNER.verify(key, exp=str(int(NOW) + 60), scope="studio-a", sig=sig, now=NOW)


def test_episode_of_and_artifacts() -> None:
    assert episode_of(KEY) == "studio-a/moonlit-courier/ep99"
    with pytest.raises(LinkRefused):
        episode_of("studio-a/moonlit-courier/ep99")
    keys = artifact_keys("studio-a/moonlit-courier/ep99", ["S01"])
    assert keys[KEY] == "clip S01"
    assert "studio-a/moonlit-courier/ep99/delivery/ep99_delivery.zip" in keys
    assert "studio-a/moonlit-courier/ep99/clips/S01.json" not in keys  # records stay in


def test_local_files_never_follow_a_symbolic_link(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    clips = root / "studio-a" / "moonlit-courier" / "ep99" / "clips"
    clips.mkdir(parents=True)
    (clips / "S01.mp4").write_bytes(b"clip")
    assert local_file(root, KEY) == clips / "S01.mp4"
    outside = tmp_path / "secret.txt"
    outside.write_text("SECRET")
    (clips / "S02.mp4").symlink_to(outside)
    other = root / "studio-b" / "glass-harbor" / "ep01" / "clips"
    other.mkdir(parents=True)
    (other / "S01.mp4").write_bytes(b"studio-b's")
    (clips / "S03.mp4").symlink_to(other / "S01.mp4")  # inside the root, another episode
    (root / "studio-a" / "moonlit-courier" / "ep98").symlink_to(other.parent)
    for key in ("studio-a/moonlit-courier/ep99/clips/S02.mp4",
                "studio-a/moonlit-courier/ep99/clips/S03.mp4",
                "studio-a/moonlit-courier/ep98/clips/S01.mp4",
                "studio-a/moonlit-courier/ep99/clips/S04.mp4",
                "studio-a/moonlit-courier/ep99/clips"):
        with pytest.raises(LinkRefused):
            local_file(root, key)


def test_after_login_only_a_path_of_the_desk_is_followed() -> None:
    from anime_pipeline.desk.app import _safe_next

    assert _safe_next("/episodes/studio-a/moonlit-courier/ep99") == \
        "/episodes/studio-a/moonlit-courier/ep99"
    for bad in (None, "", "https://evil.example/", "//evil.example/", "/\\evil.example",
                "/\t/evil.example", "/\n/evil.example", "episodes", "javascript:alert(1)"):
        assert _safe_next(bad) == "/episodes", bad
