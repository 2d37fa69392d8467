"""Every bad input raises HeroError naming the field, the value and the valid range."""

from __future__ import annotations

import math

import pytest
import torch

from hero_core import (
    ClsAttentionSelector,
    EncodedTiles,
    FunctionAwareSelector,
    HeroAllocator,
    HeroError,
    ModelShape,
    Pruner,
    RandomSelector,
    ThumbnailAttentionAllocator,
    UniformAllocator,
    presets,
)
from hero_core.testing import check_allocator, check_selector, make_tiles


@pytest.fixture
def tiles():
    return make_tiles(num_views=3, grid=(2, 3), num_heads=2)


@pytest.mark.parametrize("ratio", [0, 0.0, -0.1, 1.5, math.nan, math.inf, "0.2", None, True])
def test_keep_ratio_outside_unit_interval(ratio):
    with pytest.raises(HeroError, match=r"keep_ratio=.*\(0, 1\]"):
        presets.hero(ratio)


def _fields(tiles):
    return {name: getattr(tiles, name) for name in tiles.__dataclass_fields__}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda f: {"cls_tokens": f["cls_tokens"].clone().index_fill_(1, torch.tensor([0]), math.nan)}, "cls_tokens"),
        (lambda f: {"cls_attention": f["cls_attention"].clone().fill_(math.inf)}, "cls_attention"),
        (lambda f: {"cls_tokens": f["cls_tokens"][:2]}, "cls_tokens"),
        (lambda f: {"cls_tokens": f["cls_tokens"][0]}, "cls_tokens"),
        (lambda f: {"cls_attention": f["cls_attention"][..., :5]}, "cls_attention"),
        (lambda f: {"cls_attention": f["cls_attention"][:, :2]}, "cls_attention"),
        (lambda f: {"cls_attention": (f["cls_attention"] > 0.1).long()}, "cls_attention"),
        (lambda f: {"valid_mask": f["valid_mask"].long()}, "valid_mask"),
        (lambda f: {"thumbnail_index": 3}, "thumbnail_index"),
        (lambda f: {"thumbnail_index": -1}, "thumbnail_index"),
        (lambda f: {"grid": (3, 3)}, "grid"),
        (lambda f: {"grid": (6,)}, "grid"),
        (lambda f: {"tile_grid": (2, 2)}, "tile_grid"),
        (lambda f: {"attention_layers": (5, 6)}, "attention_layers"),
        (lambda f: {"attention_layers": (5, 5, 6, 7, 8, 21)}, "attention_layers"),
        (lambda f: {"attention_layers": [5, 6, 7, 8, 21, 22]}, "attention_layers"),
    ],
)
def test_encoded_tiles_rejects(tiles, change, field):
    values = _fields(tiles)
    values.update(change(values))
    with pytest.raises(HeroError, match=rf"^{field}="):
        EncodedTiles(**values).require_finite()  # NaN/inf: at the first read of the values (the planner's fetch)


def test_selector_asking_for_unrecorded_layer(tiles):
    budgets = torch.tensor([1, 1, 1])
    with pytest.raises(HeroError, match=r"^FunctionAwareSelector.low_layers=\(9,\) is invalid.*recorded"):
        FunctionAwareSelector(low_layers=(9,))(tiles, budgets)
    with pytest.raises(HeroError, match="recorded"):
        ClsAttentionSelector(layer=0)(tiles, budgets)
    with pytest.raises(HeroError, match="recorded"):
        presets.thumbnail_attention(0.5, allocator_layer=1).plan(tiles)


@pytest.mark.parametrize(
    "relevance",
    [torch.zeros(2), torch.zeros(3, 1), torch.tensor([0.0, math.nan, 0.1]), torch.tensor([0, 1, 2]), [0.1, 0.2, 0.3]],
)
def test_relevance_of_wrong_length_or_non_finite(tiles, relevance):
    with pytest.raises(HeroError, match=r"^relevance="):
        presets.hero(0.5).plan(tiles, relevance)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: HeroAllocator(tau_v=0), "tau_v"),
        (lambda: HeroAllocator(tau_t=-0.05), "tau_t"),
        (lambda: HeroAllocator(tau_v=math.inf), "tau_v"),
        (lambda: HeroAllocator(alpha=1.2), "alpha"),
        (lambda: HeroAllocator(alpha=-0.1), "alpha"),
        (lambda: HeroAllocator(density_weight=2), "density_weight"),
        (lambda: HeroAllocator(exact=1), "exact"),
        (lambda: FunctionAwareSelector(low_layers=()), "low_layers"),
        (lambda: FunctionAwareSelector(high_layers=(-1,)), "high_layers"),
        (lambda: FunctionAwareSelector(head_reduction="max"), "head_reduction"),
        (lambda: ClsAttentionSelector(layer=-2), "layer"),
        (lambda: ThumbnailAttentionAllocator(layer=1.5), "layer"),
        (lambda: RandomSelector(seed="x"), "seed"),
        (lambda: presets.hero(0.2, alpah=0.3), "alpah"),
        (lambda: presets.get("fastv", 0.2), "preset"),
        (lambda: ModelShape.from_config({"hidden_size": 8}), "config"),
    ],
)
def test_hyperparameters_out_of_range(make, field):
    with pytest.raises(HeroError, match=rf"^{field}=.*expected"):
        make()


