"""The paper's exact budget split, shared by every allocator that keeps the total exact."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._arith import apportion, floor_ratio
from .._device import to_device
from .._errors import RELEVANCE_FINITE, HeroError, check_keep_ratio, check_relevance
from ..counts import ImageCounts, exact_total
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles

__all__ = ["budgets_tensor", "exact_split", "keeps_all", "prepare", "tile_views"]


def prepare(
    tiles: TileEncoderOutputs, relevance: Tensor | None, keep_ratio: float
) -> tuple[EncodedTiles, Tensor | None, float]:
    """Validate an allocator's inputs, so a direct call fails with HeroError just as ``Pruner.plan`` does.

    Returns the checked tiles, the relevance on the tiles' device (or None) and the ratio as a float. The
    relevance values are checked for NaN/inf in the allocator's one host-device transfer (``tiles.fetch``).
    """
    checked = EncodedTiles.from_outputs(tiles)
    ratio = check_keep_ratio(keep_ratio)
    check_relevance(relevance, checked.num_views, finite=False)
    moved = None if relevance is None else to_device(relevance, checked.device, relevance.dtype)
    if moved is not None:
        checked.check_later("relevance", moved, *RELEVANCE_FINITE)
    return checked, moved, ratio


def tile_views(tiles: EncodedTiles) -> list[int]:
    """Indices of the K local tiles (every view but the thumbnail), in view order."""
    return [v for v in range(tiles.num_views) if v != tiles.thumbnail_index]


def budgets_tensor(tiles: EncodedTiles, counts: list[int]) -> Tensor:
    """(V,) int64 budgets on the tiles' device, remembered by ``tiles`` so the planner checks them on the host."""
    with torch.inference_mode(False):  # a normal tensor: it keeps a version counter, so an in-place edit is seen
        budgets = to_device(counts, tiles.device, torch.int64)
    tiles.remember_counts(budgets, tuple(counts))
    return budgets


def keeps_all(keep_ratio: float, tiles: EncodedTiles | None) -> bool:
    """Whether ``exact_split`` keeps every valid token: its total ``min(floor(R * V * N), valid)`` is the valid
    count at R = 1 whatever the image, and at a lower R when the valid count (known on the host) is small."""
    if check_keep_ratio(keep_ratio) >= 1.0:
        return True
    if tiles is None or tiles.known_capacity is None:
        return False
    valid = sum(tiles.known_capacity)
    return exact_total(keep_ratio, ImageCounts(tiles.num_views, tiles.num_tokens, valid)) == valid


def exact_split(tiles: EncodedTiles, keep_ratio: float, tile_weights: Tensor) -> Tensor:
    """Budgets (V,) int64 that sum to ``min(floor(R * V * N), total valid)`` (HERO Eq. 4, paper preset).

    The thumbnail takes ``min(floor(R * N), n_thumb)``; the rest is apportioned over the tiles in
    proportion to ``tile_weights`` (K,) by the capped largest-remainder method. If the tiles cannot
    absorb it, every valid tile token is kept and the surplus goes back to the thumbnail.

    The weights are read in one host-device transfer together with the tiles' host facts
    (``EncodedTiles.fetch``): the only host sync of a plan made with the built-in parts.

    Raises:
        HeroError: on a keep ratio outside (0, 1] or weights that are not K finite non-negative numbers.
    """
    keep_ratio = check_keep_ratio(keep_ratio)
    expected = f"{tiles.num_views - 1} finite non-negative weights, one per local tile"
    if not isinstance(tile_weights, Tensor) or tile_weights.numel() != tiles.num_views - 1:
        raise HeroError.field("tile_weights", tile_weights, expected)
    (weights,) = tiles.fetch(tile_weights)  # the one host sync (with the tiles' facts)
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise HeroError.field("tile_weights", tile_weights, expected)
    num_views, num_tokens = tiles.num_views, tiles.num_tokens
    capacity = tiles.capacity
    thumb = tiles.thumbnail_index
    others = tile_views(tiles)
    total = exact_total(keep_ratio, ImageCounts(num_views, num_tokens, sum(capacity)))  # the count contract
    thumb_budget = min(floor_ratio(keep_ratio, num_tokens), capacity[thumb])
    pool = total - thumb_budget
    tile_capacity = [capacity[v] for v in others]
    budgets = [0] * num_views
    if pool >= sum(tile_capacity):
        for v in others:
            budgets[v] = capacity[v]
        budgets[thumb] = min(thumb_budget + pool - sum(tile_capacity), capacity[thumb])
    else:
        shares = apportion(pool, weights, tile_capacity)
        for v, share in zip(others, shares, strict=False):
            budgets[v] = share
        budgets[thumb] = thumb_budget
    return budgets_tensor(tiles, budgets)
