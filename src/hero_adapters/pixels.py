"""Pixel normalisation constants (the one source of default means and stds) and their check, shared by the
host adapters (to undo it) and the CLIP scorers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hero_core import HeroError, to_device

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "check_channels",
    "unnormalise",
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


def unnormalise(views: Tensor, mean_std: tuple[Sequence[float], Sequence[float]]) -> Tensor:
    """(V, 3, h, w) normalised pixels -> RGB in [0, 1], float32, given the processor's (mean, std)."""
    m = to_device([float(x) for x in mean_std[0]], views.device, torch.float32).view(1, 3, 1, 1)
    s = to_device([float(x) for x in mean_std[1]], views.device, torch.float32).view(1, 3, 1, 1)
    return (views.float() * s + m).clamp_(0.0, 1.0)
