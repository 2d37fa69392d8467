"""Spatially uniform (strided) selection: keep an even grid of positions."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch
from torch import Tensor

from .._device import to_device
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles
from ._rank import keep_top

__all__ = ["StridedSelector"]


@dataclass(frozen=True)
class StridedSelector:
    """Keep positions spread evenly over each view, whatever the budget (plain downsampling).

    Positions are ranked by an ordered-dither (Bayer) matrix tiled over the view's grid: the first
    ``b`` positions of that order are spread as evenly as a grid allows. At R = 1/4 this is exactly a
    stride-2 subsampling in both directions; at R = 1/16, stride 4. Padding positions are skipped.
    Plain downsampling is a strong baseline (VTC-Bench, UniPruneBench).
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: keeps exactly the budgets (keep_top), no read-back check

    @property
    def layers(self) -> tuple[int, ...]:
        return ()

    def __call__(self, tiles: TileEncoderOutputs, budgets: Tensor, /) -> Tensor:
        checked = EncodedTiles.from_outputs(tiles).require_finite()  # free after the planner's fetch
        rows, cols = checked.grid
        order = to_device(_dither_order(rows, cols), checked.device, torch.long)  # (N,) lower = earlier
        scores = (-order.float()).expand(checked.num_views, -1)  # (V, N)
        return keep_top(scores, budgets, checked.valid_mask)


@lru_cache(maxsize=32)
def _dither_order(rows: int, cols: int) -> Tensor:
    """(rows * cols,) Bayer threshold of each position, as a strict order (ties broken by raster index)."""
    size = 1
    while size < max(rows, cols):
        size *= 2
    bayer = torch.zeros(1, 1, dtype=torch.long)
    while bayer.shape[0] < size:
        bayer = torch.cat([torch.cat([4 * bayer, 4 * bayer + 2], 1), torch.cat([4 * bayer + 3, 4 * bayer + 1], 1)], 0)
    threshold = bayer[:rows, :cols].flatten()  # (N,) distinct values
    return torch.argsort(torch.argsort(threshold, stable=True), stable=True)
