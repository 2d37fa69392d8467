"""Pruner and presets end to end, the efficiency model, and the import boundary."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given

from hero_core import VICUNA_7B, VICUNA_13B, ModelShape, Pruner, kv_cache_bytes, prefill_flops, presets
from hero_core.testing import encoded_tiles, expected_total, keep_ratios, make_tiles, relevances

from .registry import PRESETS, tiles_for


@pytest.mark.parametrize("name", sorted(PRESETS))
@given(tiles=encoded_tiles(), ratio=keep_ratios())
def test_every_preset_plans_exactly(name, tiles, ratio):
    tiles = tiles_for(name, tiles)
    plan = presets.get(name, ratio).plan(tiles, torch.linspace(-0.2, 0.4, tiles.num_views))
    assert torch.equal(plan.keep.sum(-1), plan.budgets)
    assert not bool((plan.keep & ~tiles.valid_mask).any())
    if PRESETS[name]:
        assert plan.num_kept == expected_total(tiles, ratio)
    else:
        assert plan.num_kept <= expected_total(tiles, ratio)


@pytest.mark.parametrize("name", sorted(PRESETS))
@given(tiles=encoded_tiles())
def test_ratio_one_is_identity(name, tiles):
    plan = presets.get(name, 1.0).plan(tiles)  # nothing is selected at R = 1: no token features needed
    if PRESETS[name]:
        assert torch.equal(plan.keep, tiles.valid_mask)
    else:  # the reference floors and caps drop tokens even at R = 1 (capped excess is not redistributed)
        assert not bool((plan.keep & ~tiles.valid_mask).any())
        assert plan.budgets[tiles.thumbnail_index] == tiles.valid_mask[tiles.thumbnail_index].sum()


@given(tiles=encoded_tiles(), ratio=keep_ratios())
def test_plan_reports_importance_parts(tiles, ratio):
    relevance = torch.linspace(0, 1, tiles.num_views)
    pruner = presets.hero(ratio)
    plan = pruner.plan(tiles, relevance)
    # nothing is planned when every valid token is kept (R = 1, or a total reaching the valid count, known once
    # the planner read the counts): no importance is computed
    if pruner.keeps_all(tiles):
        assert plan.importance is None and plan.saliency is None and plan.relevance is None
        assert torch.equal(plan.keep, tiles.valid_mask)
        return
    assert plan.importance is not None and plan.saliency is not None and plan.relevance is not None
    torch.testing.assert_close(plan.importance, plan.saliency + plan.relevance)
    assert float(plan.importance[tiles.thumbnail_index]) == 0.0
    if tiles.num_views > 1:
        assert abs(float(plan.importance.sum()) - 1.0) < 1e-5


@given(tiles=encoded_tiles(), ratio=keep_ratios(), data=relevances(9))
def test_relevance_ignored_when_alpha_is_one(tiles, ratio, data):
    relevance = data[: tiles.num_views]
    assert torch.equal(
        presets.hero(ratio, alpha=1.0).plan(tiles, relevance).keep, presets.hero(ratio, alpha=1.0).plan(tiles).keep
    )


def test_overrides_reach_the_right_part():
    pruner = presets.hero(0.3, alpha=0.7, tau_v=0.01, low_layers=(4, 5), head_reduction="softmax_mean")
    assert pruner.allocator.alpha == 0.7 and pruner.allocator.tau_v == 0.01
    assert pruner.selector.low_layers == (4, 5) and pruner.selector.head_reduction == "softmax_mean"
    assert pruner.layers == (4, 5, 21)
    reference = presets.hero_reference(0.2)
    assert reference.allocator.density_weight == 0.2 and reference.allocator.exact is False
    assert presets.thumbnail_attention(0.2, layer=20).layers == (20,)
    assert presets.uniform_random(0.2, seed=3).selector.seed == 3


def test_a_plain_function_is_a_selector():
    tiles = make_tiles(num_views=3, grid=(3, 3))

    def first_positions(tiles, budgets, /):
        rank = torch.arange(tiles.num_tokens).expand(tiles.num_views, -1)
        return (rank < budgets[:, None]) & tiles.valid_mask

    first_positions.layers = ()  # type: ignore[attr-defined]
    plan = Pruner(0.5, presets.hero(0.5).allocator, first_positions).plan(tiles)
    assert plan.num_kept == 13
    for view, budget in enumerate(plan.budgets.tolist()):
        assert plan.kept_indices(view).tolist() == list(range(budget))


def test_efficiency_model_reproduces_table_4():
    assert round(VICUNA_7B.prefill_flops(2673) / 1e12, 1) == 38.4
    assert round(VICUNA_7B.prefill_flops(583) / 1e12, 1) == 7.7
    assert round(VICUNA_7B.prefill_flops(1105) / 1e12, 1) == 15.0  # the paper prints 14.1 (HERO_SPEC.md)
    assert VICUNA_7B.kv_cache_bytes(2673) / 2**20 == 1336.5
    assert VICUNA_7B.kv_cache_bytes(1105) / 2**20 == 552.5
    assert VICUNA_7B.kv_cache_bytes(583) / 2**20 == 291.5
    assert prefill_flops(10, num_layers=1, hidden_size=2, intermediate_size=3) == 2 * (4 * 10 * 4 + 2 * 100 * 2 + 180)
    assert kv_cache_bytes(3, num_layers=2, kv_hidden_size=4, bytes_per_value=4) == 2 * 2 * 4 * 4 * 3
    assert VICUNA_13B.prefill_flops(100) > VICUNA_7B.prefill_flops(100)


def test_model_shape_from_config(tmp_path):
    config = {
        "model_type": "llava_next",
        "text_config": {
            "model_type": "llama",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "intermediate_size": 11008,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
        },
    }
    path = tmp_path / "config.json"
    path.write_text(__import__("json").dumps(config))
    shape = ModelShape.from_config(path)
    assert shape.kv_hidden_size == 1024 and shape.num_layers == 32
    assert shape.prefill_flops(2673) == VICUNA_7B.prefill_flops(2673)


def test_import_hero_core_leaves_hosts_out():
    hosts = "('transformers', 'open_clip', 'timm')"
    code = f"import sys, hero_core, hero_core.testing; print(sorted(m for m in {hosts} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_testing_helpers_work_without_hypothesis():
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "from hero_core import HeroError, presets\n"
        "from hero_core.testing import make_tiles, check_allocator\n"
        "tiles = make_tiles(num_views=3, grid=(2, 2))\n"
        "check_allocator(presets.hero(0.5).allocator, tiles, None, 0.5, exact_total=True)\n"
        "try:\n    from hero_core.testing import encoded_tiles\nexcept HeroError as error:\n    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "needs hypothesis" in out.stdout and "hero-prune[test]" in out.stdout
