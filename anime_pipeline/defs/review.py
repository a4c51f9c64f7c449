"""The review loop under the daemon: ``review_loop_sensor`` and the ``review_episode`` job.

Each tick, for every registered episode, the sensor sends new clip versions to review, gives
every rejected shot a retake and requests a ``render_clips`` run of the episode (only the
retaken shots render; ``episode_flow_sensor`` then re-cuts the composite and the package), and
requests a ``review_episode`` run when the project's automated reviewer has versions to
measure. Run keys carry the takes and versions, so a tick fires each once, across daemon
restarts. ``anime-pipeline review process EP`` does the same in the foreground.
"""

import hashlib

import dagster as dg
from pydantic import Field

from anime_pipeline.defs.jobs import clips_job
from anime_pipeline.defs.partitions import clip_range_tags
from anime_pipeline.defs.resources import LedgerResource, StorageResource
from anime_pipeline.pipeline import catalog
from anime_pipeline.pipeline.review import (
    process,
    qc_pending,
    regenerating_takes,
    request_retakes,
    sync_versions,
)
from anime_pipeline.review.store import ReviewStore


class ReviewEpisodeConfig(dg.Config):
    episode_key: str = Field(description="tenant/project/episode")


@dg.op(description="The automated reviewer over the episode's clip versions in review (by "
                   "the project's review mode); rejected shots get their retake.")
def review_clips(context: dg.OpExecutionContext, config: ReviewEpisodeConfig,
                 storage: StorageResource, ledger: LedgerResource) -> None:
    store = storage.store()
    bundle = catalog.load_registered(store, config.episode_key)
    result = process(store, ReviewStore(ledger.ledger().url), bundle, regenerate=False)
    for shot in result.approved_by_qc:
        context.log.info(f"{result.episode_key} {shot}: approved by QC")
    for shot in result.qc_passed:
        context.log.info(f"{result.episode_key} {shot}: passed QC, waiting for a human")
    for shot, why in result.qc_rejected.items():
        context.log.warning(f"{result.episode_key} {shot}: rejected by QC: {why}")


@dg.job(name="review_episode", description="Run the automated reviewer on an episode's clips "
                                           "in review (launched by review_loop_sensor).")
def review_episode_job() -> None:
    review_clips()


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()[:16]


@dg.sensor(
    jobs=[clips_job, review_episode_job], minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="The review loop: new clip versions to review, the automated reviewer by "
                "project mode, and a retake render for every rejected shot.",
)
def review_loop_sensor(context: dg.SensorEvaluationContext, storage: StorageResource,
                       ledger: LedgerResource) -> dg.SensorResult:
    store = storage.store()
    reviews = ReviewStore(ledger.ledger().url)
    requests: list[dg.RunRequest] = []
    for key in catalog.registered_keys(store):
        try:
            bundle = catalog.load_registered(store, key)
        except Exception as e:  # a folder gone or broken: the others still get reviewed
            context.log.warning(f"{key}: not reviewed: {type(e).__name__}: {e}")
            continue
        sync_versions(store, reviews, bundle)
        pending = qc_pending(store, reviews, bundle)
        if pending:
            versions = [f"{s}:{reviews.latest(key)[s].version.sha256}" for s in pending]
            requests.append(dg.RunRequest(
                job_name="review_episode", run_key=f"qc:{key}:{_digest(versions)}",
                run_config={"ops": {"review_clips": {"config": {"episode_key": key}}}},
                tags={"anime_pipeline/episode": key}))
        new = request_retakes(store, reviews, bundle)
        if new:
            context.log.info(f"{key}: regenerating {', '.join(sorted(new))}")
        # Every shot still waiting for its retake, not only the new ones: a tick that died
        # after writing the retakes asks again next time, under the same run key.
        takes = regenerating_takes(store, reviews, bundle)
        if takes:
            shots = [s.id for s in bundle.episode.shots]
            requests.append(dg.RunRequest(
                job_name="render_clips",
                run_key=f"retake:{key}:{_digest([f'{s}:{t}' for s, t in takes.items()])}",
                tags={**clip_range_tags(key, shots), "anime_pipeline/retakes": ",".join(
                    f"{s}#{t}" for s, t in sorted(takes.items()))}))
    return dg.SensorResult(run_requests=requests)
