"""``clips``: one partition per shot of each episode, rendered concurrently inside one step.

An episode's shots render in one run and one step (``BackfillPolicy.single_run()``): the step
renders its partition range with a bounded pool of ffmpeg processes, and reports each clip as
it finishes — its materialization (with the clip's typed metadata and a preview) and its
``clip_rendered_as_planned`` check on its own partition, a warning when the clip is degraded
or a placeholder slate. Clips that are current are reused and reported together, before
anything renders, in one observation (:func:`reuse_observation`), with each one's check: their
partitions keep the materialization of the run that rendered them. (The CLI does not even plan
them in its clips run.) Across runs, ``clips`` steps take a slot of the ``gpu`` pool.
"""


import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from anime_pipeline.backends.config import load_backends
from anime_pipeline.budget import ComputePlan
from anime_pipeline.defs import checks
from anime_pipeline.defs.metadata import clip_values, image, reused_values
from anime_pipeline.defs.partitions import clip_key, clip_partitions, shots_by_episode
from anime_pipeline.defs.planning_assets import (
    ACTIVE_RUNS,
    GROUP,
    cost_history,
    shot_compute_budget_plan,
)
from anime_pipeline.defs.resources import (
    GpuResource,
    LedgerResource,
    NotifierResource,
    PipelineSettings,
    RenderSettings,
    RuntimePolicyResource,
    StorageResource,
)
from anime_pipeline.domain import checks as quality
from anime_pipeline.domain.episode import EpisodeBundle
from anime_pipeline.domain.records import ClipMetadata, ClipsReused
from anime_pipeline.instance import REFUSED_TAG, claim_run_worker
from anime_pipeline.ledger import BudgetStatus, load_prices
from anime_pipeline.media.ffmpeg import ffmpeg_info
from anime_pipeline.ops.notify import check_budgets
from anime_pipeline.pipeline import catalog, delivery, planning
from anime_pipeline.pipeline import clips as clip_cases
from anime_pipeline.pipeline.scheduling import CLIP_STATS_KEYS, CLIP_STATS_TAG
from anime_pipeline.pipeline.spend import BudgetRefused
from anime_pipeline.runtime.monitor import StateStore
from anime_pipeline.runtime.policy import policy_record
from anime_pipeline.runtime.state import policy_in_force
from anime_pipeline.storage import Storage

CLIPS_KEY = dg.AssetKey("clips")
USER_TAG = "user"  # Dagster's tag for who launched a run (the CLI sets it too)


class ClipsConfig(dg.Config):
    force: bool = Field(default=False, description="Render again even the shots whose clip "
                                                   "is current (the rerender_shots job sets it).")
    allow_rebalance: bool = Field(
        default=False, description="Render even when the episode's plan says "
                                   "rebalance_required (it does not fit its budget or SLA).")


def refuse_unbalanced(context: dg.AssetExecutionContext, plan: ComputePlan,
                      config: ClipsConfig) -> None:
    """A plan that does not fit its budget or SLA renders only when the user says so."""
    if plan.status == "rebalance_required" and not config.allow_rebalance:
        proposal = plan.rebalance_proposal
        why = f" ({proposal.reason})" if proposal is not None else ""
        context.instance.add_run_tags(context.run.run_id, {REFUSED_TAG: "rebalance_required"})
        raise dg.Failure(
            f"{plan.episode_key}: the compute plan says rebalance_required{why}. Raise the "
            "episode's budget or deadline and re-plan, or render anyway with "
            "allow_rebalance: true (`anime-pipeline render --allow-rebalance`)")


def reuse_observation(report: ClipsReused) -> dg.AssetObservation:
    """The clips of an episode that were current and reused: one observation for them all.
    A reused clip is no new materialization (its partition keeps the one, and the check, of
    the run that rendered it), and the event log does not grow with every re-render."""
    n = len(report.shot_ids)
    return dg.AssetObservation(
        asset_key=CLIPS_KEY, metadata=reused_values(report),
        description=f"{report.episode_key}: {n} current clip{'s' * (n != 1)} reused as "
                    f"{'they are' if n != 1 else 'it is'} (not rendered again)")


