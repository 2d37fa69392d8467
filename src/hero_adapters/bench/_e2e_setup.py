"""``hero bench e2e``'s models and inputs (see ``hero_adapters.bench.e2e``): a LLaVA-NeXT host, a Qwen2.5-VL host
and a CLIP relevance scorer built from configs with random weights at one of three sizes, and the prompts of batch 1
and batch n."""

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


#: The Qwen2.5-VL prompt (the host's image markup) and its images: batch 1 a 1008 x 672 image (the processor's grid
#: 48 x 72 patches: 864 image tokens), batch n that one and the next n - 1 of ``SHAPES_336``; ``tiny`` divides by 6.
QWEN_PROMPT = "USER: <|vision_start|><|image_pad|><|vision_end|> what is written on the sign ? ASSISTANT:"
QWEN_SHAPES = ((1008, 672), *SHAPES_336[1:])


@dataclass(frozen=True)
class QwenSize:
    """One Qwen2.5-VL size, as ``build_qwen2_5_vl`` options: the vision tower and the LLM."""

    title: str
    vision: dict[str, Any]
    text: dict[str, Any]
    scale: int = 1  # image sides divided by this


#: Qwen2.5-VL-7B's vision tower (``bench encode``'s ``qwen2.5-vl``), as ``build_qwen2_5_vl`` options.
QWEN_7B_VISION: dict[str, Any] = {
    "vision_layers": 32,
    "vision_width": 1280,
    "vision_heads": 16,
    "vision_mlp": 3420,
    "fullatt_block_indexes": (7, 15, 23, 31),
    "window_size": 112,
    "patch_size": 14,
}
_QWEN_GEOMETRY = {key: QWEN_7B_VISION[key] for key in ("vision_layers", "fullatt_block_indexes", "window_size")}
QWEN_SIZES: dict[str, QwenSize] = {
    "7b": QwenSize(
        "Qwen2.5-VL-7B shape (its vision tower: 32 blocks, width 1280, window attention but blocks 7, 15, 23, 31; "
        "Qwen2.5-7B: 28 layers, d 3584, 28 heads, 4 KV heads, MLP 18944; the word-level test vocabulary)",
        QWEN_7B_VISION,
        {"text_width": 3584, "text_layers": 28, "text_heads": 28, "text_kv_heads": 4, "text_mlp": 18944},
    ),
    "narrow": QwenSize(
        "narrow Qwen2.5-VL (the 7B tower's geometry: patch 14, 112-px windows, 32 blocks, full attention at 7, 15, "
        "23, 31, width 64; Qwen2 LLM 4 layers, d 512)",
        {**_QWEN_GEOMETRY, "vision_width": 64, "vision_heads": 2},
        {"text_width": 512, "text_layers": 4, "text_heads": 8},
    ),
    "tiny": QwenSize(
        "test-size Qwen2.5-VL (32 blocks of width 32; LLM 1 layer, d 64), images a sixth of the side",
        {**_QWEN_GEOMETRY, "vision_width": 32, "vision_heads": 2},
        {"text_width": 64, "text_layers": 1, "text_heads": 2},
        scale=6,
    ),
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
    host: str = "LLaVA-NeXT"
    title: str = ""  # the host's size in words (default: ``size.title``)


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


def build_qwen(
    size: Size, scorer: Any, device: torch.device, dtype: torch.dtype, batch_sizes: list[int], seed: int = 0
) -> Setup:
    """A Qwen2.5-VL host of ``size``'s name (``QWEN_SIZES``; random ``dtype`` weights made on ``device``), sharing
    the LLaVA-NeXT setup's relevance ``scorer``, and its inputs; seeded."""
    from ..testing import build_qwen2_5_vl

    qwen = QWEN_SIZES[size.name]
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the weights are made in dtype (a 7B LLM in float32 would double the memory)
    try:
        with torch.device(device):
            built = build_qwen2_5_vl(**qwen.vision, **qwen.text, seed=seed)
    finally:
        torch.set_default_dtype(default)
    model = built.model.to(device=device, dtype=dtype).eval()
    shapes = [(w // qwen.scale, h // qwen.scale) for w, h in QWEN_SHAPES]
    batches = {n: _inputs(built.processor, shapes[:n], device, dtype, QWEN_PROMPT) for n in batch_sizes}
    singles = [_inputs(built.processor, [shape], device, dtype, QWEN_PROMPT) for shape in shapes]
    return Setup(size, model, built.processor, scorer, batches, singles, "Qwen2.5-VL", qwen.title)


def _inputs(
    processor: Any, shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype, prompt: str = PROMPT
) -> dict[str, Any]:
    from ..demo import draw_test_card

    images = [draw_test_card(width, height) for width, height in shapes]
    raw = processor(images=images, text=[prompt] * len(images), padding=True, return_tensors="pt")
    out = {key: value.to(device) for key, value in raw.items()}
    out["pixel_values"] = out["pixel_values"].to(dtype)
    return out


def image_tokens(setup: Setup, inputs: dict[str, Any]) -> int:
    """The image placeholder tokens of a batch (what the host's LLM receives unpruned)."""
    return int((inputs["input_ids"] == setup.model.config.image_token_id).sum())
