"""Qwen2.5-VL (transformers ``Qwen2_5_VLForConditionalGeneration``) adapter.

One view per image at native resolution, N = h w / 4 merged tokens (``hosts._qwen``, HOSTS.md "Round 3").
The tower runs window attention (``window_size`` px windows) in every block but ``fullatt_block_indexes``
(7, 15, 23, 31 of 32 in the released checkpoints), in window order: it permutes the merge groups with the
host's window index and un-permutes only its merged output. The adapter un-permutes the recorded rows and
the last hidden states with the same index, so planning sees the processor's (raster) order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from hero_core import HeroError, to_device

from ..adapter import register_adapter
from ..pixels import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ._qwen import QwenHost, host_module

__all__ = ["Qwen2_5_VLAdapter"]


@register_adapter("qwen2_5_vl")
@dataclass(frozen=True, eq=False)
class Qwen2_5_VLAdapter(QwenHost):
    """Binds ``hero_core`` to a transformers Qwen2.5-VL model (V = 1 view of h w / 4 tokens per image).

    Args: as ``QwenHost`` (model, layout ``"vanilla"``, processor, image_mean, image_std).

    Raises:
        HeroError: on an unknown layout, bad mean/std, or a model without Qwen2.5-VL's methods.
    """

    default_normalisation = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    family: ClassVar[str] = "Qwen2.5-VL"
    model_class: ClassVar[str] = "Qwen2_5_VLForConditionalGeneration"

    def _tower_order(self, grid: Sequence[tuple[int, int, int]], device: torch.device) -> Tensor:
        """(S,): the tower position of every patch in the processor's order (the inverse of the tower's window
        permutation), from the host's own window index, computed on the host and uploaded without a sync."""
        tower = self.vision_tower
        cells = torch.tensor(grid, dtype=torch.long)
        window_index = getattr(host_module(tower), "get_vision_window_index", None)
        if callable(window_index):
            index, _ = window_index(
                cells,
                spatial_merge_size=tower.spatial_merge_size,
                window_size=tower.window_size,
                patch_size=tower.patch_size,
            )
        elif callable(getattr(tower, "get_window_index", None)):  # transformers before the helper moved out
            index, _ = tower.get_window_index(cells)
        else:  # pragma: no cover - a host change
            raise HeroError.field(
                "vision tower", type(tower).__name__, "a Qwen2.5-VL tower with the host's window index function"
            )
        unit = int(tower.spatial_merge_unit)
        groups = torch.argsort(index.cpu())  # original merge group -> its place in window order
        order = (groups[:, None] * unit + torch.arange(unit)).reshape(-1)
        return to_device(order, device, torch.long)
