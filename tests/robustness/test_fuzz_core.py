"""Fuzzing ``hero_core``'s public entry points: every outcome is a correct result or a ``HeroError``."""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hero_core import EncodedTiles, HeroError, Pruner, presets
from hero_core.testing import expected_total, make_tiles

from .common import result_or_hero_error

SPECIAL_RATIOS = (0, -0.1, 1e-9, 1, 1.0000001, float("nan"), float("inf"), -float("inf"), 0.5, 0.2)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-3, 30), max_size=4).map(tuple),
    st.lists(st.integers(-3, 30), max_size=4),
    st.just(torch.tensor(0.5)),
    st.just(1 + 2j),
)
RATIOS = st.one_of(st.sampled_from(SPECIAL_RATIOS), st.floats(allow_nan=True, allow_infinity=True), JUNK)
FIELDS = sorted(
    {"alpha", "density_weight", "exact", "tau_v", "tau_t", "low_layers", "high_layers", "layer", "head_reduction"}
    | {"seed", "allocator_layer", "selector_layer", "depth", "no_such_field"}
)
TILES = make_tiles(num_views=5, grid=(4, 4), layers=tuple(range(24)), padding="rows", seed=1)


def _plan_is_exact(pruner: Pruner, tiles: EncodedTiles, exact: bool) -> None:
    plan = result_or_hero_error(lambda: pruner.plan(tiles))
    if isinstance(plan, HeroError):
        return
    assert plan.keep.shape == tiles.valid_mask.shape and plan.keep.dtype == torch.bool
    assert torch.equal(plan.keep.sum(-1), plan.budgets)
    assert not bool((plan.keep & ~tiles.valid_mask).any())
    if exact:
        assert plan.num_kept == expected_total(tiles, pruner.keep_ratio)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(presets.PRESETS)), RATIOS)
def test_presets_get_takes_a_ratio_in_0_1_or_raises(name: str, ratio: Any) -> None:
    pruner = result_or_hero_error(lambda: presets.get(name, ratio))
    valid = (
        isinstance(ratio, (int, float))
        and not isinstance(ratio, bool)
        and math.isfinite(float(ratio))
        and 0 < float(ratio) <= 1
    )
    assert isinstance(pruner, Pruner) == valid, (name, ratio, pruner)
    if isinstance(pruner, Pruner):
        assert pruner.keep_ratio == float(ratio)
        _plan_is_exact(pruner, TILES, exact=name == "hero")


@settings(max_examples=80, deadline=None)
@given(
    st.one_of(st.sampled_from(sorted(presets.PRESETS)), JUNK),
    st.dictionaries(st.sampled_from(FIELDS), JUNK, max_size=3),
)
def test_presets_get_with_junk_names_and_overrides(name: Any, overrides: dict[str, Any]) -> None:
    pruner = result_or_hero_error(lambda: presets.get(name, 0.3, **overrides))
    if isinstance(pruner, Pruner):
        assert name in presets.PRESETS or name.replace("_", "-") in presets.PRESETS
        _plan_is_exact(pruner, TILES, exact=False)


def _fields(tiles: EncodedTiles) -> dict[str, Any]:
    return {name: getattr(tiles, name) for name in tiles.__dataclass_fields__}


def _poison(tensor: torch.Tensor, value: float, where: int) -> torch.Tensor:
    out = tensor.clone()
    out.view(-1)[where % out.numel()] = value
    return out


TENSOR_FIELDS = ("cls_tokens", "cls_attention", "valid_mask")
CHANGES = (
    "unsqueeze",
    "flatten",
    "squeeze0",
    "empty0",
    "empty_last",
    "grow_last",
    "nan",
    "inf",
    "int",
    "bool",
    "half",
    "bfloat16",
    "double",
    "complex",
    "scalar",
    "list",
    "all_false",
)


