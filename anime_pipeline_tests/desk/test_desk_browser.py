"""The desk in a real browser: Playwright driving Debian's Chromium (``/usr/bin/chromium``,
never a downloaded one) against the desk served by uvicorn, over an episode rendered through
the use cases (plan, clips, composite, package) with ffmpeg."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from anime_pipeline.cli.desk import listen, make_server
from anime_pipeline.desk.app import create_app
from anime_pipeline.desk.config import DeskSettings, LocalStorageSettings
from anime_pipeline.ledger import Ledger, ProjectBudget, clip_usage, default_url
from anime_pipeline.pipeline.clips import local_backends, read_clip_records, render_episode_clips
from anime_pipeline.pipeline.delivery import write_composite, write_package
from anime_pipeline.pipeline.review import process
from anime_pipeline.review.store import ReviewStore
from anime_pipeline.storage import EpisodeKeys, LocalStore
from anime_pipeline_tests.conftest import minimal_episode
from anime_pipeline_tests.desk.conftest import EP_A, EP_B, TOKEN_A, UI, fake_clip
from anime_pipeline_tests.pipeline.conftest import ENV, Planned, plan_episode

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's Chromium is not installed at /usr/bin/chromium (apt-get install "
                "chromium); the browser tests never download a browser",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright (the dev extra) is not installed")


@dataclass
class Desk:
    url: str
    planned: Planned
    reviews: ReviewStore

    @property
    def store(self) -> LocalStore:
        return self.planned.store

    def page_url(self, key: str = EP_A) -> str:
        return f"{self.url}/episodes/{key}"


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    """A studio-a episode rendered for real, a studio-b one beside it, the desk on a free
    port of 127.0.0.1 (uvicorn in a thread)."""
    store = LocalStore(tmp_path / "artifacts")
    planned = plan_episode(store, minimal_episode(tmp_path / "ep99"))
    with store.scratch() as work:
        render_episode_clips(store, planned.bundle, planned.plan, planned.shot_ids,
                             backends=local_backends(), env=ENV, work_dir=work)
        write_composite(store, planned.bundle, work_dir=work)
        write_package(store, planned.bundle, work_dir=work,
                      lineage={"run_id": "r1", "partition": EP_A})
    from anime_pipeline.pipeline import catalog

    catalog.register(store, minimal_episode(tmp_path / "ep-b", tenant_id="studio-b",
                                            project_id="glass-harbor", episode_id="ep01"))
    fake_clip(store, EP_B, "S01", b"studio-b's clip")
    ledger = Ledger(default_url(tmp_path / "home"))  # what the clips step would have recorded
    for record in read_clip_records(store, planned.bundle).values():
        ledger.record(clip_usage(record, run_id="r1", user="aki"))
    ledger.set_budget(ProjectBudget(tenant="studio-a", project="moonlit-courier",
                                    gpu_minutes=0.5, period="month", on_exceed="degrade"))
    settings = DeskSettings(
        home=tmp_path / "home", storage=LocalStorageSettings(root=store.root),
        ledger_url=default_url(tmp_path / "home"), ui_url=UI,
        tokens=SecretStr(f"{TOKEN_A}=aki@studio-a,studio-b-token-abcdefgh=studio-b"))
    server = make_server(create_app(settings))
    sock = listen("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    port = sock.getsockname()[1]
    try:
        yield Desk(f"http://127.0.0.1:{port}", planned, ReviewStore(settings.ledger_url))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[sync_api.Page]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        context = browser.new_context(accept_downloads=True,
                                      viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


def log_in(page: sync_api.Page, desk: Desk) -> None:
    page.goto(desk.page_url())
    assert "/login" in page.url  # the episode page sent us to the login form
    page.fill("#token", TOKEN_A)
    page.click("button[type=submit]")
    page.wait_for_url(desk.page_url())
    assert page.inner_text("#who").startswith("aki · scope studio-a")


def shot(page: sync_api.Page, shot_id: str) -> sync_api.Locator:
    return page.locator(f"#shot-{shot_id}")


def expect_state(page: sync_api.Page, shot_id: str, state: str, version: int) -> None:
    card = shot(page, shot_id)
    sync_api.expect(card).to_have_attribute("data-state", state)
    sync_api.expect(card).to_have_attribute("data-version", str(version))


def test_log_in_reject_regenerate_and_approve(desk: Desk, page: sync_api.Page,
                                              tmp_path: Path) -> None:
    log_in(page, desk)
    expect_state(page, "S01", "in_review", 1)
    expect_state(page, "S02", "in_review", 1)
    # the composite plays: Chromium reads its metadata through the signed link
    page.wait_for_function("document.querySelector('#composite').readyState >= 1")
    assert page.eval_on_selector("#composite", "v => v.duration") == pytest.approx(1.5, 0.1)
    assert page.get_attribute("#shot-S01 a[data-role=dagster]", "href") == (
        f"{UI}/assets/clips?view=partitions&partition=studio-a%2Fmoonlit-courier%2Fep99%2FS01")

    # reject S01 with a reason
    shot(page, "S01").locator("textarea[name=reason]").fill("the eyes drift; keep the push-in")
    shot(page, "S01").locator("button.reject").click()
    sync_api.expect(page.locator("#notice")).to_contain_text("S01 rejected")
    expect_state(page, "S01", "rejected", 1)
    sync_api.expect(shot(page, "S01").locator(".decision")).to_contain_text(
        "rejected by aki: the eyes drift; keep the push-in")
    shot(page, "S01").locator("details.history summary").click()
    rows = shot(page, "S01").locator("details.history tbody tr")
    sync_api.expect(rows).to_have_count(3)  # rendered, in review, rejected (newest first)
    sync_api.expect(rows.first).to_contain_text("the eyes drift")
    page.screenshot(path=str(tmp_path / "episode_after_reject.png"), full_page=True)

    # the review loop in-process, as `review process` runs it: a retake for the rejected shot,
    # the episode rendered again (only S01 renders), then the new version back to review
    p = desk.planned
    loop = process(desk.store, desk.reviews, p.bundle)
    assert loop.retakes == {"S01": 1}
    page.reload()
    expect_state(page, "S01", "regenerating", 1)
    before = read_clip_records(desk.store, p.bundle)
    with desk.store.scratch() as work:
        render_episode_clips(desk.store, p.bundle, p.plan, p.shot_ids,
                             backends=local_backends(), env=ENV, work_dir=work)
        write_composite(desk.store, p.bundle, work_dir=work)
    after = read_clip_records(desk.store, p.bundle)
    assert after["S01"].rendered_at > before["S01"].rendered_at  # a new take of S01 ...
    assert after["S01"].fingerprint != before["S01"].fingerprint
    assert after["S02"] == before["S02"]  # ... and only of S01
    process(desk.store, desk.reviews, p.bundle, regenerate=False)
    page.reload()
    expect_state(page, "S01", "in_review", 2)
    expect_state(page, "S02", "in_review", 1)
    sync_api.expect(shot(page, "S01").locator(".version")).to_contain_text("version 2 · take 1")
    sync_api.expect(page.locator("#stale")).to_have_count(0)  # the composite is re-cut

    shot(page, "S01").locator("button.approve").click()
    sync_api.expect(page.locator("#notice")).to_contain_text("S01 approved")
    expect_state(page, "S01", "approved", 2)
    page.screenshot(path=str(tmp_path / "episode_after_approve.png"), full_page=True)


def test_approve_download_a_clip_and_a_tampered_link(desk: Desk, page: sync_api.Page,
                                                     tmp_path: Path) -> None:
    log_in(page, desk)
    shot(page, "S02").locator("button.approve").click()
    sync_api.expect(page.locator("#notice")).to_contain_text("S02 approved")
    expect_state(page, "S02", "approved", 1)
    # a refused step is said in the page (the form is gone; post it by hand from the page)
    status = page.evaluate("""async () => {
        const csrf = document.querySelector('input[name=csrf]').value;
        const r = await fetch(location.pathname + '/shots/S02/reject', {method: 'POST',
            headers: {'content-type': 'application/x-www-form-urlencoded'},
            body: 'reason=late&csrf=' + encodeURIComponent(csrf)});
        return [r.status, await r.text()];
    }""")
    assert status[0] == 409 and "cannot go from approved to rejected" in status[1]

    # download S02's clip through its signed link
    link = shot(page, "S02").locator("a[data-role=download]")
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == "ep99_S02.mp4"
    got = Path(download.path()).read_bytes()
    expected = desk.store.path(EpisodeKeys(EP_A).clip("S02")).read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expected).hexdigest()

    href = link.get_attribute("href")
    assert href and "sig=" in href
    tampered = re.sub(r"sig=([0-9a-f])", lambda m: "sig=" + ("0" if m.group(1) != "0"
                                                            else "1"), href)
    response = page.goto(desk.url + tampered)
    assert response is not None and response.status == 403
    assert "this link is not valid" in page.content()
    response = page.goto(desk.url + href.replace("/S02.mp4", "/S01.mp4"))
    assert response is not None and response.status == 403

    # studio-b's episode does not exist for a studio-a reviewer
    response = page.goto(desk.page_url(EP_B))
    assert response is not None and response.status == 404
    page.goto(f"{desk.url}/episodes")
    assert EP_A in page.content() and EP_B not in page.content()

    page.goto(desk.page_url(), wait_until="networkidle")
    sync_api.expect(page.locator("#budget")).to_contain_text("GPU minutes")
    sync_api.expect(page.locator("#usage")).to_contain_text("animatic")
    page.wait_for_function("document.querySelector('#composite').readyState >= 2")
    page.wait_for_timeout(1000)  # the players' loading spinners settle
    page.screenshot(path=str(tmp_path / "episode.png"), full_page=True)
    assert (tmp_path / "episode.png").stat().st_size > 10_000
