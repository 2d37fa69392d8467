"""Check a host adapter against its host with ``hero_adapters.testing.check_adapter`` (no download).

``check_adapter`` is what someone writing an adapter for a new model runs on a tiny in-process build of
that model. Every check uses the host itself as the oracle and compares logits, not only tokens: keep
ratio 1 equals the host's own ``generate`` (greedy and beams), kept counts are exact below 1, the LLM
receives the report's token count, a batch equals its prompts run one by one, and no hook is left
behind after normal and failing calls.

This script builds a tiny InternVL (112-px tiles of 8 x 8 patches, so N = 16 LLM tokens per view; a
6-layer InternViT with q/k norms; a 2-layer Qwen2; random weights) at import, checks the library's own
``InternVLAdapter`` on it, then checks a deliberately broken variant whose feature container mixes
prompts under beam search, to show what a failure looks like. Run::

    python examples/check_my_adapter.py

Needs the ``hf`` extra (transformers, pillow). To check your own adapter, build a tiny model of your
host the same way and pass ``adapter=MyAdapter(model)`` (``check(MyAdapter(HOST.model))`` here).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# --8<-- [start:check]
from hero_adapters import AssembledImage, InternVLAdapter
from hero_adapters.testing import AdapterCheckReport, build_internvl, check_adapter
from hero_core import presets

# A tiny InternVL (the sizes of the shared host matrix): 112-px tiles of 14-px patches, so 8 x 8 patches
# and N = 16 LLM tokens per view after the 2 x 2 shuffle; a 6-layer InternViT with q/k norms; a 2-layer
# Qwen2. text_init=0.5 is large enough that the generated tokens depend on the image features.
HOST = build_internvl(
    tile_pixels=112,
    max_patches=6,
    vision_layers=6,
    vision_width=32,
    vision_heads=4,
    vision_mlp=64,
    use_qk_norm=True,
    text_width=32,
    text_layers=2,
    text_heads=4,
    text_kv_heads=2,
    text_mlp=64,
    vision_init=1.0,
    text_init=0.5,
)


def make_inputs(texts: Sequence[str], images: Sequence[Image.Image]) -> dict[str, Any]:
    """The processor's output for a batch, padded on the left (the builder's tokenizer pads on the left)."""
    return dict(HOST.processor(images=list(images) or None, text=list(texts), return_tensors="pt", padding=True))


def picture(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


TAG = HOST.processor.image_token  # "<IMG_CONTEXT>": expanded to <img> + 16 tokens per view + </img>
PROMPTS = [
    (f"user: {TAG} describe the image assistant:", [picture(40, 100, 0)]),  # 1 x 2 tiles + thumbnail
    (f"user: what is in {TAG} this {TAG} picture assistant:", [picture(90, 60, 1), picture(100, 30, 2)]),
    ("user: a b c assistant:", []),  # a prompt without an image
]


def check(adapter: Any = None, raise_on_failure: bool = True) -> AdapterCheckReport:
    """Every check of check_adapter on the tiny host; adapter=None uses the registered InternVLAdapter."""
    return check_adapter(
        HOST.model,
        make_inputs,
        PROMPTS,
        lambda keep_ratio: presets.hero(keep_ratio, low_layers=(1, 2), high_layers=(4,)),  # layers the tower has
        adapter=adapter,
        vlm_options=None if adapter is not None else {"processor": HOST.processor},
        raise_on_failure=raise_on_failure,
    )


# --8<-- [end:check]


@dataclass(frozen=True, eq=False)
class OneTensorAdapter(InternVLAdapter):
    """A broken adapter: all kept features as ONE (1, sum k, D) tensor. It runs without an error, but
    generate's beam expansion then hands the beams of one prompt another prompt's features."""

    def feature_inputs(self, assembled: Sequence[AssembledImage]) -> dict[str, Any]:
        inputs = super().feature_inputs(assembled)
        image = inputs["mm_encoder_outputs"]["image"]
        image.pooler_output = image.pooler_output.transpose(0, 1)  # (sum k, 1, D) -> (1, sum k, D)
        return inputs


def main() -> int:
    print("InternVLAdapter:")
    print(check())  # raises AdapterCheckError, listing every failed check, if one fails
    print()
    report = check(OneTensorAdapter(HOST.model, processor=HOST.processor), raise_on_failure=False)
    print("OneTensorAdapter (expected to fail the beam checks):")
    print(report)
    if not report.failures:
        print("error: the broken adapter passed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
