"""The review loop from the command line: render, reject a shot with a reason, and
``review process`` renders only that shot again, re-cuts the composite and the package, and
puts the new version back in review."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.clips import read_clip_records
from anime_pipeline.pipeline.delivery import read_composite
from anime_pipeline.storage import LocalStore
from anime_pipeline_tests.conftest import minimal_episode
from anime_pipeline_tests.e2e.test_budget_e2e import _cli, _env

pytestmark = pytest.mark.slow

EP = "studio-a/moonlit-courier/ep99"


def test_reject_regenerate_and_back_to_review(tmp_path: Path) -> None:
    folder = minimal_episode(tmp_path / "ep")
    env = _env(tmp_path)
    assert _cli("render", str(folder), env=env).returncode == 0
    status = json.loads(_cli("review", "status", EP, "--json", env=env).stdout)
    old = {s["shot_id"]: s["clip_sha256"] for s in status["shots"]}
    store = LocalStore(tmp_path / "artifacts")
    bundle = catalog.load_registered(store, EP)
    old_fp = {k: r.fingerprint for k, r in read_clip_records(store, bundle).items()}
    assert {s["state"] for s in status["shots"]} == {"in_review"}
    rejected = _cli("review", "reject", EP, "S01", "--reason", "the push-in is too fast",
                    "--reviewer", "mei", env=env)
    assert rejected.returncode == 0, rejected.stderr
    done = _cli("review", "process", EP, "--json", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    first, second = out["passes"]
    # The new version goes to review as soon as the delivery's review report is written, or
    # at the latest in the second pass.
    assert first["retakes"] == {"S01": 1} and second["sent_to_review"] in (["S01"], [])
    rendered = {c["shot_id"]: c for c in out["render"]["clips"]}
    assert out["render"]["clip_stats"]["cached"] == 1  # S02 was not rendered again
    status = json.loads(_cli("review", "status", EP, "--json", env=env).stdout)
    new = {s["shot_id"]: s for s in status["shots"]}
    records = read_clip_records(store, bundle)
    # A new take: a new version in review (the same picture when the shot has only one local
    # candidate: an animatic of an unchanged keyframe cannot come out otherwise).
    assert new["S01"]["state"] == "in_review" and records["S01"].fingerprint != old_fp["S01"]
    assert records["S02"].fingerprint == old_fp["S02"] and new["S02"]["clip_sha256"] == old["S02"]
    composite = read_composite(store, EP)
    assert new["S01"]["clip_sha256"] in {c.sha256 for c in composite.clips}
    assert rendered["S01"]["render_seconds"] > 0
