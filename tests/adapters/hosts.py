"""The shared host matrix: one row per host family, each a tiny real host built in-process.

Adding a host = its file under ``hero_adapters/hosts/``, its builder in ``hero_adapters.testing`` and one
row here; every test that takes the ``host`` fixture then runs on it.

``CHECKED`` adds the bring-your-own model of ``examples/custom_hr_lvlm.py`` (its own processor function and
its own adapter, no registered type) to the rows that ``check_adapter`` runs on.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from hero_adapters.testing import (
    BuiltHost,
    build_internvl,
    build_llava_next,
    build_llava_onevision,
    build_qwen2_5_vl,
    build_qwen3_vl,
)
from hero_core import presets


@dataclass
class HostRow:
    """A tiny host, the prompt markup its processor expects, and selector layers its tower has."""

    name: str
    build: Callable[[], BuiltHost]
    image_tag: str
    low: tuple[int, ...]
    high: tuple[int, ...]
    tokens_per_view: int
    nested: bool = False  # the processor wants images grouped per prompt (it then reports batch_num_images)
    native: bool = False  # one view per image (Qwen-VL): its default preset is hero-native, over 2 x 2 regions
    _built: list[BuiltHost] = field(default_factory=list, repr=False)

    @property
    def host(self) -> BuiltHost:
        if not self._built:
            self._built.append(self.build())
        return self._built[0]

    @property
    def model(self) -> Any:
        return self.host.model

    @property
    def processor(self) -> Any:
        return self.host.processor

    def image(self, height: int, width: int, seed: int = 0) -> Image.Image:
        rng = np.random.default_rng(seed + 7919 * height + width)
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    def text(self, template: str) -> str:
        """``template`` with ``{}`` for each image, in this host's image markup."""
        return template.replace("{}", self.image_tag)

    def inputs(self, texts: Sequence[str], images: Sequence[Image.Image], **options: Any) -> dict[str, Any]:
        given: Any = list(images) or None
        if self.nested and given is not None:  # one list of images per prompt, in prompt order
            groups, cursor = [], 0
            for text in texts:
                count = text.count(self.image_tag)
                groups.append(given[cursor : cursor + count])
                cursor += count
            given = groups
        return dict(self.processor(images=given, text=list(texts), return_tensors="pt", padding=True, **options))

    def pruner(self, keep_ratio: float, preset: str | None = None, **overrides: Any) -> Any:
        """The row's preset (``hero``; ``hero-native`` on hosts without tiles) with the row's layers."""
        preset = preset or ("hero-native" if self.native else "hero")
        if preset == "hero-native":
            overrides.setdefault("region", 2)  # several regions on the tiny images' 3 x 7 ... 6 x 6 grids
        overrides.setdefault("low_layers", self.low)
        overrides.setdefault("high_layers", self.high)
        return presets.get(preset, keep_ratio, **overrides)

    def prompts(self) -> list[tuple[str, list[Image.Image]]]:
        """Three prompts: one image (tiled), two images, and none; four image shapes in all."""
        return [
            (self.text("USER: {} describe the image ASSISTANT:"), [self.image(40, 100)]),
            (self.text("USER: what is in {} this {} picture ASSISTANT:"), [self.image(90, 60), self.image(100, 30)]),
            (self.text("USER: a b c ASSISTANT:"), []),
        ]

    def batch(self) -> dict[str, Any]:
        prompts = self.prompts()
        return self.inputs([t for t, _ in prompts], [i for _, group in prompts for i in group])


SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:")
TEXT = ("describe", "the", "image", "what", "is", "in", "this", "picture", "compare", "two")
WORDS = (*SPECIAL, *TEXT, *"abcdefghijklmnop")  # the tiny LLaVA-NeXT's ids: the position in this tuple
LLAVA_PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
#: The LLM side of every tiny host: 2 Llama / Qwen2 layers of width 32, weights drawn large.
TINY_TEXT = {"text_width": 32, "text_layers": 2, "text_heads": 4, "text_kv_heads": 2, "text_mlp": 64, "text_init": 0.5}
#: Every tiny tower: 6 layers of width 32, 4 heads.
TINY_VISION = {"vision_layers": 6, "vision_width": 32, "vision_heads": 4, "vision_mlp": 64}


def build_tiny_llava_next(seed: int = 0) -> BuiltHost:
    """4 x 4 patches per 56-px view (N = 16), weights drawn with large scales so that CLS attention is peaked
    and the generated tokens depend on the image features (an identity test on sequences can then fail)."""
    return build_llava_next(
        tile_pixels=56, pinpoints=LLAVA_PINPOINTS, words=WORDS, vision_init=5.0, seed=seed, **TINY_VISION, **TINY_TEXT
    )


def _internvl() -> BuiltHost:
    """8 x 8 patches per 112-px view, 2 x 2 shuffled into N = 16 LLM tokens; qk-norm on."""
    host = build_internvl(
        tile_pixels=112, patch_size=14, max_patches=6, use_qk_norm=True, vision_init=1.0, **TINY_VISION, **TINY_TEXT
    )
    with torch.no_grad():  # qk-norm weights away from 1, so a recipe that skips the norms is visibly wrong
        generator = torch.Generator().manual_seed(3)
        for name, parameter in host.model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator) * 2)
    return host