def _change(tensor: torch.Tensor, change: str, where: int) -> Any:
    if change == "unsqueeze":
        return tensor.unsqueeze(0)
    if change == "flatten":
        return tensor.flatten()
    if change == "squeeze0":
        return tensor[0]
    if change == "empty0":
        return tensor[:0]
    if change == "empty_last":
        return tensor[..., :0]
    if change == "grow_last":
        return torch.cat([tensor, tensor[..., :1]], dim=-1)
    if change in ("nan", "inf"):
        return _poison(tensor.float(), float(change), where) if tensor.dtype != torch.bool else tensor.float()
    if change == "complex":
        return tensor.to(torch.complex64)
    if change == "scalar":
        return tensor.flatten()[0]
    if change == "list":
        return tensor.tolist()
    if change == "all_false":
        return torch.zeros_like(tensor, dtype=torch.bool)
    dtype = {
        "int": torch.int64,
        "bool": torch.bool,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "double": torch.float64,
    }[change]
    return tensor.to(dtype)


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(TENSOR_FIELDS),
    st.sampled_from(CHANGES),
    st.integers(0, 10_000),
    st.sampled_from(["hero", "hero-reference", "cls-attention", "thumbnail-attention", "uniform-random"]),
)
def test_encoded_tiles_with_malformed_tensors(field: str, change: str, where: int, preset: str) -> None:
    tiles = make_tiles(num_views=5, grid=(4, 4), padding="rows", seed=where % 7)
    values = _fields(tiles)
    values[field] = _change(values[field], change, where)
    built = result_or_hero_error(lambda: EncodedTiles(**values).require_finite())  # NaN/inf: at the first read
    if isinstance(built, HeroError):
        return
    for name in ("cls_tokens", "cls_attention"):  # what was accepted is finite, floating and of the right rank
        tensor = getattr(built, name)
        assert tensor.dtype.is_floating_point and bool(torch.isfinite(tensor).all())
    assert built.valid_mask.dtype == torch.bool
    pruner = presets.get(preset, 0.3)
    _plan_is_exact(pruner, built, exact=False)


OTHER_FIELDS = st.one_of(
    st.tuples(st.just("thumbnail_index"), JUNK),
    st.tuples(st.just("grid"), JUNK),
    st.tuples(st.just("grid"), st.tuples(st.integers(-2, 20), st.integers(-2, 20))),
    st.tuples(st.just("tile_grid"), st.tuples(st.integers(-2, 6), st.integers(-2, 6))),
    st.tuples(st.just("tile_grid"), JUNK),
    st.tuples(st.just("attention_layers"), JUNK),
    st.tuples(st.just("attention_layers"), st.lists(st.integers(-2, 30), min_size=6, max_size=6).map(tuple)),
)


@settings(max_examples=100, deadline=None)
@given(OTHER_FIELDS, st.sampled_from(["hero", "thumbnail-attention", "uniform-strided"]))
def test_encoded_tiles_with_junk_layout_fields(change: tuple[str, Any], preset: str) -> None:
    values = _fields(make_tiles(num_views=7, grid=(4, 4), padding="cols", seed=2))
    values[change[0]] = change[1]
    built = result_or_hero_error(lambda: EncodedTiles(**values).require_finite())  # NaN/inf: at the first read
    if isinstance(built, HeroError):
        return
    _plan_is_exact(presets.get(preset, 0.4), built, exact=False)


RELEVANCE = st.one_of(
    JUNK,
    st.sampled_from(
        [
            torch.zeros(5),
            torch.zeros(4),
            torch.zeros(5, 1),
            torch.zeros(0),
            torch.full((5,), float("nan")),
            torch.tensor([0.1, float("inf"), 0.2, 0.3, 0.4]),
            torch.ones(5, dtype=torch.long),
            torch.ones(5, dtype=torch.bool),
            torch.ones(5, dtype=torch.float16),
            torch.ones(5, dtype=torch.bfloat16),
            torch.tensor([1e30, -1e30, 0.0, 1.0, 2.0]),
        ]
    ),
)


@settings(max_examples=60, deadline=None)
@given(RELEVANCE, st.sampled_from(["hero", "hero-reference"]), st.sampled_from([0.01, 0.05, 1.0]))
def test_pruner_plan_with_junk_relevance(relevance: Any, preset: str, tau: float) -> None:
    tiles = make_tiles(num_views=5, grid=(4, 4), padding="rows", seed=3)
    pruner = presets.get(preset, 0.3, tau_t=tau, tau_v=tau)
    plan = result_or_hero_error(lambda: pruner.plan(tiles, relevance))
    if isinstance(plan, HeroError):
        return
    assert plan.num_kept == expected_total(tiles, 0.3) or preset == "hero-reference"
    for part in (plan.importance, plan.saliency, plan.relevance):
        assert part is None or bool(torch.isfinite(part).all())


@settings(max_examples=40, deadline=None)
@given(JUNK)
def test_pruner_plan_with_junk_tiles(tiles: Any) -> None:
    result_or_hero_error(lambda: presets.hero(0.3).plan(tiles))
