"""hero_adapters: binds ``hero_core`` to host models (Hugging Face transformers, open_clip).

``import hero_adapters`` needs only torch and ``hero_core``; transformers and open_clip are imported when
an adapter or scorer first needs them (a HeroError names the extra to install if they are missing).

Examples:
    >>> from hero_core import presets
    >>> from hero_adapters import HeroVLM
    >>> vlm = HeroVLM(model, presets.hero(0.2))                                            # doctest: +SKIP
    >>> inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)  # doctest: +SKIP
    >>> out = vlm.generate(**inputs, max_new_tokens=32)                                    # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .adapter import (
    AssembledImage,
    EncodedImage,
    EncoderFacts,
    HostAdapter,
    PrunedPrompt,
    check_host_adapter,
    get_adapter,
    list_adapters,
    preset_options,
    register_adapter,
)
from .hosts import InternVLAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, Qwen2_5_VLAdapter, Qwen3VLAdapter
from .report import ImageReport, PruneReport
from .towers import ClsAttentionRecord, TowerRecipe, cls_attention_hooks, register_tower_recipe
from .vlm import HeroVLM

__all__ = [
    "AssembledImage",
    "ClsAttentionRecord",
    "EncodedImage",
    "EncoderFacts",
    "HFClipTextScorer",
    "HeroVLM",
    "HostAdapter",
    "ImageReport",
    "InternVLAdapter",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "OpenClipTextScorer",
    "PruneReport",
    "PrunedPrompt",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "TowerRecipe",
    "check_host_adapter",
    "cls_attention_hooks",
    "get_adapter",
    "list_adapters",
    "preset_options",
    "register_adapter",
    "register_tower_recipe",
]

try:
    __version__ = version("hero-prune")
except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {"HFClipTextScorer": ".text_scorers", "OpenClipTextScorer": ".text_scorers"}


def __getattr__(name: str) -> Any:
    """Text scorers load on first use, so a missing optional extra never breaks ``import hero_adapters``."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
