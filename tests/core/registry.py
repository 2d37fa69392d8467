"""One registry of every allocator, selector and preset the library ships, with sample settings.

Shared tests run over all rows. A new method adds one row here (STYLE.md point 14).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hero_core import (
    ClsAttentionSelector,
    FunctionAwareSelector,
    HeroAllocator,
    RandomSelector,
    StridedSelector,
    ThumbnailAttentionAllocator,
    UniformAllocator,
    presets,
)
from hero_core.testing import with_token_features, with_token_relevance


@dataclass(frozen=True)
class AllocatorRow:
    id: str
    make: Callable[[], Any]
    exact_total: bool  # sum == min(floor(R V N), valid)


@dataclass(frozen=True)
class SelectorRow:
    id: str
    make: Callable[[], Any]
    scale_invariant: bool  # positive rescaling of the attention keeps the selection


ALLOCATORS = [
    AllocatorRow("hero-paper", HeroAllocator, True),
    AllocatorRow("hero-paper-alpha0", lambda: HeroAllocator(alpha=0.0, tau_t=0.01), True),
    AllocatorRow("hero-paper-alpha1", lambda: HeroAllocator(alpha=1.0, tau_v=0.09), True),
    AllocatorRow("hero-paper-density", lambda: HeroAllocator(density_weight=0.2), True),
    AllocatorRow("hero-reference", lambda: HeroAllocator(density_weight=0.2, exact=False), False),
    AllocatorRow("uniform", UniformAllocator, True),
    AllocatorRow("thumbnail-attention", ThumbnailAttentionAllocator, True),
]

SELECTORS = [
    SelectorRow("function-aware-mean", FunctionAwareSelector, True),
    SelectorRow("function-aware-softmax", lambda: FunctionAwareSelector(head_reduction="softmax_mean"), False),
    SelectorRow("function-aware-custom", lambda: FunctionAwareSelector(low_layers=(5,), high_layers=(22, 21)), True),
    SelectorRow("cls-attention", ClsAttentionSelector, True),
    SelectorRow("cls-attention-layer6", lambda: ClsAttentionSelector(layer=6), True),
    SelectorRow("random", RandomSelector, True),
    SelectorRow("random-seed7", lambda: RandomSelector(seed=7), True),
    SelectorRow("strided", StridedSelector, True),
]

#: Presets for hosts without tiles: they refuse the multi-view tiles the shared tests draw; tests/core/test_native.py
#: holds them to the same invariants on one-view tiles with token features.
NATIVE_PRESETS = ("hero-native",)

#: Presets and whether their totals are exact (the reference code drops floor remainders).
PRESETS = {name: name != "hero-reference" for name in presets.PRESETS if name not in NATIVE_PRESETS}

#: Presets whose selector compares tokens by their features (DivPrune, DART, CDPruner, VisionZip): the shared
#: tests hand them tiles with token features (``tiles_for``); tests/core/test_whole_image.py tests them further.
FEATURE_PRESETS = tuple(name for name in PRESETS if presets.get(name, 0.5).needs_features)


def tiles_for(name: str, tiles: Any) -> Any:
    """``tiles``, with token features (and, for ``cdpruner``, token relevance) added, seeded by the tiles' own
    values, when preset ``name`` needs them."""
    if name not in FEATURE_PRESETS:
        return tiles
    seed = int(tiles.cls_tokens.double().abs().sum() * 1e6) % 2**31
    if tiles.token_features is None:
        tiles = with_token_features(tiles, width=6, seed=seed)
    if presets.get(name, 0.5).needs_token_relevance and tiles.token_relevance is None:
        tiles = with_token_relevance(tiles, seed=seed)
    return tiles
