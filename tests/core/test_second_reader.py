"""Tests for what the second reader's fresh mutants (tools/mutants_fresh.py, issue 16) showed no test pinned:
a padded thumbnail's quota, the random selector's seed, a custom selector that keeps padding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hero_core import HeroAllocator, HeroError, Pruner, RandomSelector, presets
from hero_core.testing import make_tiles


def _padded_thumbnail(valid: int, thumbnail_index: int) -> object:
    """V = 3 views of 4 x 4 patches; the thumbnail (``thumbnail_index``) has only its first ``valid`` positions valid
    (a custom adapter may letterbox its global view), the two tiles are whole."""
    tiles = make_tiles(num_views=3, grid=(4, 4), thumbnail_index=thumbnail_index, seed=3)
    mask = tiles.valid_mask.clone()
    mask[thumbnail_index] = torch.arange(16) < valid
    return dataclasses.replace(tiles, valid_mask=mask)


@pytest.mark.parametrize("thumbnail_index", [0, 2])
def test_the_thumbnail_quota_is_capped_at_its_valid_positions(thumbnail_index: int) -> None:
    """HERO_SPEC step 3: the thumbnail's quota is min(floor(R N), n_thumb). At R = 0.5, N = 16 and 4 valid thumbnail
    positions the quota is 4, not 8; the total floor(0.5 x 3 x 16) = 24 still holds, the tiles taking 20. (F07: an
    uncapped quota of 8 exceeds the thumbnail's 4 positions and the plan is refused.)"""
    tiles = _padded_thumbnail(4, thumbnail_index)
    plan = presets.hero(0.5).plan(tiles)
    budgets = plan.budgets.tolist()
    assert budgets[thumbnail_index] == 4
    assert sum(budgets) == 24
    assert sum(b for v, b in enumerate(budgets) if v != thumbnail_index) == 20
    assert plan.keep.sum(-1).tolist() == budgets and not bool((plan.keep & ~tiles.valid_mask).any())


def test_the_random_selector_follows_its_seed() -> None:
    """Two seeds choose different tokens, one seed the same tokens every call (F24: a selector seeded with 0
    whatever its field says)."""
    tiles = make_tiles(num_views=3, grid=(6, 6), seed=1)
    budgets = torch.tensor([9, 9, 9])
    first, again = RandomSelector(seed=1)(tiles, budgets), RandomSelector(seed=1)(tiles, budgets)
    other, zero = RandomSelector(seed=2)(tiles, budgets), RandomSelector(seed=0)(tiles, budgets)
    assert torch.equal(first, again)
    assert not torch.equal(first, other) and not torch.equal(first, zero) and not torch.equal(other, zero)
    assert first.sum(-1).tolist() == [9, 9, 9]


def test_a_custom_selector_that_keeps_padding_is_refused() -> None:
    """A selector that keeps exactly its budgets, but takes the highest positions (the padded last column of each
    tile) is refused: kept counts alone do not make a mask right (F28: only the counts checked)."""
    tiles = make_tiles(num_views=3, grid=(4, 4), padding="cols", pad_amount=0.25, seed=2)
    assert not bool(tiles.valid_mask[1, 15]) and not bool(tiles.valid_mask[2, 15])  # the last column is padding

    def last_positions(tiles: object, budgets: torch.Tensor, /) -> torch.Tensor:
        positions = torch.arange(16).expand(3, 16)
        return positions >= 16 - budgets[:, None]  # exactly budgets[v] per view, from the end

    last_positions.layers = ()  # type: ignore[attr-defined]
    pruner = Pruner(keep_ratio=0.5, allocator=HeroAllocator(), selector=last_positions)
    with pytest.raises(HeroError, match="on valid positions only"):
        pruner.plan(tiles)
