"""Behaviours a mutation run found untested (issue 11, item 5), each checked against an oracle written here.

Every test names the hand-made mutants of ``tools/mutants.py`` it kills. The examples are built so that
the wrong variant gives a different answer: the winning position is never index 0 (where ties land),
mean and max over heads rank differently, and tile grids are not square.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from hero_core import (
    ClsAttentionSelector,
    FunctionAwareSelector,
    HeroAllocator,
    StridedSelector,
    ThumbnailAttentionAllocator,
    presets,
)
from hero_core.selectors._rank import reduce_heads
from hero_core.testing import make_tiles

# (H=2, N=5) CLS attention of one view. Softmax-then-mean ranks position 3 first, never position 0.
SOFT_HEADS = [[0.30, 0.05, 0.10, 0.25, 0.30], [0.00, 0.10, 0.20, 0.60, 0.10]]
# (H=2, N=4): the head mean ranks 3 first ([.05, .35, .05, .40]), the head max ranks 1 first ([.05, .7, .05, .4]).
MEAN_VS_MAX = [[0.05, 0.70, 0.05, 0.40], [0.05, 0.00, 0.05, 0.40]]


def _slow_softmax_mean(heads: list[list[float]]) -> list[float]:
    """Per head a softmax over the N positions (with math.exp), then the mean over the heads."""
    rows = []
    for head in heads:
        total = sum(math.exp(x) for x in head)
        rows.append([math.exp(x) / total for x in head])
    return [sum(column) / len(rows) for column in zip(*rows)]


def _top(scores: list[float], budget: int) -> list[int]:
    """Raster positions of the ``budget`` best scores, ties to the lower index, ascending."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:budget])


def _one_view_tiles(heads: list[list[float]], layers: tuple[int, ...] = (0,)):
    """Two views (thumbnail 0, one tile) whose every layer and view carries ``heads`` as its (H, N) attention."""
    attention = torch.tensor(heads, dtype=torch.float32)  # (H, N)
    tiles = make_tiles(num_views=2, grid=(1, attention.shape[1]), layers=layers, num_heads=attention.shape[0])
    return tiles.replace(cls_attention=attention.expand(len(layers), 2, *attention.shape).clone())


# --------------------------------------------------------------------------------- head reductions
def test_softmax_mean_matches_slow_oracle_and_winner_is_not_position_zero() -> None:
    """Kills: softmax over the head axis (every score ties, the first positions win); softmax dropped."""
    oracle = _slow_softmax_mean(SOFT_HEADS)
    got = reduce_heads(torch.tensor(SOFT_HEADS), "softmax_mean")
    torch.testing.assert_close(got, torch.tensor(oracle), atol=1e-7, rtol=0)
    assert _top(oracle, 1) == [3]  # the example can fail: a tie would keep position 0
    tiles = _one_view_tiles(SOFT_HEADS)
    for budget in (1, 2, 3):
        budgets = torch.tensor([budget, budget])
        selector = FunctionAwareSelector(low_layers=(0,), high_layers=(0,), head_reduction="softmax_mean")
        keep = selector(tiles, budgets)
        assert keep[0].nonzero().flatten().tolist() == _top(oracle, budget)  # thumbnail (high layers)
        assert keep[1].nonzero().flatten().tolist() == _top(oracle, budget)  # tile (low layers)
        single = ClsAttentionSelector(layer=0, head_reduction="softmax_mean")(tiles, budgets)
        assert single[1].nonzero().flatten().tolist() == _top(oracle, budget)


