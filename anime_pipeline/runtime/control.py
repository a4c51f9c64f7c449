"""Manual control of the execution policy: status, degrade, restore, re-detect.

One implementation for every front end: the CLI (``anime-pipeline runtime status|degrade|
restore|reload``) and the Dagster jobs (``runtime_degrade``, ``runtime_restore``,
``runtime_redetect``) call these, on the files the monitor sensor uses (see
:mod:`anime_pipeline.runtime.state`). No Dagster import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anime_pipeline.runtime.monitor import MonitorState, StateStore, manual_degrade, manual_restore
from anime_pipeline.runtime.policy import ExecutionPolicy
from anime_pipeline.runtime.profile import RuntimeProfile
from anime_pipeline.runtime.state import detect_profile, load_profile, policy_for, profile_path

EMPTY_REASON = "the reason must not be empty (it is recorded in the policy and shown with it)"


@dataclass(frozen=True)
class RuntimeStatus:
    """The profile, the monitor state and the policy in force they give, of one state folder."""

    state_dir: Path
    profile: RuntimeProfile
    state: MonitorState
    policy: ExecutionPolicy

    @classmethod
    def of(
        cls, state_dir: Path | str, profile: RuntimeProfile, state: MonitorState
    ) -> RuntimeStatus:
        return cls(Path(state_dir), profile, state, policy_for(profile, state))

    def to_json(self) -> dict[str, Any]:
        """What ``anime-pipeline runtime status --json`` prints."""
        return {
            "state_dir": str(self.state_dir.absolute()),
            "profile_class": self.profile.profile_class.value,
            "profile_detected_at": self.profile.detected_at,
            "policy": self.policy.model_dump(mode="json"),
            "monitor": self.state.model_dump(mode="json"),
        }


def status(state_dir: Path | str) -> RuntimeStatus:
    """The status now (the saved profile; detected and saved when there is none)."""
    sd = Path(state_dir)
    return RuntimeStatus.of(sd, load_profile(sd, storage_root=sd), StateStore(sd).load())


def degrade(state_dir: Path | str, reason: str, now: float | None = None) -> RuntimeStatus:
    """One step down, by hand, held until :func:`restore` (the monitor never restores it).

    Raises ValueError when ``reason`` is empty or blank.
    """
    why = (reason or "").strip()
    if not why:
        raise ValueError(EMPTY_REASON)
    sd = Path(state_dir)
    profile = load_profile(sd, storage_root=sd)
    store = StateStore(sd)
    state = manual_degrade(store.load(), why, now)
    store.save(state)
    return RuntimeStatus.of(sd, profile, state)


def restore(state_dir: Path | str, now: float | None = None) -> tuple[RuntimeStatus, bool]:
    """Back to the baseline policy of the profile; and whether it was degraded."""
    sd = Path(state_dir)
    profile = load_profile(sd, storage_root=sd)
    store = StateStore(sd)
    before = store.load()
    state = manual_restore(before, now) if before.degraded or before.manual_hold else before
    store.save(state)
    return RuntimeStatus.of(sd, profile, state), before.degraded


def redetect(state_dir: Path | str) -> RuntimeStatus:
    """Detect the machine now, save the profile, and re-resolve the baseline (steps kept)."""
    sd = Path(state_dir)
    profile = detect_profile(sd, storage_root=sd)
    profile.save(profile_path(sd))
    return RuntimeStatus.of(sd, profile, StateStore(sd).load())
