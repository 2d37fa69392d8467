"""Host-device syncs of the planner: ``Pruner.plan`` reads the device once per image (issue 11, item 3).

``count_host_syncs`` follows where each tensor lives, so these run on the CPU; ``tests/adapters/test_gpu.py``
checks the same claims with CUDA's own sync detection.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from hero_core import HeroError, Pruner, presets
from hero_core.allocators import HeroAllocator, exact_split, tile_views
from hero_core.selectors import FunctionAwareSelector
from hero_core.testing import count_host_syncs, encoded_tiles, keep_ratios, make_tiles

from .registry import PRESETS, tiles_for


def _planner_syncs(pruner: Pruner, tiles, relevance=None) -> int:
    fresh = tiles.replace()  # no host facts read yet, as an adapter hands them over
    with count_host_syncs() as syncs:
        pruner.plan(fresh, relevance)
    return syncs.count


def test_the_counter_sees_reads_of_device_tensors_only():
    weights = torch.randn(4)  # made before the block: "on the device"
    with count_host_syncs() as syncs:
        doubled = weights * 2  # no sync
        doubled.sum().item()  # 1
        bool(doubled.any())  # 2
        doubled[doubled > 0]  # 3 (a data-dependent shape)
        host = doubled.cpu()  # 4
        host.tolist()  # on the host: none
        torch.arange(3).tolist()  # made on the host: none
        torch.tensor([1.0, 2.0]).nonzero()  # none
    assert syncs.count == 4, syncs.table()
    assert [op for op, _, _ in syncs.calls] == ["item", "__bool__", "__getitem__", "cpu"]


@pytest.mark.parametrize("name", sorted(PRESETS))
@given(tiles=encoded_tiles(), ratio=keep_ratios())
def test_every_preset_plans_with_one_host_sync(name, tiles, ratio):
    tiles = tiles_for(name, tiles)
    relevance = torch.linspace(-0.2, 0.4, tiles.num_views)
    pruner = presets.get(name, ratio)
    # at R = 1 an exact-total preset keeps every valid token without reading anything (test_keeps_all.py)
    assert _planner_syncs(pruner, tiles, relevance) == (0 if pruner.keeps_all() else 1)


def test_plan_reads_the_device_once_per_image_whatever_the_view_count():
    pruner = presets.hero(0.25)
    for views in (1, 2, 5, 13):
        tiles = make_tiles(num_views=views, grid=(6, 6))
        assert _planner_syncs(pruner, tiles, torch.randn(views)) == 1


def _custom_allocator(tiles, relevance, keep_ratio):
    weights = torch.ones(len(tile_views(tiles)), dtype=torch.float64, device=tiles.device)
    return exact_split(tiles, keep_ratio, weights)


def _custom_selector(tiles, budgets):
    return FunctionAwareSelector()(tiles, budgets)


_custom_selector.layers = FunctionAwareSelector().layers  # type: ignore[attr-defined]


def test_custom_parts_cost_one_sync_each_and_are_still_checked():
    tiles = make_tiles(num_views=5, grid=(4, 4))
    selector = FunctionAwareSelector()
    # a custom allocator: its inputs are checked before it runs (1); exact_split's weights (1); its budgets
    # read back (1), whatever it did to them after exact_split
    assert _planner_syncs(Pruner(0.3, _custom_allocator, selector), tiles) == 3
    # a custom selector: the budgets' fetch (1), its keep mask checked (1)
    assert _planner_syncs(Pruner(0.3, HeroAllocator(), _custom_selector), tiles) == 2


def test_an_in_place_edit_of_remembered_budgets_is_read_back_and_refused():
    def inflating(tiles, relevance, keep_ratio):
        budgets = exact_split(tiles, keep_ratio, torch.ones(tiles.num_views - 1, dtype=torch.float64))
        budgets[0] += 10_000  # after exact_split remembered its counts
        return budgets

    with pytest.raises(HeroError, match=r"budgets=.*valid tokens of view"):
        Pruner(0.3, inflating, FunctionAwareSelector()).plan(make_tiles(num_views=3, grid=(4, 4)))


def test_a_subclass_of_a_builtin_selector_is_checked_like_a_custom_one():
    class Greedy(FunctionAwareSelector):
        def __call__(self, tiles, budgets):
            return torch.ones(tiles.num_views, tiles.num_tokens, dtype=torch.bool)  # ignores the budgets

    with pytest.raises(HeroError, match="Greedy keep mask"):
        Pruner(0.3, HeroAllocator(), Greedy()).plan(make_tiles(num_views=3, grid=(4, 4)))


@pytest.mark.parametrize("field", ["cls_tokens", "cls_attention", "relevance"])
def test_nan_is_refused_inside_the_one_sync(field):
    tiles = make_tiles(num_views=3, grid=(4, 4))
    relevance = torch.zeros(3)
    if field == "relevance":
        relevance[1] = float("nan")
    else:
        tiles = tiles.replace(**{field: getattr(tiles, field).clone().fill_(float("nan"))})
    with count_host_syncs() as syncs, pytest.raises(HeroError, match=rf"^{field}=.*finite"):
        presets.hero(0.3).plan(tiles, relevance)
    assert syncs.count == 1


def test_a_refused_relevance_does_not_stay_queued_on_the_tiles():
    tiles = make_tiles(num_views=3, grid=(4, 4))
    with pytest.raises(HeroError, match=r"^relevance="):
        presets.hero(0.3).plan(tiles, torch.tensor([0.0, float("nan"), 0.1]))
    with pytest.raises(HeroError, match=r"^keep_ratio="):
        HeroAllocator()(tiles, torch.tensor([0.0, float("nan"), 0.1]), 2.0)
    plan = presets.hero(0.3).plan(tiles, torch.zeros(3))  # the same tiles plan again
    assert plan.keep.sum(-1).tolist() == plan.budgets.tolist()


def test_budgets_on_another_device_or_edited_through_data_are_refused():
    def edited(tiles, relevance, keep_ratio):
        budgets = exact_split(tiles, keep_ratio, torch.ones(tiles.num_views - 1, dtype=torch.float64))
        budgets.data[0] = 10_000  # does not bump the version counter: a custom allocator is read back anyway
        return budgets

    with pytest.raises(HeroError, match=r"budgets=.*valid tokens of view"):
        Pruner(0.3, edited, FunctionAwareSelector()).plan(make_tiles(num_views=3, grid=(4, 4)))


def test_planning_the_same_tiles_again_costs_only_the_weights_read():
    tiles = make_tiles(num_views=5, grid=(4, 4))
    relevance = torch.linspace(-0.2, 0.4, 5)
    pruner = presets.hero(0.3)
    first = pruner.plan(tiles, relevance)
    with count_host_syncs() as syncs:
        again = pruner.plan(tiles, relevance)  # the host facts and this relevance were read already
    assert syncs.count == 1, syncs.table()  # the tile weights (they depend on the relevance)
    assert torch.equal(first.keep, again.keep)
    with pytest.raises(HeroError, match=r"^relevance="):  # a new tensor is still checked
        pruner.plan(tiles, torch.tensor([0.0, float("nan"), 0.1, 0.2, 0.3]))
