"""The delivery assets of an episode: composite -> package_zip.

``package_zip`` also sends the ``delivered`` (or ``delivered_with_placeholders``) notification
from its own step, not from a sensor on the run's success: a render driven by the CLI runs
in process without a daemon, and the daemon's run status sensors never see such runs (they
match runs by the code location they were launched from); in the step, every delivery —
UI, schedule, sensor or CLI — notifies, and the message lands in that run's Dagster log. The
ledger's claim on ``delivered:<run>:<episode>`` keeps it to one message per delivery.
"""


import dagster as dg

from anime_pipeline.defs import checks
from anime_pipeline.defs.metadata import image, md_table
from anime_pipeline.defs.partitions import episode_partitions
from anime_pipeline.defs.planning_assets import GROUP
from anime_pipeline.defs.resources import (
    LedgerResource,
    NotifierResource,
    RenderSettings,
    StorageResource,
)
from anime_pipeline.domain import checks as quality
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.records import PackageRecord
from anime_pipeline.ops.notify import Notifier, delivered_notification
from anime_pipeline.pipeline import catalog, delivery, review
from anime_pipeline.review.store import ReviewStore
from anime_pipeline.storage import EpisodeKeys, Storage

MAX_INLINE_PREVIEW = 1 << 20  # bytes of JPEG shown inline in the UI


@dg.asset(
    partitions_def=episode_partitions, group_name=GROUP, kinds={"ffmpeg", "video"},
    # The composite of an episode reads that episode's clips; between the episode partitions
    # and the per-shot clip partitions Dagster can only map to all of them.
    deps=[dg.AssetDep("clips", partition_mapping=dg.AllPartitionMapping())],
    check_specs=[checks.COMPOSITE_CHECK],
    description="The episode: clips concatenated in shot order by stream copy, the mix "
                "(encoded once per episode, cut or padded to its length) copied in, dialogue "
                "as a soft subtitle track (optionally burned in), verified; a contact sheet "
                "with one tile per shot from the clips' thumbnails. Reused while its inputs "
                "are unchanged.",
)
def composite(
    context: dg.AssetExecutionContext, storage: StorageResource, render_settings: RenderSettings
) -> dg.MaterializeResult:
    store = storage.store()
    bundle = catalog.load_registered(store, context.partition_key)
    with store.scratch() as work:
        outcome = delivery.write_composite(store, bundle, work_dir=work,
                                           burn_subtitles=render_settings.burn_subtitles)
    record = outcome.record
    if outcome.reused:
        context.log.info(f"{record.episode_key}: composite current (same clips, mix, "
                         "subtitles and settings): reused")
    if record.placeholder_shots:
        context.log.warning(f"{record.episode_key} composed with placeholder slates for "
                            f"{record.placeholder_shots}")
    check = quality.composite_matches_episode(
        record, expect_subtitles=record.subtitle_cues > 0 and not record.burned_in)
    kinds = [s.kind for s in record.streams]
    metadata = {
        "duration_s": record.probed_duration_s,
        "expected_duration_s": record.duration_ms / 1000,
        "video_frames": record.video_frames,
        "expected_frames": record.expected_frames,
        "video_streams": kinds.count("video"),
        "audio_streams": kinds.count("audio"),
        "subtitle_streams": kinds.count("subtitle"),
        "subtitle_cues": record.subtitle_cues,
        "subtitles_burned_in": record.burned_in,
        "reused": outcome.reused,
        "video_copied": record.video_copied,
        "audio_copied": record.audio_copied,
        "verified_by": record.verified_by,
        "placeholder_shots": ", ".join(record.placeholder_shots),
        "degraded_shots": ", ".join(record.degraded_shots),
        "size_bytes": record.size_bytes,
        "compose_seconds": record.compose_seconds,
        "path": dg.MetadataValue.path(record.uri),
        "clips": md_table([{"shot": c.shot_id, "status": c.status.value,
                            "sha256": c.sha256[:12]} for c in record.clips],
                          ["shot", "status", "sha256"]),
    }
    if outcome.mix_reused is not None:  # the mix was needed: encoded now, or reused
        metadata["mix_reused"] = outcome.mix_reused
    sheet = outcome.contact_sheet_jpeg
    if sheet and len(sheet) <= MAX_INLINE_PREVIEW:
        metadata["contact_sheet"] = image(sheet, "contact sheet")
    elif sheet:  # a very long episode: link the file rather than inline megabytes
        metadata["contact_sheet"] = dg.MetadataValue.path(
            store.uri(EpisodeKeys(bundle.episode.key).contact_sheet))
    return dg.MaterializeResult(check_results=[checks.result(check)], metadata=metadata)


@dg.asset(
    partitions_def=episode_partitions, group_name=GROUP, deps=[composite], kinds={"zip"},
    check_specs=[checks.PACKAGE_CHECK],
    description="Delivery ZIP: composite, clips, SRT and ASS subtitles, the three JSON "
                "manifests, the keyframes and the review report (the parts are set per project "
                "or in creative_control.yaml), and manifest.json with every file's size and "
                "sha256 and the lineage. Reused while its files are unchanged.",
)
def package_zip(
    context: dg.AssetExecutionContext, storage: StorageResource, ledger: LedgerResource,
    notifier: NotifierResource,
) -> dg.MaterializeResult:
    alerts = notifier.notifier(ledger.ledger(), log=context.log)  # a bad webhook: refused now
    store = storage.store()
    bundle = catalog.load_registered(store, context.partition_key)
    lineage = {"run_id": context.run.run_id, "code_version": delivery.code_version(),
               "partition": context.partition_key}
    reviews = ReviewStore(ledger.ledger().url)
    parts = review.package_parts_for(reviews, bundle)
    report = review.review_report(store, reviews, bundle) if parts.review_report else None
    with store.scratch() as work:
        outcome = delivery.write_package(store, bundle, work_dir=work, lineage=lineage,
                                         parts=parts, review_report=report)
    record = outcome.record
    if outcome.reused:
        context.log.info(f"{record.episode_key}: package current (same files): reused")
    check = quality.package_checksums_match(store.fetch(EpisodeKeys(bundle.episode.key).package))
    if check.passed:  # a failed (blocking) check fails the run: that run_failed is the news
        notify_delivered(context, alerts, store, bundle, record)
    return dg.MaterializeResult(check_results=[checks.result(check)], metadata={
        "path": dg.MetadataValue.path(record.uri),
        "reused": outcome.reused,
        "size_bytes": record.size_bytes,
        "files": record.files,
        "sha256": record.sha256,
        "parts": ", ".join(k for k, on in parts.model_dump().items() if on),
        "code_version": record.manifest.lineage.code_version,
        "lineage": dg.MetadataValue.json(record.manifest.lineage.model_dump(mode="json")),
    })


def notify_delivered(context: dg.AssetExecutionContext, alerts: Notifier, store: Storage,
                     bundle: EpisodeBundle, record: PackageRecord) -> None:
    """The delivery notification, naming the shots that are placeholder slates in the
    composite just packaged. A notification never fails the delivery."""
    ep = bundle.episode
    try:
        composite_record = delivery.read_composite(store, ep.key)
        alerts.notify(delivered_notification(
            run_id=context.run.run_id, episode=ep.key, title=ep.title, shots=len(ep.shots),
            duration_s=ep.duration_ms / 1000, package=record.uri,
            placeholder_shots=composite_record.placeholder_shots,
            degraded_shots=composite_record.degraded_shots, ui_base_url=alerts.ui_base_url))
    except Exception as e:
        context.log.warning(f"delivery notification of {ep.key} not sent: "
                            f"{type(e).__name__}: {e}")
