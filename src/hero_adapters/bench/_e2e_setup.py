"""``hero bench e2e``'s models and inputs (see ``hero_adapters.bench.e2e``): a LLaVA-NeXT host and a CLIP relevance
scorer built from configs with random weights at one of three sizes, and the prompts of batch 1 and batch n."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._common import CLIP_TEXT_L14, VIT_L14_336, random_model

#: The prompt of every request, and the query HERO's scorer embeds.
PROMPT = "USER: <image> what is written on the sign ? ASSISTANT:"
QUERY = "what is written on the sign?"
#: Image shapes (width, height) at 336-pixel tiles; batch n takes the first n, batch 1 the 672 x 672 one (2 x 2 tiles,
#: 2928 image tokens). The eight differ in tile grid, aspect and (after the processor) token count.
SHAPES_336 = ((672, 672), (1008, 336), (336, 1008), (672, 336), (336, 672), (800, 600), (500, 700), (336, 336))


@dataclass(frozen=True)
class Size:
    """One model size: the host's vision tower and LLM, and the relevance scorer's two towers (config fields)."""

    name: str
    title: str
    tile: int  # view side in pixels (patch 14)
    vision: dict[str, Any]  # CLIPVisionConfig fields (without image_size / patch_size)
    text: dict[str, Any]  # LlamaConfig fields (vocab_size: None = the demo tokenizer's)
    scorer_vision: dict[str, Any]  # CLIPVisionConfig fields of the scorer (with image_size / patch_size)
    scorer_text: dict[str, Any]  # CLIPTextConfig fields of the scorer
    projection: int


def _llama(width: int, layers: int, heads: int, vocab: int | None = None) -> dict[str, Any]:
    return {
        "hidden_size": width,
        "intermediate_size": width * 11008 // 4096,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "vocab_size": vocab,
    }


def _clip(width: int, layers: int, heads: int, **more: Any) -> dict[str, Any]:
    return {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "hidden_act": "quick_gelu",
        **more,
    }


_TEXT_SCORER_SMALL = _clip(64, 12, 2, vocab_size=49408, max_position_embeddings=77)
SIZES: dict[str, Size] = {
    size.name: size
    for size in (
        Size(
            "7b",
            "LLaVA-NeXT-7B shape (CLIP ViT-L/14-336, 24 layers; Vicuna-7B, 32 layers, d 4096) with a real-size "
            "CLIP ViT-L/14-336 scorer",
            336,
            {key: value for key, value in VIT_L14_336.items() if key not in ("image_size", "patch_size")},
            _llama(4096, 32, 32, vocab=32064),
            VIT_L14_336,
            CLIP_TEXT_L14,
            768,
        ),
        Size(
            "narrow",
            "narrow LLaVA-NeXT (CLIP-L/14-336 geometry: 336-px views, patch 14, 24 layers, width 64; LLaMA 4 layers, "
            "d 512) with a CLIP scorer of the tower's shape",
            336,
            _clip(64, 24, 2),
            _llama(512, 4, 8),
            _clip(64, 24, 2, image_size=336, patch_size=14),
            _TEXT_SCORER_SMALL,
            64,
        ),
        Size(
            "tiny",
            "test-size LLaVA-NeXT (56-px views, patch 14, 24 layers, width 32; LLaMA 1 layer, d 64) and CLIP scorer",
            56,
            _clip(32, 24, 2),
            _llama(64, 1, 2),
            _clip(32, 2, 2, image_size=56, patch_size=28),
            _clip(32, 2, 2, vocab_size=49408, max_position_embeddings=77),
            32,
        ),
    )
}


@dataclass
class Setup:
    """The built host model, its processor, the scorer, and the model inputs of each batch size."""

    size: Size
    model: Any
    processor: Any
    scorer: Any
    batches: dict[int, dict[str, Any]]  # batch size -> model inputs on the device
    singles: list[dict[str, Any]]  # batch-1 inputs of each shape (the concurrency requests)


def build(size: Size, device: torch.device, dtype: torch.dtype, batch_sizes: list[int], seed: int = 0) -> Setup:
    """The host (random ``dtype`` weights, made on ``device``), the scorer and the inputs; seeded."""
    import transformers

    from ..testing import DEMO_WORDS, LLAVA_NEXT_7B_PINPOINTS, build_llava_next
    from ..text_scorers import HFClipTextScorer, clip_tokenizer_from_open_clip

    pins = [[size.tile * side // 336 for side in pin] for pin in LLAVA_NEXT_7B_PINPOINTS]
    # the processor (and its in-memory word tokenizer) of a minimal build; the benchmarked model is made below
    processor = build_llava_next(
        tile_pixels=size.tile, patch_size=14, pinpoints=pins, vision_layers=1, vision_width=8, vision_heads=1,
        text_width=8, text_layers=1, text_heads=1,
    ).processor  # fmt: skip
    vocab = {word: i for i, word in enumerate(DEMO_WORDS)}
    text = {**size.text, "vocab_size": size.text["vocab_size"] or len(vocab)}
    config = transformers.LlavaNextConfig(
        vision_config=transformers.CLIPVisionConfig(**size.vision, image_size=size.tile, patch_size=14),
        text_config=transformers.LlamaConfig(
            **text,
            max_position_embeddings=8192,
            pad_token_id=vocab["<pad>"],
            bos_token_id=vocab["<s>"],
            eos_token_id=vocab["</s>"],
        ),
        image_token_index=vocab["<image>"],
        image_grid_pinpoints=pins,
    )
    torch.manual_seed(seed)
    model = random_model(config, device, dtype, auto="AutoModelForImageTextToText")
    clip_config = transformers.CLIPConfig(
        text_config=size.scorer_text, vision_config=size.scorer_vision, projection_dim=size.projection
    )
    scorer = HFClipTextScorer(random_model(clip_config, device, dtype), clip_tokenizer_from_open_clip())
    shapes = [(w * size.tile // 336, h * size.tile // 336) for w, h in SHAPES_336]
    batches = {n: _inputs(processor, shapes[:n], device, dtype) for n in batch_sizes}
    singles = [_inputs(processor, [shape], device, dtype) for shape in shapes]
    return Setup(size, model, processor, scorer, batches, singles)


def _inputs(processor: Any, shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    from ..demo import draw_test_card

    images = [draw_test_card(width, height) for width, height in shapes]
    raw = processor(images=images, text=[PROMPT] * len(images), padding=True, return_tensors="pt")
    out = {key: value.to(device) for key, value in raw.items()}
    out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


def image_tokens(setup: Setup, inputs: dict[str, Any]) -> int:
    """The image placeholder tokens of a batch (what the host's LLM receives unpruned)."""
    return int((inputs["input_ids"] == setup.model.config.image_token_id).sum())