def _check(episode_key: str, outcome: clip_cases.ClipOutcome) -> dg.AssetCheckEvaluation:
    return checks.evaluation(quality.clip_rendered_as_planned(outcome.record), asset="clips",
                             partition=clip_key(episode_key, outcome.shot_id), warn=True)


def _reused(episode_key: str, outcomes: Sequence[clip_cases.ClipOutcome]
            ) -> Iterator[dg.AssetObservation | dg.AssetCheckEvaluation]:
    """Reused clips in a run that planned them: one observation for all (first: the monitor
    then knows they are no failed renders, whatever happens next), and each one's check on
    its partition — the run planned it, and a check planned but not evaluated would show as
    skipped. Their partitions keep the materialization of the run that rendered them."""
    yield reuse_observation(ClipsReused(episode_key=episode_key,
                                        shot_ids=[o.shot_id for o in outcomes]))
    for outcome in outcomes:
        yield _check(episode_key, outcome)


def clip_materialization(outcome: clip_cases.ClipOutcome) -> dg.AssetMaterialization:
    record = outcome.record
    meta = clip_values(ClipMetadata.of(record, cached=outcome.cached))
    if outcome.thumbnail_jpeg:
        meta["preview"] = image(outcome.thumbnail_jpeg, record.shot_id)
    return dg.AssetMaterialization(asset_key=CLIPS_KEY, metadata=meta,
                                   partition=clip_key(record.episode_key, record.shot_id))


def _replanned(context: dg.AssetExecutionContext, plan: ComputePlan) -> dg.AssetMaterialization:
    """A plan made mid-run because the runtime policy changed: a new materialization of the
    episode's shot_compute_budget_plan, saying so."""
    policy = plan.runtime_policy
    context.log.warning(f"{plan.episode_key}: the runtime policy changed to "
                        f"{policy.name if policy else '?'}: shots not started yet are "
                        "re-planned under it")
    return dg.AssetMaterialization(
        asset_key="shot_compute_budget_plan", partition=plan.episode_key, metadata={
            "status": plan.status, "replanned_by_run": context.run.run_id,
            "runtime_policy": policy.name if policy else "",
            "policy_degraded": bool(policy and policy.degraded),
            "estimated_gpu_minutes": plan.budget_summary.estimated_gpu_minutes})


def _preview_cut(context: dg.AssetExecutionContext, store: Storage, bundle: EpisodeBundle,
                 work: Path, render_settings: RenderSettings) -> dg.AssetObservation:
    """The preview composite of a staged plan, cut before the final stage renders."""
    outcome = delivery.write_composite(store, bundle, work_dir=work / "preview",
                                       burn_subtitles=render_settings.burn_subtitles,
                                       preview=True)
    record = outcome.record
    context.log.info(f"{record.episode_key}: preview cut ready ({record.uri}); rendering the "
                     "final stage")
    return dg.AssetObservation(asset_key="composite", partition=record.episode_key, metadata={
        "preview": True, "path": dg.MetadataValue.path(record.uri),
        "video_frames": record.video_frames,
        "preview_tier_shots": ", ".join(c.shot_id for c in record.clips
                                        if c.stage == "preview")})


