"""The desk over HTTP (Starlette's TestClient): logging in, the pages, the API, decisions
through the review use case, CSRF, signed links, and what another scope can never reach."""

from __future__ import annotations

import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from anime_pipeline.review.machine import ReviewState
from anime_pipeline.review.store import ReviewStore
from anime_pipeline_tests.desk.conftest import EP_A, EP_B, TOKEN_A, TOKEN_B, UI, World, bearer


def login(client: TestClient, token: str, next_path: str = "/episodes") -> str:
    """Log in through the form; the CSRF token of the session, read off the next page."""
    page = client.get(f"/login?next={next_path}")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce, page.text
    done = client.post("/login", data={"token": token, "nonce": nonce.group(1),
                                       "next": next_path}, follow_redirects=False)
    assert done.status_code == 303, done.text
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert token not in cookie  # the session names the token by a digest
    page = client.get(done.headers["location"])
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text
    return csrf.group(1)


def test_pages_need_a_login_and_the_api_a_token(client: TestClient) -> None:
    page = client.get(f"/episodes/{EP_A}", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
    assert client.get("/api/episodes").status_code == 401
    assert client.get("/api/episodes", headers=bearer("not-a-token-at-all-x")).status_code == 401
    assert client.get("/api/episodes", headers={"Authorization": "Basic eA=="}).status_code == 401


def test_login_with_a_wrong_token_or_a_forged_form(client: TestClient) -> None:
    page = client.get("/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    wrong = client.post("/login", data={"token": "x" * 20, "nonce": nonce})
    assert wrong.status_code == 401 and "opens nothing" in wrong.text
    client.cookies.clear()  # a form posted from elsewhere has no login cookie
    forged = client.post("/login", data={"token": TOKEN_A, "nonce": nonce})
    assert forged.status_code == 403 and "desk_session" not in forged.headers.get("set-cookie", "")


def test_login_then_the_episode_page(client: TestClient) -> None:
    login(client, TOKEN_A)
    listing = client.get("/episodes")
    assert EP_A in listing.text and EP_B not in listing.text
    page = client.get(f"/episodes/{EP_A}")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    html = page.text
    for shot in ("S01", "S02"):
        assert f'id="shot-{shot}" data-state="in_review" data-version="1"' in html
        partition = f"studio-a%2Fmoonlit-courier%2Fep99%2F{shot}"
        assert f"{UI}/assets/clips?view=partitions&amp;partition={partition}" in html
    assert "Approve" in html and 'name="reason"' in html and "required" in html
    assert "subtitles (SRT)" in html


def test_approve_and_reject_through_the_forms(client: TestClient, world: World) -> None:
    csrf = login(client, TOKEN_B)
    no_reason = client.post(f"/episodes/{EP_B}/shots/S01/reject", data={"csrf": csrf})
    assert no_reason.status_code == 400 and "needs a reason" in no_reason.text
    done = client.post(f"/episodes/{EP_B}/shots/S01/reject",
                       data={"csrf": csrf, "reason": "the <b>eyes</b> drift"},
                       follow_redirects=False)
    assert done.status_code == 303
    page = client.get(done.headers["location"])
    assert "S01 rejected" in page.text
    assert "the &lt;b&gt;eyes&lt;/b&gt; drift" in page.text  # escaped, never markup
    assert 'id="shot-S01" data-state="rejected"' in page.text
    refused = client.post(f"/episodes/{EP_B}/shots/S01/approve", data={"csrf": csrf})
    assert refused.status_code == 409
    assert "cannot go from rejected to approved" in refused.text
    last = ReviewStore(world.settings.ledger_url).latest(EP_B)["S01"]
    assert (last.state, last.reviewer, last.mode, last.reason) == (
        ReviewState.rejected, "mei", "human", "the <b>eyes</b> drift")
    ok = client.post(f"/episodes/{EP_B}/shots/S02/approve", data={"csrf": csrf},
                     follow_redirects=False)
    assert ok.status_code == 303
    assert ReviewStore(world.settings.ledger_url).latest(EP_B)["S02"].state is \
        ReviewState.approved


def test_csrf_is_refused(client: TestClient, world: World) -> None:
    login(client, TOKEN_A)
    for data in ({}, {"csrf": "guessed"}, {"csrf": "", "reason": "x"}):
        r = client.post(f"/episodes/{EP_A}/shots/S01/approve", data=data)
        assert r.status_code == 403, data
    # the session cookie alone does not make an API call either
    r = client.post(f"/api/episodes/{EP_A}/shots/S01/approve", json={})
    assert r.status_code == 403 and "x-csrf-token" in r.json()["error"]
    assert client.post("/logout", data={}).status_code == 403
    assert all(e.decision is None for e in ReviewStore(world.settings.ledger_url).history(EP_A))


def test_a_page_older_than_the_clip_is_refused(client: TestClient, world: World) -> None:
    from anime_pipeline_tests.desk.conftest import fake_clip

    csrf = login(client, TOKEN_A)
    page = client.get(f"/episodes/{EP_A}").text
    shown = re.search(r'/S01/approve">\s*<input[^>]+>\s*<input type="hidden" name="version" '
                      r'value="([0-9a-f]{64})"', page)
    assert shown
    fake_clip(world.store, EP_A, "S01", b"a new take")
    r = client.post(f"/episodes/{EP_A}/shots/S01/approve",
                    data={"csrf": csrf, "version": shown.group(1)})
    assert r.status_code == 409 and "the clip changed since the page was loaded" in r.text


def test_the_api(client: TestClient) -> None:
    listing = client.get("/api/episodes", headers=bearer(TOKEN_B)).json()
    assert listing["scope"] == "studio-b/glass-harbor" and listing["reviewer"] == "mei"
    assert [e["episode_key"] for e in listing["episodes"]] == [EP_B]
    ep = client.get(f"/api/episodes/{EP_B}", headers=bearer(TOKEN_B)).json()
    assert [s["state"] for s in ep["shots"]] == ["in_review", "in_review"]
    clip = ep["shots"][0]["clip"]["url"]
    assert clip.startswith("http://desk.test/files/studio-b/glass-harbor/ep01/clips/S01.mp4?")
    assert client.get(clip).content == b"studio-b/glass-harbor/ep01 S01 clip v1"
    r = client.post(f"/api/episodes/{EP_B}/shots/S01/reject", headers=bearer(TOKEN_B),
                    json={"reason": "too dark"})
    assert r.status_code == 200 and r.json()["event"]["state"] == "rejected"
    again = client.post(f"/api/episodes/{EP_B}/shots/S01/approve", headers=bearer(TOKEN_B))
    assert again.status_code == 409 and "cannot go from rejected" in again.json()["error"]
    assert client.post(f"/api/episodes/{EP_B}/shots/S09/approve",
                       headers=bearer(TOKEN_B)).status_code == 404
    assert client.post(f"/api/episodes/{EP_B}/shots/S02/reject", headers=bearer(TOKEN_B),
                       json={}).status_code == 400
    assert client.post(f"/api/episodes/{EP_B}/shots/S02/delete",
                       headers=bearer(TOKEN_B)).status_code == 404
    assert client.post(f"/api/episodes/{EP_B}/shots/S02/approve", headers=bearer(TOKEN_B),
                       content=b"[1]").status_code == 400


def _links(client: TestClient, token: str, episode: str) -> list[str]:
    ep = client.get(f"/api/episodes/{episode}", headers=bearer(token)).json()
    urls = [d["url"] for d in ep["downloads"]]
    for shot in ep["shots"]:
        urls += [shot["clip"]["url"], shot["thumbnail"]["url"]]
    return urls


def test_another_scope_sees_and_reaches_nothing(client: TestClient, world: World) -> None:
    """A studio-b token, on every door to a studio-a episode: page, API, decisions, files."""
    a_links = _links(client, TOKEN_A, EP_A)
    assert len(a_links) == 5  # subtitles, two clips, two thumbnails
    for url in a_links:
        assert client.get(url).status_code == 200  # the links themselves work
    login(client, TOKEN_B)
    assert EP_A not in client.get("/episodes").text
    page = client.get(f"/episodes/{EP_A}")
    assert page.status_code == 404 and "S01" not in page.text
    assert client.get("/episodes/studio-a/moonlit-courier/nope").status_code == 404
    for odd in ("studio-b/../ep01", "studio-b/glass-harbor/..", "studio-b/Glass/ep01"):
        assert client.get(f"/api/episodes/{odd.replace('..', '%2E%2E')}",
                          headers=bearer(TOKEN_B)).status_code == 404, odd
    api = client.get(f"/api/episodes/{EP_A}", headers=bearer(TOKEN_B))
    assert api.status_code == 404 and EP_A in api.json()["error"]
    assert EP_A not in str(client.get("/api/episodes", headers=bearer(TOKEN_B)).json())
    r = client.post(f"/api/episodes/{EP_A}/shots/S01/approve", headers=bearer(TOKEN_B))
    assert r.status_code == 404
    # a studio-b link re-pointed at a studio-a file, or re-scoped: refused, nothing read
    b_clip = _links(client, TOKEN_B, EP_B)[1]
    parts = urlsplit(b_clip)
    moved = b_clip.replace("studio-b/glass-harbor/ep01", "studio-a/moonlit-courier/ep99")
    q = parse_qs(parts.query)
    rescoped = b_clip.replace(f"scope={q['scope'][0].replace('/', '%2F')}", "scope=studio-a")
    for url in (moved, rescoped):
        r = client.get(url)
        assert r.status_code == 403 and b"clip v1" not in r.content
    # a studio-a episode in a studio-b project name: still only its own scope
    assert ReviewStore(world.settings.ledger_url).latest(EP_A)["S01"].state is \
        ReviewState.in_review


def test_a_project_token_sees_only_its_project(world: World) -> None:
    from anime_pipeline.pipeline import catalog
    from anime_pipeline_tests.conftest import minimal_episode

    catalog.register(world.store, minimal_episode(
        world.tmp / "ep-c", tenant_id="studio-b", project_id="other-show", episode_id="ep01"))
    with TestClient(world.app()) as client:
        keys = [e["episode_key"] for e in
                client.get("/api/episodes", headers=bearer(TOKEN_B)).json()["episodes"]]
        assert keys == [EP_B]
        assert client.get("/api/episodes/studio-b/other-show/ep01",
                          headers=bearer(TOKEN_B)).status_code == 404


def test_usage_and_budget_of_the_project(client: TestClient, world: World) -> None:
    import datetime as dt

    from anime_pipeline.ledger import Ledger, ProjectBudget, UsageEntry

    ledger = Ledger(world.settings.ledger_url)
    assert client.get(f"/api/episodes/{EP_A}", headers=bearer(TOKEN_A)).json()["usage"] is None
    ledger.record([UsageEntry(tenant="studio-a", project="moonlit-courier", episode="ep99",
                              shot="S01", run_id="r1", attempt=1, call=0, provider="wan_i2v",
                              unit="gpu_sec", amount=90.0, cost=0.054, currency="USD",
                              user="mei", outcome="ok", at=dt.datetime.now(dt.UTC))])
    ledger.set_budget(ProjectBudget(tenant="studio-a", project="moonlit-courier",
                                    gpu_minutes=3, period="month", on_exceed="refuse"))
    usage = client.get(f"/api/episodes/{EP_A}", headers=bearer(TOKEN_A)).json()["usage"]
    assert usage["rows"] == [{"provider": "wan_i2v", "calls": 1, "gpu_minutes": 1.5,
                              "cost": 0.054, "currency": "USD"}]
    assert usage["budget"]["used_percent"] == 50.0 and usage["budget"]["on_exceed"] == "refuse"
    login(client, TOKEN_A)
    html = client.get(f"/episodes/{EP_A}").text
    assert "1.5 of 3.0 GPU minutes (50.0 %)" in html and "refuse" in html
    # studio-b's page shows none of studio-a's spend
    with TestClient(world.app()) as other:
        assert other.get(f"/api/episodes/{EP_B}",
                         headers=bearer(TOKEN_B)).json()["usage"] is None


def test_expired_links_are_refused(world: World) -> None:
    now = [time.time()]
    app = world.app(link_ttl_s=60)
    app.state.desk.service.clock = lambda: now[0]
    with TestClient(app) as client:
        url = _links(client, TOKEN_A, EP_A)[0]
        assert client.get(url).status_code == 200
        now[0] += 200
        r = client.get(url)
        assert r.status_code == 403 and b"00:00" not in r.content


def test_refused_links_read_nothing(world: World, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """Tampered, expired, path-escaping (even validly signed) and symlinked links: 403, and
    no file response is ever made for them."""
    import anime_pipeline.desk.app as desk_app
    from anime_pipeline.desk.auth import Scope
    from anime_pipeline.desk.signing import expiry

    caplog.set_level("INFO", logger="anime_pipeline.desk")
    secret = world.tmp / "secret.txt"
    secret.write_text("SECRET")
    clips = world.store.root / "studio-a" / "moonlit-courier" / "ep99" / "clips"
    (clips / "S02.jpg").unlink()
    (clips / "S02.jpg").symlink_to(secret)
    app = world.app()
    signer = app.state.desk.service.signer
    opened: list[object] = []
    real = desk_app.FileResponse

    def spy(path: object, *a: object, **kw: object) -> object:
        opened.append(path)
        return real(path, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(desk_app, "FileResponse", spy)
    scope = Scope(tenant="studio-a")
    exp = expiry(time.time(), 600)

    def signed(key: str, scope_text: str = "studio-a", at: int = exp) -> str:
        sig = signer.signature(key, at, scope_text)  # a valid signature over the key as is
        path = key.replace("..", "%2E%2E")  # so that no client folds the dots away
        return f"/files/{path}?exp={at}&scope={scope_text}&sig={sig}"

    good = "studio-a/moonlit-courier/ep99/clips/S01.mp4"
    params = signer.params(good, scope, exp)
    refused = [
        f"/files/{good}?exp={params['exp']}&scope=studio-a&sig={'0' * 64}",  # tampered
        f"/files/{good.replace('S01', 'S02')}?exp={params['exp']}&scope=studio-a"
        f"&sig={params['sig']}",  # another file, same signature
        f"/files/{good}?exp={int(params['exp']) + 60}&scope=studio-a&sig={params['sig']}",
        f"/files/{good}",  # unsigned
        signed(good, at=int(time.time()) - 1),  # expired
        signed("studio-a/moonlit-courier/ep99/clips/../../../../../secret.txt"),
        signed("studio-a/moonlit-courier/ep99/clips/S02.jpg"),  # a symlink out of the root
        signed("studio-a/moonlit-courier/ep99/clips/S01.json"),  # not an artifact we hand out
        signed("studio-a/moonlit-courier/ep77/clips/S01.mp4"),  # not a registered episode
        signed("studio-b/glass-harbor/ep01/clips/S01.mp4"),  # outside the signed scope
        signed("_catalog/episodes/studio-a/moonlit-courier/ep99.json"),
    ]
    with TestClient(app) as client:
        for url in refused:
            r = client.get(url)
            assert r.status_code == 403, url
            assert b"SECRET" not in r.content and b"clip v1" not in r.content
        assert opened == []
        reasons = [r.getMessage() for r in caplog.records if "refused a file link" in r.message]
        assert len(reasons) == len(refused)
        assert any("not a plain relative key" in r and "../" in r for r in reasons), reasons
        assert any("a symbolic link on the way" in r for r in reasons), reasons
        assert any("expired" in r for r in reasons), reasons
        ok = client.get(f"/files/{good}?{'&'.join(f'{k}={v}' for k, v in params.items())}")
        assert ok.status_code == 200 and ok.content.endswith(b"S01 clip v1")
        assert ok.headers["content-type"] == "video/mp4"
        assert 'inline; filename="ep99_S01.mp4"' in ok.headers["content-disposition"]
        ranged = client.get(f"/files/{good}?{'&'.join(f'{k}={v}' for k, v in params.items())}",
                            headers={"Range": "bytes=0-9"})
        assert ranged.status_code == 206 and len(ranged.content) == 10  # players can seek
        assert len(opened) == 2


def test_the_page_says_when_the_composite_predates_a_clip(client: TestClient,
                                                          world: World) -> None:
    from anime_pipeline.domain.records import ClipRef, ClipStatus, CompositeRecord
    from anime_pipeline.pipeline.clips import read_clip_records
    from anime_pipeline.storage import EpisodeKeys, put_record
    from anime_pipeline_tests.desk.conftest import fake_clip

    records = read_clip_records(world.store, world.a)
    keys = EpisodeKeys(EP_A)
    world.store.put_bytes(keys.composite, b"the cut")
    put_record(world.store, keys.composite_record, CompositeRecord(
        episode_key=EP_A, uri="u", sha256="0" * 64, size_bytes=7, duration_ms=1500,
        probed_duration_s=1.5, video_frames=36, expected_frames=36, width=320, height=180,
        fps=24, streams=[], subtitle_cues=1, subtitle_language="jpn", burned_in=False,
        video_copied=True, clip_encoders=["libx264"], compose_seconds=1.0,
        clips=[ClipRef(shot_id=s, sha256=r.sha256, status=ClipStatus.ok)
               for s, r in records.items()]))
    ep = client.get(f"/api/episodes/{EP_A}", headers=bearer(TOKEN_A)).json()
    assert ep["composite"]["label"] == "ep99.mp4" and ep["composite_stale"] == []
    assert "36 frames" in ep["composite_info"]
    fake_clip(world.store, EP_A, "S02", b"a new take")
    ep = client.get(f"/api/episodes/{EP_A}", headers=bearer(TOKEN_A)).json()
    assert ep["composite_stale"] == ["S02"]
    login(client, TOKEN_A)
    page = client.get(f"/episodes/{EP_A}").text
    assert 'id="composite"' in page and "Cut before the current clips of S02" in page
