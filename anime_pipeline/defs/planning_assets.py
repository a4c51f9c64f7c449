"""The planning assets of an episode: shot_plan -> audio_event_manifest ->
shot_compute_budget_plan. Each reads like a paragraph; the work is in
:mod:`anime_pipeline.pipeline`."""


import dagster as dg

from anime_pipeline.budget import CostHistory
from anime_pipeline.defs import checks
from anime_pipeline.defs.metadata import md_table, read_clip_metadata
from anime_pipeline.defs.partitions import episode_partitions, register_partitions
from anime_pipeline.defs.resources import RuntimePolicyResource, StorageResource
from anime_pipeline.domain import checks as quality
from anime_pipeline.pipeline import catalog, planning
from anime_pipeline.runtime.policy import policy_record
from anime_pipeline.storage import EpisodeKeys

GROUP = "episode"
HISTORY_LIMIT = 2000
ACTIVE_RUNS = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
               dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


@dg.asset(
    partitions_def=episode_partitions, group_name=GROUP, kinds={"python", "yaml"},
    description="The validated shot list of an episode folder (episode.yaml + creative "
                "control), with each shot's place on the timeline. Registers the episode's "
                "shots as its clip partitions.",
)
def shot_plan(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    store = storage.store()
    bundle = catalog.load_registered(store, context.partition_key)
    ep = bundle.episode
    register_partitions(context.instance, ep.key, [s.id for s in ep.shots])
    record = planning.write_shot_plan(store, bundle)
    for warning in bundle.warnings:
        context.log.warning(str(warning))
    return dg.MaterializeResult(metadata={
        "title": ep.title,
        "shots": len(ep.shots),
        "duration_s": ep.duration_ms / 1000,
        "delivery_format": f"{ep.format.width}x{ep.format.height}@{ep.format.fps:g}",
        "dialogue_lines": sum(len(s.dialogue) for s in ep.shots),
        "episode_dir": dg.MetadataValue.path(record.episode_dir),
        "path": dg.MetadataValue.path(store.uri(EpisodeKeys(ep.key).shot_plan)),
        "shot_list": md_table(
            [{"id": s.id, "type": s.type.value, "ms": s.duration_ms,
              "criticality": s.criticality.value, "camera": s.camera.move.value,
              "lines": len(s.dialogue)} for s in ep.shots],
            ["id", "type", "ms", "criticality", "camera", "lines"]),
    })


@dg.asset(
    partitions_def=episode_partitions, group_name=GROUP, deps=[shot_plan],
    kinds={"ffmpeg", "numpy"},
    description="Onsets, tempo/beats and an energy curve of the audio mix; per shot: event "
                "density and peak energy.",
)
def audio_event_manifest(
    context: dg.AssetExecutionContext, storage: StorageResource
) -> dg.MaterializeResult:
    store = storage.store()
    bundle = catalog.load_registered(store, context.partition_key)
    manifest = planning.write_audio_manifest(store, bundle)
    busiest = max(manifest.shots, key=lambda s: s.event_density, default=None)
    return dg.MaterializeResult(metadata={
        "tempo_bpm": manifest.tempo_bpm,
        "onsets": len(manifest.onsets_ms),
        "beats": len(manifest.beats_ms),
        "audio_duration_s": manifest.duration_ms / 1000,
        "busiest_shot": busiest.shot_id if busiest else "",
        "path": dg.MetadataValue.path(store.uri(EpisodeKeys(bundle.episode.key).audio_manifest)),
    })


def cost_history(instance: dg.DagsterInstance, limit: int = HISTORY_LIMIT) -> CostHistory:
    """Past clip renders, read from our own materialization metadata (reused clips and
    placeholder slates are not renders of the planned backend, so they do not count)."""
    records = instance.fetch_materializations(dg.AssetKey("clips"), limit=limit).records
    renders = []
    for rec in records:
        mat = rec.asset_materialization
        meta = read_clip_metadata(mat.metadata) if mat is not None else None
        if meta is not None and meta.rendered and not meta.placeholder:
            renders.append(meta)
    return CostHistory.from_records(renders)


@dg.asset(
    partitions_def=episode_partitions, group_name=GROUP,
    deps=[shot_plan, audio_event_manifest], kinds={"python"}, check_specs=checks.PLAN_CHECKS,
    description="Per-shot compute plan: complexity, priority, fps, resolution, backend, "
                "retry budget, degrade ladder and estimated cost, within the GPU budget and "
                "the SLA, under the runtime policy in force.",
)
def shot_compute_budget_plan(
    context: dg.AssetExecutionContext, storage: StorageResource, runtime: RuntimePolicyResource
) -> dg.MaterializeResult:
    store = storage.store()
    bundle = catalog.load_registered(store, context.partition_key)
    policy = runtime.policy()
    queued = context.instance.get_runs_count(dg.RunsFilter(statuses=ACTIVE_RUNS))
    plan = planning.write_compute_plan(
        store, bundle, resources=runtime.resource_state(queued),
        history=cost_history(context.instance), policy=policy_record(policy))
    if plan.status != "compute_plan_ready":
        context.log.warning(f"{bundle.episode.key}: plan status {plan.status}: "
                            + "; ".join(plan.warnings))
    summary = plan.budget_summary
    outcomes = [quality.plan_within_budget(plan),
                quality.every_shot_planned_once(plan, [s.id for s in bundle.episode.shots]),
                quality.critical_shots_at_floor(plan)]
    return dg.MaterializeResult(
        check_results=[checks.result(o) for o in outcomes],
        metadata={
            "status": plan.status,
            "global_profile": plan.global_profile,
            "estimated_gpu_minutes": summary.estimated_gpu_minutes,
            "max_gpu_minutes": summary.max_gpu_minutes,
            "shots": len(plan.shots),
            "runtime_policy": policy.name,
            "policy_degraded": policy.degraded,
            "path": dg.MetadataValue.path(
                store.uri(EpisodeKeys(bundle.episode.key).compute_plan)),
            "plan": md_table(
                [{"shot_id": s.shot_id, "complexity": s.complexity,
                  "render_priority": s.render_priority, "target_fps": s.target_fps,
                  "target_resolution": s.target_resolution,
                  "backend": ",".join(s.backend_preference), "retry_budget": s.retry_budget,
                  "degrade_ladder_profile": s.degrade_ladder_profile,
                  "gpu_sec": s.estimated_cost.gpu_sec} for s in plan.shots],
                ["shot_id", "complexity", "render_priority", "target_fps", "target_resolution",
                 "backend", "retry_budget", "degrade_ladder_profile", "gpu_sec"]),
        },
    )
