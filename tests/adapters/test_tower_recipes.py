"""Tower recipes for timm and open_clip: recorded rows equal each framework's own attention probabilities.

timm: with ``fused_attn=False`` its ``Attention`` computes ``softmax(...)`` and passes it through
``attn_drop``; a forward hook on ``attn_drop`` captures that very tensor (the hooked model keeps SDPA).
open_clip / torch: ``nn.MultiheadAttention(need_weights=True, average_attn_weights=False)`` returns its
per-head probabilities for the same inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from typing import Any

import pytest
import torch
from torch import nn

from hero_adapters.towers import attention_modules, cls_attention_hooks, list_tower_recipes, register_tower_recipe
from hero_adapters.towers import recipes as table
from hero_core import HeroError

PIXELS = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))


def _hook_counts(module: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in module.modules()]


# ------------------------------------------------------------------------------------------------------ timm
def _timm_vit(qk_norm: bool = False, **options: Any) -> nn.Module:
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(4)
    model = vision_transformer.VisionTransformer(
        img_size=56, patch_size=14, embed_dim=48, depth=4, num_heads=4, qk_norm=qk_norm, num_classes=0, **options
    ).eval()
    with torch.no_grad():  # peaked, layer-specific maps, and norms that are not the identity
        for name, parameter in model.named_parameters():
            if name.endswith("qkv.weight"):
                parameter.mul_(6.0)
            elif name.endswith(("q_norm.weight", "k_norm.weight")):
                parameter.copy_(0.5 + 2 * torch.rand(parameter.shape))
            elif name in ("cls_token", "pos_embed"):
                parameter.copy_(torch.randn(parameter.shape))
    return model


def _timm_probabilities(model: nn.Module, *args: Any, **kwargs: Any) -> dict[int, torch.Tensor]:
    """Each block's own (B, H, T, T) probabilities: a copy with fused_attn=False, captured at attn_drop."""
    oracle = copy.deepcopy(model)
    seen: dict[int, torch.Tensor] = {}
    modules = attention_modules(oracle)[0]
    for i, attention in enumerate(modules):
        attention.fused_attn = False
        attention.attn_drop.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out.clone()))
    with torch.inference_mode():
        oracle(*args, **kwargs)
    return seen


@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk-norm"])
def test_timm_rows_equal_timm_probabilities(qk_norm: bool) -> None:
    model = _timm_vit(qk_norm)
    layers = (0, 1, 3)
    assert all(m.fused_attn for m in attention_modules(model)[0])  # the hooked model keeps SDPA
    expected = _timm_probabilities(model, PIXELS)
    with torch.inference_mode(), cls_attention_hooks(model, layers) as record:
        model(PIXELS)
    assert record.recipe is not None and record.recipe.name == "timm"
    rows = record.stacked()  # (L, B, H, 1 + 16)
    oracle = torch.stack([expected[layer][:, :, 0] for layer in layers])
    assert rows.shape == (3, 3, 4, 17)
    assert (rows - oracle).abs().max().item() <= 1e-6
    assert not torch.allclose(rows[0], rows[1], atol=1e-3)  # the comparison can fail
    assert float(rows.amax()) > 0.2  # peaked, not uniform (1 / 17)
    assert record.patch_attention().shape == (3, 3, 4, 16)  # the CLS column dropped


@pytest.mark.parametrize("how", ["bool-4d", "float-2d", "causal"])
def test_timm_masks_follow_sdpa_semantics(how: str) -> None:
    model = _timm_vit(qk_norm=True)
    attention = attention_modules(model)[0][2]
    x = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(3))
    if how == "bool-4d":
        allowed = torch.ones(2, 1, 17, 17, dtype=torch.bool)
        allowed[1, :, :, 9:] = False  # True = attend, as SDPA reads it
        kwargs: dict[str, Any] = {"attn_mask": allowed}
    elif how == "float-2d":
        kwargs = {"attn_mask": torch.randn(17, 17, generator=torch.Generator().manual_seed(5))}
    else:
        kwargs = {"is_causal": True}
    expected = _timm_probabilities(attention, x, **kwargs)[0][:, :, 0]
    with torch.inference_mode(), cls_attention_hooks(model, (2,)) as record:
        attention(x, **kwargs)
    assert (record.stacked()[0] - expected).abs().max().item() <= 1e-6
    if how == "causal":
        assert torch.equal(record.stacked()[0][..., 0], torch.ones(2, 4))  # the first token sees only itself


