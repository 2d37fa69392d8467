"""Exact values where the plausible mistake gives another answer (issue 16, item 4: "tests that pin values").

Every input here is built so that the right answer differs from the wrong ones a reader could write: grids
that are not square (rows and columns cannot be swapped unseen), the thumbnail at the LAST view (not only at
0), low layers that disagree with each other and with the high layer, ties at full size (N = 576) where the
tie-break decides, and every checked field at each side of its bounds. The expected values come from slow,
obviously correct loops written here from HERO_SPEC.md (or from numbers worked out by hand in the comments);
each test's docstring names the mistakes it was seen to fail on (applied by hand to a scratch copy).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from hero_core import (
    ClsAttentionSelector,
    EncodedTiles,
    FunctionAwareSelector,
    HeroAllocator,
    HeroError,
    Pruner,
    RandomSelector,
    StridedSelector,
    ThumbnailAttentionAllocator,
    UniformAllocator,
    presets,
)
from hero_core._arith import apportion, floor_ratio
from hero_core._errors import check_keep_ratio
from hero_core.selectors._rank import keep_top
from hero_core.testing import make_tiles


# ----------------------------------------------------------------------------------------- oracles
def _top(scores: list[float], valid: list[bool], budget: int) -> list[int]:
    """Raster positions of the ``budget`` best valid scores, ties to the lower index, ascending (Step 3)."""
    ranked = sorted((i for i in range(len(scores)) if valid[i]), key=lambda i: (-scores[i], i))
    return sorted(ranked[:budget])


def _softmax(values: list[float], tau: float) -> list[float]:
    top = max(values)
    weights = [math.exp((v - top) / tau) for v in values]
    return [w / sum(weights) for w in weights]


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _slow_apportion(total: int, weights: list[float], caps: list[int]) -> list[int]:
    """Capped largest remainders on exact rationals (HERO_SPEC.md step 2), ties to the lower index."""
    shares = [0] * len(caps)
    open_ = [i for i in range(len(caps)) if caps[i] > 0]
    left = total
    while open_ and left > 0:
        mass = sum(Fraction(weights[i]) for i in open_)
        weight = {i: (Fraction(weights[i]) if mass > 0 else Fraction(1)) for i in open_}
        mass = mass if mass > 0 else Fraction(len(open_))
        quota = {i: left * weight[i] / mass for i in open_}
        full = [i for i in open_ if quota[i] >= caps[i]]
        if full:
            for i in full:
                shares[i] = caps[i]
                left -= caps[i]
            open_ = [i for i in open_ if i not in full]
            continue
        for i in open_:
            shares[i] = math.floor(quota[i])
        extra = left - sum(shares[i] for i in open_)
        for i in sorted(open_, key=lambda i: (-(quota[i] - math.floor(quota[i])), i))[:extra]:
            shares[i] += 1
        left = 0
    return shares


def _slow_paper_budgets(
    ratio: str, num_views: int, n: int, caps: list[int], thumb: int, weights: list[float]
) -> list[int]:
    """Eq. 4, paper preset, from the decimal ``ratio`` (``weights``: one per local tile, in view order)."""
    r = Fraction(ratio)
    total = math.floor(r * num_views * n)
    budgets = [0] * num_views
    budgets[thumb] = min(math.floor(r * n), caps[thumb])
    pool = total - budgets[thumb]
    others = [v for v in range(num_views) if v != thumb]
    if pool >= sum(caps[v] for v in others):
        for v in others:
            budgets[v] = caps[v]
        budgets[thumb] = min(budgets[thumb] + pool - sum(caps[v] for v in others), caps[thumb])
        return budgets
    for v, share in zip(others, _slow_apportion(pool, weights, [caps[v] for v in others]), strict=True):
        budgets[v] = share
    return budgets


def _bayer(size: int) -> list[list[int]]:
    """The ordered-dither matrix by its recursive definition [[4B, 4B+2], [4B+3, 4B+1]]."""
    matrix = [[0]]
    while len(matrix) < size:
        half = len(matrix)
        grown = [[0] * (2 * half) for _ in range(2 * half)]
        for r in range(half):
            for c in range(half):
                grown[r][c] = 4 * matrix[r][c]
                grown[r][c + half] = 4 * matrix[r][c] + 2
                grown[r + half][c] = 4 * matrix[r][c] + 3
                grown[r + half][c + half] = 4 * matrix[r][c] + 1
        matrix = grown
    return matrix


def _tiles(
    cls: list[list[float]], valid: list[list[bool]], grid: tuple[int, int], thumb: int, layers: tuple[int, ...] = (0,)
) -> EncodedTiles:
    views, n = len(valid), len(valid[0])
    return EncodedTiles(
        cls_tokens=torch.tensor(cls, dtype=torch.float32),
        cls_attention=torch.full((len(layers), views, 1, n), 1.0 / n),
        attention_layers=layers,
        valid_mask=torch.tensor(valid),
        thumbnail_index=thumb,
        grid=grid,
    )


# -------------------------------------------------------------------- (a) rows vs columns, views
def test_strided_selection_on_a_3x5_grid_follows_the_bayer_rows_and_columns() -> None:
    """On a 3 x 5 view the dither threshold of (r, c) is ``bayer[r][c]`` of the 8 x 8 matrix.

    Hand check: thresholds row 0 = [0, 32, 8, 40, 2], row 1 = [48, 16, 56, 24, 50], row 2 = [12, 44, 4, 36, 14];
    a budget of 4 keeps (0,0), (0,4), (2,2), (0,2) = raster 0, 4, 12, 2.
    Kills: the grid read as (cols, rows) (``bayer[:cols, :rows]`` or a transposed threshold), the matrix cut to
    ``max(rows, cols)`` in the wrong direction, a Bayer quadrant swapped."""
    bayer = _bayer(8)
    threshold = [bayer[r][c] for r in range(3) for c in range(5)]
    assert threshold[:5] == [0, 32, 8, 40, 2] and threshold[5:10] == [48, 16, 56, 24, 50]
    order = sorted(range(15), key=lambda i: threshold[i])
    tiles = make_tiles(num_views=2, grid=(3, 5), thumbnail_index=1)
    tall = make_tiles(num_views=2, grid=(5, 3), thumbnail_index=1)
    tall_threshold = [bayer[r][c] for r in range(5) for c in range(3)]
    tall_order = sorted(range(15), key=lambda i: tall_threshold[i])
    for budget in range(16):
        keep = StridedSelector()(tiles, torch.tensor([budget, budget]))
        assert keep[0].nonzero().flatten().tolist() == sorted(order[:budget]), budget
        assert torch.equal(keep[0], keep[1])
        keep_tall = StridedSelector()(tall, torch.tensor([budget, budget]))
        assert keep_tall[0].nonzero().flatten().tolist() == sorted(tall_order[:budget]), budget
    assert sorted(order[:4]) == [0, 2, 4, 12]
    assert sorted(tall_order[:4]) != sorted(order[:4])  # the example can fail: the transposed grid keeps others


def test_hero_importance_and_budgets_with_the_thumbnail_last() -> None:
    """V = 4, thumbnail at view 3; view 0 is a tile whose CLS is orthogonal to the thumbnail's.

    Saliency ``c = cos(CLS_i, CLS_thumb)`` = [0, 1/sqrt 2, 1] for views 0, 1, 2 (view 0 as the reference would
    give [1, 1/sqrt 2, 0]: the reverse ranking). Budgets: N = 15 (3 x 5), R = 0.4: total floor(0.4 * 60) = 24,
    thumbnail quota floor(6) = 6 at VIEW 3, pool 18 over the tiles by importance, view 2 capped at its 9 valid.
    Kills: the thumbnail taken as view 0 for the reference CLS, for the quota or for the tile list; the cosine
    replaced by a dot product (the norms differ here); tau applied as a product."""
    e1, e2 = [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]
    cls = [e2, [2.0, 2.0, 0.0], [0.5, 0.0, 0.0], [1.0, 0.0, 0.0]]  # tile, tile, tile, thumbnail
    valid = [[True] * 15, [True] * 15, [True] * 9 + [False] * 6, [True] * 15]
    tiles = _tiles(cls, valid, (3, 5), thumb=3)
    allocator = HeroAllocator(tau_v=0.5)
    cosines = [_cos(cls[v], e1) for v in range(3)]
    assert cosines == pytest.approx([0.0, 2**-0.5, 1.0])
    saliency = _softmax(cosines, 0.5)
    allocation = allocator.allocate(tiles, None, 0.4)
    assert allocation.importance is not None and allocation.saliency is not None
    torch.testing.assert_close(allocation.importance, torch.tensor([*saliency, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(allocation.saliency, torch.tensor([*saliency, 0.0]), atol=1e-6, rtol=0)
    expected = _slow_paper_budgets("0.4", 4, 15, [15, 15, 9, 15], 3, saliency)
    assert expected == [2, 7, 9, 6]  # worked out: view 2 caps at 9, 9 left for views 0, 1 by 0.126 : 0.517
    assert allocation.budgets.tolist() == expected


def test_hero_relevance_parts_with_the_thumbnail_last() -> None:
    """alpha = 0.3: the saliency part is 0.3 v and the relevance part 0.7 softmax(r / tau_t) over the TILES
    (views 0-2); the thumbnail's relevance (view 3, set to a large value on purpose) takes no part.
    Kills: relevance read for views 1..V-1 (thumbnail-first), the thumbnail's score inside the softmax,
    alpha applied to the wrong part."""
    cls = [[0.0, 1.0], [1.0, 1.0], [1.0, 0.2], [1.0, 0.0]]
    tiles = _tiles(cls, [[True] * 6] * 4, (2, 3), thumb=3)
    relevance = torch.tensor([0.30, 0.10, 0.20, 5.0])
    allocator = HeroAllocator(alpha=0.3, tau_v=0.2, tau_t=0.1)
    v = _softmax([_cos(cls[i], cls[3]) for i in range(3)], 0.2)
    t = _softmax([0.30, 0.10, 0.20], 0.1)
    allocation = allocator.allocate(tiles, relevance, 0.5)
    assert allocation.saliency is not None and allocation.relevance is not None and allocation.importance is not None
    torch.testing.assert_close(allocation.saliency, torch.tensor([0.3 * x for x in v] + [0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(allocation.relevance, torch.tensor([0.7 * x for x in t] + [0.0]), atol=1e-6, rtol=0)
    importance = [0.3 * a + 0.7 * b for a, b in zip(v, t, strict=True)]
    torch.testing.assert_close(allocation.importance, torch.tensor([*importance, 0.0]), atol=1e-6, rtol=0)
    assert allocation.budgets.tolist() == _slow_paper_budgets("0.5", 4, 6, [6] * 4, 3, importance)


def test_reference_budgets_with_the_thumbnail_last_and_padded_tiles() -> None:
    """The authors' floors (exact=False, density 0.2) with the thumbnail at view 3 and padding in view 0.

    ``d_i = (n_i / N) / (sum_tiles n_k / N + 1e-6)`` over the tiles only; ``b_i = min(floor(s_i floor(K N R)), n_i)``;
    thumbnail ``floor(R N)``. Kills: the density counted over views 1..V-1 or all views (the thumbnail's 12 valid
    tokens in it), the quota written into view 0, the pool computed from V instead of K, remainders
    redistributed."""
    cls = [[1.0, 0.3], [0.2, 1.0], [1.0, 1.0], [1.0, 0.0]]
    valid = [[True] * 4 + [False] * 8, [True] * 12, [True] * 9 + [False] * 3, [True] * 12]
    tiles = _tiles(cls, valid, (3, 4), thumb=3)
    allocator = HeroAllocator(density_weight=0.2, exact=False, tau_v=0.3)
    counts = [4 / 12, 12 / 12, 9 / 12]
    density = [c / (sum(counts) + 1e-6) for c in counts]
    v = _softmax([_cos(cls[i], cls[3]) for i in range(3)], 0.3)
    score = [0.2 * d + 0.8 * s for d, s in zip(density, v, strict=True)]
    pool = math.floor(Fraction("0.5") * 3 * 12)  # 18
    expected = [min(math.floor(s * pool), n) for s, n in zip(score, [4, 12, 9], strict=True)] + [6]
    allocation = allocator.allocate(tiles, None, 0.5)
    assert allocation.importance is not None
    torch.testing.assert_close(allocation.importance, torch.tensor([*score, 0.0]), atol=1e-6, rtol=0)
    assert allocation.budgets.tolist() == expected
    assert expected == [4, 2, 5, 6]  # view 0 capped at its 4 valid; 17 < 24 kept: floors and caps are not redistributed


def _disagreeing_layers() -> tuple[EncodedTiles, dict[int, list[float]]]:
    """Six recorded layers (0-5), one head, N = 6; two views, thumbnail LAST (view 1).

    Tile rows (view 0) per layer, chosen so that the top 2 of the mean over low layers (1, 2, 3) differs from
    the top 2 of every single layer, of the max and min over them, of the mean over (0, 1, 2) (the first three
    recorded), of the mean over all six, and of the high layer 4."""
    rows = {
        0: [0.00, 0.00, 0.00, 0.00, 0.90, 0.10],
        1: [0.40, 0.00, 0.35, 0.00, 0.00, 0.25],
        2: [0.00, 0.40, 0.35, 0.00, 0.00, 0.25],
        3: [0.00, 0.00, 0.00, 0.50, 0.00, 0.50],
        4: [0.00, 0.00, 0.00, 0.00, 0.20, 0.80],
        5: [0.95, 0.05, 0.00, 0.00, 0.00, 0.00],
    }
    thumb_rows = {layer: list(reversed(values)) for layer, values in rows.items()}  # the thumbnail ranks otherwise
    attention = torch.tensor([[[rows[layer]], [thumb_rows[layer]]] for layer in range(6)])  # (6, 2, 1, 6)
    tiles = EncodedTiles(
        cls_tokens=torch.eye(2),
        cls_attention=attention,
        attention_layers=(0, 1, 2, 3, 4, 5),
        valid_mask=torch.ones(2, 6, dtype=torch.bool),
        thumbnail_index=1,
        grid=(2, 3),
    )
    return tiles, rows | {100 + k: v for k, v in thumb_rows.items()}


def test_tile_scores_are_the_mean_over_disagreeing_low_layers() -> None:
    """Kills: one low layer read (the first, the last), max / min / sum-then-first over the layers, the first
    L recorded layers used instead of the requested ones, the high layer used for the tiles, the low layers used
    for the thumbnail, the thumbnail read from view 0."""
    tiles, rows = _disagreeing_layers()
    everyone = [True] * 6
    mean_low = [sum(rows[layer][j] for layer in (1, 2, 3)) / 3 for j in range(6)]
    right = _top(mean_low, everyone, 2)
    assert right == [2, 5]  # mean: [.133, .133, .233, .167, 0, .333]
    wrong = {
        "layer 1": rows[1],
        "layer 2": rows[2],
        "layer 3": rows[3],
        "max": [max(rows[layer][j] for layer in (1, 2, 3)) for j in range(6)],
        "min+": [min(rows[layer][j] for layer in (1, 2, 3)) + rows[1][j] for j in range(6)],
        "first three recorded": [sum(rows[layer][j] for layer in (0, 1, 2)) for j in range(6)],
        "all recorded": [sum(rows[layer][j] for layer in range(6)) for j in range(6)],
        "high": rows[4],
    }
    for name, scores in wrong.items():  # the example can fail: every mistake keeps another pair
        assert _top(scores, everyone, 2) != right, name
    thumb_high = rows[104]
    selector = FunctionAwareSelector(low_layers=(1, 2, 3), high_layers=(4,))
    keep = selector(tiles, torch.tensor([2, 2]))
    assert keep[0].nonzero().flatten().tolist() == right
    assert keep[1].nonzero().flatten().tolist() == _top(thumb_high, everyone, 2) == [0, 1]
    # two high layers: the thumbnail's mean over (4, 5) ranks differently from layer 4 or 5 alone
    thumb_mean = [(rows[104][j] + rows[105][j]) / 2 for j in range(6)]
    assert _top(thumb_mean, everyone, 3) != _top(rows[104], everyone, 3)
    assert _top(thumb_mean, everyone, 3) != _top(rows[105], everyone, 3)
    keep = FunctionAwareSelector(low_layers=(3, 1, 2), high_layers=(5, 4))(tiles, torch.tensor([2, 3]))
    assert keep[0].nonzero().flatten().tolist() == right  # layer order does not matter
    assert keep[1].nonzero().flatten().tolist() == _top(thumb_mean, everyone, 3)
    # a single-layer selector reads exactly the layer it names
    for layer in (1, 3, 5):
        single = ClsAttentionSelector(layer=layer)(tiles, torch.tensor([2, 2]))
        assert single[0].nonzero().flatten().tolist() == _top(rows[layer], everyone, 2), layer
        assert single[1].nonzero().flatten().tolist() == _top(rows[100 + layer], everyone, 2), layer


# ------------------------------------------------------------------------------- (b) ties at full N
@pytest.mark.parametrize("descending_levels", [3, 7])
def test_keep_top_ties_at_576_positions_go_to_the_lower_index(descending_levels: int) -> None:
    """V = 5 views of N = 576 with scores on a few levels (hundreds of ties per level), padding anywhere and
    every budget shape (0, some, all valid). Kills: an unstable sort, ties to the higher index (a flipped
    ascending sort, ``descending`` on negated scores with a reversed tie order), ``topk`` instead of the
    stable sort, the rank taken from the order instead of its inverse."""
    generator = torch.Generator().manual_seed(descending_levels)
    scores = torch.randint(0, descending_levels, (5, 576), generator=generator).float() / descending_levels
    valid = torch.rand(5, 576, generator=generator) > 0.2
    valid[0] = True
    capacity = valid.sum(-1).tolist()
    budgets = [0, 1, capacity[2] // 3, capacity[3] - 1, capacity[4]]
    got = keep_top(scores, torch.tensor(budgets), valid)
    for view in range(5):
        expected = _top(scores[view].tolist(), valid[view].tolist(), budgets[view])
        assert got[view].nonzero().flatten().tolist() == expected, view


def test_selectors_on_flat_attention_at_full_size_keep_the_first_valid_positions() -> None:
    """Flat attention at N = 576 (24 x 24), V = 5, thumbnail last, padded rows in the tiles: every score ties,
    so each view keeps its first ``b`` valid positions in raster order, for both head reductions.
    Kills: an unstable sort (on 576 equal values), ties to the higher index, padding positions kept first."""
    tiles = make_tiles(num_views=5, grid=(24, 24), num_heads=3, padding="rows", thumbnail_index=4)
    flat = tiles.replace(cls_attention=torch.full_like(tiles.cls_attention, 1.0 / 577))
    budgets = HeroAllocator()(flat, None, 0.2)
    assert budgets.tolist()[4] == 115  # floor(0.2 * 576) at the thumbnail, view 4
    for reduction in ("mean", "softmax_mean"):
        keep = FunctionAwareSelector(head_reduction=reduction)(flat, budgets)
        for view in range(5):
            first = flat.valid_mask[view].nonzero().flatten()[: int(budgets[view])].tolist()
            assert keep[view].nonzero().flatten().tolist() == first, (reduction, view)


@pytest.mark.parametrize("thumb", [0, 4])
def test_uniform_budgets_at_full_size_give_the_leftover_to_the_lower_tiles(thumb: int) -> None:
    """V = 5, N = 576, R = 0.21: total floor(604.8) = 604, quota floor(120.96) = 120, pool 484 = 4 * 121; at
    R = 0.2: pool 576 - 115 = 461 = 4 * 115 + 1; at R = 0.2017: total 580, quota 116, pool 464 = 4 * 116; at
    R = 0.2019: total floor(581.472) = 581, quota floor(116.2944) = 116, pool 465 = 4 * 116 + 1; at
    R = 0.2022: total 582, quota 116, pool 466: 116 + 2 leftovers; R = 0.2025: total 583, quota 116, pool 467:
    3 leftovers. The leftovers go to the first tiles in view order (the thumbnail skipped).
    Kills: ties in remainders to the higher index, leftovers counted from view 0 even when it is the thumbnail."""
    tiles = make_tiles(num_views=5, grid=(24, 24), thumbnail_index=thumb)
    others = [v for v in range(5) if v != thumb]
    for ratio, quota, extra in (("0.2", 115, 1), ("0.2022", 116, 2), ("0.2025", 116, 3), ("0.21", 120, 0)):
        budgets = UniformAllocator()(tiles, None, float(ratio)).tolist()
        total = math.floor(Fraction(ratio) * 5 * 576)
        pool = total - quota
        expected = [0] * 5
        expected[thumb] = quota
        for rank, v in enumerate(others):
            expected[v] = pool // 4 + (1 if rank < extra else 0)
        assert pool % 4 == extra, ratio
        assert budgets == expected, ratio
        # equal saliency (identical tile CLS tokens): HERO splits exactly like the uniform allocator
        same = tiles.replace(cls_tokens=torch.ones(5, 8))
        assert HeroAllocator()(same, None, float(ratio)).tolist() == expected, ratio


def test_apportion_ties_and_caps_pinned() -> None:
    """Kills: ties to the higher index, a saturated entry re-opened, the cut-off of a cap dropped instead of
    re-apportioned, even split on zero mass skipped."""
    assert apportion(7, [1, 1, 1, 1], [5, 5, 5, 5]) == [2, 2, 2, 1]
    assert apportion(10, [3, 1, 1, 1], [2, 5, 5, 5]) == [2, 3, 3, 2]  # 8 left after the cap: 2.67 each, +1 to first two
    assert apportion(5, [0, 0, 0], [4, 4, 4]) == [2, 2, 1]
    assert apportion(9, [0, 2, 1], [4, 3, 9]) == [0, 3, 6]
    for total in range(0, 21):
        weights, caps = [5, 1, 1, 3], [3, 8, 8, 1]
        assert apportion(total, weights, caps) == _slow_apportion(total, weights, caps), total


# ------------------------------------------------------------------------------ (h) bounds, each side
def _above(x: float) -> float:
    return math.nextafter(x, math.inf)


def _below(x: float) -> float:
    return math.nextafter(x, -math.inf)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1.0, True), (_above(1.0), False), (_below(1.0), True), (0.0, False), (5e-324, True), (-5e-324, False)],
)
def test_keep_ratio_at_its_bounds(value: float, ok: bool) -> None:
    """Kills: ``<`` for ``<=`` at 1 (or the reverse), ``>=`` for ``>`` at 0."""
    if ok:
        assert check_keep_ratio(value) == value
        assert Pruner(keep_ratio=value, allocator=HeroAllocator(), selector=FunctionAwareSelector()).keep_ratio == value
    else:
        with pytest.raises(HeroError, match="keep_ratio"):
            check_keep_ratio(value)
        with pytest.raises(HeroError, match="keep_ratio"):
            presets.hero(value)


@pytest.mark.parametrize("field", ["alpha", "density_weight"])
@pytest.mark.parametrize(
    ("value", "ok"), [(0.0, True), (1.0, True), (_below(0.0), False), (_above(1.0), False), (0, True), (1, True)]
)
def test_unit_interval_fields_at_their_bounds(field: str, value: float, ok: bool) -> None:
    """Kills: an open interval where the spec's is closed ([0, 1]), or the bound moved by one step."""
    if ok:
        assert getattr(HeroAllocator(**{field: value}), field) == float(value)
    else:
        with pytest.raises(HeroError, match=field):
            HeroAllocator(**{field: value})


