"""The episode graph: shot_plan -> audio_event_manifest -> shot_compute_budget_plan ->
clips -> composite -> package_zip. Each asset reads like a paragraph; the work is in
:mod:`anime_pipeline.steps`.
"""


from collections import defaultdict
from typing import Any

import dagster as dg

from anime_pipeline import steps
from anime_pipeline.backends import PlaceholderBackend, default_backends
from anime_pipeline.defs.partitions import (
    clip_key,
    clip_partitions,
    episode_partitions,
    episode_to_clips,
    register_partitions,
)
from anime_pipeline.defs.planning import cost_history, policy_record, resource_state
from anime_pipeline.defs.resources import RenderSettings, StorageResource
from anime_pipeline.defs.runtime import GpuResource, current_policy
from anime_pipeline.domain import checks
from anime_pipeline.media.render import SOFTWARE_ENCODER, image_markdown
from anime_pipeline.storage import EpisodeKeys, get_json

EPISODE_GROUP = "episode"
NVENC_VRAM_MB = 400  # what one NVENC encode session needs, roughly (checked before GPU encodes)


def _check_specs(asset_name: str, names: list[str]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(n, asset=asset_name, blocking=n != "plan_within_budget")
            for n in names]


def _check_result(outcome: checks.CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(check_name=outcome.name, passed=outcome.passed,
                               description=outcome.description, metadata=outcome.metadata)


def _md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |"
                            for r in rows)