def test_paper_selector_averages_heads_not_max() -> None:
    """Kills: the mean over heads replaced by a max (or a min), in the tile and in the thumbnail score."""
    mean = [sum(column) / 2 for column in zip(*MEAN_VS_MAX)]
    assert _top(mean, 1) == [3] and _top([max(column) for column in zip(*MEAN_VS_MAX)], 1) == [1]
    torch.testing.assert_close(reduce_heads(torch.tensor(MEAN_VS_MAX), "mean"), torch.tensor(mean), atol=1e-7, rtol=0)
    tiles = _one_view_tiles(MEAN_VS_MAX)
    keep = FunctionAwareSelector(low_layers=(0,), high_layers=(0,))(tiles, torch.tensor([1, 1]))
    assert keep.nonzero().tolist() == [[0, 3], [1, 3]]
    assert ClsAttentionSelector(layer=0)(tiles, torch.tensor([1, 1])).nonzero().tolist() == [[0, 3], [1, 3]]


def test_paper_selector_averages_low_layers_not_max() -> None:
    """Kills: the mean over the low layers replaced by a max (the two layers rank differently)."""
    layer_a = [[0.05, 0.70, 0.05, 0.40]]  # one head per layer: the max over layers ranks 1 first
    layer_b = [[0.05, 0.00, 0.05, 0.40]]  # the mean ranks 3 first
    tiles = make_tiles(num_views=2, grid=(1, 4), layers=(0, 1), num_heads=1)
    attention = torch.tensor([layer_a, layer_b], dtype=torch.float32)[:, None].expand(2, 2, 1, 4).clone()
    tiles = tiles.replace(cls_attention=attention)
    keep = FunctionAwareSelector(low_layers=(0, 1), high_layers=(0, 1))(tiles, torch.tensor([1, 1]))
    assert keep.nonzero().tolist() == [[0, 3], [1, 3]]


def test_presets_build_the_documented_head_reduction() -> None:
    """Kills: hero_reference building the plain head mean (or hero building the re-softmax)."""
    reference = presets.hero_reference(0.2)
    assert reference.selector == FunctionAwareSelector(head_reduction="softmax_mean")
    assert reference.allocator == HeroAllocator(density_weight=0.2, exact=False)
    assert presets.hero_reference(0.2, depth=12).selector.head_reduction == "softmax_mean"
    assert presets.get("hero-reference", 0.3).selector.head_reduction == "softmax_mean"
    assert presets.hero(0.2).selector == FunctionAwareSelector()
    assert presets.hero(0.2).selector.head_reduction == "mean"
    assert presets.cls_attention(0.2).selector.head_reduction == "mean"
    # The behaviour behind the field: the reference preset keeps the softmax-mean winner of each view.
    tiles = _one_view_tiles(SOFT_HEADS, layers=(5, 6, 7, 8, 21))
    keep = presets.hero_reference(0.2, low_layers=(5, 6, 7, 8), high_layers=(21,)).selector(tiles, torch.tensor([1, 1]))
    assert keep.nonzero().tolist() == [[0, 3], [1, 3]]


# --------------------------------------------------------------------------- thumbnail -> tile map
def _slow_owner(grid: tuple[int, int], tile_grid: tuple[int, int]) -> list[int]:
    """The raster index of the tile under the centre of each thumbnail patch, in exact rationals."""
    (rows, cols), (tile_rows, tile_cols) = grid, tile_grid
    owner = []
    for r in range(rows):
        for c in range(cols):
            tile_r = min(math.floor(Fraction(2 * r + 1, 2 * rows) * tile_rows), tile_rows - 1)
            tile_c = min(math.floor(Fraction(2 * c + 1, 2 * cols) * tile_cols), tile_cols - 1)
            owner.append(tile_r * tile_cols + tile_c)
    return owner


