"""The policy in force: the resolved baseline of the saved profile + the persisted degrade steps.

Files under the state folder (``$ANIME_PIPELINE_HOME``, default ``.anime_pipeline``):

* ``runtime_profile.json`` — the last detected :class:`RuntimeProfile`;
* ``runtime_state.json`` — the :class:`MonitorState` (degrade steps, streaks, revision);
* ``thresholds.json`` — optional overrides of the monitor :class:`Thresholds`.
"""

from __future__ import annotations

import time
from pathlib import Path

from anime_pipeline.runtime.monitor import MonitorState, StateStore
from anime_pipeline.runtime.policy import ExecutionPolicy, ExecutionPolicyResolver, apply_steps
from anime_pipeline.runtime.profile import RuntimeProfile
from anime_pipeline.settings import default_home

PROFILE_FILE = "runtime_profile.json"


def default_state_dir() -> Path:
    """The pipeline home (see :mod:`anime_pipeline.settings`): the one state folder."""
    return default_home()


def profile_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / PROFILE_FILE


def load_profile(
    state_dir: Path | str | None = None,
    *,
    max_age_s: float | None = None,
    storage_root: Path | None = None,
    remote_backends: dict[str, str] | None = None,
) -> RuntimeProfile:
    """The saved profile; detected (and saved) when missing, unreadable, older than
    ``max_age_s``, or older than the folder's ``render_backends.yaml`` (whose servers it
    probes as the backends that can render)."""
    from anime_pipeline.backends.config import backends_file

    folder = Path(state_dir) if state_dir is not None else default_state_dir()
    path = profile_path(folder)
    config_file = backends_file(folder)
    if path.is_file():
        try:
            profile = RuntimeProfile.load(path)
            fresh = max_age_s is None or time.time() - profile.detected_at <= max_age_s
            config_older = (not config_file.exists()
                            or config_file.stat().st_mtime <= profile.detected_at)
            if fresh and config_older:
                return profile
        except ValueError:
            pass
    profile = detect_profile(folder, storage_root=storage_root,
                             remote_backends=remote_backends)
    profile.save(path)
    return profile


def detect_profile(state_dir: Path, *, storage_root: Path | None = None,
                   remote_backends: dict[str, str] | None = None) -> RuntimeProfile:
    """Detect the machine now, probing the servers of the folder's ``render_backends.yaml``
    as the backends that can render (every detection goes through here)."""
    from anime_pipeline.backends.config import load_backends

    return RuntimeProfile.detect(storage_root=storage_root,
                                 remote_backends=remote_backends,
                                 renderable=load_backends(state_dir).urls())


def policy_for(
    profile: RuntimeProfile,
    state: MonitorState,
    resolver: ExecutionPolicyResolver | None = None,
) -> ExecutionPolicy:
    baseline = (resolver or ExecutionPolicyResolver()).resolve(profile)
    return apply_steps(baseline, state.step_pairs())


def policy_in_force(
    state_dir: Path | str | None = None, profile: RuntimeProfile | None = None
) -> ExecutionPolicy:
    """What the renderer and the budgeter use when a run starts."""
    state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
    profile = profile or load_profile(state_dir)
    return policy_for(profile, StateStore(state_dir).load())