def test_thumbnail_attention_needs_tile_grid(tiles):
    with pytest.raises(HeroError, match=r"^tile_grid=None"):
        presets.thumbnail_attention(0.5).plan(tiles.replace(tile_grid=None))


def test_broken_custom_parts_are_caught_by_the_pruner(tiles):
    def greedy(tiles, relevance, ratio, /):
        return tiles.valid_mask.sum(-1) + 1

    greedy.uses_relevance = False  # type: ignore[attr-defined]
    with pytest.raises(HeroError, match="budgets"):
        Pruner(0.5, greedy, FunctionAwareSelector()).plan(tiles)

    def everything(tiles, budgets, /):
        return torch.ones_like(tiles.valid_mask)

    everything.layers = ()  # type: ignore[attr-defined]
    with pytest.raises(HeroError, match="keep mask"):
        Pruner(0.5, UniformAllocator(), everything).plan(tiles)
    with pytest.raises(HeroError, match=r"selector\.layers"):
        Pruner(0.5, UniformAllocator(), lambda t, b, /: b)


def test_testing_kit_catches_broken_parts(tiles):
    """The checkers must be able to fail: one broken allocator and one broken selector."""

    def floors_only(tiles, relevance, ratio, /):
        return torch.full((tiles.num_views,), int(ratio * tiles.num_tokens) // 2, dtype=torch.int64)

    with pytest.raises(AssertionError, match=r"sum 3 != min\(floor\(R V N\), valid\) 9"):
        check_allocator(floors_only, tiles, None, 0.5, exact_total=True)

    def keeps_padding(tiles, budgets, /):
        rank = torch.arange(tiles.num_tokens).expand(tiles.num_views, -1)
        return rank >= tiles.num_tokens - budgets[:, None]

    padded = make_tiles(num_views=3, grid=(2, 3), padding="rows", pad_amount=0.5)
    with pytest.raises(AssertionError, match="padding position"):
        check_selector(keeps_padding, padded, torch.tensor([2, 1, 1]))


@pytest.mark.parametrize(
    "allocator", [HeroAllocator(), HeroAllocator(exact=False), UniformAllocator(), ThumbnailAttentionAllocator()]
)
@pytest.mark.parametrize("ratio", [math.nan, math.inf, -0.5, 1.5, 0])
def test_allocators_called_directly_check_the_ratio(tiles, allocator, ratio):
    with pytest.raises(HeroError, match=r"^keep_ratio="):
        allocator(tiles, None, ratio)


@pytest.mark.parametrize("relevance", [torch.zeros(2), torch.tensor([0.0, math.nan, 0.1])])
def test_allocators_called_directly_check_the_relevance(tiles, relevance):
    with pytest.raises(HeroError, match=r"^relevance="):
        HeroAllocator()(tiles, relevance, 0.5)


def test_numpy_ratio_is_accepted_and_described_as_a_number(tiles):
    np = pytest.importorskip("numpy")
    assert presets.hero(np.float32(0.5)).keep_ratio == 0.5
    with pytest.raises(HeroError, match=r"^keep_ratio=np.float32\(1.5\)|^keep_ratio=1.5"):
        presets.hero(np.float32(1.5))


@pytest.mark.parametrize("budgets", [torch.tensor([1, 1]), torch.tensor([1.0, 1.0, 1.0]), [1, 1, 1]])
def test_selectors_called_directly_check_the_budgets(tiles, budgets):
    with pytest.raises(HeroError, match=r"^budgets="):
        FunctionAwareSelector()(tiles, budgets)


def test_from_outputs_and_preset_names_reject_malformed_values(tiles):
    class Outputs:
        cls_tokens, cls_attention, valid_mask = tiles.cls_tokens, tiles.cls_attention, tiles.valid_mask
        attention_layers, thumbnail_index, grid = 5, 0, None

    with pytest.raises(HeroError, match=r"^tiles="):
        EncodedTiles.from_outputs(Outputs())
    with pytest.raises(HeroError, match=r"^preset=None"):
        presets.get(None, 0.2)
