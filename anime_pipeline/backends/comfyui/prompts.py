"""The text prompt of a generative shot, built from what the episode says of it: its own
``prompt`` first, then its type, its camera move, and who speaks (never the dialogue text:
image-to-video models paint words they are given)."""

from __future__ import annotations

from anime_pipeline.domain.episode import Shot

STYLE = "anime, 2D cel shading, consistent character design, clean line art"
TYPES = {
    "establishing": "wide establishing shot",
    "dialogue": "medium shot, characters talking, subtle facial animation",
    "action": "dynamic action shot, fast motion, motion blur",
    "insert": "close-up insert shot, still subject, small motion",
    "transition": "transition shot, atmospheric motion",
}
MOVES = {
    "static": "locked-off camera",
    "push_in": "camera slowly pushes in",
    "pull_out": "camera slowly pulls out",
    "pan_left": "camera pans left",
    "pan_right": "camera pans right",
    "tilt_up": "camera tilts up",
    "tilt_down": "camera tilts down",
    "shake": "handheld camera shake",
}
MAX_PROMPT = 2000


def positive_prompt(shot: Shot, note: str | None = None) -> str:
    """The positive prompt of ``shot``; ``note`` (a reviewer's) is added last."""
    parts: list[str] = []
    if shot.prompt:
        parts.append(shot.prompt.strip())
    parts.append(TYPES.get(shot.type.value, shot.type.value))
    move = MOVES.get(shot.camera.move.value, shot.camera.move.value)
    if shot.camera.move.value != "static":
        move += ", gentle" if shot.camera.strength < 0.3 else (
            ", strong" if shot.camera.strength > 0.7 else "")
    parts.append(move)
    speakers = list(dict.fromkeys(line.speaker for line in shot.dialogue))
    if speakers:
        parts.append(f"{', '.join(speakers[:4])} speaking")
    parts.append(STYLE)
    if note:
        parts.append(note.strip())
    text = ", ".join(p for p in parts if p)
    return " ".join(text.split())[:MAX_PROMPT]
