"""Tiny (or real-geometry) host models built in-process from configs, with in-memory tokenizers.

The tests, the demo and the benchmarks all build their hosts here; nothing is downloaded. Every builder
returns a ``BuiltHost`` (the real transformers model class, its real processor, and the options used).
Adding a host means adding its builder here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..extras import require

__all__ = [
    "DEMO_WORDS",
    "INTERNVL_WORDS",
    "LLAVA_NEXT_7B_PINPOINTS",
    "BuiltHost",
    "build_internvl",
    "build_llava_next",
    "build_llava_onevision",
    "build_tiny_clip",
    "word_tokenizer",
]


LLAVA_NEXT_7B_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

#: The demo tokenizer's whole vocabulary (a word-level tokenizer built in memory).
DEMO_WORDS = tuple(
    " ".join(
        (
            "<pad> <s> </s> <unk> <image> USER: ASSISTANT: what is written on the sign in this picture describe",
            "image a an and are at be by for from has have it its of or that to was were which with red blue green",
            "yellow circle square triangle star text word door exit open closed left right top bottom corner middle",
            "large small two three one number letters board card test pattern color colors shape shapes ? . ,",
        )
    ).split()
)


def _text_config(
    config_class: Any,
    vocab: dict[str, int],
    *,
    width: int,
    mlp: int,
    layers: int,
    heads: int,
    kv_heads: int | None,
    init: float,
) -> Any:
    """The LLM's config over the word-level vocabulary (special ids from ``<pad> <s> </s>``)."""
    return config_class(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=8192,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        initializer_range=init,
    )


@dataclass(frozen=True)
class BuiltHost:
    """A host model, its processor, and the options it was built with."""

    model: Any
    processor: Any
    tile_pixels: int
    patch_size: int


