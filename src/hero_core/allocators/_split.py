"""The paper's exact budget split, shared by every allocator that keeps the total exact."""

from __future__ import annotations

import torch
from torch import Tensor

from .._arith import apportion, floor_ratio
from .._errors import HeroError, check_keep_ratio, check_relevance
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles

__all__ = ["exact_split", "prepare", "tile_views"]


def prepare(
    tiles: TileEncoderOutputs, relevance: Tensor | None, keep_ratio: float
) -> tuple[EncodedTiles, Tensor | None, float]:
    """Validate an allocator's inputs, so a direct call fails with HeroError just as ``Pruner.plan`` does.

    Returns the checked tiles, the relevance on the tiles' device (or None) and the ratio as a float.
    """
    checked = EncodedTiles.from_outputs(tiles)
    check_relevance(relevance, checked.num_views)
    moved = None if relevance is None else relevance.to(checked.device)
    return checked, moved, check_keep_ratio(keep_ratio)


def tile_views(tiles: EncodedTiles) -> list[int]:
    """Indices of the K local tiles (every view but the thumbnail), in view order."""
    return [v for v in range(tiles.num_views) if v != tiles.thumbnail_index]


def exact_split(tiles: EncodedTiles, keep_ratio: float, tile_weights: Tensor) -> Tensor:
    """Budgets (V,) int64 that sum to ``min(floor(R * V * N), total valid)`` (HERO Eq. 4, paper preset).

    The thumbnail takes ``min(floor(R * N), n_thumb)``; the rest is apportioned over the tiles in
    proportion to ``tile_weights`` (K,) by the capped largest-remainder method. If the tiles cannot
    absorb it, every valid tile token is kept and the surplus goes back to the thumbnail.

    Raises:
        HeroError: on a keep ratio outside (0, 1] or weights that are not K finite non-negative numbers.
    """
    keep_ratio = check_keep_ratio(keep_ratio)
    weights = tile_weights.detach().double().flatten().cpu()
    if weights.numel() != tiles.num_views - 1 or not bool(torch.isfinite(weights).all() & (weights >= 0).all()):
        raise HeroError.field(
            "tile_weights", tile_weights, f"{tiles.num_views - 1} finite non-negative weights, one per local tile"
        )
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
        shares = apportion(pool, weights.tolist(), tile_capacity)
        for v, share in zip(others, shares, strict=False):
            budgets[v] = share
        budgets[thumb] = thumb_budget
    return torch.tensor(budgets, dtype=torch.int64, device=tiles.device)