@pytest.mark.parametrize("field", ["tau_v", "tau_t"])
@pytest.mark.parametrize(
    ("value", "ok"), [(0.0, False), (-0.0, False), (5e-324, True), (-5e-324, False), (1e308, True)]
)
def test_temperatures_at_zero(field: str, value: float, ok: bool) -> None:
    """Kills: ``>= 0`` for ``> 0`` (tau = 0 divides by zero)."""
    if ok:
        assert getattr(HeroAllocator(**{field: value}), field) == value
    else:
        with pytest.raises(HeroError, match=field):
            HeroAllocator(**{field: value})


def test_alpha_at_its_bounds_decides_which_part_counts() -> None:
    """alpha = 1: relevance takes no part (and is not read: ``uses_relevance`` False); alpha = 0: saliency none.
    Kills: ``alpha <= 1`` for ``alpha < 1`` in ``uses_relevance`` / the relevance branch, the parts swapped."""
    cls = [[1.0, 0.0], [0.3, 1.0], [1.0, 0.1]]
    tiles = _tiles(cls, [[True] * 4] * 3, (2, 2), thumb=0)
    relevance = torch.tensor([0.0, 0.9, 0.1])
    one = HeroAllocator(alpha=1.0, tau_v=0.1)
    assert not one.uses_relevance and HeroAllocator(alpha=_below(1.0)).uses_relevance
    v = _softmax([_cos(cls[1], cls[0]), _cos(cls[2], cls[0])], 0.1)
    t = _softmax([0.9, 0.1], 0.05)
    got = one.allocate(tiles, relevance, 0.5)
    assert got.importance is not None and got.relevance is not None
    torch.testing.assert_close(got.importance, torch.tensor([0.0, *v]), atol=1e-6, rtol=0)
    assert got.relevance.tolist() == [0.0, 0.0, 0.0]
    zero = HeroAllocator(alpha=0.0).allocate(tiles, relevance, 0.5)
    assert zero.importance is not None and zero.saliency is not None
    torch.testing.assert_close(zero.importance, torch.tensor([0.0, *t]), atol=1e-6, rtol=0)
    assert zero.saliency.tolist() == [0.0, 0.0, 0.0]
    assert v[0] < v[1] and t[0] > t[1]  # the example can fail: saliency and relevance rank the tiles oppositely


