"""Tiny real host models, built in-process once per session; nothing is downloaded.

The tiny LLaVA-NeXT has a 6-layer CLIP tower (4 heads, 56 px views of 4 x 4 patches, so N = 16) and a
2-layer Llama. Weights are drawn with large scales so that CLS attention is peaked and the generated
tokens depend on the image features: an identity test that compares sequences can then fail.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
)

from hero_core import presets

SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:")
TEXT = ("describe", "the", "image", "what", "is", "in", "this", "picture", "compare", "two")
WORDS = (*SPECIAL, *TEXT, *"abcdefghijklmnop")  # ids: the position in this tuple
PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
LOW, HIGH = (1, 2), (4,)  # selector layers that the 6-layer tower has


def build_processor() -> LlavaNextProcessor:
    vocab = {word: i for i, word in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.padding_side = "left"
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=PINPOINTS
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def build_model(seed: int = 0) -> LlavaNextForConditionalGeneration:
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        initializer_factor=5.0,
    )
    text = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.5,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=WORDS.index("<image>"),
        image_grid_pinpoints=PINPOINTS,
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    return LlavaNextForConditionalGeneration(config).eval()


def hook_snapshot(model: torch.nn.Module) -> dict[str, tuple[int, int, tuple[str, ...]]]:
    """Per module: forward pre-hooks, forward hooks, and its attribute names (to see anything added)."""
    return {
        name: (len(module._forward_pre_hooks), len(module._forward_hooks), tuple(sorted(vars(module))))
        for name, module in model.named_modules()
    }


class TinyHost:
    """The tiny LLaVA-NeXT, its processor, and helpers the tests share (used through the ``tiny`` fixture)."""

    low, high = LOW, HIGH

    def __init__(self) -> None:
        self.processor = build_processor()
        self.model = build_model()
        self.image_token_id = self.model.config.image_token_id
        # Warm up: the host lazily installs its own output-capturing hooks on the first call.
        with torch.no_grad():
            self.model.generate(
                **self.inputs(["USER: <image> describe ASSISTANT:"], [self.image(40, 100)]), max_new_tokens=1
            )

    def image(self, height: int, width: int, seed: int = 0) -> Image.Image:
        rng = np.random.default_rng(seed + 7919 * height + width)
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    def inputs(self, texts: Sequence[str], images: Sequence[Image.Image] | None) -> dict[str, Any]:
        return dict(self.processor(images=images, text=list(texts), return_tensors="pt", padding=True))

    def pruner(self, keep_ratio: float, preset: str = "hero", **overrides: Any) -> Any:
        overrides.setdefault("low_layers", LOW)
        overrides.setdefault("high_layers", HIGH)
        return presets.get(preset, keep_ratio, **overrides)

    def snapshot(self) -> dict[str, tuple[int, int, tuple[str, ...]]]:
        return hook_snapshot(self.model)


@pytest.fixture(scope="session")
def tiny() -> TinyHost:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return TinyHost()


@pytest.fixture(scope="session")
def batch(tiny: TinyHost) -> dict[str, Any]:
    """Three left-padded prompts: one image, two adjacent images (one run), one image; four shapes."""
    texts = [
        "USER: <image> describe the image ASSISTANT:",
        "USER: <image><image> compare two ASSISTANT:",
        "USER: what is in this <image> picture a b c ASSISTANT:",
    ]
    images = [tiny.image(40, 100), tiny.image(90, 60), tiny.image(50, 50), tiny.image(100, 30)]
    return {"texts": texts, "images": images, "inputs": tiny.inputs(texts, images)}
