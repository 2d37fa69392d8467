"""CLS-attention hooks: equal to the eager ``output_attentions=True`` oracle, scoped, validated."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from hero_adapters import LlavaNextAdapter, cls_attention_hooks
from hero_adapters.towers import attention_modules
from hero_core import HeroError


@pytest.fixture(scope="module")
def towers() -> tuple[CLIPVisionModel, CLIPVisionModel]:
    """The same random weights twice: SDPA (the host's default) and eager (the oracle)."""
    config = CLIPVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=6,
        num_attention_heads=6,
        image_size=56,
        patch_size=14,
        initializer_factor=5.0,
    )
    torch.manual_seed(1)
    sdpa = CLIPVisionModel(config).eval()
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert sdpa.config._attn_implementation == "sdpa"
    return sdpa, eager


def _hook_counts(module: torch.nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in module.modules()]


def test_hook_rows_equal_eager_attention_maps(towers: tuple[CLIPVisionModel, CLIPVisionModel]) -> None:
    sdpa, eager = towers
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    layers = (0, 2, 3, 5)
    with torch.inference_mode():
        oracle = eager(pixels, output_attentions=True).attentions  # 6 x (B, H, N + 1, N + 1)
        with cls_attention_hooks(sdpa, layers) as record:
            out = sdpa(pixels)
    rows = record.stacked()  # (L, B, H, N + 1)
    assert rows.shape == (4, 3, 6, 17)
    assert rows.dtype == torch.float32
    expected = torch.stack([oracle[layer][:, :, 0] for layer in layers])
    assert (rows - expected).abs().max().item() <= 1e-6
    assert not torch.allclose(rows[0], rows[1])  # peaked, layer-specific maps: the comparison can fail
    torch.testing.assert_close(out.last_hidden_state, eager(pixels).last_hidden_state, rtol=1e-5, atol=1e-4)


def test_host_attention_kernel_untouched(towers: tuple[CLIPVisionModel, CLIPVisionModel]) -> None:
    sdpa, _ = towers
    before = _hook_counts(sdpa)
    with torch.inference_mode(), cls_attention_hooks(sdpa, (1,)):
        assert sum(h for h, _ in _hook_counts(sdpa)) == sum(h for h, _ in before) + 1  # one layer hooked
        sdpa(torch.zeros(1, 3, 56, 56))
    assert sdpa.config._attn_implementation == "sdpa"
    assert _hook_counts(sdpa) == before


def test_hooks_removed_when_the_body_raises(towers: tuple[CLIPVisionModel, CLIPVisionModel]) -> None:
    sdpa, _ = towers
    before = _hook_counts(sdpa)
    with pytest.raises(RuntimeError, match="half way"), cls_attention_hooks(sdpa, (0, 4)):
        raise RuntimeError("half way")
    assert _hook_counts(sdpa) == before


@pytest.mark.parametrize("layers", [(6,), (0, 9), (-1,)])
def test_out_of_range_layer_is_a_hero_error(
    towers: tuple[CLIPVisionModel, CLIPVisionModel], layers: tuple[int, ...]
) -> None:
    sdpa, _ = towers
    before = _hook_counts(sdpa)
    with pytest.raises(HeroError, match=r"attention layers=.*has 6 layers"), cls_attention_hooks(sdpa, layers):
        pass
    assert _hook_counts(sdpa) == before


def test_bf16_tower_gives_float32_probabilities(towers: tuple[CLIPVisionModel, CLIPVisionModel]) -> None:
    sdpa, _ = towers
    tower = copy.deepcopy(sdpa).to(torch.bfloat16)
    with torch.inference_mode(), cls_attention_hooks(tower, (2,)) as record:
        tower(torch.randn(2, 3, 56, 56, dtype=torch.bfloat16))
    rows = record.stacked()
    assert rows.dtype == torch.float32
    assert torch.allclose(rows.sum(-1), torch.ones(1, 2, 6))