@pytest.mark.parametrize(
    ("make", "ok"),
    [
        (lambda: FunctionAwareSelector(low_layers=(0,), high_layers=(0,)), True),
        (lambda: FunctionAwareSelector(low_layers=(-1,)), False),
        (lambda: FunctionAwareSelector(high_layers=(-1,)), False),
        (lambda: ClsAttentionSelector(layer=0), True),
        (lambda: ClsAttentionSelector(layer=-1), False),
        (lambda: ThumbnailAttentionAllocator(layer=0), True),
        (lambda: ThumbnailAttentionAllocator(layer=-1), False),
        (lambda: presets.hero(0.2, depth=24, low_layers=(0,), high_layers=(23,)), True),
        (lambda: presets.hero(0.2, depth=24, low_layers=(0,), high_layers=(24,)), False),
        (lambda: presets.cls_attention(0.2, depth=12, layer=11), True),
        (lambda: presets.cls_attention(0.2, depth=12, layer=12), False),
        (lambda: presets.thumbnail_attention(0.2, depth=9, allocator_layer=8, selector_layer=0), True),
        (lambda: presets.thumbnail_attention(0.2, depth=9, allocator_layer=9, selector_layer=0), False),
        (lambda: presets.hero(0.2, depth=2), True),
        (lambda: presets.hero(0.2, depth=1), False),
        (lambda: presets.uniform_random(0.2, depth=2), True),
        (lambda: presets.uniform_random(0.2, depth=1), False),
    ],
)
def test_layers_and_depth_at_their_bounds(make, ok) -> None:  # type: ignore[no-untyped-def]
    """Layer 0 and depth - 1 are layers; -1 and depth are not; depth 2 is the smallest encoder.
    Kills: ``> 0`` for ``>= 0``, ``> depth`` for ``>= depth``, ``depth < 1`` for ``depth < 2``."""
    if ok:
        make()
    else:
        with pytest.raises(HeroError):
            make()


