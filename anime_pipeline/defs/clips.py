"""``clips``: one partition per shot of each episode, rendered concurrently inside one step.

An episode's shots render in one run and one step (``BackfillPolicy.single_run()``): the step
renders its partition range with a bounded pool of ffmpeg processes, and reports each clip as
it finishes — its materialization (with the clip's typed metadata and a preview) and its
``clip_rendered_as_planned`` check on its own partition, a warning when the clip is degraded
or a placeholder slate. Across runs, ``clips`` steps take a slot of the ``gpu`` pool.
"""


from collections.abc import Iterator, Sequence

import dagster as dg
from pydantic import Field

from anime_pipeline.defs import checks
from anime_pipeline.defs.metadata import clip_values, image
from anime_pipeline.defs.partitions import clip_key, clip_partitions, shots_by_episode
from anime_pipeline.defs.planning_assets import GROUP, shot_compute_budget_plan
from anime_pipeline.defs.resources import (
    GpuResource,
    RenderSettings,
    RuntimePolicyResource,
    StorageResource,
)
from anime_pipeline.domain import checks as quality
from anime_pipeline.domain.records import ClipMetadata
from anime_pipeline.instance import claim_run_worker
from anime_pipeline.media.ffmpeg import ffmpeg_info
from anime_pipeline.pipeline import catalog, planning
from anime_pipeline.pipeline import clips as clip_cases
from anime_pipeline.storage import Storage

CLIPS_KEY = dg.AssetKey("clips")


class ClipsConfig(dg.Config):
    force: bool = Field(default=False, description="Render again even the shots whose clip "
                                                   "is current (the rerender_shots job sets it).")


def _materialization(outcome: clip_cases.ClipOutcome) -> dg.AssetMaterialization:
    record = outcome.record
    meta = clip_values(ClipMetadata.of(record, cached=outcome.cached))
    if outcome.thumbnail_jpeg:
        meta["preview"] = image(outcome.thumbnail_jpeg, record.shot_id)
    return dg.AssetMaterialization(asset_key=CLIPS_KEY, metadata=meta,
                                   partition=clip_key(record.episode_key, record.shot_id))


def _check_stored_clips(store: Storage, keys: Sequence[str]
                        ) -> Iterator[dg.AssetCheckEvaluation]:
    for episode_key, shot_ids in shots_by_episode(keys).items():
        bundle = catalog.load_registered(store, episode_key)
        records = clip_cases.read_clip_records(store, bundle)
        for shot_id in shot_ids:
            key = clip_key(episode_key, shot_id)
            record = records.get(shot_id)
            outcome = (quality.clip_rendered_as_planned(record) if record is not None else
                       quality.CheckOutcome("clip_rendered_as_planned", False,
                                            f"{shot_id} has no clip yet"))
            yield checks.evaluation(outcome, asset="clips", partition=key, warn=True)


@dg.multi_asset(
    name="clips",
    specs=[dg.AssetSpec(
        CLIPS_KEY, partitions_def=clip_partitions, group_name=GROUP, kinds={"ffmpeg", "video"},
        # Every clip depends on its episode's plan; Dagster has no "episode of this shot"
        # mapping between two dynamic partition sets, so the edge maps to all plan partitions.
        deps=[dg.AssetDep(shot_compute_budget_plan, partition_mapping=dg.AllPartitionMapping())],
        description="One MP4 per shot, rendered at the plan's fps/resolution and conformed to "
                    "the delivery format, verified by decoding. Retries, then the degrade "
                    "ladder, then a placeholder slate, so an episode always composes.",
    )],
    check_specs=[checks.CLIP_CHECK],
    partitions_def=clip_partitions,
    can_subset=True,  # each clip is reported as it finishes, not at the end of the step
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="gpu",
)
def clips(
    context: dg.AssetExecutionContext, config: ClipsConfig, storage: StorageResource,
    render_settings: RenderSettings, runtime: RuntimePolicyResource, gpu: GpuResource,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    claim_run_worker(context.instance, context.run.run_id)
    store = storage.store()
    if CLIPS_KEY not in context.selected_asset_keys:
        # Only the check was asked for (its "Execute" button): judge the clips as they are.
        yield from _check_stored_clips(store, context.partition_keys)
        return
    env = clip_cases.render_environment(
        runtime.policy(), requested_concurrency=render_settings.concurrency,
        nvenc_fits=gpu.vram_check)
    for note in env.notes:
        context.log.warning(note)
    tool = ffmpeg_info()
    context.log.info(f"ffmpeg {tool.version} at {tool.binary} ({tool.source})")
    for episode_key, shot_ids in shots_by_episode(context.partition_keys).items():
        bundle = catalog.load_registered(store, episode_key)
        plan = planning.read_compute_plan(store, episode_key)
        context.log.info(f"{episode_key}: rendering {len(shot_ids)} shot(s), "
                         f"{env.concurrency} at a time, encoder {env.encoder}, "
                         f"policy {env.policy.name}")
        with store.scratch() as work:
            for outcome in clip_cases.render_clips(
                store, bundle, plan, shot_ids, backends=clip_cases.local_backends(), env=env,
                work_dir=work, force=config.force, run_id=context.run.run_id,
            ):
                yield _materialization(outcome)
                yield checks.evaluation(
                    quality.clip_rendered_as_planned(outcome.record), asset="clips",
                    partition=clip_key(episode_key, outcome.shot_id), warn=True)
