"""Render backends: the local ones (``local``: animatic, source clip, the placeholder slate) and
the generative ones on ComfyUI render farms (``comfyui``), configured in
``render_backends.yaml`` (``config``)."""

from anime_pipeline.backends.local import (
    AnimaticBackend,
    SlateBackend,
    SourceClipBackend,
    animatic_args,
    delivery_of,
    generation_of,
    source_clip_args,
)

__all__ = ["AnimaticBackend", "SlateBackend", "SourceClipBackend", "animatic_args",
           "delivery_of", "generation_of", "source_clip_args"]
