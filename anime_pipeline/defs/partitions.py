"""Partitions: one per episode, and one per (episode, shot) for clips.

Dagster has no nested partitions, so ``clips`` is a two-dimensional partition (episode x
shot) with both dimensions dynamic. Episode-level assets map to it with
``MultiToSingleDimensionPartitionMapping``, which the UI understands (lineage, backfills).
"""

from __future__ import annotations

import dagster as dg

EPISODES = "episodes"
SHOTS = "shots"

episode_partitions = dg.DynamicPartitionsDefinition(name=EPISODES)
shot_ids = dg.DynamicPartitionsDefinition(name=SHOTS)
clip_partitions = dg.MultiPartitionsDefinition({"episode": episode_partitions, "shot": shot_ids})

episode_to_clips = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="episode")


def clip_key(episode_key: str, shot_id: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"episode": episode_key, "shot": shot_id})


def clip_range_tags(episode_key: str, shot_ids: list[str]) -> dict[str, str]:
    """Run tags that make one run render a whole episode's shots (a partition range)."""
    return {
        "dagster/asset_partition_range_start": str(clip_key(episode_key, shot_ids[0])),
        "dagster/asset_partition_range_end": str(clip_key(episode_key, shot_ids[-1])),
    }


def register_partitions(instance: dg.DagsterInstance, episode_key: str, shots: list[str]) -> None:
    """Add the episode and its shot ids to the dynamic partitions (idempotent)."""
    if not instance.has_dynamic_partition(EPISODES, episode_key):
        instance.add_dynamic_partitions(EPISODES, [episode_key])
    existing = set(instance.get_dynamic_partitions(SHOTS))
    new = [s for s in shots if s not in existing]
    if new:
        instance.add_dynamic_partitions(SHOTS, new)
