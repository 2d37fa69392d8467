"""Uniform allocation: the same ratio for every view (the baseline every pruning paper starts from)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..plan import Allocation, Staged
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles
from ._split import exact_split, keeps_all, prepare

__all__ = ["UniformAllocator"]


@dataclass(frozen=True)
class UniformAllocator:
    """Every view keeps (about) the same share R of its N positions.

    The thumbnail takes ``floor(R * N)`` and the tile pool is split evenly by largest remainders,
    with the same exact total as ``HeroAllocator(exact=True)``: ``min(floor(R * V * N), valid)``.
    Comparing HERO with this allocator therefore compares methods at the same token count. This is
    the per-crop budget of FasterVLM (Zhang et al. 2024, arXiv:2412.01818) and VisionZip-style
    pruning applied to each view of a tiled image.
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: relevance checked and budgets remembered in its one fetch

    @property
    def uses_relevance(self) -> bool:
        return False

    def keeps_all(self, keep_ratio: float, tiles: EncodedTiles | None = None) -> bool:
        """Whether every valid token is kept, known before planning (``Pruner.keeps_all``)."""
        return keeps_all(keep_ratio, tiles)

    @property
    def count_known(self) -> bool:
        """Its kept total is ``exact_total`` of the image's geometry (``Pruner.count_known``)."""
        return True

    def __call__(self, tiles: TileEncoderOutputs, relevance: Tensor | None, keep_ratio: float, /) -> Tensor:
        checked, _, keep_ratio = prepare(tiles, relevance, keep_ratio)
        return self._finish(checked, keep_ratio, self._stage(checked, None)).budgets

    def _stage(self, tiles: EncodedTiles, relevance: Tensor | None) -> Staged:
        return Staged(torch.ones(tiles.num_views - 1, dtype=torch.float64, device=tiles.device))

    def _finish(self, tiles: EncodedTiles, keep_ratio: float, staged: Staged) -> Allocation:
        return Allocation(budgets=exact_split(tiles, keep_ratio, staged.read))
