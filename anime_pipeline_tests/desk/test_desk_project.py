"""A project's page in the desk: review mode, package parts and schedules created, changed
and removed there — the same rows the CLI and the sensors read — and none of another scope's."""

from __future__ import annotations

from starlette.testclient import TestClient

from anime_pipeline.review.store import ReviewStore
from anime_pipeline.timetable import ScheduleStore
from anime_pipeline_tests.desk.conftest import EP_A, TOKEN_B, World
from anime_pipeline_tests.desk.test_desk_http import login

PAGE = "/projects/studio-a/moonlit-courier"


def test_project_settings_and_schedules_from_the_desk(client: TestClient, world: World) -> None:
    csrf = login(client, "studio-a-token-0123456789", PAGE)
    page = client.get(PAGE)
    assert page.status_code == 200 and 'name="part_keyframes" id="part_keyframes" checked' in \
        page.text
    episode = client.get(f"/episodes/{EP_A}")
    assert f'href="{PAGE}"' in episode.text  # linked from the episode page
    saved = client.post(f"{PAGE}/settings", data={
        "csrf": csrf, "review_mode": "human+ai", "part_clips": "on", "part_composite": "on",
        "part_subtitles": "on", "part_review_report": "on"}, follow_redirects=False)
    assert saved.status_code == 303
    reviews = ReviewStore(world.settings.ledger_url)
    assert reviews.review_mode("studio-a", "moonlit-courier") == "human+ai"
    parts = reviews.package_parts("studio-a", "moonlit-courier")
    assert parts is not None and not parts.keyframes and not parts.manifests and parts.clips
    bad = client.post(f"{PAGE}/schedules", data={"csrf": csrf, "cron": "0 25 * * *",
                                                 "timezone": "UTC", "target": EP_A,
                                                 "action": "render"})
    assert bad.status_code == 400 and "schedule cron" in bad.text
    added = client.post(f"{PAGE}/schedules", data={
        "csrf": csrf, "cron": "30 1 * * *", "timezone": "Asia/Tokyo",
        "target": "studio-a/moonlit-courier", "action": "render"})
    assert added.status_code == 200 and "added" in added.text
    [schedule] = ScheduleStore(world.settings.ledger_url).all()
    assert (schedule.cron, schedule.timezone, schedule.action) == ("30 1 * * *", "Asia/Tokyo",
                                                                    "render")
    assert f'id="schedule-{schedule.id}" class="on"' in added.text
    client.post(f"{PAGE}/schedules/{schedule.id}/disable", data={"csrf": csrf})
    assert ScheduleStore(world.settings.ledger_url).get(schedule.id).enabled is False  # type: ignore[union-attr]
    forged = client.post(f"{PAGE}/schedules/{schedule.id}/remove", data={"csrf": "nope"})
    assert forged.status_code == 403 and ScheduleStore(world.settings.ledger_url).all()
    client.post(f"{PAGE}/schedules/{schedule.id}/remove", data={"csrf": csrf})
    assert ScheduleStore(world.settings.ledger_url).all() == []


def test_another_scope_cannot_see_or_change_the_project(world: World) -> None:
    with TestClient(world.app(), base_url="http://desk.test") as other:
        csrf = login(other, TOKEN_B, "/episodes")
        assert other.get(PAGE).status_code == 404
        assert other.post(f"{PAGE}/settings", data={"csrf": csrf, "review_mode": "ai"}
                          ).status_code == 404
        assert other.post(f"{PAGE}/schedules", data={
            "csrf": csrf, "cron": "0 2 * * *", "target": "studio-a/moonlit-courier",
            "action": "render"}).status_code == 404
        # its own project, but a target in another scope
        assert other.post("/projects/studio-b/glass-harbor/schedules", data={
            "csrf": csrf, "cron": "0 2 * * *", "target": EP_A, "action": "render"}
        ).status_code == 404
    assert ReviewStore(world.settings.ledger_url).review_mode("studio-a",
                                                              "moonlit-courier") == "human"
    assert ScheduleStore(world.settings.ledger_url).all() == []
