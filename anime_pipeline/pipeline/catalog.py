"""Which episodes exist and where their folders are (the catalog)."""

from __future__ import annotations

from pathlib import Path

from anime_pipeline.domain.episode import EpisodeBundle, load_episode
from anime_pipeline.domain.records import CatalogEntry
from anime_pipeline.storage import EpisodeKeys, Storage, get_record, put_record

CATALOG_PREFIX = "_catalog/episodes"


class NotRegistered(LookupError):
    pass


def register(storage: Storage, folder: str | Path) -> EpisodeBundle:
    """Validate a folder and record where its episode lives. Refused folders write nothing."""
    bundle = load_episode(folder)
    ep = bundle.episode
    put_record(storage, EpisodeKeys(ep.key).catalog_entry, CatalogEntry(
        episode_key=ep.key, episode_dir=str(Path(folder).resolve()),
        shots=[s.id for s in ep.shots]))
    return bundle


def entry(storage: Storage, episode_key: str) -> CatalogEntry:
    key = EpisodeKeys(episode_key).catalog_entry
    if not storage.exists(key):
        raise NotRegistered(
            f"episode {episode_key!r} is not registered: run `anime-pipeline render FOLDER` "
            "or drop its folder in the watched inbox"
        )
    return get_record(storage, key, CatalogEntry)


def load_registered(storage: Storage, episode_key: str) -> EpisodeBundle:
    """The registered episode, validated again from its folder as it is now."""
    bundle = load_episode(entry(storage, episode_key).episode_dir)
    if bundle.episode.key != episode_key:
        raise ValueError(
            f"folder now holds episode {bundle.episode.key!r}, not {episode_key!r}: "
            "its ids changed since it was registered; register it again"
        )
    return bundle


def registered_keys(storage: Storage) -> list[str]:
    """Every registered episode key, sorted."""
    return sorted(k[len(CATALOG_PREFIX) + 1:-len(".json")]
                  for k in storage.list_keys(CATALOG_PREFIX) if k.endswith(".json"))
