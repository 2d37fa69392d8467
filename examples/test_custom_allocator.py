"""Property-test your own allocator and selector with hero_core.testing.

Run: ``python -m pytest examples/test_custom_allocator.py``. The allocator below gives every tile the
same share as its valid-token count (a "proportional to content" rule); the test holds it to the
library's invariants over hundreds of random images, padding patterns and ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import given

from hero_core import EncodedTiles, FunctionAwareSelector, Pruner
from hero_core.allocators import exact_split, tile_views
from hero_core.testing import check_allocator, check_selector, encoded_tiles, keep_ratios


@dataclass(frozen=True)
class ContentProportionalAllocator:
    """Tile budgets in proportion to each tile's valid (non-padding) positions."""

    uses_relevance: bool = False

    def __call__(self, tiles: EncodedTiles, relevance: torch.Tensor | None, keep_ratio: float, /) -> torch.Tensor:
        weights = tiles.valid_mask[tile_views(tiles)].sum(-1).double()
        return exact_split(tiles, keep_ratio, weights)


@given(encoded_tiles(), keep_ratios())
def test_my_allocator(tiles, ratio):
    check_allocator(ContentProportionalAllocator(), tiles, None, ratio, exact_total=True)


@given(encoded_tiles(separated=True), keep_ratios())
def test_my_pruner(tiles, ratio):
    budgets = check_allocator(ContentProportionalAllocator(), tiles, None, ratio, exact_total=True)
    check_selector(FunctionAwareSelector(), tiles, budgets, dtypes=True)
    plan = Pruner(ratio, ContentProportionalAllocator(), FunctionAwareSelector()).plan(tiles)
    assert torch.equal(plan.budgets, budgets)
