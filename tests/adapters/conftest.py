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

from hero_adapters.testing import BuiltHost, hook_snapshot
from hero_core import presets

from .hosts import build_tiny_llava_next

LOW, HIGH = (1, 2), (4,)  # selector layers that the 6-layer tower has


def build_host(seed: int = 0) -> BuiltHost:
    """The tiny LLaVA-NeXT of the shared host matrix (tests/adapters/hosts.py)."""
    return build_tiny_llava_next(seed)


class TinyHost:
    """The tiny LLaVA-NeXT, its processor, and helpers the tests share (used through the ``tiny`` fixture)."""

    low, high = LOW, HIGH

    def __init__(self) -> None:
        host = build_host()
        self.processor, self.model = host.processor, host.model
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
