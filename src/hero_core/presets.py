"""Ready-made pruning methods, each a ``Pruner`` value; every hyperparameter can be overridden.

>>> from hero_core import presets
>>> pruner = presets.hero(0.2, alpha=0.7, low_layers=(4, 5, 6))
>>> pruner = presets.get("hero-reference", 0.4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ._errors import HeroError
from .allocators import HeroAllocator, ThumbnailAttentionAllocator, UniformAllocator
from .plan import Pruner
from .selectors import ClsAttentionSelector, FunctionAwareSelector, RandomSelector, StridedSelector

__all__ = [
    "PRESETS",
    "cls_attention",
    "get",
    "hero",
    "hero_reference",
    "thumbnail_attention",
    "uniform_random",
    "uniform_strided",
]


def hero(keep_ratio: float, **overrides: Any) -> Pruner:
    """HERO as the paper describes it (Li et al., "HERO: Rethinking Visual Token Early Dropping in
    High-Resolution Large Vision-Language Models"): exact budgets (Eq. 1-4) and function-aware
    selection with the head mean (Eq. 5-6).

    Overrides: any field of ``HeroAllocator`` or ``FunctionAwareSelector``.
    """
    return _build(keep_ratio, HeroAllocator(), FunctionAwareSelector(), overrides)


def hero_reference(keep_ratio: float, **overrides: Any) -> Pruner:
    """HERO as the authors' public code computes it: padding-density prior (weight 0.2), plain floors
    without redistribution, and the re-softmax-then-mean head reduction."""
    allocator = HeroAllocator(density_weight=0.2, exact=False)
    return _build(keep_ratio, allocator, FunctionAwareSelector(head_reduction="softmax_mean"), overrides)


def uniform_random(keep_ratio: float, **overrides: Any) -> Pruner:
    """Baseline: the same ratio per view, random positions (seeded). Override ``seed``."""
    return _build(keep_ratio, UniformAllocator(), RandomSelector(), overrides)


def uniform_strided(keep_ratio: float, **overrides: Any) -> Pruner:
    """Baseline: the same ratio per view, spatially uniform positions (plain downsampling)."""
    return _build(keep_ratio, UniformAllocator(), StridedSelector(), overrides)


def cls_attention(keep_ratio: float, **overrides: Any) -> Pruner:
    """FasterVLM (Zhang et al. 2024, arXiv:2412.01818) applied per view: the same ratio per view, and the
    tokens one layer's CLS attends to most (default layer 22). Override ``layer``, ``head_reduction``."""
    return _build(keep_ratio, UniformAllocator(), ClsAttentionSelector(), overrides)


def thumbnail_attention(keep_ratio: float, **overrides: Any) -> Pruner:
    """HiRED (Arif et al., AAAI 2025, arXiv:2408.10945) / GlobalCom2 (Liu et al. 2025, arXiv:2501.05179):
    tile budgets from the thumbnail's CLS-attention mass over each tile, then single-layer CLS-attention
    selection inside every view. ``layer`` sets both; ``allocator_layer`` / ``selector_layer`` one each."""
    layer = overrides.pop("layer", 22)
    allocator = ThumbnailAttentionAllocator(layer=overrides.pop("allocator_layer", layer))
    selector = ClsAttentionSelector(layer=overrides.pop("selector_layer", layer))
    return _build(keep_ratio, allocator, selector, overrides)


PRESETS: dict[str, Callable[..., Pruner]] = {
    "hero": hero,
    "hero-reference": hero_reference,
    "uniform-random": uniform_random,
    "uniform-strided": uniform_strided,
    "cls-attention": cls_attention,
    "thumbnail-attention": thumbnail_attention,
}


def get(name: str, keep_ratio: float, **overrides: Any) -> Pruner:
    """A preset by its name in ``PRESETS`` (``"hero"``, ``"hero-reference"``, ``"uniform-random"``, ...)."""
    factory = PRESETS.get(name.replace("_", "-")) if isinstance(name, str) else None
    if factory is None:
        raise HeroError.field("preset", name, f"one of {sorted(PRESETS)}")
    return factory(keep_ratio, **overrides)


def _build(keep_ratio: float, allocator: Any, selector: Any, overrides: dict[str, Any]) -> Pruner:
    """Route each override to the allocator or selector field of that name (unknown names raise)."""
    parts = {"allocator": allocator, "selector": selector}
    changes: dict[str, dict[str, Any]] = {"allocator": {}, "selector": {}}
    for key, value in overrides.items():
        owners = [role for role, part in parts.items() if key in {f.name for f in dataclasses.fields(part)}]
        if not owners:
            known = sorted({f.name for part in parts.values() for f in dataclasses.fields(part)})
            raise HeroError.field(key, value, f"an override among {known}", "Check the spelling of the keyword.")
        changes[owners[0]][key] = value
    return Pruner(
        keep_ratio=keep_ratio,
        allocator=dataclasses.replace(allocator, **changes["allocator"]),
        selector=dataclasses.replace(selector, **changes["selector"]),
    )
