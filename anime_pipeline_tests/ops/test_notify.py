"""Notifications against a real HTTP receiver on loopback: each kind posted once as
``{"text": ...}``, the same event seen twice posted once, a receiver down or failing then
back, a slow one bounded, budget alerts once per period, hostile text, refused URLs, and
the webhook's secret never logged."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from anime_pipeline.defs.resources import NotifierResource
from anime_pipeline.ledger import Ledger, ProjectBudget, UsageEntry, default_url
from anime_pipeline.ops.notify import (
    KINDS,
    MAX_TEXT,
    Notifier,
    NotifierConfigError,
    budget_notification,
    check_budgets,
    degraded_notification,
    delivered_notification,
    redact_url,
    run_failed_notification,
    slack_escape,
)
from anime_pipeline_tests.support.webhook import SECRET, Receiver

RUN = "6f1c2a9e-0000-4000-8000-000000000001"
EP = "studio-a/moonlit-courier/ep99"
UI = "http://dagster.example:3000"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(default_url(tmp_path / "home"))


@pytest.fixture
def hook():  # type: ignore[no-untyped-def]
    with Receiver() as receiver:
        yield receiver


def rows(ledger: Ledger) -> dict[str, object]:
    return {r.key: r for r in ledger.sent_notifications()}


def one_of_each(ledger: Ledger) -> list:  # type: ignore[type-arg]
    ledger.set_budget(ProjectBudget(tenant="studio-a", project="moonlit-courier",
                                    gpu_minutes=10, on_exceed="refuse"))
    use(ledger, 8.5, dt.datetime(2026, 12, 2, tzinfo=dt.UTC))
    status = ledger.budget_status("studio-a", "moonlit-courier",
                                  dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
    assert status is not None
    return [
        budget_notification(status, 80),
        budget_notification(status, 100),
        run_failed_notification(run_id=RUN, job="render_clips", episode=EP, ui_base_url=UI,
                                reason="clips: DiskFullError: no space left on device"),
        delivered_notification(run_id=RUN, episode=EP, title="Moon", shots=12,
                               duration_s=42.5, package="/srv/ep99_delivery.zip",
                               ui_base_url=UI),
        delivered_notification(run_id="run-2", episode=EP, shots=12, duration_s=42.5,
                               placeholder_shots=["S02", "S07"], degraded_shots=["S03"]),
        degraded_notification(at=1_790_000_000.25, kind="vram", level=1,
                              reason="VRAM 91% used on GPU 0 > 85%", where="render-01"),
    ]


def test_each_kind_is_posted_once_as_slack_json(ledger: Ledger, hook: Receiver) -> None:
    notifier = Notifier(ledger, hook.url, timeout_s=5)
    events = one_of_each(ledger)
    assert [n.kind for n in events] == list(KINDS)
    assert all(notifier.notify(n) for n in events)
    assert not any(notifier.notify(n) for n in events)  # seen again: nothing posted
    assert len(hook.posts) == len(KINDS)
    for post, n in zip(hook.posts, events, strict=True):
        assert post["path"] == f"/services/{SECRET}"
        assert post["headers"]["Content-Type"].startswith("application/json")
        body = json.loads(post["raw"].decode("utf-8"))
        assert body == {"text": slack_escape(n.text)}  # nothing else in it
    b80, b100, failed, delivered, placeholders, degraded = hook.texts()
    assert "budget 80% used: studio-a/moonlit-courier spent 8.5 of 10 GPU minutes in 2026-12 " \
           "(85%)" in b80
    assert "At 100%, further renders are refused" in b80
    assert "budget used up" in b100 and "Now further renders are refused" in b100
    assert f"run failed: render_clips for {EP} (run {RUN})" in failed
    assert "DiskFullError: no space left on device" in failed
    assert f"{UI}/runs/{RUN}" in failed
    assert f"delivered: {EP} (Moon): 12 shot(s), 42.5 s" in delivered
    assert "/srv/ep99_delivery.zip" in delivered and f"{UI}/runs/{RUN}" in delivered
    assert "WITH PLACEHOLDERS" in placeholders and "2 of 12 shot(s)" in placeholders
    assert "placeholder slates: S02, S07" in placeholders and "S03" in placeholders
    assert "degraded to level 1 on render-01 (vram): VRAM 91% used on GPU 0 &gt; 85%" in degraded
    recorded = rows(ledger)
    assert set(recorded) == {n.key for n in events}
    assert all(r.sent_at is not None and r.error is None and r.tries == 1  # type: ignore[attr-defined]
               for r in recorded.values())
    assert {r.kind for r in recorded.values()} == set(KINDS)  # type: ignore[attr-defined]


def test_the_same_event_seen_twice_is_posted_once(tmp_path: Path, hook: Receiver) -> None:
    url = default_url(tmp_path / "home")
    # A daemon restarted: a new process, a new notifier, the same ledger.
    first = Notifier(Ledger(url), hook.url)
    n = run_failed_notification(run_id=RUN, job="plan_episode", reason="boom", episode=EP)
    assert first.notify(n)
    restarted = Notifier(Ledger(url), hook.url)
    assert not restarted.notify(n)
    # The CLI and the failure sensor build their own texts of one failure: one key, one post.
    cli = run_failed_notification(run_id="run-b", job="render_clips", reason="cli says")
    sensor = run_failed_notification(run_id="run-b", job="render_clips", reason="sensor says",
                                     episode=EP, ui_base_url=UI)
    assert cli.key == sensor.key
    # ...even at the same moment, from many threads.
    results: list[bool] = []
    threads = [threading.Thread(target=lambda m=m: results.append(
        Notifier(Ledger(url), hook.url).notify(m))) for m in [cli, sensor] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(True) == 1
    assert len(hook.posts) == 2
    assert hook.texts()[1] in (cli.text, sensor.text)


def test_a_receiver_that_is_down_then_back_gets_it_once(ledger: Ledger) -> None:
    hook = Receiver().start()
    port = hook.port
    hook.stop()  # nothing listens there now
    notifier = Notifier(ledger, hook.url, timeout_s=2)
    n = run_failed_notification(run_id=RUN, job="render_clips", reason="out of memory")
    t0 = time.monotonic()
    assert notifier.notify(n)  # claimed: it is ours to deliver, now or later
    assert time.monotonic() - t0 < 4
    row = rows(ledger)[n.key]
    assert row.sent_at is None and row.tries == 1  # type: ignore[attr-defined]
    assert "ConnectError" in row.error and SECRET not in row.error  # type: ignore[attr-defined]
    assert ledger.unsent_notifications() == [(n.key, n.kind, n.text)]
    assert notifier.retry_unsent() == []  # still down
    assert rows(ledger)[n.key].tries == 2  # type: ignore[attr-defined]
    with Receiver(port) as back:
        assert notifier.retry_unsent() == [n.key]
        assert notifier.retry_unsent() == []
        assert back.texts() == [n.text]
    row = rows(ledger)[n.key]
    assert row.sent_at is not None and row.error is None and row.tries == 3  # type: ignore[attr-defined]
    assert ledger.unsent_notifications() == []


def test_http_500_is_retried_within_the_send_then_later(ledger: Ledger) -> None:
    with Receiver(status=500) as hook:
        notifier = Notifier(ledger, hook.url, timeout_s=5)
        n = delivered_notification(run_id=RUN, episode=EP, shots=2, duration_s=1.5)
        assert notifier.notify(n)
        assert len(hook.posts) == 3  # three attempts with backoff, all within timeout_s
        assert rows(ledger)[n.key].error == "HTTP 500: boom"  # type: ignore[attr-defined]
        hook.status = 400
        assert notifier.retry_unsent() == []
        assert len(hook.posts) == 4  # a 4xx is not retried within the send
        hook.status = 200
        assert notifier.retry_unsent() == [n.key]
        assert hook.texts() == [n.text]
        # at most max_tries: a notification that keeps failing is given up
        hook.status = 503
        m = delivered_notification(run_id="run-x", episode=EP, shots=2, duration_s=1.5)
        few = Notifier(ledger, hook.url, timeout_s=0.5, attempts=1, max_tries=2)
        few.notify(m)
        few.retry_unsent()
        posts = len(hook.posts)
        assert few.retry_unsent() == [] and len(hook.posts) == posts


def test_two_retriers_never_send_one_twice(tmp_path: Path) -> None:
    url = default_url(tmp_path / "home")
    with Receiver(status=500) as hook:
        n = delivered_notification(run_id=RUN, episode=EP, shots=2, duration_s=1.5)
        Notifier(Ledger(url), hook.url, timeout_s=0.3, attempts=1).notify(n)
        hook.status, hook.delay_s = 200, 0.5
        sent: list[list[str]] = []
        threads = [threading.Thread(target=lambda: sent.append(
            Notifier(Ledger(url), hook.url, timeout_s=5).retry_unsent())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(sent) == [[], [], [], [n.key]]
        assert hook.texts() == [n.text]


def test_a_claim_whose_sender_died_is_sent_later(ledger: Ledger, hook: Receiver) -> None:
    n = run_failed_notification(run_id=RUN, job="render_clips", reason="killed")
    assert ledger.claim_notification(n.key, n.kind, n.text)  # ...and the process died here
    assert Notifier(ledger, hook.url).retry_unsent() == []  # maybe still sending: wait
    assert Notifier(ledger, hook.url, abandoned_after_s=0).retry_unsent() == [n.key]
    assert hook.texts() == [n.text]


@pytest.mark.parametrize("mode", ["late", "trickle"])
def test_a_slow_receiver_is_bounded_by_the_timeout(ledger: Ledger, mode: str) -> None:
    slow = {"delay_s": 30.0} if mode == "late" else {"trickle_s": 0.3}
    with Receiver(**slow) as hook:  # type: ignore[arg-type]
        notifier = Notifier(ledger, hook.url, timeout_s=1.0)
        n = run_failed_notification(run_id=RUN, job="render_clips", reason="slow")
        t0 = time.monotonic()
        assert notifier.notify(n)
        took = time.monotonic() - t0
        assert took < 1.6, took
        error = rows(ledger)[n.key].error  # type: ignore[attr-defined]
        assert error == "no answer within 1.0 s" or "within" in error, error


def test_without_a_webhook_it_is_logged_and_recorded(ledger: Ledger,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(ledger, "")
    assert not notifier.enabled
    n = run_failed_notification(run_id=RUN, job="render_clips", reason="boom")
    with caplog.at_level(logging.DEBUG, logger="anime_pipeline.notify"):
        assert notifier.notify(n)
        assert not notifier.notify(n)
    messages = [r.getMessage() for r in caplog.records]
    assert f"[run_failed] {n.text}" in messages
    assert any("no webhook set (ANIME_PIPELINE_WEBHOOK_URL)" in m for m in messages)
    assert rows(ledger)[n.key].sent_at is not None  # type: ignore[attr-defined]
    assert notifier.retry_unsent() == []


def test_a_ledger_that_fails_means_nothing_is_sent(ledger: Ledger, hook: Receiver,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    import sqlalchemy as sa

    with ledger.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE notifications"))
    n = run_failed_notification(run_id=RUN, job="render_clips", reason="boom")
    with caplog.at_level(logging.ERROR, logger="anime_pipeline.notify"):
        assert not Notifier(ledger, hook.url).notify(n)  # at most once: no claim, no post
    assert hook.posts == []
    assert any("the ledger failed: OperationalError" in r.getMessage() for r in caplog.records)


HOSTILE = ('"}, "text": "pwned", "x": {"\n<!channel> <@U123|boss> & <https://evil.example|'
           'click>\r\n\x1b[31mred\x1b[0m \u202eevil\u202c \udcff\x00 ' + "z" * 9000)


def test_hostile_text_cannot_break_the_json_or_the_message(ledger: Ledger,
                                                          hook: Receiver) -> None:
    notifier = Notifier(ledger, hook.url)
    n = delivered_notification(run_id=RUN, episode=EP, title=HOSTILE, shots=3, duration_s=1,
                               placeholder_shots=[HOSTILE, "S02"])
    m = run_failed_notification(run_id=RUN, job=HOSTILE, reason=HOSTILE, episode=HOSTILE)
    assert notifier.notify(n) and notifier.notify(m)
    for post in hook.posts:
        raw = post["raw"]
        raw.decode("utf-8", errors="strict")  # valid UTF-8 (the lone surrogate is gone)
        body = json.loads(raw)
        assert list(body) == ["text"] and isinstance(body["text"], str)
        text = body["text"]
        assert len(text) <= MAX_TEXT
        assert "<" not in text and ">" not in text  # no mention, no link
        assert "&lt;!channel&gt;" in text and "&amp;" in text
        assert not any(ord(c) < 32 and c != "\n" or c in "\x7f\u202e" for c in text)
        assert text.startswith("anime_pipeline: ")
        assert '"pwned"' not in json.dumps(body)[:20]
    failed = json.loads(hook.posts[1]["raw"])["text"].splitlines()
    assert len(failed) == 2  # a newline in a reason cannot add lines


@pytest.mark.parametrize("url", [
    "ftp://hooks.example/x", "file:///etc/passwd", "javascript:alert(1)", "hooks.example/x",
    "http://", "http:///path-only", "http://host:99999/x", "https://exa mple.com/x",
    "https://host/x\ny", "gopher://127.0.0.1:70/_s3cr3t",
])
def test_a_webhook_that_is_not_http_is_refused(ledger: Ledger, url: str) -> None:
    with pytest.raises(NotifierConfigError) as e:
        Notifier(ledger, url)
    message = str(e.value)
    assert message.startswith("ANIME_PIPELINE_WEBHOOK_URL: ")
    assert "s3cr3t" not in message and "passwd" not in message and "alert" not in message
    with pytest.raises(NotifierConfigError):
        NotifierResource(webhook_url=url).notifier(ledger)
    with pytest.raises(NotifierConfigError, match="ANIME_PIPELINE_UI_URL"):
        Notifier(ledger, "", ui_base_url="javascript:alert(1)")


def test_the_webhook_url_is_never_logged(ledger: Ledger, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    with caplog.at_level(logging.DEBUG):  # every logger, httpx and httpcore included
        with Receiver() as hook:
            notifier = Notifier(ledger, hook.url)
            assert SECRET not in repr(notifier)
            notifier.notify(run_failed_notification(run_id=RUN, job="a", reason="b"))
            hook.status = 500
            notifier.notify(run_failed_notification(run_id="r2", job="a", reason="b"))
        notifier.retry_unsent()  # the receiver is gone now
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"posted to http://127.0.0.1:{hook.port}/…" in logged
    assert "failed (try 2)" in logged and SECRET not in logged and "s3cr3t" not in logged
    assert all(SECRET not in (r.error or "") for r in ledger.sent_notifications())  # type: ignore[attr-defined]
    assert redact_url("https://u:p@hooks.slack.com/services/T/B/x?t=1") == \
        "https://hooks.slack.com/…"


# --------------------------------------------------------------------------- budgets


def use(ledger: Ledger, minutes: float, at: dt.datetime, project: str = "moonlit-courier",
        run: str = "r1") -> None:
    n = len(ledger.entries())
    ledger.record([UsageEntry(tenant="studio-a", project=project, episode="ep01",
                              shot=f"S{n:03d}", run_id=run, attempt=1, provider="comfyui",
                              unit="gpu_sec", amount=minutes * 60, at=at)])


def test_budget_alerts_at_80_and_100_once_per_period(ledger: Ledger, hook: Receiver) -> None:
    ledger.set_budget(ProjectBudget(tenant="studio-a", project="moonlit-courier",
                                    gpu_minutes=10, period="month", on_exceed="degrade"))
    ledger.set_budget(ProjectBudget(tenant="studio-a", project="other", gpu_minutes=1))
    notifier = Notifier(ledger, hook.url)
    dec = dt.datetime(2026, 12, 10, 12, tzinfo=dt.UTC)

    def check(**kw: object) -> list[str]:
        return check_budgets(ledger, notifier, now=kw.pop("now", dec), **kw)  # type: ignore[arg-type]

    use(ledger, 7.9, dec)
    assert check() == []
    use(ledger, 0.2, dec)  # 8.1 of 10
    assert check() == ["budget:studio-a/moonlit-courier:2026-12:80"]
    assert check() == [] and check(tenant="studio-a", project="moonlit-courier") == []
    # another process (a clips step, a restarted daemon) sees the same: nothing more
    assert check_budgets(ledger, Notifier(Ledger(ledger.url), hook.url), now=dec) == []
    use(ledger, 2.0, dec)  # 10.1 of 10
    assert check(tenant="studio-a", project="moonlit-courier") == [
        "budget:studio-a/moonlit-courier:2026-12:100"]
    assert check() == []
    assert len(hook.texts()) == 2
    assert "budget 80% used" in hook.texts()[0] and "(81%)" in hook.texts()[0]
    assert "budget used up" in hook.texts()[1] and "local backends only" in hook.texts()[1]
    # a new period alerts again, once; a project past both at once gets both, in order
    jan = dt.datetime(2027, 1, 3, tzinfo=dt.UTC)
    assert check(now=jan) == []
    use(ledger, 9.0, jan)
    use(ledger, 5.0, jan, project="other")
    assert check(now=jan, tenant="studio-a", project="moonlit-courier") == [
        "budget:studio-a/moonlit-courier:2027-01:80"]
    assert check(now=jan) == ["budget:studio-a/other:2027-01:80",
                              "budget:studio-a/other:2027-01:100"]
    assert check(now=jan) == []
    assert check(now=jan, tenant="nobody") == []
    assert len(hook.posts) == 5
    with pytest.raises(ValueError):
        check_budgets(ledger, notifier, project="other")
