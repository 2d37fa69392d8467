"""CLS-attention hooks: equal to the eager ``output_attentions=True`` oracle, scoped, validated."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from hero_adapters import LlavaNextAdapter, cls_attention_hooks
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
        images = adapter.encode(inputs["pixel_values"], inputs["image_sizes"], layers)
        eager = copy.deepcopy(tiny.model.model.vision_tower)
        eager.set_attn_implementation("eager")
        for i, image in enumerate(images):
            views = inputs["pixel_values"][i, : image.tiles.num_views]
            oracle = eager(views, output_attentions=True)
            expected = torch.stack([oracle.attentions[layer][:, :, 0, 1:] for layer in layers])  # (L, V, H, N)
            assert image.tiles.attention_layers == layers
            assert (image.tiles.cls_attention - expected).abs().max().item() <= 1e-6
            torch.testing.assert_close(image.tiles.cls_tokens, oracle.last_hidden_state[:, 0], rtol=1e-5, atol=1e-4)