@contextmanager
def _budget_failure(context: dg.AssetExecutionContext) -> Iterator[None]:
    """A refused budget fails the step with its message (no stack frames in the UI), and
    tags the run: the shots it did not start are no render failures."""
    try:
        yield
    except BudgetRefused as e:
        context.instance.add_run_tags(context.run.run_id, {REFUSED_TAG: "budget"})
        raise dg.Failure(str(e)) from None


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
    context: dg.AssetExecutionContext, config: ClipsConfig, settings: PipelineSettings,
    storage: StorageResource, render_settings: RenderSettings, runtime: RuntimePolicyResource,
    gpu: GpuResource, ledger: LedgerResource, notifier: NotifierResource,
) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation | dg.AssetObservation]:
    claim_run_worker(context.instance, context.run.run_id)
    store = storage.store()
    if CLIPS_KEY not in context.selected_asset_keys:
        # Only the check was asked for (its "Execute" button): judge the clips as they are.
        yield from _check_stored_clips(store, context.partition_keys)
        return
    home = settings.config().home
    queued = context.instance.get_runs_count(dg.RunsFilter(statuses=ACTIVE_RUNS))
    profile = runtime.profile()  # the machine as found; the monitor's steps are read live
    state_dir = Path(runtime.state_dir)
    book = ledger.ledger()
    alerts = notifier.notifier(book, log=context.log)

    def budget_alerts(status: BudgetStatus | None) -> None:  # after each shot's usage
        if status is not None:
            check_budgets(book, alerts, status.budget.tenant, status.budget.project)

    with clip_cases.clips_run(
        policy_in_force(state_dir, profile), concurrency=render_settings.concurrency,
        home=home, backends_config=load_backends(home), nvenc_fits=gpu.vram_check,
        run_id=context.run.run_id, live_policy=lambda: policy_in_force(state_dir, profile),
        revision=lambda: StateStore(state_dir).load().revision,
        ledger=book, user=context.run.tags.get(USER_TAG, "unknown"),
        prices=load_prices(home), on_recorded=budget_alerts,
    ) as run:
        for note in run.env.notes:
            context.log.warning(note)
        tool = ffmpeg_info()
        context.log.info(f"ffmpeg {tool.version} at {tool.binary} ({tool.source}); "
                         f"backends {sorted(run.backends.renderers)}")
        for episode_key, shot_ids in shots_by_episode(context.partition_keys).items():
            bundle = catalog.load_registered(store, episode_key)
            plan = planning.read_compute_plan(store, episode_key)
            refuse_unbalanced(context, plan, config)
            context.log.info(f"{episode_key}: rendering {len(shot_ids)} shot(s): "
                             f"{run.env.concurrency} at a time on farms, "
                             f"{run.env.local_concurrency} on this machine, encoder "
                             f"{run.env.encoder}, policy {run.env.policy.name}")

            def replan(bundle: EpisodeBundle = bundle) -> ComputePlan:
                return planning.write_compute_plan(
                    store, bundle, resources=runtime.resource_state(queued),
                    history=cost_history(context.instance),
                    policy=policy_record(runtime.policy()))

            with store.scratch() as work, _budget_failure(context):
                holder, outcomes = run.render(store, bundle, plan, shot_ids, work_dir=work,
                                              force=config.force, replan=replan)
                for item in outcomes:
                    for new_plan in holder.drain():
                        yield _replanned(context, new_plan)
                    if isinstance(item, clip_cases.PreviewReady):
                        yield _preview_cut(context, store, bundle, work, render_settings)
                        continue
                    reused = item.outcomes if isinstance(item, clip_cases.ReusedClips) \
                        else (item,) if item.cached else ()  # (a current preview clip)
                    if reused:
                        yield from _reused(episode_key, reused)
                        continue
                    assert isinstance(item, clip_cases.ClipOutcome)
                    yield clip_materialization(item)
                    yield _check(episode_key, item)
                for new_plan in holder.drain():
                    yield _replanned(context, new_plan)
        stats = run.stats.as_dict()
        farms = run.farm_stats()
    context.instance.add_run_tags(context.run.run_id, {
        CLIP_STATS_TAG: json.dumps(
            {k: stats[k] for k in CLIP_STATS_KEYS}, sort_keys=True)})
    yield dg.AssetObservation(asset_key=CLIPS_KEY, metadata={
        "clip_stats": dg.MetadataValue.json(stats),
        "farms": dg.MetadataValue.json(farms),
        "clips_rendered": stats["clips"], "clips_cached": stats["cached"],
        "render_p95_s": stats["p95_s"], "placeholders": stats["placeholders"],
    })