def test_scaled_layers_at_the_ends_of_both_encoders() -> None:
    """0 -> 0 and 23 -> depth - 1 for every depth; 24 is outside the reference. Hand values for depth 12:
    round(l * 11 / 23): 5 -> 2 (2.39), 6 -> 3 (2.87), 8 -> 4 (3.83), 21 -> 10 (10.04), 22 -> 11 (10.52).
    Kills: scaling by depth / reference instead of (depth - 1) / (reference - 1), floor for round, the
    upper bound check off by one."""
    for depth in (2, 3, 12, 24, 27, 48):
        assert presets.scale_layers((0, 23), depth) == (0, depth - 1)
    assert presets.scale_layers((5, 6, 7, 8, 21, 22), 12) == (2, 3, 4, 10, 11)
    assert presets.scale_layers((5, 6, 7, 8, 21, 22), 27) == (6, 7, 8, 9, 24, 25)  # l * 26 / 23: 5.65, 6.78 ...
    with pytest.raises(HeroError, match="layers"):
        presets.scale_layers((24,), 12)
    assert presets.scale_layers((2,), 7, reference_depth=3) == (6,)


@pytest.mark.parametrize(("index", "ok"), [(0, True), (3, True), (4, False), (-1, False)])
def test_thumbnail_index_at_its_bounds(index: int, ok: bool) -> None:
    """Kills: ``<=`` for ``<`` at V, negative indices accepted (Python would read view V - 1)."""
    tiles = make_tiles(num_views=4, grid=(2, 3))
    if ok:
        assert tiles.replace(thumbnail_index=index).thumbnail_index == index
    else:
        with pytest.raises(HeroError, match="thumbnail_index"):
            tiles.replace(thumbnail_index=index)


