"""``Pruner.plan_batch`` (issue 17, item 5): many images planned with ONE host sync in all, each plan equal to
``plan`` on that image alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hero_core import HeroError, Pruner, presets
from hero_core.allocators import exact_split, tile_views
from hero_core.testing import count_host_syncs, encoded_tiles, keep_ratios, make_tiles

from .registry import PRESETS, tiles_for


def _fresh(images: list[Any]) -> list[Any]:
    return [tiles.replace() for tiles in images]  # no host facts read yet, as an adapter hands them over


def _relevance(images: list[Any]) -> list[Any]:
    # every other image without relevance (a prompt without a query)
    return [torch.linspace(-0.2, 0.5, t.num_views) if i % 2 == 0 else None for i, t in enumerate(images)]


@pytest.mark.parametrize("name", sorted(PRESETS))
@given(images=st.lists(encoded_tiles(), min_size=1, max_size=4), ratio=keep_ratios())
def test_a_batch_plans_as_each_image_alone(name: str, images: list[Any], ratio: float) -> None:
    pruner = presets.get(name, ratio)
    images = [tiles_for(name, tiles) for tiles in images]
    relevance = _relevance(images)
    together = pruner.plan_batch(_fresh(images), relevance)
    alone = [pruner.plan(tiles, rel) for tiles, rel in zip(_fresh(images), relevance, strict=True)]
    assert len(together) == len(images)
    for a, b in zip(together, alone, strict=True):
        assert torch.equal(a.keep, b.keep) and torch.equal(a.budgets, b.budgets)
        for x, y in ((a.importance, b.importance), (a.saliency, b.saliency), (a.relevance, b.relevance)):
            assert (x is None) == (y is None) and (x is None or torch.equal(x, y))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_batch_reads_the_device_once(name: str) -> None:
    images = [
        make_tiles(num_views=5, grid=(4, 6), padding="rows", seed=1),
        make_tiles(num_views=1, grid=(4, 6), seed=2),
        make_tiles(num_views=7, grid=(4, 6), padding="random", seed=3),
    ]
    images = [tiles_for(name, tiles) for tiles in images]
    for ratio, expected in ((0.3, 1), (1.0, 0 if PRESETS[name] else 1)):
        fresh = _fresh(images)
        with count_host_syncs() as syncs:
            plans = presets.get(name, ratio).plan_batch(fresh, _relevance(images))
        assert syncs.count == expected, syncs.table()
        assert all(torch.equal(p.keep.sum(-1), p.budgets) for p in plans)


def test_a_bad_value_in_any_image_is_refused_by_its_field() -> None:
    images = [make_tiles(num_views=3, grid=(4, 4), seed=s) for s in range(3)]
    bad = torch.tensor([0.1, float("nan"), 0.2])
    with pytest.raises(HeroError, match=r"^relevance=.*finite"):
        presets.hero(0.3).plan_batch(_fresh(images), [torch.zeros(3), None, bad])
    nan_tiles = images[1].replace(cls_tokens=torch.full_like(images[1].cls_tokens, float("inf")))
    with pytest.raises(HeroError, match=r"^cls_tokens=.*finite"):
        presets.hero(0.3).plan_batch([images[0].replace(), nan_tiles])
    with pytest.raises(HeroError, match=r"^relevance=.*one \(V,\) tensor or None per image \(3 images\)"):
        presets.hero(0.3).plan_batch(_fresh(images), [None, None])


def test_custom_parts_are_planned_image_by_image_with_their_own_syncs() -> None:
    def allocator(tiles: Any, relevance: Any, keep_ratio: float, /) -> Any:
        weights = torch.ones(len(tile_views(tiles)), dtype=torch.float64, device=tiles.device)
        return exact_split(tiles, keep_ratio, weights)

    pruner = Pruner(0.3, allocator, presets.hero(0.3).selector)
    images = [make_tiles(num_views=4, grid=(4, 4), seed=s) for s in range(3)]
    with count_host_syncs() as syncs:
        plans = pruner.plan_batch(_fresh(images))
    # per image: the inputs checked before the custom allocator runs, its weights, its budgets read back
    alone = []
    for tiles in _fresh(images):
        with count_host_syncs() as one:
            alone.append(pruner.plan(tiles))
        assert one.count >= 2
    assert syncs.count == 3 * one.count
    assert all(torch.equal(a.keep, b.keep) for a, b in zip(plans, alone, strict=True))
