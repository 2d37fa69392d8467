"""Pixel normalisation constants (the one source of default means and stds) and their check, shared by the
host adapters (to undo it) and the CLIP scorers."""

from __future__ import annotations

import math
from typing import Any

from hero_core import HeroError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "check_channels",
]

OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: ImageNet statistics, which InternVL's processors normalise with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: SigLIP's (LLaVA-OneVision's checkpoints normalise to [-1, 1]).
SIGLIP_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SIGLIP_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def check_channels(name: str, value: Any, *, positive: bool) -> tuple[float, float, float]:
    """Three finite floats (RGB), > 0 when ``positive`` (a std); HeroError otherwise."""
    try:
        values = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(x) and (x > 0 or not positive) for x in values):
        expected = "3 finite floats > 0, one per RGB channel" if positive else "3 finite floats, one per RGB channel"
        default = OPENAI_CLIP_STD if positive else OPENAI_CLIP_MEAN
        raise HeroError.field(name, value, expected, f"Copy the processor's; OpenAI CLIP uses {default}.")
    return values[0], values[1], values[2]
