"""The automated reviewer's rules (plain Python): what measured in a clip makes it fail.

The measurements come from ffmpeg's detectors (``media/qc.py``); the rules judge them against
the shot and the delivery format:

* ``placeholder``: the clip is a placeholder slate;
* ``format``: its size, frame rate or frame count is not the delivery's;
* ``black``: black frames for half the shot or more, or one black stretch of 1 s or more;
* ``frozen``: the picture stands still for 80 % of the shot or more although its camera moves;
* ``silent_dialogue``: a dialogue line of the shot is silent in the mix for 80 % or more.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from anime_pipeline.domain.episode import CameraMove, Shot

BLACK_SHARE = 0.5
BLACK_STRETCH_S = 1.0
FROZEN_SHARE = 0.8
SILENT_LINE_SHARE = 0.8


class QcMeasurements(BaseModel):
    """What the detectors measured in one clip version (seconds)."""

    model_config = ConfigDict(frozen=True)

    width: int
    height: int
    fps: float
    frames: int
    placeholder: bool = False
    black: list[tuple[float, float]] = Field(default_factory=list)
    frozen: list[tuple[float, float]] = Field(default_factory=list)
    silent_line_share: list[float] = Field(default_factory=list)  # per dialogue line, 0..1


class QcCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    ok: bool
    detail: str


class QcReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    shot_id: str
    checks: list[QcCheck]

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def reason(self) -> str | None:
        failed = [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]
        return "; ".join(failed) if failed else None


def _seconds(spans: list[tuple[float, float]]) -> float:
    return sum(max(0.0, b - a) for a, b in spans)


def judge(shot: Shot, m: QcMeasurements, *, width: int, height: int, fps: float,
          expected_frames: int) -> QcReport:
    """Every rule on one clip: a report whose ``passed`` is the automated decision."""
    dur = shot.duration_ms / 1000
    checks = [QcCheck(name="placeholder", ok=not m.placeholder,
                      detail="a placeholder slate stands in for the shot" if m.placeholder
                      else "a rendered clip")]
    wrong = []
    if (m.width, m.height) != (width, height):
        wrong.append(f"{m.width}x{m.height}, not {width}x{height}")
    if abs(m.fps - fps) > 1e-3:
        wrong.append(f"{m.fps:g} fps, not {fps:g}")
    if m.frames != expected_frames:
        wrong.append(f"{m.frames} frames, not {expected_frames}")
    checks.append(QcCheck(name="format", ok=not wrong,
                          detail="; ".join(wrong) or f"{width}x{height}@{fps:g}, "
                                                     f"{expected_frames} frames"))
    black = _seconds(m.black)
    longest = max((b - a for a, b in m.black), default=0.0)
    black_bad = black >= BLACK_SHARE * dur or longest >= BLACK_STRETCH_S
    checks.append(QcCheck(name="black", ok=not black_bad,
                          detail=f"{black:.2f} s of black frames in {dur:.2f} s"
                                 + (f" (longest {longest:.2f} s)" if m.black else "")))
    frozen = _seconds(m.frozen)
    moves = shot.camera.move is not CameraMove.static
    frozen_bad = moves and frozen >= FROZEN_SHARE * dur
    checks.append(QcCheck(name="frozen", ok=not frozen_bad,
                          detail=f"the picture stands still {frozen:.2f} s of {dur:.2f} s"
                                 + (f" (camera {shot.camera.move.value})" if moves
                                    else " (static camera)")))
    silent = [(line, share) for line, share in zip(shot.dialogue, m.silent_line_share,
                                                    strict=False)
              if share >= SILENT_LINE_SHARE]
    checks.append(QcCheck(
        name="silent_dialogue", ok=not silent,
        detail="; ".join(f"{line.speaker}'s line at {line.start_ms} ms is silent in the mix "
                         f"({share:.0%})" for line, share in silent)
        or f"{len(shot.dialogue)} dialogue line(s) audible"))
    return QcReport(shot_id=shot.id, checks=checks)