@pytest.mark.parametrize(
    ("grid", "tile_grid"),
    [
        ((4, 6), (2, 3)),  # wide tile grid
        ((6, 4), (3, 2)),  # tall tile grid (a wrong row stride indexes past the K tiles)
        ((6, 6), (3, 2)),  # tall tiles over a square thumbnail
        ((5, 3), (3, 1)),  # one column of tiles
        ((3, 5), (1, 3)),  # one row of tiles
        ((5, 7), (2, 4)),  # sides that do not divide
    ],
)
@pytest.mark.parametrize("thumbnail", ["first", "last"])
def test_thumbnail_attention_region_map_on_non_square_tile_grids(
    grid: tuple[int, int], tile_grid: tuple[int, int], thumbnail: str
) -> None:
    """Kills: a wrong row stride, swapped row/column centres or scales, a thumbnail read from the wrong view."""
    tile_count = tile_grid[0] * tile_grid[1]
    thumb = 0 if thumbnail == "first" else tile_count
    tiles = make_tiles(num_views=tile_count + 1, grid=grid, layers=(22,), num_heads=2, thumbnail_index=thumb, seed=3)
    tiles = tiles.replace(tile_grid=tile_grid)
    owner = _slow_owner(grid, tile_grid)
    assert sorted(set(owner)) == list(range(tile_count))  # every tile covers some patch
    head_mean = tiles.cls_attention[0, thumb].double().mean(0).tolist()  # (N,)
    mass = [0.0] * tile_count
    for patch, tile in enumerate(owner):
        mass[tile] += head_mean[patch]
    allocation = ThumbnailAttentionAllocator(layer=22).allocate(tiles, None, 0.3)
    tile_views = [v for v in range(tile_count + 1) if v != thumb]
    expected = torch.tensor([m / sum(mass) for m in mass], dtype=torch.float32)
    assert allocation.importance is not None
    torch.testing.assert_close(allocation.importance[tile_views], expected, atol=1e-6, rtol=0)
    assert float(allocation.importance[thumb]) == 0.0
    # One patch at a time: all the thumbnail's attention on patch p goes to the tile that owns p.
    for patch in range(grid[0] * grid[1]):
        attention = torch.full_like(tiles.cls_attention, 1e-3)
        attention[0, thumb, :, patch] = 1.0
        importance = ThumbnailAttentionAllocator(layer=22).allocate(tiles.replace(cls_attention=attention), None, 0.3)
        assert importance.importance is not None
        assert tile_views[int(importance.importance[tile_views].argmax())] == tile_views[owner[patch]], patch


def test_function_aware_thumbnail_score_comes_from_the_thumbnail_view() -> None:
    """Kills: the thumbnail's high-layer score read from view 0 when the thumbnail is the last view."""
    tiles = make_tiles(num_views=3, grid=(1, 4), layers=(0,), num_heads=1, thumbnail_index=2)
    attention = torch.zeros(1, 3, 1, 4)
    attention[0, 0, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # tile 0 prefers position 3
    attention[0, 1, 0] = torch.tensor([0.1, 0.4, 0.3, 0.2])  # tile 1 prefers position 1
    attention[0, 2, 0] = torch.tensor([0.1, 0.2, 0.4, 0.3])  # the thumbnail prefers position 2
    keep = FunctionAwareSelector(low_layers=(0,), high_layers=(0,))(
        tiles.replace(cls_attention=attention), torch.ones(3, dtype=torch.long)
    )
    assert keep.nonzero().tolist() == [[0, 3], [1, 1], [2, 2]]


@pytest.mark.parametrize(
    ("grid", "budget", "expected"),
    [
        ((4, 4), 8, [(r, c) for r in range(4) for c in range(4) if (r + c) % 2 == 0]),  # R = 1/2: a checkerboard
        ((8, 8), 4, [(0, 0), (0, 4), (4, 0), (4, 4)]),  # R = 1/16: stride 4
        ((8, 8), 16, [(r, c) for r in range(0, 8, 2) for c in range(0, 8, 2)]),  # R = 1/4: stride 2
    ],
)
def test_strided_selection_is_an_even_grid(grid: tuple[int, int], budget: int, expected: list[tuple[int, int]]) -> None:
    """Kills: a wrong Bayer recursion (at R = 1/4 on 4 x 4 it can still give stride 2, not at R = 1/2)."""
    tiles = make_tiles(num_views=1, grid=grid)
    keep = StridedSelector()(tiles, torch.tensor([budget]))
    assert [tuple(x) for x in keep.view(grid).nonzero().tolist()] == expected