def word_tokenizer(words: Sequence[str], **special: str) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` (ids = positions), padding on the left.

    ``words`` must contain ``<pad> <s> </s> <unk>``; ``special`` become ``extra_special_tokens``
    (e.g. ``image_token="<image>"``), each of which must be one of ``words``.
    """
    transformers = require("transformers")
    tokenizers = require("tokenizers")
    vocab = {word: i for i, word in enumerate(words)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=dict(special),
        padding_side="left",  # in the init kwargs, so a saved checkpoint reloads with left padding
    )
    return tokenizer


def build_llava_next(
    *,
    tile_pixels: int = 336,
    patch_size: int = 14,
    pinpoints: Sequence[Sequence[int]] = LLAVA_NEXT_7B_PINPOINTS,
    vision_layers: int = 24,
    vision_width: int = 64,
    vision_heads: int = 4,
    vision_mlp: int | None = None,
    text_width: int = 512,
    text_layers: int = 4,
    text_heads: int = 8,
    text_kv_heads: int | None = None,
    text_mlp: int | None = None,
    words: Sequence[str] = DEMO_WORDS,
    vision_init: float = 1.0,
    text_init: float = 0.02,
    seed: int = 0,
) -> BuiltHost:
    """A transformers ``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor`` from configs (random weights).

    The tokenizer is word-level and built in memory from ``words`` (which must contain ``<pad> <s> </s> <unk>
    <image>``); padding is on the left, for generation. MLP widths default to 4x (vision) and LLaMA's
    11008 / 4096 ratio (text); ``vision_init`` / ``text_init`` scale the random weights.
    """
    transformers = require("transformers")
    vocab = {word: i for i, word in enumerate(words)}
    tokenizer = word_tokenizer(words, image_token="<image>")
    pins = [list(p) for p in pinpoints]
    image_processor = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": tile_pixels},
        crop_size={"height": tile_pixels, "width": tile_pixels},
        image_grid_pinpoints=pins,
    )
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=vision_mlp or 4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=tile_pixels,
        patch_size=patch_size,
        hidden_act="quick_gelu",
        initializer_factor=vision_init,
    )
    text = _text_config(
        transformers.LlamaConfig,
        vocab,
        width=text_width,
        mlp=text_mlp or (text_width * 11008) // 4096,
        layers=text_layers,
        heads=text_heads,
        kv_heads=text_kv_heads,
        init=text_init,
    )
    config = transformers.LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab["<image>"],
        image_grid_pinpoints=pins,
        initializer_range=text_init,
    )
    torch.manual_seed(seed)
    model = transformers.LlavaNextForConditionalGeneration(config).eval()
    return BuiltHost(model=model, processor=processor, tile_pixels=tile_pixels, patch_size=patch_size)


def build_tiny_clip(seed: int = 0) -> Any:
    """A small transformers ``CLIPModel`` (random weights) with the real CLIP BPE tokenizer, as a text scorer."""
    transformers = require("transformers")
    from ..text_scorers import HFClipTextScorer, clip_tokenizer_from_open_clip

    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=64,
    )
    torch.manual_seed(seed)
    return HFClipTextScorer(transformers.CLIPModel(config).eval(), clip_tokenizer_from_open_clip())


#: The tiny InternVL tokenizer's vocabulary: InternVL's image tags, then a few words.
INTERNVL_WORDS = (
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
    "<image>",
    "user:",
    "assistant:",
    *[
        "describe",
        "the",
        "image",
        "what",
        "is",
        "in",
        "this",
        "picture",
        "compare",
        "two",
        "a",
        "b",
        "c",
        "d",
        "e",
        "f",
        "g",
        "h",
    ],
)


def build_internvl(
    *,
    tile_pixels: int = 448,
    patch_size: int = 14,
    max_patches: int = 12,
    vision_layers: int = 24,
    vision_width: int = 64,
    vision_heads: int = 4,
    vision_mlp: int | None = None,
    use_qk_norm: bool = False,
    text_width: int = 256,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int | None = None,
    text_mlp: int | None = None,
    words: Sequence[str] = INTERNVL_WORDS,
    vision_init: float = 0.02,
    text_init: float = 0.02,
    seed: int = 0,
) -> BuiltHost:
    """A transformers ``InternVLForConditionalGeneration`` + ``InternVLProcessor`` from configs (random weights).

    The image processor is the host's ``GotOcr2ImageProcessorPil`` with ``crop_to_patches=True`` (tiles in
    raster order, thumbnail last, none for a 1 x 1 grid); the tokenizer is word-level, built in memory from
    ``words`` (which must contain ``<pad> <s> </s> <unk> <img> </img> <IMG_CONTEXT> <video>``). Tokens per
    tile: ``(tile_pixels / patch_size / 2) ** 2`` (the 2 x 2 pixel shuffle). ``vision_init`` scales the
    tower's random weights; ``use_qk_norm`` turns on InternViT's q/k RMSNorm.
    """
    transformers = require("transformers")
    vocab = {word: i for i, word in enumerate(words)}
    tokenizer = word_tokenizer(
        words,
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    side = tile_pixels // patch_size
    tokens_per_tile = (side // 2) ** 2
    image_processor = transformers.GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        size={"height": tile_pixels, "width": tile_pixels},
        min_patches=1,
        max_patches=max_patches,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor = transformers.InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=transformers.InternVLVideoProcessor(),
        image_seq_length=tokens_per_tile,
    )
    vision = transformers.InternVLVisionConfig(
        hidden_size=vision_width,
        intermediate_size=vision_mlp or 4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=[tile_pixels, tile_pixels],
        patch_size=[patch_size, patch_size],
        use_qk_norm=use_qk_norm,
        initializer_range=vision_init,
    )
    text = _text_config(
        transformers.Qwen2Config,
        vocab,
        width=text_width,
        mlp=text_mlp or 4 * text_width,
        layers=text_layers,
        heads=text_heads,
        kv_heads=text_kv_heads,
        init=text_init,
    )
    config = transformers.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab["<IMG_CONTEXT>"],
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        initializer_range=text_init,
    )
    torch.manual_seed(seed)
    model = transformers.InternVLForConditionalGeneration(config).eval()
    return BuiltHost(model=model, processor=processor, tile_pixels=tile_pixels, patch_size=patch_size)


def build_llava_onevision(
    *,
    tile_pixels: int = 384,
    patch_size: int = 14,
    pinpoints: Sequence[Sequence[int]] | None = None,
    vision_aspect_ratio: str = "anyres_max_9",
    vision_layers: int = 26,
    vision_width: int = 64,
    vision_heads: int = 4,
    vision_mlp: int | None = None,
    text_width: int = 256,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int | None = None,
    text_mlp: int | None = None,
    words: Sequence[str] = DEMO_WORDS,
    text_init: float = 0.02,
    seed: int = 0,
) -> BuiltHost:
    """A transformers ``LlavaOnevisionForConditionalGeneration`` + ``LlavaOnevisionProcessor`` (random weights).

    The tower is a SigLIP (no CLS token) with ``vision_layers`` layers, strategy ``full``, feature layer -1;
    ``pinpoints`` default to multiples of ``tile_pixels`` up to 3 x 3 tiles; ``vision_aspect_ratio``
    ``anyres_max_N`` makes the host downsample the stitched grid above N tiles' worth. The tokenizer is
    word-level, built in memory from ``words`` (which must contain ``<pad> <s> </s> <unk> <image>``).
    """
    transformers = require("transformers")
    vocab = {word: i for i, word in enumerate(words)}
    if "<video>" not in vocab:
        words = (*words, "<video>")
        vocab["<video>"] = len(vocab)
    tokenizer = word_tokenizer(words, image_token="<image>", video_token="<video>")
    pins = (
        [list(p) for p in pinpoints]
        if pinpoints is not None
        else [[tile_pixels * r, tile_pixels * c] for r in range(1, 4) for c in range(1, 4)]
    )
    side = tile_pixels // patch_size
    image_processor = transformers.LlavaOnevisionImageProcessorPil(
        size={"height": tile_pixels, "width": tile_pixels},
        image_grid_pinpoints=pins,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = transformers.LlavaOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=transformers.LlavaOnevisionVideoProcessor(),
        num_image_tokens=side * side,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
    )
    vision = transformers.SiglipVisionConfig(
        hidden_size=vision_width,
        intermediate_size=vision_mlp or 4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=tile_pixels,
        patch_size=patch_size,
        vision_use_head=False,
    )
    text = _text_config(
        transformers.Qwen2Config,
        vocab,
        width=text_width,
        mlp=text_mlp or 4 * text_width,
        layers=text_layers,
        heads=text_heads,
        kv_heads=text_kv_heads,
        init=text_init,
    )
    config = transformers.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab["<image>"],
        video_token_id=vocab["<video>"],
        image_grid_pinpoints=pins,
        vision_aspect_ratio=vision_aspect_ratio,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = transformers.LlavaOnevisionForConditionalGeneration(config).eval()
    return BuiltHost(model=model, processor=processor, tile_pixels=tile_pixels, patch_size=patch_size)