def test_timm_tower_with_register_tokens_is_refused() -> None:
    model = _timm_vit(reg_tokens=2)
    before = _hook_counts(model)
    with pytest.raises(HeroError, match=r"num_prefix_tokens=3.*reg_tokens=0"), cls_attention_hooks(model, (1,)):
        pass
    assert _hook_counts(model) == before


def test_timm_tower_without_class_token_needs_a_cls_free_recipe() -> None:
    from hero_adapters.towers.timm import TIMM

    model = _timm_vit(class_token=False, global_pool="avg")
    with pytest.raises(HeroError, match=r"num_prefix_tokens=0.*cls_position='none'"):
        attention_modules(model)
    recipe = register_tower_recipe(dataclasses.replace(TIMM, name="timm-no-cls", cls_position="none"), first=True)
    try:
        modules, chosen = attention_modules(model)
        assert chosen is recipe and len(modules) == 4  # same modules, tie: the first in the table wins
        with torch.inference_mode(), cls_attention_hooks(model, (3,), query="mean") as record:
            model(PIXELS)
        assert record.patch_attention().shape == (1, 3, 4, 16)  # no CLS column to drop
    finally:
        table._RECIPES.remove(recipe)


# -------------------------------------------------------------------------------------------------- open_clip
def _open_clip_vit() -> nn.Module:
    transformer = pytest.importorskip("open_clip.transformer")
    torch.manual_seed(5)
    model = transformer.VisionTransformer(
        image_size=56, patch_size=14, width=48, layers=4, heads=4, mlp_ratio=2.0, output_dim=32
    ).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("in_proj_weight"):
                parameter.mul_(2.0)  # peaked maps (max about 0.95), not saturated
    return model