@dg.asset(
    partitions_def=episode_partitions, group_name=EPISODE_GROUP, kinds={"python", "yaml"},
    description="The validated shot list of an episode folder (episode.yaml + creative "
                "control), with each shot's place on the timeline.",
)
def shot_plan(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    store = storage.store()
    bundle = steps.load_registered(store, context.partition_key)
    register_partitions(context.instance, bundle.episode.key, [s.id for s in bundle.episode.shots])
    plan = steps.write_shot_plan(store, bundle)
    for warning in bundle.warnings:
        context.log.warning(str(warning))
    ep = bundle.episode
    return dg.MaterializeResult(metadata={
        "title": ep.title,
        "shots": len(ep.shots),
        "duration_s": ep.duration_ms / 1000,
        "delivery_format": f"{ep.format.width}x{ep.format.height}@{ep.format.fps:g}",
        "dialogue_lines": sum(len(s.dialogue) for s in ep.shots),
        "episode_dir": dg.MetadataValue.path(plan["episode_dir"]),
        "path": dg.MetadataValue.path(store.uri(EpisodeKeys(ep.key).shot_plan)),
        "shot_list": dg.MetadataValue.md(_md_table(
            [{"id": s.id, "type": s.type.value, "ms": s.duration_ms,
              "criticality": s.criticality.value, "camera": s.camera.move.value,
              "lines": len(s.dialogue)} for s in ep.shots],
            ["id", "type", "ms", "criticality", "camera", "lines"])),
    })


@dg.asset(
    partitions_def=episode_partitions, group_name=EPISODE_GROUP, deps=[shot_plan],
    kinds={"ffmpeg", "numpy"},
    description="Onsets, tempo/beats and an energy curve of the audio mix; per shot: event "
                "density and peak energy.",
)
def audio_event_manifest(
    context: dg.AssetExecutionContext, storage: StorageResource
) -> dg.MaterializeResult:
    store = storage.store()
    bundle = steps.load_registered(store, context.partition_key)
    manifest = steps.write_audio_manifest(store, bundle)
    busiest = max(manifest["shots"], key=lambda s: s["event_density"], default=None)
    return dg.MaterializeResult(metadata={
        "tempo_bpm": manifest["tempo_bpm"],
        "onsets": len(manifest["onsets_ms"]),
        "beats": len(manifest["beats_ms"]),
        "audio_duration_s": manifest["duration_ms"] / 1000,
        "busiest_shot": busiest["shot_id"] if busiest else "",
        "path": dg.MetadataValue.path(store.uri(EpisodeKeys(bundle.episode.key).audio_manifest)),
    })


@dg.asset(
    partitions_def=episode_partitions, group_name=EPISODE_GROUP,
    deps=[shot_plan, audio_event_manifest], kinds={"python"},
    check_specs=_check_specs("shot_compute_budget_plan", [
        "plan_within_budget", "every_shot_planned_once", "critical_shots_at_floor"]),
    description="Per-shot compute plan: complexity, priority, fps, resolution, backend, "
                "retry budget, degrade ladder and estimated cost, within the GPU budget.",
)
def shot_compute_budget_plan(
    context: dg.AssetExecutionContext, storage: StorageResource
) -> dg.MaterializeResult:
    store = storage.store()
    bundle = steps.load_registered(store, context.partition_key)
    policy = current_policy()
    plan = steps.write_compute_plan(store, bundle, resources=resource_state(context.instance),
                                    history=cost_history(context.instance),
                                    policy=policy_record(policy))
    summary = plan["budget_summary"]
    outcomes = [checks.plan_within_budget(plan),
                checks.every_shot_planned_once(plan, [s.id for s in bundle.episode.shots]),
                checks.critical_shots_at_floor(plan)]
    return dg.MaterializeResult(check_results=[_check_result(o) for o in outcomes], metadata={
        "status": plan["status"],
        "global_profile": plan["global_profile"],
        "estimated_gpu_minutes": summary.get("estimated_gpu_minutes"),
        "max_gpu_minutes": summary.get("max_gpu_minutes"),
        "shots": len(plan["shots"]),
        "runtime_policy": policy.name,
        "policy_degraded": policy.degraded,
        "path": dg.MetadataValue.path(store.uri(EpisodeKeys(bundle.episode.key).compute_plan)),
        "plan": dg.MetadataValue.md(_md_table(
            [{**s, "gpu_sec": s["estimated_cost"]["gpu_sec"],
              "backend": ",".join(s["backend_preference"])} for s in plan["shots"]],
            ["shot_id", "complexity", "render_priority", "target_fps", "target_resolution",
             "backend", "retry_budget", "degrade_ladder_profile", "gpu_sec"])),
    })


@dg.asset(
    partitions_def=clip_partitions, group_name=EPISODE_GROUP, deps=[shot_compute_budget_plan],
    backfill_policy=dg.BackfillPolicy.single_run(), pool="gpu", kinds={"ffmpeg", "video"},
    description="One MP4 per shot, rendered at the plan's fps/resolution and conformed to the "
                "delivery format. Retries, then the degrade ladder, then a placeholder slate.",
)
def clips(
    context: dg.AssetExecutionContext, storage: StorageResource, render_settings: RenderSettings,
    gpu: GpuResource,
) -> None:
    from anime_pipeline.budget import get_ladder

    store = storage.store()
    # The policy in force when the run starts caps concurrency and picks the encoder.
    policy = current_policy()
    concurrency = min(render_settings.concurrency, policy.render_concurrency)
    encoder: str = policy.encoder
    if encoder != SOFTWARE_ENCODER and not gpu.vram_check(NVENC_VRAM_MB * concurrency):
        context.log.warning(f"GPU {gpu.device_index}: not enough free VRAM for {concurrency} "
                            f"NVENC session(s); encoding this run in software")
        encoder = SOFTWARE_ENCODER
    by_episode: dict[str, list[str]] = defaultdict(list)
    for key in context.partition_keys:
        dims = clip_partitions.get_partition_key_from_str(str(key)).keys_by_dimension
        by_episode[dims["episode"]].append(dims["shot"])

    for episode_key, shot_ids in by_episode.items():
        bundle = steps.load_registered(store, episode_key)
        plan = get_json(store, EpisodeKeys(episode_key).compute_plan)
        planned = steps.plan_entries(plan)
        # The shot dimension is shared by all episodes; a (episode, shot) pair that does not
        # exist in this episode is recorded as absent, never rendered.
        for sid in [s for s in shot_ids if s not in planned]:
            context.log.warning(f"{episode_key} has no shot {sid}; recorded as absent")
            context.add_asset_metadata({"in_episode": False},
                                       partition_key=clip_key(episode_key, sid))
        wanted = [s for s in shot_ids if s in planned]
        context.log.info(f"{episode_key}: rendering {len(wanted)} shot(s), {concurrency} at a "
                         f"time, encoder {encoder}, policy {policy.name}")
        with store.scratch() as work:
            rendered = steps.render_clips(
                store, bundle, plan, wanted, backends=default_backends(),
                placeholder=PlaceholderBackend(), get_ladder=get_ladder,
                concurrency=concurrency, work_dir=work, force=render_settings.force,
                encoder=encoder,
                on_done=lambda c, i, n: context.log.info(
                    f"[{i}/{n}] {c.shot_id}: " + ("cached" if c.cached else
                    "PLACEHOLDER" if c.placeholder else "degraded" if c.degraded else "ok")),
            )
            for clip in rendered:
                r = clip.result
                shot = bundle.episode.shot(clip.shot_id)
                meta: dict[str, Any] = {
                    "in_episode": True,
                    "backend": r["backend"],
                    "shot_type": shot.type.value,
                    "duration_ms": shot.duration_ms,
                    "fps": r["fps"],
                    "resolution": r["resolution"],
                    "encoder": r.get("encoder", "libx264"),
                    "segment_policy": planned[clip.shot_id].get("segment_policy") or "",
                    "runtime_policy": policy.name,
                    "policy_degraded": policy.degraded,
                    "degraded": clip.degraded,
                    "placeholder": clip.placeholder,
                    "reason": r.get("reason") or "",
                    "attempts": len(r["attempts"]),
                    "render_seconds": round(r["seconds"], 3),
                    "cached": clip.cached,
                    "size_bytes": clip.size_bytes,
                    "path": dg.MetadataValue.path(store.uri(clip.key)),
                }
                if clip.thumbnail is not None:
                    meta["preview"] = dg.MetadataValue.md(image_markdown(clip.thumbnail,
                                                                         clip.shot_id))
                context.add_asset_metadata(meta, partition_key=clip_key(episode_key,
                                                                        clip.shot_id))
        degraded = [c.shot_id for c in rendered if c.degraded]
        if degraded:
            context.log.warning(f"{episode_key}: degraded shots {degraded}")


@dg.asset(
    partitions_def=episode_partitions, group_name=EPISODE_GROUP,
    deps=[dg.AssetDep(clips, partition_mapping=episode_to_clips)], kinds={"ffmpeg", "video"},
    check_specs=_check_specs("composite", ["composite_matches_episode"]),
    description="The episode: clips concatenated by stream copy, the mix cut/padded to the "
                "episode's length, dialogue as a soft subtitle track (optionally burned in).",
)
def composite(
    context: dg.AssetExecutionContext, storage: StorageResource, render_settings: RenderSettings
) -> dg.MaterializeResult:
    store = storage.store()
    bundle = steps.load_registered(store, context.partition_key)
    with store.scratch() as work:
        record = steps.write_composite(store, bundle, work_dir=work,
                                       burn_subtitles=render_settings.burn_subtitles)
        sheet = image_markdown(record.pop("contact_sheet"), "contact sheet")
    ep = bundle.episode
    outcome = checks.composite_matches_episode(
        record.pop("media_info"), duration_ms=ep.duration_ms,
        width=ep.format.width, height=ep.format.height, fps=ep.format.fps,
        expect_subtitles=record["subtitle_cues"] > 0 and not record["burned_in"])
    kinds = [s["kind"] for s in record["streams"]]
    return dg.MaterializeResult(check_results=[_check_result(outcome)], metadata={
        "duration_s": record["probed_duration_s"],
        "expected_duration_s": record["duration_ms"] / 1000,
        "video_streams": kinds.count("video"),
        "audio_streams": kinds.count("audio"),
        "subtitle_streams": kinds.count("subtitle"),
        "subtitle_cues": record["subtitle_cues"],
        "subtitles_burned_in": record["burned_in"],
        "video_copied": record["video_copied"],
        "size_bytes": record["size_bytes"],
        "compose_seconds": record["seconds"],
        "path": dg.MetadataValue.path(record["path"]),
        "contact_sheet": dg.MetadataValue.md(sheet),
    })


@dg.asset(
    partitions_def=episode_partitions, group_name=EPISODE_GROUP, deps=[composite],
    kinds={"zip"}, check_specs=_check_specs("package_zip", ["package_checksums_match"]),
    description="Delivery ZIP: composite, clips, SRT and ASS subtitles, the three JSON "
                "manifests and manifest.json with every file's size and sha256 and the lineage.",
)
def package_zip(
    context: dg.AssetExecutionContext, storage: StorageResource
) -> dg.MaterializeResult:
    store = storage.store()
    bundle = steps.load_registered(store, context.partition_key)
    lineage = {"run_id": context.run_id, "code_version": steps.code_version(),
               "partition": context.partition_key}
    with store.scratch() as work:
        result = steps.write_package(store, bundle, work_dir=work, lineage=lineage)
    outcome = checks.package_checksums_match(store.fetch(EpisodeKeys(bundle.episode.key).package))
    return dg.MaterializeResult(check_results=[_check_result(outcome)], metadata={
        "path": dg.MetadataValue.path(result["path"]),
        "size_bytes": result["size_bytes"],
        "files": result["files"],
        "lineage": dg.MetadataValue.json(result["manifest"]["lineage"]),
    })


episode_assets = [shot_plan, audio_event_manifest, shot_compute_budget_plan, clips, composite,
                  package_zip]
