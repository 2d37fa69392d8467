"""The paper's exact budget split, shared by every allocator that keeps the total exact."""

from __future__ import annotations

import torch
from torch import Tensor

from .._arith import apportion, floor_ratio
from ..tiles import EncodedTiles

__all__ = ["exact_split", "tile_views"]


def tile_views(tiles: EncodedTiles) -> list[int]:
    """Indices of the K local tiles (every view but the thumbnail), in view order."""
    return [v for v in range(tiles.num_views) if v != tiles.thumbnail_index]


def exact_split(tiles: EncodedTiles, keep_ratio: float, tile_weights: Tensor) -> Tensor:
    """Budgets (V,) int64 that sum to ``min(floor(R * V * N), total valid)`` (HERO Eq. 4, paper preset).

    The thumbnail takes ``min(floor(R * N), n_thumb)``; the rest is apportioned over the tiles in
    proportion to ``tile_weights`` (K,) by the capped largest-remainder method. If the tiles cannot
    absorb it, every valid tile token is kept and the surplus goes back to the thumbnail.
    """
    num_views, num_tokens = tiles.num_views, tiles.num_tokens
    capacity = tiles.valid_mask.sum(-1).tolist()  # (V,) one host sync
    thumb = tiles.thumbnail_index
    others = tile_views(tiles)
    total = floor_ratio(keep_ratio, num_views * num_tokens)
    thumb_budget = min(floor_ratio(keep_ratio, num_tokens), capacity[thumb])
    pool = total - thumb_budget
    tile_capacity = [capacity[v] for v in others]
    budgets = [0] * num_views
    if pool >= sum(tile_capacity):
        for v in others:
            budgets[v] = capacity[v]
        budgets[thumb] = min(thumb_budget + pool - sum(tile_capacity), capacity[thumb])
    else:
        shares = apportion(pool, tile_weights.double().tolist(), tile_capacity)
        for v, share in zip(others, shares, strict=False):
            budgets[v] = share
        budgets[thumb] = thumb_budget
    return torch.tensor(budgets, dtype=torch.int64, device=tiles.device)