def _mha_probabilities(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """(B, H, T, T): the module's own per-head weights for the call it received."""
    kwargs = {**kwargs, "need_weights": True, "average_attn_weights": False}
    with torch.inference_mode():
        return module(*args, **kwargs)[1]


def test_open_clip_rows_equal_multihead_attention_weights() -> None:
    model = _open_clip_vit()
    modules, recipe = attention_modules(model)
    assert recipe.name == "open_clip" and len(modules) == 4 and all(m.batch_first for m in modules)
    calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    handles = [
        m.register_forward_pre_hook(lambda m, a, k, i=i: calls.__setitem__(i, (a, k)), with_kwargs=True)
        for i, m in enumerate(modules)
    ]
    layers = (0, 2, 3)
    try:
        with torch.inference_mode(), cls_attention_hooks(model, layers) as record:
            model(PIXELS)
    finally:
        for handle in handles:
            handle.remove()
    assert all(calls[i][1].get("need_weights") is False for i in layers)  # open_clip's own call
    oracle = torch.stack([_mha_probabilities(modules[i], *calls[i])[:, :, 0] for i in layers])
    rows = record.stacked()
    assert rows.shape == (3, 3, 4, 17)
    assert (rows - oracle).abs().max().item() <= 1e-6
    assert not torch.allclose(rows[0], rows[1], atol=1e-3)
    assert record.patch_attention().shape == (3, 3, 4, 16)


def _sequence_first_tower() -> nn.Module:
    torch.manual_seed(6)
    tower = nn.ModuleList([nn.MultiheadAttention(32, 4, batch_first=False) for _ in range(2)])
    with torch.no_grad():
        for module in tower:
            module.in_proj_weight.mul_(2.0)
            module.in_proj_bias.normal_()
    return tower


@pytest.mark.parametrize("masks", ["none", "float-attn-mask", "bool-masks"])
def test_sequence_first_multihead_attention(masks: str) -> None:
    """batch_first=False: (T, B, D) inputs, called positionally; torch's mask conventions (True = not attended)."""
    tower = _sequence_first_tower()
    modules, recipe = attention_modules(tower)
    assert recipe.name == "open_clip-seq-first" and len(modules) == 2
    x = torch.randn(9, 2, 32, generator=torch.Generator().manual_seed(7))  # (T, B, D)
    kwargs: dict[str, Any] = {}
    if masks == "float-attn-mask":
        kwargs["attn_mask"] = torch.randn(9, 9, generator=torch.Generator().manual_seed(8))
    elif masks == "bool-masks":
        blocked = torch.zeros(2 * 4, 9, 9, dtype=torch.bool)
        blocked[4:, :, 2] = True  # the second prompt's heads never see key 2
        padding = torch.zeros(2, 9, dtype=torch.bool)
        padding[0, 6:] = True  # the first prompt's last keys are padding
        kwargs.update(attn_mask=blocked, key_padding_mask=padding)
    with torch.inference_mode(), cls_attention_hooks(tower, (1,)) as record:
        tower[1](x, x, x, **kwargs)
    expected = _mha_probabilities(tower[1], (x, x, x), kwargs)[:, :, 0]  # (B, H, T)
    assert record.stacked().shape == (1, 2, 4, 9)
    assert (record.stacked()[0] - expected).abs().max().item() <= 1e-6
    if masks == "bool-masks":
        assert float(record.stacked()[0][0, :, 6:].abs().max()) == 0.0
        assert float(record.stacked()[0][1, :, 2].abs().max()) == 0.0


def test_cross_attention_call_is_refused() -> None:
    tower = nn.ModuleList([nn.MultiheadAttention(32, 4, batch_first=True)])
    query, context = torch.randn(1, 3, 32), torch.randn(1, 9, 32)
    with pytest.raises(HeroError, match="cross-attention"), cls_attention_hooks(tower, (0,)):
        tower[0](query, context, context, need_weights=False)
    assert _hook_counts(tower) == [(0, 0), (0, 0), (0, 0)]


def test_a_module_that_adds_keys_is_refused() -> None:
    tower = nn.ModuleList([nn.MultiheadAttention(32, 4, batch_first=True, add_bias_kv=True)])
    x = torch.randn(1, 5, 32)
    with pytest.raises(HeroError, match="add_bias_kv=True"), cls_attention_hooks(tower, (0,)):
        tower[0](x, x, x, need_weights=False)


# ---------------------------------------------------------------------------------------------------- depth
@pytest.mark.parametrize("build", [_timm_vit, _open_clip_vit], ids=["timm", "open_clip"])
@pytest.mark.parametrize("layers", [(4,), (0, 7), (-1,)])
def test_layers_the_tower_lacks_are_a_hero_error(build: Any, layers: tuple[int, ...]) -> None:
    model = build()
    before = _hook_counts(model)
    with (
        pytest.raises(HeroError, match=r"attention layers=.*\[0, 3\].*has 4 layers"),
        cls_attention_hooks(model, layers),
    ):
        pass
    assert _hook_counts(model) == before


# -------------------------------------------------------------------------------------- several recipes match
def test_siglip_with_pooling_head_is_served_by_its_layer_class() -> None:
    """SigLIP with vision_use_head=True: SiglipAttention per layer plus one nn.MultiheadAttention in the head.
    The per-layer recipe wins and the head is not a layer."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        vision_use_head=True,
    )
    torch.manual_seed(3)
    tower = SiglipVisionModel(config).eval()
    assert sum(isinstance(m, nn.MultiheadAttention) for m in tower.modules()) == 1
    modules, recipe = attention_modules(tower)
    assert recipe.name == "siglip" and len(modules) == config.num_hidden_layers
    assert all(type(m).__name__ == "SiglipAttention" for m in modules)
    with pytest.raises(HeroError, match=r"has 3 layers"), cls_attention_hooks(tower, (3,), query="mean"):
        pass
    with torch.inference_mode(), cls_attention_hooks(tower, (2,), query="mean") as record:
        tower(PIXELS)
    assert record.stacked().shape == (1, 3, 4, 16)


def test_table_order_transformers_then_timm_then_multihead_attention() -> None:
    names = [recipe.name for recipe in list_tower_recipes()]
    order = ["clip", "siglip", "internvit", "timm", "open_clip", "open_clip-seq-first"]
    assert [name for name in names if name in order] == order


def test_importing_the_towers_imports_no_framework() -> None:
    code = "import sys, hero_adapters.towers; print(sorted({'timm', 'open_clip', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
