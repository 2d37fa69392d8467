"""Presets on encoders of other depths: the paper's layers scaled by ``scale_layers``, explicit layers kept."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hero_core import HeroError, presets
from hero_core.testing import make_tiles

PAPER_LOW, PAPER_HIGH = (5, 6, 7, 8), (21,)

#: depth -> (low_layers, high_layers, the single-layer baselines' layer 22): round(l * (L - 1) / 23), merged.
EXPECTED = {
    12: ((2, 3, 4), (10,), 11),
    24: ((5, 6, 7, 8), (21,), 22),
    26: ((5, 7, 8, 9), (23,), 24),
    27: ((6, 7, 8, 9), (24,), 25),
    32: ((7, 8, 9, 11), (28,), 30),
}


@pytest.mark.parametrize("depth", sorted(EXPECTED))
def test_the_paper_layers_map_to_each_depth(depth):
    low, high, single = EXPECTED[depth]
    for factory in (presets.hero, presets.hero_reference):
        selector = factory(0.2, depth=depth).selector
        assert (selector.low_layers, selector.high_layers) == (low, high)
    assert presets.cls_attention(0.2, depth=depth).layers == (single,)
    thumbnail = presets.thumbnail_attention(0.2, depth=depth)
    assert (thumbnail.allocator.layer, thumbnail.selector.layer) == (single, single)
    assert presets.scale_layers((*PAPER_LOW, *PAPER_HIGH), depth) == tuple(dict.fromkeys((*low, *high)))
    # the formula, evaluated in floats (no exact half occurs for a 24-layer reference)
    formula = tuple(dict.fromkeys(round(x * (depth - 1) / 23) for x in PAPER_LOW))
    assert presets.scale_layers(PAPER_LOW, depth) == formula


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_no_depth_and_depth_24_are_the_paper_presets(name):
    assert presets.get(name, 0.3, depth=24) == presets.get(name, 0.3) == presets.get(name, 0.3, depth=None)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_takes_a_depth_and_reads_only_layers_it_has(name):
    for depth in (2, 6, 12, 27, 40):
        pruner = presets.get(name, 0.3, depth=depth)
        assert all(0 <= layer < depth for layer in pruner.layers)
        native = name == "hero-native"  # one view with token features (a host without tiles)
        features = native or pruner.needs_features  # DivPrune, DART, CDPruner compare tokens by their features
        tiles = make_tiles(
            num_views=1 if native else 3,
            grid=(4, 4),
            layers=tuple(range(depth)),
            token_features=features,
            token_relevance=pruner.needs_token_relevance,  # CDPruner: each token's cosine to the instruction
        )
        plan = pruner.plan(tiles)
        assert torch.equal(plan.keep.sum(-1), plan.budgets)


def test_explicit_layers_are_used_as_given():
    pruner = presets.hero(0.2, depth=12, low_layers=(4, 5, 6))
    assert pruner.selector.low_layers == (4, 5, 6)  # not scaled
    assert pruner.selector.high_layers == (10,)  # the one left out is scaled
    pruner = presets.hero_reference(0.2, depth=32, low_layers=(1,), high_layers=(3,))
    assert (pruner.selector.low_layers, pruner.selector.high_layers) == ((1,), (3,))
    assert presets.cls_attention(0.2, depth=12, layer=3).layers == (3,)
    both = presets.thumbnail_attention(0.2, depth=32, layer=20)
    assert (both.allocator.layer, both.selector.layer) == (20, 20)
    one = presets.thumbnail_attention(0.2, depth=32, allocator_layer=7)
    assert (one.allocator.layer, one.selector.layer) == (7, 30)
    # without a depth, nothing changes either
    assert presets.hero(0.2, high_layers=(30,)).selector.high_layers == (30,)


@given(depth=st.integers(2, 300), layers=st.lists(st.integers(0, 23), min_size=1, max_size=24, unique=True))
def test_scaled_layers_lie_in_the_encoder_and_keep_their_order(depth, layers):
    scaled = presets.scale_layers(layers, depth)
    assert all(isinstance(x, int) and 0 <= x < depth for x in scaled)
    assert len(set(scaled)) == len(scaled)
    assert scaled == tuple(dict.fromkeys(round(x * (depth - 1) / 23) for x in layers))  # duplicates merged, in order
    ordered = presets.scale_layers(sorted(layers), depth)
    assert list(ordered) == sorted(ordered)  # monotone: ascending stays ascending
    assert presets.scale_layers((0, 23), depth) == (0, depth - 1)


@given(depth=st.integers(2, 300))
def test_scaled_presets_stay_inside_any_depth(depth):
    for name in presets.PRESETS:
        assert all(0 <= layer < depth for layer in presets.get(name, 0.5, depth=depth).layers)


@pytest.mark.parametrize("depth", [0, 1, -3, 2.0, 24.0, "24", True, [24]])
def test_a_bad_depth_is_a_hero_error(depth):
    for name in presets.PRESETS:
        with pytest.raises(HeroError, match=r"depth=.*int >= 2"):
            presets.get(name, 0.2, depth=depth)
    with pytest.raises(HeroError, match="depth"):
        presets.scale_layers((5,), depth)


def test_an_explicit_layer_beyond_the_depth_names_the_depth():
    with pytest.raises(HeroError, match="6 layers"):
        presets.hero(0.2, depth=6, high_layers=(30,))
    with pytest.raises(HeroError, match="12 layers"):
        presets.thumbnail_attention(0.2, depth=12, selector_layer=12)
    with pytest.raises(HeroError, match="reference encoder"):
        presets.scale_layers((24,), 12)


def test_every_preset_snaps_its_default_layers_to_full_attention_layers() -> None:
    """Qwen2.5-VL's tower: depth 32, full attention at 7, 15, 23, 31 only. Default layers (scaled, then snapped)
    all land there; explicit layers are kept; a bad ``full_attention`` is refused by every preset."""
    full = (7, 15, 23, 31)
    expected = {
        "hero": (7, 31),
        "hero-reference": (7, 31),
        "hero-native": (7, 31),
        "cls-attention": (31,),
        "thumbnail-attention": (31,),
        "uniform-random": (),
        "uniform-strided": (),
        "divprune": (),
        "dart": (),
        "cdpruner": (),
        "visionzip": (31,),
    }
    assert set(expected) == set(presets.PRESETS)
    for name, layers in expected.items():
        assert presets.get(name, 0.2, depth=32, full_attention=full).layers == layers, name
        with pytest.raises(HeroError, match="full_attention"):
            presets.get(name, 0.2, depth=32, full_attention=(40,))
    # without full_attention the scaled layers stay as they were (window layers included)
    assert presets.get("hero", 0.2, depth=32).layers == (7, 8, 9, 11, 28)
    assert presets.get("hero", 0.2, depth=32, full_attention=full, low_layers=(8,)).layers == (8, 31)
