"""The Qwen-VL hosts' tiny (or real-geometry) builders: ``build_qwen2_5_vl`` and ``build_qwen3_vl``, as the other
builders in ``builders``, built in-process from configs with an in-memory word-level tokenizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..extras import require
from .builders import DEMO_WORDS, BuiltHost, _text_config, word_tokenizer

__all__ = ["QWEN_SPECIAL", "build_qwen2_5_vl", "build_qwen3_vl"]

#: The Qwen hosts' placeholder words (the processor writes one ``<|image_pad|>`` per merged token, between
#: ``<|vision_start|>`` and ``<|vision_end|>``).
QWEN_SPECIAL = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def _qwen_parts(
    words: Sequence[str], patch_size: int, min_pixels: int, max_pixels: int
) -> tuple[Any, Any, dict[str, int]]:
    """The word-level tokenizer (with the Qwen placeholder words added) and the host's image processor."""
    transformers = require("transformers")
    words = (*words, *(word for word in QWEN_SPECIAL if word not in words))
    vocab = {word: i for i, word in enumerate(words)}
    tokenizer = word_tokenizer(
        words,
        image_token="<|image_pad|>",
        video_token="<|video_pad|>",
        vision_bos_token="<|vision_start|>",
        vision_eos_token="<|vision_end|>",
    )
    image_processor = transformers.Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size, merge_size=2, temporal_patch_size=2
    )
    return tokenizer, image_processor, vocab


def _qwen_text(
    config_class: Any,
    vocab: dict[str, int],
    width: int,
    mlp: int,
    layers: int,
    heads: int,
    kv_heads: int | None,
    init: float,
    interleaved: bool,
) -> Any:
    """The Qwen LLM's config: M-RoPE sections over half the head size, split 2 : 1 : 1 (t : h : w) as the
    released checkpoints split theirs (16, 24, 24 of 64 for Qwen2.5-VL; 24, 20, 20 for Qwen3-VL)."""
    text = _text_config(
        config_class, vocab, width=width, mlp=mlp, layers=layers, heads=heads, kv_heads=kv_heads, init=init
    )
    half = width // heads // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]
    text.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    if interleaved:
        text.rope_parameters["mrope_interleaved"] = True
    return text


def _qwen_host(
    config_class: Any,
    model_class: Any,
    vision: Any,
    text: Any,
    vocab: dict[str, int],
    processor: Any,
    patch_size: int,
    seed: int,
) -> BuiltHost:
    """The Qwen host from its tower and LLM configs, with the placeholder ids of ``vocab``, seeded."""
    config = config_class(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    return BuiltHost(model=model, processor=processor, tile_pixels=2 * patch_size, patch_size=patch_size)


def build_qwen2_5_vl(
    *,
    patch_size: int = 14,
    window_size: int = 112,
    fullatt_block_indexes: Sequence[int] = (7, 15, 23, 31),
    vision_layers: int = 32,
    vision_width: int = 64,
    vision_heads: int = 4,
    vision_mlp: int | None = None,
    text_width: int = 256,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int | None = None,
    text_mlp: int | None = None,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    words: Sequence[str] = DEMO_WORDS,
    text_init: float = 0.02,
    seed: int = 0,
) -> BuiltHost:
    """A transformers ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor`` from configs (random weights).

    One view per image at native resolution (``image_grid_thw``), 2 x 2 merged: ``h w / 4`` LLM tokens per image.
    The tower uses window attention (``window_size`` px) except in ``fullatt_block_indexes``. The processor's
    pixel bounds ``min_pixels`` / ``max_pixels`` decide each image's grid; the tokenizer is word-level, built in
    memory from ``words`` plus the Qwen placeholder words. ``tile_pixels`` of the result is one merged token's
    side in pixels.
    """
    transformers = require("transformers")
    tokenizer, image_processor, vocab = _qwen_parts(words, patch_size, min_pixels, max_pixels)
    processor = transformers.Qwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=transformers.Qwen2VLVideoProcessor()
    )
    vision = transformers.Qwen2_5_VLVisionConfig(
        depth=vision_layers,
        hidden_size=vision_width,
        num_heads=vision_heads,
        intermediate_size=vision_mlp or 4 * vision_width,
        out_hidden_size=text_width,
        fullatt_block_indexes=list(fullatt_block_indexes),
        window_size=window_size,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    text = _qwen_text(
        transformers.Qwen2_5_VLTextConfig,
        vocab,
        text_width,
        text_mlp or 4 * text_width,
        text_layers,
        text_heads,
        text_kv_heads,
        text_init,
        interleaved=False,
    )
    return _qwen_host(
        transformers.Qwen2_5_VLConfig,
        transformers.Qwen2_5_VLForConditionalGeneration,
        vision,
        text,
        vocab,
        processor,
        patch_size,
        seed,
    )


def build_qwen3_vl(
    *,
    patch_size: int = 16,
    deepstack_visual_indexes: Sequence[int] = (8, 16, 24),
    num_position_embeddings: int = 2304,
    vision_layers: int = 27,
    vision_width: int = 64,
    vision_heads: int = 4,
    vision_mlp: int | None = None,
    text_width: int = 256,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int | None = None,
    text_mlp: int | None = None,
    min_pixels: int = 64 * 64,
    max_pixels: int = 32 * 32 * 1280,
    words: Sequence[str] = DEMO_WORDS,
    text_init: float = 0.02,
    seed: int = 0,
) -> BuiltHost:
    """A transformers ``Qwen3VLForConditionalGeneration`` + ``Qwen3VLProcessor`` from configs (random weights).

    As ``build_qwen2_5_vl``, with Qwen3-VL's tower: full attention in every block, learned position embeddings
    resampled to each grid, and DeepStack: merged features of ``deepstack_visual_indexes`` added to the first
    LLM layers' hidden states at the image positions. Its M-RoPE sections are interleaved.
    """
    transformers = require("transformers")
    tokenizer, image_processor, vocab = _qwen_parts(words, patch_size, min_pixels, max_pixels)
    processor = transformers.Qwen3VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=transformers.Qwen3VLVideoProcessor()
    )
    vision = transformers.Qwen3VLVisionConfig(
        depth=vision_layers,
        hidden_size=vision_width,
        num_heads=vision_heads,
        intermediate_size=vision_mlp or 4 * vision_width,
        out_hidden_size=text_width,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=num_position_embeddings,
        deepstack_visual_indexes=list(deepstack_visual_indexes),
    )
    text = _qwen_text(
        transformers.Qwen3VLTextConfig,
        vocab,
        text_width,
        text_mlp or 4 * text_width,
        text_layers,
        text_heads,
        text_kv_heads,
        text_init,
        interleaved=True,
    )
    return _qwen_host(
        transformers.Qwen3VLConfig,
        transformers.Qwen3VLForConditionalGeneration,
        vision,
        text,
        vocab,
        processor,
        patch_size,
        seed,
    )
