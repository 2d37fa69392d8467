"""Selector invariants over every registered selector, plus oracles for the vectorised ranking."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hero_core import FunctionAwareSelector, HeroAllocator, StridedSelector, UniformAllocator
from hero_core.selectors._rank import keep_top
from hero_core.testing import check_allocator, check_selector, encoded_tiles, keep_ratios, make_tiles

from .registry import SELECTORS


def _budgets(tiles, ratio):
    return check_allocator(UniformAllocator(), tiles, None, ratio, exact_total=True)


@pytest.mark.parametrize("row", SELECTORS, ids=lambda r: r.id)
@given(tiles=encoded_tiles(), ratio=keep_ratios())
def test_selector_invariants(row, tiles, ratio):
    check_selector(row.make(), tiles, _budgets(tiles, ratio))


@pytest.mark.parametrize("row", SELECTORS, ids=lambda r: r.id)
@given(tiles=encoded_tiles(separated=True), ratio=keep_ratios())
def test_same_keep_set_for_half_precision_inputs(row, tiles, ratio):
    check_selector(row.make(), tiles, _budgets(tiles, ratio), dtypes=True)


@pytest.mark.parametrize("row", SELECTORS, ids=lambda r: r.id)
@given(tiles=encoded_tiles())
def test_ratio_one_keeps_every_valid_token(row, tiles):
    keep = row.make()(tiles, tiles.valid_mask.sum(-1))
    assert torch.equal(keep, tiles.valid_mask)


@pytest.mark.parametrize("row", [r for r in SELECTORS if r.scale_invariant], ids=lambda r: r.id)
@given(tiles=encoded_tiles(), ratio=keep_ratios(), exponent=st.integers(-6, 6))
def test_positive_rescaling_keeps_the_selection(row, tiles, ratio, exponent):
    budgets = _budgets(tiles, ratio)
    scaled = tiles.replace(cls_attention=tiles.cls_attention * 2.0**exponent)  # exact in floating point
    assert torch.equal(row.make()(tiles, budgets), row.make()(scaled, budgets))


@given(
    scores=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=1, max_size=30),
    data=st.data(),
)
def test_keep_top_matches_slow_loop_with_ties(scores, data):
    """Oracle: sort positions by (-score, index) in plain Python; ties go to the lower index."""
    n = len(scores)
    valid = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    budget = data.draw(st.integers(0, sum(valid)))
    ranked = sorted((i for i in range(n) if valid[i]), key=lambda i: (-scores[i], i))[:budget]
    want = [i in ranked for i in range(n)]
    got = keep_top(torch.tensor([scores]), torch.tensor([budget]), torch.tensor([valid]))
    assert got[0].tolist() == want


def test_function_aware_reads_low_layers_for_tiles_and_high_for_thumbnail():
    tiles = make_tiles(num_views=3, grid=(2, 2), layers=(0, 1), num_heads=1, separated=True)
    attention = torch.zeros(2, 3, 1, 4)
    attention[0, :, 0] = torch.tensor([0.4, 0.3, 0.2, 0.1])  # layer 0 prefers position 0
    attention[1, :, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # layer 1 prefers position 3
    tiles = tiles.replace(cls_attention=attention)
    keep = FunctionAwareSelector(low_layers=(0,), high_layers=(1,))(tiles, torch.tensor([1, 1, 1]))
    assert keep.nonzero().tolist() == [[0, 3], [1, 0], [2, 0]]  # thumbnail (view 0) follows layer 1


def test_function_aware_averages_heads_and_layers():
    tiles = make_tiles(num_views=2, grid=(1, 3), layers=(3, 4), num_heads=2)
    attention = torch.tensor([[0.5, 0.0, 0.1], [0.0, 0.2, 0.1]])  # two heads of layer 3
    full = torch.zeros(2, 2, 2, 3)
    full[0, 1] = attention  # tile (view 1), layer 3
    full[1, 1] = torch.tensor([[0.0, 0.0, 0.3], [0.0, 0.0, 0.3]])  # layer 4 lifts position 2
    tiles = tiles.replace(cls_attention=full)
    # head means: layer 3 -> [0.25, 0.1, 0.1]; layer 4 -> [0, 0, 0.3]; layer mean -> [0.125, 0.05, 0.2]
    keep = FunctionAwareSelector(low_layers=(3, 4), high_layers=(3,))(tiles, torch.tensor([0, 2]))
    assert keep[1].tolist() == [True, False, True]


def test_softmax_mean_differs_from_mean_where_heads_disagree():
    tiles = make_tiles(num_views=2, grid=(1, 3), layers=(0,), num_heads=2)
    full = torch.zeros(1, 2, 2, 3)
    full[0, 1] = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.5, 0.5]])
    tiles = tiles.replace(cls_attention=full)
    budgets = torch.tensor([0, 1])
    plain = FunctionAwareSelector(low_layers=(0,), high_layers=(0,))(tiles, budgets)
    resoft = FunctionAwareSelector(low_layers=(0,), high_layers=(0,), head_reduction="softmax_mean")(tiles, budgets)
    assert plain[1].tolist() == [True, False, False]  # mean: [0.45, 0.25, 0.25]
    # softmax per head then mean: exp(0.9) dominates head 0 less than exp(0.5) twice in head 1
    manual = torch.softmax(full[0, 1], dim=-1).mean(0)
    assert resoft[1].tolist() == (manual == manual.max()).tolist()


def test_strided_at_quarter_ratio_is_stride_two():
    tiles = make_tiles(num_views=1, grid=(4, 4))
    keep = StridedSelector()(tiles, torch.tensor([4]))
    assert keep.view(4, 4).nonzero().tolist() == [[0, 0], [0, 2], [2, 0], [2, 2]]


@pytest.mark.gpu
def test_hero_plan_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    tiles = make_tiles(num_views=5, grid=(24, 24), num_heads=4, padding="rows", seed=1)
    gpu = tiles.replace(
        cls_tokens=tiles.cls_tokens.cuda(), cls_attention=tiles.cls_attention.cuda(), valid_mask=tiles.valid_mask.cuda()
    )
    budgets = HeroAllocator()(tiles, None, 0.2)
    assert torch.equal(HeroAllocator()(gpu, None, 0.2).cpu(), budgets)
    assert torch.equal(FunctionAwareSelector()(gpu, budgets.cuda()).cpu(), FunctionAwareSelector()(tiles, budgets))
