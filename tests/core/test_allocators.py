"""Budget invariants of every allocator, and slow oracles for HERO's two budget modes."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from hero_core import HeroAllocator
from hero_core._arith import apportion, floor_ratio
from hero_core.testing import check_allocator, encoded_tiles, expected_total, keep_ratios, make_tiles, relevances

from .registry import ALLOCATORS


@pytest.mark.parametrize("row", ALLOCATORS, ids=lambda r: r.id)
@given(data=st.data())
def test_allocator_invariants(row, data):
    tiles = data.draw(encoded_tiles())
    relevance = data.draw(st.one_of(st.none(), relevances(tiles.num_views)))
    ratio = data.draw(keep_ratios())
    check_allocator(row.make(), tiles, relevance, ratio, exact_total=row.exact_total)


@pytest.mark.parametrize("row", [r for r in ALLOCATORS if r.exact_total], ids=lambda r: r.id)
@given(tiles=encoded_tiles())
def test_ratio_one_keeps_every_valid_token(row, tiles):
    budgets = row.make()(tiles, None, 1.0)
    assert torch.equal(budgets, tiles.valid_mask.sum(-1))


@given(tiles=encoded_tiles(), ratio=keep_ratios(), data=st.data())
def test_paper_thumbnail_quota(tiles, ratio, data):
    """The thumbnail takes min(floor(R N), n_thumb), plus the surplus only when the tiles are full."""
    relevance = data.draw(st.one_of(st.none(), relevances(tiles.num_views)))
    budgets = HeroAllocator()(tiles, relevance, ratio)
    capacity = tiles.valid_mask.sum(-1)
    thumb = tiles.thumbnail_index
    quota = min(math.floor(Decimal(repr(ratio)) * tiles.num_tokens), int(capacity[thumb]))
    tiles_full = all(int(budgets[v]) == int(capacity[v]) for v in range(tiles.num_views) if v != thumb)
    if tiles_full:
        assert quota <= int(budgets[thumb]) <= int(capacity[thumb])
    else:
        assert int(budgets[thumb]) == quota


@given(tiles=encoded_tiles(max_views=8), ratio=keep_ratios(), data=st.data())
def test_paper_budgets_match_slow_oracle(tiles, ratio, data):
    """Paper mode against a slow, obviously correct re-implementation with exact rationals."""
    relevance = data.draw(st.one_of(st.none(), relevances(tiles.num_views)))
    allocator = HeroAllocator(alpha=data.draw(st.sampled_from([0.0, 0.3, 0.5, 1.0])))
    importance = allocator.importance(tiles, relevance if allocator.uses_relevance else None)[0].tolist()
    budgets = allocator(tiles, relevance if allocator.uses_relevance else None, ratio).tolist()
    assert budgets == _slow_paper_budgets(tiles, ratio, importance)


def _slow_paper_budgets(tiles, ratio, importance):
    V, N, thumb = tiles.num_views, tiles.num_tokens, tiles.thumbnail_index
    cap = [int(c) for c in tiles.valid_mask.sum(-1)]
    r = Fraction(Decimal(repr(ratio)))
    total = math.floor(r * V * N)
    b = [0] * V
    b[thumb] = min(math.floor(r * N), cap[thumb])
    pool = total - b[thumb]
    tiles_idx = [v for v in range(V) if v != thumb]
    if pool >= sum(cap[v] for v in tiles_idx):
        for v in tiles_idx:
            b[v] = cap[v]
        b[thumb] = min(b[thumb] + pool - sum(cap[v] for v in tiles_idx), cap[thumb])
        return b
    fixed = {}
    while True:  # water-filling: fix every tile whose proportional quota reaches its cap
        open_ = [v for v in tiles_idx if v not in fixed and cap[v] > 0]
        left = pool - sum(fixed.values())
        weights = {v: Fraction(importance[v]) for v in open_}
        if sum(weights.values()) == 0:
            weights = {v: Fraction(1) for v in open_}
        mass = sum(weights.values())
        quota = {v: left * weights[v] / mass for v in open_}
        newly = [v for v in open_ if quota[v] >= cap[v]]
        if not newly:
            break
        for v in newly:
            fixed[v] = cap[v]
    for v, value in fixed.items():
        b[v] = value
    for v in open_:
        b[v] = math.floor(quota[v])
    leftover = left - sum(math.floor(quota[v]) for v in open_)
    ranked = sorted(open_, key=lambda v: (-(quota[v] - math.floor(quota[v])), v))
    for v in ranked[:leftover]:
        b[v] += 1
    return b


@given(tiles=encoded_tiles(), ratio=keep_ratios(), data=st.data())
def test_reference_floors_match_slow_loop(tiles, ratio, data):
    """Reference mode: b_thumb = floor(R N); b_i = min(floor(s_i * floor(K N R)), n_i), nothing redistributed."""
    relevance = data.draw(st.one_of(st.none(), relevances(tiles.num_views)))
    alpha = data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    allocator = HeroAllocator(alpha=alpha, density_weight=0.2, exact=False)
    budgets = allocator(tiles, relevance, ratio).tolist()
    V, N, thumb = tiles.num_views, tiles.num_tokens, tiles.thumbnail_index
    cls = tiles.cls_tokens.double().tolist()
    cap = [int(c) for c in tiles.valid_mask.sum(-1)]
    tile_ids = [v for v in range(V) if v != thumb]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / max(
            math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)), 1e-8
        )

    def softmax(xs, tau):
        top = max(xs)
        e = [math.exp((x - top) / tau) for x in xs]
        return [x / sum(e) for x in e]

    v = softmax([cos(cls[i], cls[thumb]) for i in tile_ids], 0.05) if tile_ids else []
    if relevance is not None and alpha < 1 and tile_ids:
        t = softmax([float(relevance[i]) for i in tile_ids], 0.05)
        s = [alpha * a + (1 - alpha) * b for a, b in zip(v, t)]
    else:
        s = v
    dens = [cap[i] / N for i in tile_ids]
    s = [0.2 * (d / (sum(dens) + 1e-6)) + 0.8 * x for d, x in zip(dens, s)]
    pool = math.floor(Fraction(Decimal(repr(ratio))) * len(tile_ids) * N)
    want = [0] * V
    want[thumb] = min(math.floor(Fraction(Decimal(repr(ratio))) * N), cap[thumb])
    for i, score in zip(tile_ids, s):
        want[i] = min(math.floor(score * pool), cap[i])
    # the slow loop sums in another order: allow a floor to flip only where the product sits on an integer
    for got, expect, i in zip(budgets, want, range(V)):
        if got != expect:
            k = tile_ids.index(i)
            assert abs(s[k] * pool - round(s[k] * pool)) < 1e-9, (budgets, want)


@given(tiles=encoded_tiles(max_views=9, paddings=("none", "rows", "random")), ratio=keep_ratios(), data=st.data())
def test_paper_budgets_monotone_in_importance(tiles, ratio, data):
    """A tile with a strictly higher score and at least the capacity of another never gets fewer tokens."""
    relevance = data.draw(st.one_of(st.none(), relevances(tiles.num_views)))
    allocator = HeroAllocator()
    importance = allocator.importance(tiles, relevance)[0]
    budgets = allocator(tiles, relevance, ratio)
    capacity = tiles.valid_mask.sum(-1)
    tile_ids = [v for v in range(tiles.num_views) if v != tiles.thumbnail_index]
    for i in tile_ids:
        for j in tile_ids:
            if importance[i] > importance[j] and capacity[i] >= capacity[j]:
                assert budgets[i] >= budgets[j], (i, j, importance.tolist(), budgets.tolist(), capacity.tolist())


@given(tiles=encoded_tiles(), ratio=keep_ratios(), data=st.data())
def test_permuting_tiles_permutes_budgets(tiles, ratio, data):
    tile_ids = [v for v in range(tiles.num_views) if v != tiles.thumbnail_index]
    assume(len(tile_ids) >= 2)
    perm = data.draw(st.permutations(tile_ids))
    order = list(range(tiles.num_views))
    for src, dst in zip(tile_ids, perm):
        order[src] = dst
    index = torch.tensor(order)
    permuted = tiles.replace(
        cls_tokens=tiles.cls_tokens[index],
        cls_attention=tiles.cls_attention[:, index],
        valid_mask=tiles.valid_mask[index],
        tile_grid=None,
    )
    importance = HeroAllocator().importance(tiles, None)[0]
    # equal scores tie by index (documented), which a permutation legitimately changes
    assume(len(set(importance[tile_ids].tolist())) == len(tile_ids))
    for allocator in (HeroAllocator(), HeroAllocator(density_weight=0.2, exact=False)):
        assert torch.equal(allocator(permuted, None, ratio), allocator(tiles, None, ratio)[index])


def test_alpha_zero_follows_relevance_alone():
    tiles = make_tiles(num_views=5, grid=(4, 4), seed=3)
    relevance = torch.tensor([0.0, 0.1, 0.9, 0.2, 0.3])
    budgets = HeroAllocator(alpha=0.0, tau_t=0.01)(tiles, relevance, 0.25)
    assert int(budgets[2]) == 16  # the relevant tile fills up first
    assert int(budgets.sum()) == 20


def test_zero_total_scores_split_evenly():
    assert apportion(7, [0.0, 0.0, 0.0], [5, 5, 5]) == [3, 2, 2]
    # tile 1 saturates at 3; the last unit is split evenly between the zero scores, the tie to index 0
    assert apportion(4, [0.0, 1.0, 0.0], [2, 3, 9]) == [1, 3, 0]


def test_apportion_ties_go_to_lower_index_and_caps_hold():
    assert apportion(3, [1.0, 1.0, 1.0, 1.0], [5, 5, 5, 5]) == [1, 1, 1, 0]
    assert apportion(10, [0.7, 0.2, 0.1], [2, 10, 10]) == [2, 5, 3]
    assert apportion(0, [0.5, 0.5], [1, 1]) == [0, 0]
    with pytest.raises(ValueError, match="total"):
        apportion(5, [1.0], [4])


def test_floor_ratio_reads_decimals():
    assert floor_ratio(0.29, 100) == 29  # 0.29 * 100 == 28.999999999999996 in floats
    assert floor_ratio(0.2, 5 * 576) == 576
    assert floor_ratio(1e-3, 576) == 0
    assert expected_total(make_tiles(num_views=5, grid=(24, 24)), 0.4) == 1152


@given(tiles=encoded_tiles(), data=st.data())
def test_paper_importance_matches_eq_1_to_3_in_plain_python(tiles, data):
    """Eq. 1-3 recomputed with math: cosine to the thumbnail, two tempered softmaxes, the alpha mix."""
    relevance = data.draw(st.one_of(st.none(), relevances(tiles.num_views)))
    alpha = data.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    tau_v, tau_t = data.draw(st.sampled_from([0.01, 0.05, 0.09])), data.draw(st.sampled_from([0.01, 0.05]))
    allocator = HeroAllocator(alpha=alpha, tau_v=tau_v, tau_t=tau_t)
    importance, saliency, relevance_part = allocator.importance(tiles, relevance)
    thumb = tiles.thumbnail_index
    tile_ids = [v for v in range(tiles.num_views) if v != thumb]
    cls = tiles.cls_tokens.double().tolist()

    def cos(a, b):
        norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
        return sum(x * y for x, y in zip(a, b)) / max(norm, 1e-8)

    def softmax(xs, tau):
        top = max(xs)
        e = [math.exp((x - top) / tau) for x in xs]
        return [x / sum(e) for x in e]

    if not tile_ids:
        assert importance.tolist() == [0.0]
        return
    v = softmax([cos(cls[i], cls[thumb]) for i in tile_ids], tau_v)
    if relevance is None or alpha == 1.0:
        want_s, want_v, want_t = v, v, [0.0] * len(v)
    else:
        t = softmax([float(relevance[i]) for i in tile_ids], tau_t)
        want_v, want_t = [alpha * x for x in v], [(1 - alpha) * x for x in t]
        want_s = [a + b for a, b in zip(want_v, want_t)]
    for got, want in ((importance, want_s), (saliency, want_v), (relevance_part, want_t)):
        assert got[thumb] == 0.0
        assert [float(got[i]) for i in tile_ids] == pytest.approx(want, abs=1e-9)