def test_llava_next_encode_matches_eager_tower(tiny, batch) -> None:  # type: ignore[no-untyped-def]
    """Through the host's get_image_features: per image, per view, the recorded rows and CLS tokens equal the
    eager maps / pre-post-LN last layer of a copy of the host's tower."""
    inputs = batch["inputs"]
    adapter = LlavaNextAdapter(tiny.model)
    layers = (0, 1, 4, 5)
    with torch.inference_mode():
        images = adapter.encode(inputs, layers)
        eager = copy.deepcopy(tiny.model.model.vision_tower)
        eager.set_attn_implementation("eager")
        for i, image in enumerate(images):
            views = inputs["pixel_values"][i, : image.tiles.num_views]
            oracle = eager(views, output_attentions=True)
            expected = torch.stack([oracle.attentions[layer][:, :, 0, 1:] for layer in layers])  # (L, V, H, N)
            assert image.tiles.attention_layers == layers
            assert (image.tiles.cls_attention - expected).abs().max().item() <= 1e-6
            torch.testing.assert_close(image.tiles.cls_tokens, oracle.last_hidden_state[:, 0], rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------ recipes by attention class
def _internvit(qk_norm: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import InternVLVisionConfig, InternVLVisionModel

    config = InternVLVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=[56, 56],
        patch_size=[14, 14],
        use_qk_norm=qk_norm,
        initializer_range=0.3,
    )
    torch.manual_seed(2)
    sdpa = InternVLVisionModel(config).eval()
    with torch.no_grad():
        for name, parameter in sdpa.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                parameter.copy_(0.5 + 2 * torch.rand(parameter.shape))
            elif name.endswith("cls_token"):
                parameter.copy_(torch.randn(parameter.shape))
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    return sdpa, eager


@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk-norm"])
def test_internvit_rows_equal_eager_with_and_without_qk_norm(qk_norm: bool) -> None:
    sdpa, eager = _internvit(qk_norm)
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        oracle = eager(pixels, output_attentions=True).attentions
        with cls_attention_hooks(sdpa, (0, 2, 3)) as record:
            sdpa(pixels)
    assert record.recipe is not None and record.recipe.name == "internvit"
    expected = torch.stack([oracle[layer][:, :, 0] for layer in (0, 2, 3)])
    assert (record.stacked() - expected).abs().max().item() <= 1e-6
    assert not torch.allclose(record.stacked()[0], record.stacked()[1])


def _siglip() -> torch.nn.Module:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=56, patch_size=14
    )
    torch.manual_seed(3)
    return SiglipVisionModel(config).eval()


def test_a_cls_free_tower_asked_for_a_cls_row_names_the_stand_in() -> None:
    tower = _siglip()
    before = _hook_counts(tower)
    with pytest.raises(HeroError, match=r"query='cls'.*siglip.*query='mean'"), cls_attention_hooks(tower, (1,)):
        pass
    assert _hook_counts(tower) == before


def test_mean_token_stand_in_is_the_mean_query_row() -> None:
    """SigLIP: the query is the mean of the layer's input tokens, projected; keys over every token."""
    tower = _siglip()
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(5))
    seen: dict[str, torch.Tensor] = {}
    attention = attention_modules(tower)[0][1]

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:  # type: ignore[type-arg]
        seen["h"] = kwargs["hidden_states"]

    handle = attention.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode(), cls_attention_hooks(tower, (1,), query="mean") as record:
            tower(pixels)
    finally:
        handle.remove()
    hidden = seen["h"].clone()  # (B, T, D)
    heads, dim = attention.num_heads, attention.head_dim
    with torch.no_grad():
        query = attention.q_proj(hidden.mean(1, keepdim=True)).view(2, 1, heads, dim).transpose(1, 2)
        keys = attention.k_proj(hidden).view(2, -1, heads, dim).transpose(1, 2)
    expected = torch.softmax((query @ keys.transpose(-1, -2)).squeeze(-2) * attention.scale, dim=-1)
    assert record.patch_attention().shape == (1, 2, 4, 16)  # no CLS column to drop
    assert (record.stacked()[0] - expected).abs().max().item() <= 1e-6


def test_boolean_and_additive_masks_give_the_same_rows(towers: tuple[CLIPVisionModel, CLIPVisionModel]) -> None:
    sdpa, _ = towers
    attention = attention_modules(sdpa)[0][2]
    hidden = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(4))
    allowed = torch.ones(2, 1, 17, 17, dtype=torch.bool)
    allowed[1, :, :, 10:] = False  # the second image's last keys are padding
    additive = torch.zeros(2, 1, 17, 17).masked_fill(~allowed, torch.finfo(torch.float32).min)
    rows = []
    for mask in (allowed, additive):
        with torch.inference_mode(), cls_attention_hooks(sdpa, (2,)) as record:
            attention(hidden_states=hidden, attention_mask=mask)
        rows.append(record.stacked()[0])
    assert torch.allclose(rows[0], rows[1], atol=1e-7)
    assert float(rows[0][1, :, 10:].abs().max()) == 0.0 and float(rows[0][0, :, 10:].min()) > 0