def build_tiny_llava_onevision(vision_aspect_ratio: str = "anyres_max_9") -> BuiltHost:
    """SigLIP (no CLS) with 4 x 4 patches per 56-px view; ``anyres_max_1`` makes the host downsample grids."""
    return build_llava_onevision(
        tile_pixels=56, words=WORDS, vision_aspect_ratio=vision_aspect_ratio, **TINY_VISION, **TINY_TEXT
    )


#: The Qwen hosts' processor bounds: 16 to 48 merged tokens per image (non-square grids for the test images).
QWEN_TOKENS = (16, 48)


def build_tiny_qwen2_5_vl() -> BuiltHost:
    """Qwen2.5-VL: 14-px patches, 28-px merged tokens, window attention over 2 x 2 merged tokens (56 px) in every
    block but 2 and 5 (full attention), so the matrix's layers (1, 2) and (4,) read both kinds."""
    side = 28
    return build_qwen2_5_vl(
        window_size=56,
        fullatt_block_indexes=(2, 5),
        min_pixels=side * side * QWEN_TOKENS[0],
        max_pixels=side * side * QWEN_TOKENS[1],
        words=WORDS,
        **TINY_VISION,
        **TINY_TEXT,
    )


def build_tiny_qwen3_vl() -> BuiltHost:
    """Qwen3-VL: 16-px patches, 32-px merged tokens, full attention, DeepStack levels from blocks 1 and 3."""
    side = 32
    return build_qwen3_vl(
        deepstack_visual_indexes=(1, 3),
        num_position_embeddings=64,
        min_pixels=side * side * QWEN_TOKENS[0],
        max_pixels=side * side * QWEN_TOKENS[1],
        words=WORDS,
        **TINY_VISION,
        **TINY_TEXT,
    )


QWEN_TAG = "<|vision_start|><|image_pad|><|vision_end|>"

HOSTS: dict[str, HostRow] = {
    "llava_next": HostRow("llava_next", build_tiny_llava_next, "<image>", (1, 2), (4,), 16),
    "internvl": HostRow("internvl", _internvl, "<IMG_CONTEXT>", (1, 2), (4,), 16),
    "llava_onevision": HostRow("llava_onevision", build_tiny_llava_onevision, "<image>", (1, 2), (4,), 16, True),
    "llava_onevision-downsampled": HostRow(
        "llava_onevision-downsampled",
        lambda: build_tiny_llava_onevision("anyres_max_1"),
        "<image>",
        (1, 2),
        (4,),
        16,
        True,
    ),
    "qwen2_5_vl": HostRow("qwen2_5_vl", build_tiny_qwen2_5_vl, QWEN_TAG, (1, 2), (4,), 0, native=True),
    "qwen3_vl": HostRow("qwen3_vl", build_tiny_qwen3_vl, QWEN_TAG, (1, 2), (4,), 0, native=True),
}


def generate(target: Any, inputs: dict[str, Any], **settings: Any) -> Any:
    """``target.generate`` (a host or a ``HeroVLM``) greedy, with the logits, 4 new tokens unless ``settings`` say."""
    settings = {
        "max_new_tokens": 4,
        "do_sample": False,
        "output_logits": True,
        "return_dict_in_generate": True,
        **settings,
    }
    with torch.no_grad():
        return target.generate(**inputs, **settings)


def assert_same(first: Any, second: Any, atol: float = 1e-5) -> None:
    """Equal sequences and logits within ``atol`` (two ``generate`` outputs with ``output_logits``)."""
    assert torch.equal(first.sequences, second.sequences)
    worst = max(float((a - b).abs().max()) for a, b in zip(first.logits, second.logits, strict=True))
    assert worst <= atol, worst


@cache
def host_row(name: str) -> HostRow:
    row = HOSTS[name]
    with torch.no_grad():  # warm-up: the host lazily installs its own output-capturing hooks
        row.model.generate(
            **row.inputs([row.text("USER: {} describe ASSISTANT:")], [row.image(40, 100)]), max_new_tokens=1
        )
    return row


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Example models in the ``check_adapter`` matrix: row name -> the example script that defines it.
EXAMPLE_ROWS = {"example:custom_hr_lvlm": "custom_hr_lvlm.py"}
#: Every row ``check_adapter`` runs on: the registered hosts, then the examples' own models.
CHECKED = (*sorted(HOSTS), *EXAMPLE_ROWS)


@cache
def example_module(script: str) -> ModuleType:
    """The example script imported as a module (its ``main`` is not run)."""
    name = f"hero_example_{Path(script).stem}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


@cache
def _example_model(script: str) -> Any:
    return example_module(script).build_model()


def check_arguments(name: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``check_adapter``'s positional and keyword arguments for the row ``name`` of ``CHECKED``."""
    if name in EXAMPLE_ROWS:
        module = example_module(EXAMPLE_ROWS[name])
        model = _example_model(EXAMPLE_ROWS[name])
        return (model, module.process, module.PROMPTS, module.pruner), {"adapter": module.AnyResAdapter(model)}
    row = host_row(name)
    return (row.model, row.inputs, row.prompts(), row.pruner), {"vlm_options": {"processor": row.processor}}
