"""Jobs, one per stage of an episode (a run covers one partitions definition)."""


import dagster as dg

from anime_pipeline.defs.clips import ClipsConfig, clips
from anime_pipeline.defs.delivery_assets import composite, package_zip
from anime_pipeline.defs.planning_assets import (
    audio_event_manifest,
    shot_compute_budget_plan,
    shot_plan,
)

plan_job = dg.define_asset_job(
    "plan_episode", selection=[shot_plan, audio_event_manifest, shot_compute_budget_plan],
    description="Validate the episode, analyse its audio and plan per-shot compute.",
)
clips_job = dg.define_asset_job(
    "render_clips", selection=[clips],
    description="Render shots whose clip is not current (new, changed, degraded or a "
                "placeholder). Launch it over an episode's partition range to render the "
                "episode in one run.",
)
rerender_job = dg.define_asset_job(
    "rerender_shots", selection=[clips],
    config=dg.RunConfig(ops={"clips": ClipsConfig(force=True)}),
    description="Render the selected shots again even if their clip is current (pick one "
                "partition to re-render one shot). Delivery follows automatically.",
)
delivery_job = dg.define_asset_job(
    "deliver_episode", selection=[composite, package_zip],
    description="Composite the episode and build its delivery ZIP.",
)