@pytest.mark.parametrize(("tile_grid", "ok"), [((1, 3), True), ((3, 1), True), ((2, 2), False), ((1, 2), False)])
def test_tile_grid_must_hold_exactly_the_k_tiles(tile_grid: tuple[int, int], ok: bool) -> None:
    """Kills: the tile grid compared with V instead of K = V - 1."""
    tiles = make_tiles(num_views=4, grid=(2, 3))
    if ok:
        assert tiles.replace(tile_grid=tile_grid).tile_grid == tile_grid
    else:
        with pytest.raises(HeroError, match="tile_grid"):
            tiles.replace(tile_grid=tile_grid)


def test_apportion_total_at_its_bounds() -> None:
    """Kills: ``>=`` for ``>`` at sum(caps) (a full pool refused), 0 refused, -1 accepted."""
    assert apportion(9, [1, 2, 3], [2, 3, 4]) == [2, 3, 4]
    assert apportion(0, [1, 2, 3], [2, 3, 4]) == [0, 0, 0]
    for bad in (10, -1):
        with pytest.raises(ValueError, match="total"):
            apportion(bad, [1, 2, 3], [2, 3, 4])


@pytest.mark.parametrize(
    ("ratio", "count", "floor"), [(0.29, 100, 29), (0.57, 100, 57), (0.58, 100, 58), (0.07, 300, 21), (1.0, 576, 576)]
)
def test_floor_ratio_reads_the_ratio_as_its_decimal(ratio: float, count: int, floor: int) -> None:
    """0.29 * 100 is 28.999999999999996 in floats. Kills: ``math.floor(ratio * count)``."""
    assert floor_ratio(ratio, count) == floor


