"""Partitions: one per episode, and one per shot of each episode for ``clips``.

Dagster has no nested partitions, and a ``MultiPartitionsDefinition`` of episode x shot is a
cross product: every episode would show (and let a backfill "materialize") the shot ids of
every other episode. So ``clips`` has its own dynamic partitions, keyed
``tenant/project/episode/SHOT``: each partition is a real shot of a real episode, with its own
status, and nothing else exists. An episode's clip partitions are kept contiguous and in the
episode's shot order (re-registered when the shot list changes), so one partition range is
exactly one episode and a clips run over it renders just that episode, inserted shots included.
"""


from collections import defaultdict
from collections.abc import Iterable, Sequence

import dagster as dg

EPISODES = "episodes"
CLIPS = "clips"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

episode_partitions = dg.DynamicPartitionsDefinition(name=EPISODES)
clip_partitions = dg.DynamicPartitionsDefinition(name=CLIPS)


def clip_key(episode_key: str, shot_id: str) -> str:
    return f"{episode_key}/{shot_id}"


def split_clip_key(key: str) -> tuple[str, str]:
    """``tenant/project/episode/SHOT`` -> (episode key, shot id)."""
    episode_key, _, shot_id = key.rpartition("/")
    if not episode_key or not shot_id:
        raise ValueError(f"{key!r} is not a clip partition key (tenant/project/episode/SHOT)")
    return episode_key, shot_id


def shots_by_episode(keys: Iterable[str]) -> dict[str, list[str]]:
    """Clip partition keys grouped by episode, in their given order."""
    out: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        episode_key, shot_id = split_clip_key(key)
        out[episode_key].append(shot_id)
    return dict(out)


def episode_clip_keys(instance: dg.DagsterInstance, episode_key: str) -> list[str]:
    prefix = episode_key + "/"
    return [k for k in instance.get_dynamic_partitions(CLIPS) if k.startswith(prefix)]


def register_partitions(instance: dg.DagsterInstance, episode_key: str,
                        shot_ids: Sequence[str]) -> list[str]:
    """Make the episode a partition and its shots exactly its clip partitions, contiguous
    and in order; return the clip keys. Idempotent and cheap when nothing changed.

    Partitions of shots no longer in the episode are deleted; when a shot was inserted or
    the order changed, the episode's keys are re-added at the end in the new order (the
    materialization history of a key survives: it is stored by key, not by position).
    """
    if not instance.has_dynamic_partition(EPISODES, episode_key):
        instance.add_dynamic_partitions(EPISODES, [episode_key])
    want = [clip_key(episode_key, s) for s in shot_ids]
    current = instance.get_dynamic_partitions(CLIPS)
    prefix = episode_key + "/"
    positions = [i for i, k in enumerate(current) if k.startswith(prefix)]
    mine = [current[i] for i in positions]
    contiguous = not positions or positions[-1] - positions[0] + 1 == len(positions)
    if mine == want and contiguous:
        return want
    for key in mine:
        instance.delete_dynamic_partition(CLIPS, key)
    instance.add_dynamic_partitions(CLIPS, want)
    return want


def clip_range_tags(episode_key: str, shot_ids: Sequence[str]) -> dict[str, str]:
    """Run tags that make one run render a whole episode's shots (its partition range)."""
    return {
        RANGE_START_TAG: clip_key(episode_key, shot_ids[0]),
        RANGE_END_TAG: clip_key(episode_key, shot_ids[-1]),
    }
