"""Named degrade ladders: what the renderer does, step by step, once a shot's retries fail.

A ladder is walked in order after ``retry_budget`` retries of the planned render have
failed. Each step is tried once; a step that would not lower anything (the shot is already
at or below the step's resolution, or its fps is already at the ``MIN_FPS`` floor of 6 fps,
or there is no next backend in the shot's ``backend_preference``) is skipped. Every ladder
ends with ``placeholder``: a slate of the shot's exact length, flagged as degraded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from anime_pipeline.domain.contracts import MIN_FPS, RESOLUTION_TIERS

DegradeAction = Literal["lower_fps", "lower_resolution", "next_backend", "placeholder"]


@dataclass(frozen=True)
class DegradeLadderStep:
    """One step of a degrade ladder (not to be confused with the runtime monitor's
    ``PolicyDowngrade``, a change of the execution policy)."""

    action: DegradeAction
    fps_factor: float | None = None  # lower_fps: multiply the fps by this (>= MIN_FPS)
    resolution: str | None = None  # lower_resolution: the tier to drop to

    def __post_init__(self) -> None:
        if self.action == "lower_fps":
            if self.fps_factor is None or not 0 < self.fps_factor < 1:
                raise ValueError("lower_fps needs 0 < fps_factor < 1")
        elif self.fps_factor is not None:
            raise ValueError(f"{self.action} takes no fps_factor")
        if self.action == "lower_resolution":
            if self.resolution not in RESOLUTION_TIERS:
                raise ValueError(f"lower_resolution needs a tier of {list(RESOLUTION_TIERS)}")
        elif self.resolution is not None:
            raise ValueError(f"{self.action} takes no resolution")

    def apply_fps(self, fps: float) -> float:
        """The fps after this step (unchanged unless ``lower_fps``)."""
        if self.action != "lower_fps" or self.fps_factor is None:
            return fps
        return max(MIN_FPS, fps * self.fps_factor) if fps > MIN_FPS else fps

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


_FPS: DegradeAction = "lower_fps"
_RES: DegradeAction = "lower_resolution"

LADDERS: dict[str, tuple[DegradeLadderStep, ...]] = {
    # Static / dialogue shots: fps is already low; give up resolution first.
    "DL_LOW_MOTION_V1": (
        DegradeLadderStep(_RES, resolution="480p"),
        DegradeLadderStep("next_backend"),
        DegradeLadderStep(_RES, resolution="360p"),
        DegradeLadderStep("placeholder"),
    ),
    # The default: halve fps, then resolution, then another backend.
    "DL_STANDARD_V1": (
        DegradeLadderStep(_FPS, fps_factor=0.5),
        DegradeLadderStep(_RES, resolution="540p"),
        DegradeLadderStep("next_backend"),
        DegradeLadderStep("placeholder"),
    ),
    # Fights: motion is the point; drop fps mildly, resolution first, fps further last.
    "DL_HIGH_MOTION_V1": (
        DegradeLadderStep(_FPS, fps_factor=0.75),
        DegradeLadderStep(_RES, resolution="540p"),
        DegradeLadderStep("next_backend"),
        DegradeLadderStep(_FPS, fps_factor=0.5),
        DegradeLadderStep("placeholder"),
    ),
    # Critical shots: first try the same quality on the next backend, then mild steps.
    "DL_CRITICAL_V1": (
        DegradeLadderStep("next_backend"),
        DegradeLadderStep(_FPS, fps_factor=0.75),
        DegradeLadderStep(_RES, resolution="720p"),
        DegradeLadderStep("next_backend"),
        DegradeLadderStep("placeholder"),
    ),
    # Preview-tier shots: already the cheapest tier; only another backend, then the slate.
    "DL_PREVIEW_V1": (
        DegradeLadderStep("next_backend"),
        DegradeLadderStep("placeholder"),
    ),
}


def get_ladder(name: str) -> list[DegradeLadderStep]:
    """The steps of ladder ``name`` (a plan's ``degrade_ladder_profile``)."""
    try:
        return list(LADDERS[name])
    except KeyError:
        raise KeyError(f"unknown degrade ladder {name!r}; one of {sorted(LADDERS)}") from None


def ladders_json() -> dict[str, list[dict[str, Any]]]:
    """Every ladder as JSON (``degrade_ladders`` of each plan, so a renderer needs no code
    to walk it)."""
    return {name: [s.to_json() for s in steps] for name, steps in LADDERS.items()}


for _name, _steps in LADDERS.items():  # invariant, checked at import
    assert _steps and _steps[-1].action == "placeholder", _name
    assert all(s.action != "placeholder" for s in _steps[:-1]), _name