def test_budgets_equal_to_the_valid_counts_are_accepted_and_one_more_is_not() -> None:
    """A custom allocator's budgets are read back: b_v == n_v passes, n_v + 1 and -1 are refused; a custom
    selector keeping exactly the budgets passes, one token moved to another view is refused.
    Kills: ``<`` for ``<=`` in the budget check, ``0 < b`` for ``0 <= b``, a keep-count check that only looks at
    the total over the views."""
    tiles = make_tiles(num_views=3, grid=(4, 3), padding="rows", thumbnail_index=2)
    capacity = tiles.valid_mask.sum(-1)
    assert capacity.tolist() == [9, 9, 12]

    def allocator(budgets: list[int]):  # type: ignore[no-untyped-def]
        return lambda t, r, k, /: torch.tensor(budgets, dtype=torch.int64)

    def pruner(budgets: list[int], selector=None) -> Pruner:  # type: ignore[no-untyped-def]
        return Pruner(keep_ratio=0.5, allocator=allocator(budgets), selector=selector or RandomSelector())

    plan = pruner([9, 9, 12]).plan(tiles)
    assert torch.equal(plan.keep, tiles.valid_mask)
    assert pruner([0, 0, 0]).plan(tiles).num_kept == 0
    for bad in ([10, 9, 12], [9, 9, 13], [-1, 9, 12]):
        with pytest.raises(HeroError, match="budgets"):
            pruner(bad).plan(tiles)

    class Shifted:
        layers: tuple[int, ...] = ()

        def __init__(self, drop: int) -> None:
            self.drop = drop

        def __call__(self, t, budgets, /):  # type: ignore[no-untyped-def]
            keep = RandomSelector()(t, budgets).clone()
            if self.drop:  # one token moved from view 0 to a free valid position of view 1: the total unchanged
                keep[0, keep[0].nonzero()[0]] = False
                keep[1, (t.valid_mask[1] & ~keep[1]).nonzero()[0]] = True
            return keep

    assert pruner([3, 4, 5], Shifted(0)).plan(tiles).keep.sum(-1).tolist() == [3, 4, 5]
    with pytest.raises(HeroError, match="keep mask"):
        pruner([3, 4, 5], Shifted(1)).plan(tiles)


def test_the_smallest_and_largest_ratios_keep_nothing_and_everything() -> None:
    """V = 4, N = 10: R = 0.025 gives floor(R V N) = 1 token over the image, and it goes to a tile (the thumbnail's
    quota floor(R N) = 0); R = 0.0249 keeps none; R = 1 keeps every valid token.
    Kills: the total computed with ceil or round, the thumbnail quota rounded up."""
    tiles = make_tiles(num_views=4, grid=(2, 5), thumbnail_index=3, seed=4)
    plan = presets.hero(0.025, low_layers=(5,), high_layers=(21,)).plan(tiles)
    assert plan.budgets.tolist()[3] == 0 and plan.num_kept == 1
    assert presets.hero(0.0249, low_layers=(5,), high_layers=(21,)).plan(tiles).num_kept == 0
    everything = presets.hero(1.0, low_layers=(5,), high_layers=(21,)).plan(tiles)
    assert torch.equal(everything.keep, tiles.valid_mask)
