"""Nothing to do when the budget keeps every valid token (issue 17, item 4): ``Pruner.keeps_all``.

An exact-total allocator keeps every valid token at R = 1 and, once the valid counts are on the host, at any R
whose total ``floor(R V N)`` reaches them; then ``plan`` runs neither the allocator nor the selector and reads no
value. The plan it returns must be the one planning would have produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import given

from hero_core import HeroAllocator, Pruner, presets
from hero_core.testing import count_host_syncs, encoded_tiles, make_tiles

from .registry import ALLOCATORS, PRESETS, tiles_for


@dataclass(frozen=True)
class _Planned:
    """The same allocator without ``keeps_all``: always run (the oracle for the shortcut)."""

    inner: Any

    @property
    def uses_relevance(self) -> bool:
        return bool(self.inner.uses_relevance)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(getattr(self.inner, "layers", ()))

    def __call__(self, tiles: Any, relevance: Any, keep_ratio: float, /) -> Any:
        return self.inner(tiles, relevance, keep_ratio)


class _Refuse:
    def __call__(self, *args: object) -> Any:
        raise AssertionError("planned although every token is kept")


@pytest.mark.parametrize("row", ALLOCATORS, ids=lambda row: row.id)
def test_keeps_all_exactly_when_the_allocator_keeps_every_token_at_ratio_one(row: Any) -> None:
    tiles = make_tiles(num_views=5, grid=(4, 6), padding="rows", pad_amount=0.5)
    pruner = Pruner(1.0, row.make(), presets.hero(1.0).selector)
    assert pruner.keeps_all(tiles) is row.exact_total
    assert pruner.keeps_all() is row.exact_total


@pytest.mark.parametrize("name", sorted(name for name, exact in PRESETS.items() if exact))
@given(tiles=encoded_tiles())
def test_the_shortcut_gives_the_plan_planning_gives(name: str, tiles: Any) -> None:
    tiles = tiles_for(name, tiles)  # planning (the oracle) runs the selector
    relevance = torch.linspace(-0.3, 0.5, tiles.num_views)
    pruner = presets.get(name, 1.0)
    planned = Pruner(1.0, _Planned(pruner.allocator), pruner.selector).plan(tiles.replace(), relevance)
    fast = pruner.plan(tiles.replace(), relevance)
    assert torch.equal(fast.keep, planned.keep) and torch.equal(fast.keep, tiles.valid_mask)
    assert torch.equal(fast.budgets, planned.budgets) and fast.budgets.dtype == torch.int64
    assert fast.importance is None and fast.keep_ratio == 1.0


@pytest.mark.parametrize("name", sorted(name for name, exact in PRESETS.items() if exact))
def test_ratio_one_reads_nothing_and_runs_no_part(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pruner = presets.get(name, 1.0)
    pruner = Pruner(1.0, pruner.allocator, pruner.selector)
    monkeypatch.setattr(type(pruner.allocator), "__call__", _Refuse().__call__)
    if hasattr(type(pruner.allocator), "allocate"):
        monkeypatch.setattr(type(pruner.allocator), "allocate", _Refuse().__call__)
    monkeypatch.setattr(type(pruner.selector), "__call__", _Refuse().__call__)
    tiles = make_tiles(num_views=3, grid=(4, 4), padding="cols")
    tiles = tiles.replace(cls_tokens=torch.full_like(tiles.cls_tokens, float("nan")))  # never read
    with count_host_syncs() as syncs:
        plan = pruner.plan(tiles, torch.zeros(3))
    assert syncs.count == 0, syncs.table()
    assert torch.equal(plan.keep, tiles.valid_mask)
    assert plan.budgets.tolist() == tiles.valid_mask.sum(-1).tolist() == [16, 12, 12]


def test_reference_floors_are_planned_at_ratio_one() -> None:
    tiles = make_tiles(num_views=5, grid=(4, 4), padding="rows")
    plan = presets.hero_reference(1.0).plan(tiles, torch.linspace(0, 1, 5))
    assert plan.importance is not None  # planned: its floors drop tokens
    assert int(plan.budgets.sum()) < int(tiles.valid_mask.sum())


def test_a_low_ratio_keeps_all_once_the_valid_counts_are_known() -> None:
    # 5 views of 16 positions, the four tiles 3/4 padding: 16 + 4 * 4 = 32 valid; floor(0.4 * 80) = 32 >= 32
    tiles = make_tiles(num_views=5, grid=(4, 4), padding="rows", pad_amount=0.75)
    assert int(tiles.valid_mask.sum()) == 32
    pruner = presets.hero(0.4)
    assert not pruner.keeps_all(tiles)  # the counts are not on the host yet: it would take a read to know
    tiles.fetch()  # the counts reach the host (as in a batched plan)
    assert pruner.keeps_all(tiles)
    assert not presets.hero(0.39).keeps_all(tiles)  # floor(0.39 * 80) = 31 < 32
    with count_host_syncs() as syncs:
        plan = pruner.plan(tiles, torch.zeros(5))
    assert syncs.count == 0, syncs.table()
    assert torch.equal(plan.keep, tiles.valid_mask)
    assert tiles.known_counts(plan.budgets) == (16, 4, 4, 4, 4)


def test_an_allocator_without_keeps_all_is_always_run() -> None:
    calls: list[float] = []
    inner = HeroAllocator()

    def allocator(tiles: Any, relevance: Any, keep_ratio: float, /) -> Any:
        calls.append(keep_ratio)
        return inner(tiles, relevance, keep_ratio)

    pruner = Pruner(1.0, allocator, presets.hero(1.0).selector)
    assert not pruner.keeps_all()
    pruner.plan(make_tiles(num_views=3, grid=(4, 4)))
    assert calls == [1.0]


def test_a_subclass_with_its_own_budgets_does_not_inherit_the_shortcut() -> None:
    class Thumbnails(HeroAllocator):
        """Keeps only the thumbnail: its budgets are not the capacity at R = 1."""

        def allocate(self, tiles: Any, relevance: Any, keep_ratio: float) -> Any:
            budgets = torch.zeros(tiles.num_views, dtype=torch.int64)
            budgets[tiles.thumbnail_index] = int(tiles.valid_mask[tiles.thumbnail_index].sum())
            return __import__("hero_core").Allocation(budgets=budgets)

    pruner = Pruner(1.0, Thumbnails(), presets.hero(1.0).selector)
    assert not pruner.keeps_all()
    plan = pruner.plan(make_tiles(num_views=3, grid=(4, 4)))
    assert plan.budgets.tolist() == [16, 0, 0]

    class Declared(Thumbnails):
        def keeps_all(self, keep_ratio: float, tiles: Any = None) -> bool:
            return False

    assert not Pruner(1.0, Declared(), presets.hero(1.0).selector).keeps_all()