def test_an_attention_class_no_recipe_knows_says_how_to_register_one() -> None:
    class MyAttention(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    class MyTower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([MyAttention(), MyAttention()])

    with pytest.raises(HeroError, match=r"MyAttention.*register_tower_recipe"), cls_attention_hooks(MyTower(), (0,)):
        pass


def test_a_registered_recipe_serves_a_new_class() -> None:
    from hero_adapters.towers import TowerRecipe, list_tower_recipes, register_tower_recipe
    from hero_adapters.towers import recipes as table

    class Fused(torch.nn.Module):  # one fused qkv projection, CLS last
        def __init__(self) -> None:
            super().__init__()
            self.qkv = torch.nn.Linear(8, 24)
            self.heads, self.dim, self.scale = 2, 4, 0.5

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    def project(module: Fused, query: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return module.qkv(query)[..., :8], module.qkv(hidden)[..., 8:16]

    recipe = TowerRecipe("fused-test", (Fused,), "last", project=project, geometry=lambda m: (m.heads, m.dim, m.scale))
    register_tower_recipe(recipe)
    try:
        tower = torch.nn.Sequential(Fused(), Fused())
        x = torch.randn(1, 5, 8)
        with torch.inference_mode(), cls_attention_hooks(tower, (1,)) as record:
            tower(x)
        q, k = project(tower[1], x[:, -1:], x)
        logits = (q.view(1, 1, 2, 4).transpose(1, 2) @ k.view(1, 5, 2, 4).transpose(1, 2).transpose(-1, -2)) * 0.5
        assert torch.allclose(record.stacked()[0], logits.squeeze(-2).softmax(-1), atol=1e-6)
        assert record.patch_attention().shape == (1, 1, 2, 4)  # the CLS key (last) dropped
        assert list_tower_recipes()[-1] is recipe
    finally:
        table._RECIPES.remove(recipe)


def test_internvl_aggregation_onto_llm_tokens_matches_a_slow_loop() -> None:
    """Each LLM token's attention = the sum over the 2 x 2 patch block the host's pixel_shuffle merges."""
    from hero_adapters import InternVLAdapter

    from .hosts import host_row

    host = host_row("internvl")
    adapter = InternVLAdapter(host.model, processor=host.processor)
    inputs = host.inputs([host.text("USER: {} describe ASSISTANT:")], [host.image(40, 100)])
    with torch.inference_mode():
        image = adapter.encode(inputs, (1, 4))[0]
        with cls_attention_hooks(adapter.vision_tower, (1, 4)) as record:
            adapter.vision_tower(pixel_values=inputs["pixel_values"])
    patches = record.patch_attention()  # (L, V, H, 64): 8 x 8 patches per view
    side = 8
    slow = torch.zeros(*patches.shape[:3], 16)
    for token in range(16):
        row, col = divmod(token, 4)
        for dr in (0, 1):
            for dc in (0, 1):
                slow[..., token] += patches[..., (2 * row + dr) * side + 2 * col + dc]
    assert image.tiles.grid == (4, 4)
    assert (image.tiles.cls_attention - slow).abs().max().item() <= 1e-6


def test_a_non_int_layer_is_a_hero_error(towers: tuple[CLIPVisionModel, CLIPVisionModel]) -> None:
    sdpa, _ = towers
    with pytest.raises(HeroError, match=r"attention layers=\[1, '2'\]"), cls_attention_hooks(sdpa, (1, "2")):  # type: ignore[arg-type]
        pass


def test_mean_stand_in_ignores_padded_tokens_under_bool_and_additive_masks() -> None:
    """Idefics3-style towers get a bool mask under SDPA and an additive one under eager: same stand-in rows."""
    tower = _siglip()
    attention = attention_modules(tower)[0][1]
    hidden = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(6))
    allowed = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    allowed[1, :, :, 12:] = False
    additive = torch.zeros(2, 1, 16, 16).masked_fill(~allowed, torch.finfo(torch.float32).min)
    rows = []
    for mask in (allowed, additive):
        with torch.inference_mode(), cls_attention_hooks(tower, (1,), query="mean") as record:
            attention(hidden_states=hidden, attention_mask=mask)
        rows.append(record.stacked()[0])
    assert torch.allclose(rows[0], rows[1], atol=1e-7)
    changed = hidden.clone()
    changed[1, 12:] = 100.0  # padded tokens must not move the mean query
    with torch.inference_mode(), cls_attention_hooks(tower, (1,), query="mean") as record:
        attention(hidden_states=changed, attention_mask=additive)
    assert torch.allclose(record.stacked()[0][1], rows[1][1], atol=1e-6)
