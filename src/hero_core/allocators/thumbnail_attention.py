"""Thumbnail-attention allocation: the HiRED / GlobalCom2 family of tile budgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._device import to_device
from .._errors import HeroError
from ..plan import Allocation, Staged
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles
from ._split import exact_split, keeps_all, prepare, tile_views

__all__ = ["ThumbnailAttentionAllocator"]


@dataclass(frozen=True)
class ThumbnailAttentionAllocator:
    """Split the tile pool by the thumbnail's CLS-attention mass over each tile's region.

    The thumbnail's CLS attention at ``layer`` (mean over heads) is summed over the 2-D region of the
    thumbnail that each local tile covers (a thumbnail patch belongs to the tile under its centre; the
    tiles are laid out as ``tiles.tile_grid`` in raster order). The pool is then apportioned exactly
    as in ``HeroAllocator(exact=True)``, so totals match HERO's at the same ratio.

    This is the budget rule of HiRED (Arif et al., AAAI 2025, arXiv:2408.10945) and GlobalCom2
    (Liu et al. 2025, arXiv:2501.05179); HERO section 3.1 argues it ignores the task and suffers from
    the misalignment between thumbnail and tiles. Offered so users can measure that claim.

    Args:
        layer: 0-based encoder layer whose thumbnail CLS attention is read. Default 22 (CLIP
            ViT-L's penultimate layer, the one LLaVA takes its features from).
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: relevance checked and budgets remembered in its one fetch

    layer: int = 22

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise HeroError.field("layer", self.layer, "a non-negative 0-based encoder layer index")

    @property
    def uses_relevance(self) -> bool:
        return False

    @property
    def layers(self) -> tuple[int, ...]:
        """The encoder layer this allocator reads (adapters hook it besides the selector's)."""
        return (self.layer,)

    def __call__(self, tiles: TileEncoderOutputs, relevance: Tensor | None, keep_ratio: float, /) -> Tensor:
        return self.allocate(tiles, relevance, keep_ratio).budgets

    def keeps_all(self, keep_ratio: float, tiles: EncodedTiles | None = None) -> bool:
        """Whether every valid token is kept, known before planning (``Pruner.keeps_all``)."""
        return keeps_all(keep_ratio, tiles)

    @property
    def count_known(self) -> bool:
        """Its kept total is ``exact_total`` of the image's geometry (``Pruner.count_known``)."""
        return True

    def allocate(self, tiles: TileEncoderOutputs, relevance: Tensor | None, keep_ratio: float) -> Allocation:
        checked, _, keep_ratio = prepare(tiles, relevance, keep_ratio)
        return self._finish(checked, keep_ratio, self._stage(checked, None))

    def _stage(self, tiles: EncodedTiles, relevance: Tensor | None) -> Staged:
        """The thumbnail's attention mass over each tile's region, (K,) float64 on the device."""
        if tiles.num_views == 1:  # a thumbnail alone: nothing to split
            return Staged(torch.zeros(0, dtype=torch.float64, device=tiles.device))
        if tiles.tile_grid is None:
            raise HeroError.field(
                "tile_grid",
                None,
                "the (rows, cols) layout of the local tiles",
                "ThumbnailAttentionAllocator maps the thumbnail onto the tiles; the adapter must set tile_grid.",
            )
        rows, cols = tiles.grid
        tile_rows, tile_cols = tiles.tile_grid
        attention = tiles.layer_attention((self.layer,), field="ThumbnailAttentionAllocator.layer")
        thumb = attention[0, tiles.thumbnail_index].mean(dim=0)  # (N,) mean over heads
        device = tiles.device
        centre_r = (torch.arange(rows, device=device, dtype=torch.float64) + 0.5) / rows
        centre_c = (torch.arange(cols, device=device, dtype=torch.float64) + 0.5) / cols
        tile_r = (centre_r * tile_rows).floor().long().clamp_(max=tile_rows - 1)  # (rows,)
        tile_c = (centre_c * tile_cols).floor().long().clamp_(max=tile_cols - 1)  # (cols,)
        owner = (tile_r[:, None] * tile_cols + tile_c[None, :]).flatten()  # (N,) tile of each thumbnail patch
        mass = torch.zeros(tile_rows * tile_cols, device=device, dtype=torch.float64)
        mass.index_add_(0, owner, thumb.double())  # (K,)
        return Staged(mass)

    def _finish(self, tiles: EncodedTiles, keep_ratio: float, staged: Staged) -> Allocation:
        mass = staged.read
        budgets = exact_split(tiles, keep_ratio, mass)
        if tiles.num_views == 1:
            return Allocation(budgets=budgets)
        importance = torch.zeros(tiles.num_views, dtype=torch.float32, device=tiles.device)
        others = to_device(tile_views(tiles), tiles.device, torch.long)
        importance.index_copy_(0, others, (mass / mass.sum().clamp_min(1e-12)).float())
        return Allocation(budgets=budgets, importance=importance, saliency=importance, relevance=None)
