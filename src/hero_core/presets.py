"""Ready-made pruning methods, each a ``Pruner`` value; every hyperparameter can be overridden.

>>> from hero_core import presets
>>> pruner = presets.hero(0.2, alpha=0.7, low_layers=(4, 5, 6))
>>> pruner = presets.get("hero-reference", 0.4)
>>> pruner = presets.hero(0.2, depth=27)          # the paper's layers scaled to a 27-layer encoder
>>> pruner = presets.hero_native(0.2, depth=32, full_attention=(7, 15, 23, 31))  # Qwen2.5-VL's tower

Layer numbers: the paper's defaults are given for CLIP ViT-L/14 (24 layers, ``PAPER_DEPTH``). Every preset
takes ``depth=``, the depth of the host's vision encoder; the default layers are then mapped onto that depth
by ``scale_layers`` (see its docstring for the rule and the reason). Layers passed explicitly are never
scaled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, cast

from ._errors import HeroError
from .allocators import HeroAllocator, ThumbnailAttentionAllocator, UniformAllocator
from .native import HeroNativePruner, RegionAllocator
from .plan import Pruner
from .selectors import (
    CDPrunerSelector,
    ClsAttentionSelector,
    DartSelector,
    DivPruneSelector,
    FunctionAwareSelector,
    RandomSelector,
    StridedSelector,
    VisionZipSelector,
)

__all__ = [
    "PAPER_DEPTH",
    "PRESETS",
    "cdpruner",
    "cls_attention",
    "dart",
    "divprune",
    "get",
    "hero",
    "hero_native",
    "hero_reference",
    "scale_layers",
    "snap_layers",
    "thumbnail_attention",
    "uniform_random",
    "uniform_strided",
    "visionzip",
]


#: Depth of the encoder the defaults' layer numbers are given for: CLIP ViT-L/14 (layers 0-23), the
#: encoder of LLaVA-NeXT in the HERO paper and of LLaVA in FasterVLM.
PAPER_DEPTH = 24


def scale_layers(layers: Sequence[int], depth: int, *, reference_depth: int = PAPER_DEPTH) -> tuple[int, ...]:
    """Map layer numbers chosen for a ``reference_depth``-layer encoder onto a ``depth``-layer one.

    Rule: layer ``l`` becomes ``round(l * (depth - 1) / (reference_depth - 1))`` (halves round up; with
    the default reference depth 24 no exact half occurs), so the first layer stays 0 and the last
    (``reference_depth - 1``) becomes ``depth - 1``; layers that land on the same index are merged, the order
    is kept. ``depth == reference_depth`` returns the layers unchanged.

    Reason: the paper chooses its layers by where they sit in the stack. Its finding 2 describes the CLS
    attention of CLIP ViT-L/14 as a two-stage pattern across layers 0-11 and 12-23 (the first and second
    half), with layers 5-8 in the early-middle part of the first stage (tiles) and layer 21 late in the
    second (thumbnail). Scaling keeps every layer at the same relative depth. It is a default, not a
    measurement: the HERO paper did not measure the pattern on InternViT, SigLIP or timm ViTs; ``hero layers``
    (``hero_adapters.layers``) measures it on your encoder and images.

    Examples:
        >>> scale_layers((5, 6, 7, 8, 21), 12)
        (2, 3, 4, 10)

    Raises:
        HeroError: on a depth that is not an int >= 2, or a layer outside ``[0, reference_depth)``.
    """
    depth = _check_depth(depth, "depth")
    reference = _check_depth(reference_depth, "reference_depth")
    given = tuple(layers)
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < reference for x in given):
        raise HeroError.field("layers", given, f"0-based layers of the {reference}-layer reference encoder")
    span, target = reference - 1, depth - 1
    out: list[int] = []
    for layer in given:
        mapped = (2 * layer * target + span) // (2 * span)  # round half up, in exact integer arithmetic
        if mapped not in out:
            out.append(mapped)
    return tuple(out)


def hero(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """HERO as the paper describes it (Li et al., "HERO: Rethinking Visual Token Early Dropping in
    High-Resolution Large Vision-Language Models"): exact budgets (Eq. 1-4) and function-aware
    selection with the head mean (Eq. 5-6).

    Args:
        keep_ratio: fraction of patch tokens kept, in (0, 1].
        depth: the vision encoder's number of layers. None (or 24) keeps the paper's layers
            ``low_layers=(5, 6, 7, 8)``, ``high_layers=(21,)`` for CLIP ViT-L/14; another depth scales them
            (``scale_layers``: 12 layers -> (2, 3, 4) and (10,)). Explicit layer overrides are used as given.
        full_attention: the encoder's full-attention layers where it mixes window and full attention (Qwen2.5-VL);
            each default layer snaps to the nearest of them (``snap_layers``), as in ``hero_native``.
        overrides: any field of ``HeroAllocator`` or ``FunctionAwareSelector``.
    """
    return _build(keep_ratio, HeroAllocator(), _function_aware(depth, full_attention), overrides, depth)


def hero_reference(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """HERO as the authors' public code computes it: padding-density prior (weight 0.2), plain floors
    without redistribution, and the re-softmax-then-mean head reduction. ``depth`` and ``full_attention`` as in
    ``hero``."""
    allocator = HeroAllocator(density_weight=0.2, exact=False)
    selector = dataclasses.replace(_function_aware(depth, full_attention), head_reduction="softmax_mean")
    return _build(keep_ratio, allocator, selector, overrides, depth)


def hero_native(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> HeroNativePruner:
    """HERO for hosts without tiles (Qwen2.5-VL, Qwen3-VL): the library's adaptation, not the paper's method
    (``hero_core.native``). One view of (gh, gw) merged tokens; a global quota (``global_share``, the
    thumbnail's role) chosen by ``high_layers`` attention over the whole image; the rest split over regions of
    about ``region`` x ``region`` tokens by HERO's tile rule (Eq. 1-4; relevance = one CLIP score per box of
    ``pruner.regions(tiles)``) and chosen inside each region by ``low_layers`` attention. Exact total
    ``min(floor(R N), valid)``. Needs ``token_features`` from the adapter.

    Args:
        keep_ratio: fraction of merged tokens kept, in (0, 1].
        depth: the vision encoder's number of layers; the paper's (5, 6, 7, 8) and (21,) are scaled to it
            (``scale_layers``), as in ``hero``.
        full_attention: the encoder's full-attention layers, for towers that mix window and full attention.
            Each default layer then snaps to the nearest of them (ties to the earlier one; duplicates merged,
            order kept): the stand-in query's attention only spans the whole image in those layers. Qwen2.5-VL
            (depth 32, full attention at (7, 15, 23, 31)): (7, 8, 9, 11) -> ``low_layers=(7,)`` and (28,) ->
            ``high_layers=(31,)``. None: every layer attends globally (Qwen3-VL, SigLIP, CLIP), no snapping.
        overrides: any field of ``RegionAllocator`` (``region``, ``global_share``, ``alpha``, ``tau_v``,
            ``tau_t``) or ``FunctionAwareSelector`` (``low_layers``, ``high_layers``, ``head_reduction``).
            Explicit layers are used as given (neither scaled nor snapped).

    Raises:
        HeroError: on a bad field, depth or ``full_attention``, naming it.
    """
    selector = _function_aware(depth, full_attention)
    return cast(
        HeroNativePruner, _build(keep_ratio, RegionAllocator(), selector, overrides, depth, cls=HeroNativePruner)
    )


def snap_layers(layers: Sequence[int], full_attention: Sequence[int]) -> tuple[int, ...]:
    """Each layer moved to the nearest layer of ``full_attention`` (ties to the earlier one), duplicates merged,
    order kept: ``snap_layers((7, 8, 9, 11, 28), (7, 15, 23, 31)) == (7, 31)``."""
    full = sorted(full_attention)
    out: list[int] = []
    for layer in layers:
        nearest = min(full, key=lambda f: (abs(f - layer), f))
        if nearest not in out:
            out.append(nearest)
    return tuple(out)


def uniform_random(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """Baseline: the same ratio per view, random positions (seeded). Override ``seed``.

    It reads no layers: ``depth`` is checked and otherwise ignored (so ``get(name, r, depth=...)`` works
    for every preset)."""
    _check_full_attention(full_attention, depth)
    return _build(keep_ratio, UniformAllocator(), RandomSelector(), overrides, _check_optional_depth(depth))


def uniform_strided(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """Baseline: the same ratio per view, spatially uniform positions (plain downsampling). ``depth`` is
    checked and otherwise ignored, as in ``uniform_random``."""
    _check_full_attention(full_attention, depth)
    return _build(keep_ratio, UniformAllocator(), StridedSelector(), overrides, _check_optional_depth(depth))


def cls_attention(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """FasterVLM (Zhang et al. 2024, arXiv:2412.01818) applied per view: the same ratio per view, and the
    tokens one layer's CLS attends to most (default layer 22 of 24, scaled to ``depth`` by
    ``scale_layers``: 27 layers -> 25; with ``full_attention``, snapped to the nearest full-attention layer).
    Override ``layer`` (used as given), ``head_reduction``."""
    selector = ClsAttentionSelector(layer=_default_layer(ClsAttentionSelector().layer, depth, full_attention))
    return _build(keep_ratio, UniformAllocator(), selector, overrides, depth)


def thumbnail_attention(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """HiRED (Arif et al., AAAI 2025, arXiv:2408.10945) / GlobalCom2 (Liu et al. 2025, arXiv:2501.05179):
    tile budgets from the thumbnail's CLS-attention mass over each tile, then single-layer CLS-attention
    selection inside every view. ``layer`` sets both; ``allocator_layer`` / ``selector_layer`` one each.
    The default layer 22 is scaled to ``depth`` (``scale_layers``) and snapped to ``full_attention`` as in
    ``cls_attention``; explicit layers are used as given."""
    layer = overrides.pop("layer", _default_layer(ThumbnailAttentionAllocator().layer, depth, full_attention))
    allocator = ThumbnailAttentionAllocator(layer=overrides.pop("allocator_layer", layer))
    selector = ClsAttentionSelector(layer=overrides.pop("selector_layer", layer))
    return _build(keep_ratio, allocator, selector, overrides, depth)


def divprune(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """DivPrune (Alvar et al., CVPR 2025, arXiv:2503.02175): the most diverse tokens of the whole image, by a greedy
    max-min of the cosine distance between ``token_features`` (``DivPruneSelector``), across all views.

    The total is the paper preset's ``exact_total`` (``UniformAllocator``'s budgets, summed), so it keeps exactly
    as many tokens as ``hero`` at the same ratio; the views share it as the selector chooses. Needs
    ``token_features`` (``Pruner.needs_features``); reads no attention, so ``depth`` and ``full_attention`` are
    checked and otherwise ignored. Override ``max_matrix_tokens``."""
    _check_full_attention(full_attention, depth)
    return _build(keep_ratio, UniformAllocator(), DivPruneSelector(), overrides, _check_optional_depth(depth))


def dart(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """DART (Wen et al. 2025, arXiv:2502.11494) before the LLM, as TensorRT Edge-LLM applies it: pivot tokens of
    largest feature norm, then the tokens least similar to each pivot (duplicates dropped), over the whole image
    (``DartSelector``). Total, ``token_features``, ``depth`` and ``full_attention`` as in ``divprune``. Override
    ``pivots``, ``pivot_rule``."""
    _check_full_attention(full_attention, depth)
    return _build(keep_ratio, UniformAllocator(), DartSelector(), overrides, _check_optional_depth(depth))


def cdpruner(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """CDPruner (Zhang et al., NeurIPS 2025, arXiv:2506.10967): greedy MAP of a DPP over the whole image whose
    kernel is the cosine similarity of ``token_features`` weighted by each token's relevance to the instruction
    (``CDPrunerSelector``). Total, ``token_features``, ``depth`` and ``full_attention`` as in ``divprune``; also
    needs ``token_relevance`` (``Pruner.needs_token_relevance``: the CLIP cosine of every token to the instruction,
    which ``HeroVLM`` gets from the text scorer's ``score_tokens``). Override ``theta``, ``negate``,
    ``max_matrix_tokens``."""
    _check_full_attention(full_attention, depth)
    return _build(keep_ratio, UniformAllocator(), CDPrunerSelector(), overrides, _check_optional_depth(depth))


def visionzip(
    keep_ratio: float, *, depth: int | None = None, full_attention: Sequence[int] | None = None, **overrides: Any
) -> Pruner:
    """VisionZip (Yang et al., CVPR 2025, arXiv:2412.04467): in every view, dominant tokens by one layer's CLS
    attention plus contextual tokens that absorb the rest by feature similarity (``VisionZipSelector``), with the
    paper preset's per-view budgets (``UniformAllocator``: the same count as ``hero``; merged tokens count
    against it). Needs ``token_features``. The default layer 22 is scaled to ``depth`` and snapped to
    ``full_attention`` as in ``cls_attention``. Override ``layer``, ``contextual``, ``head_reduction``."""
    selector = VisionZipSelector(layer=_default_layer(VisionZipSelector().layer, depth, full_attention))
    return _build(keep_ratio, UniformAllocator(), selector, overrides, depth)


PRESETS: dict[str, Callable[..., Pruner]] = {
    "hero": hero,
    "hero-reference": hero_reference,
    "hero-native": hero_native,
    "uniform-random": uniform_random,
    "uniform-strided": uniform_strided,
    "cls-attention": cls_attention,
    "thumbnail-attention": thumbnail_attention,
    "divprune": divprune,
    "dart": dart,
    "cdpruner": cdpruner,
    "visionzip": visionzip,
}


def get(name: str, keep_ratio: float, **overrides: Any) -> Pruner:
    """A preset by its name in ``PRESETS`` (``"hero"``, ``"hero-reference"``, ``"uniform-random"``, ...)."""
    factory = PRESETS.get(name.replace("_", "-")) if isinstance(name, str) else None
    if factory is None:
        raise HeroError.field("preset", name, f"one of {sorted(PRESETS)}")
    return factory(keep_ratio, **overrides)


def _build(
    keep_ratio: float,
    allocator: Any,
    selector: Any,
    overrides: dict[str, Any],
    depth: int | None = None,
    *,
    cls: type[Pruner] = Pruner,
) -> Pruner:
    """Route each override to the allocator or selector field of that name (unknown names raise); with a
    ``depth``, every layer the pruner reads must lie in ``[0, depth)``."""
    parts = {"allocator": allocator, "selector": selector}
    changes: dict[str, dict[str, Any]] = {"allocator": {}, "selector": {}}
    for key, value in overrides.items():
        owners = [role for role, part in parts.items() if key in {f.name for f in dataclasses.fields(part)}]
        if not owners:
            known = sorted({f.name for part in parts.values() for f in dataclasses.fields(part)})
            raise HeroError.field(key, value, f"an override among {known}", "Check the spelling of the keyword.")
        changes[owners[0]][key] = value
    pruner = cls(
        keep_ratio=keep_ratio,
        allocator=dataclasses.replace(allocator, **changes["allocator"]),
        selector=dataclasses.replace(selector, **changes["selector"]),
    )
    depth = _check_optional_depth(depth)
    if depth is not None and any(layer >= depth for layer in pruner.layers):
        raise HeroError.field(
            "pruner layers",
            list(pruner.layers),
            f"0-based encoder layers in [0, {depth - 1}] (depth={depth}: this vision encoder has {depth} layers)",
            "Choose layers the encoder has, or leave them out to get the paper's layers scaled to the depth.",
        )
    return pruner


def _check_depth(depth: object, name: str) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise HeroError.field(
            name, depth, "an int >= 2: the vision encoder's number of layers", "E.g. depth=vlm.adapter.num_layers."
        )
    return depth


def _check_full_attention(full_attention: object, depth: int | None) -> tuple[int, ...] | None:
    """None, or the encoder's full-attention layers as a tuple of distinct ints in [0, depth)."""
    if full_attention is None:
        return None
    depth = _check_optional_depth(depth)
    given = tuple(full_attention) if isinstance(full_attention, (tuple, list)) else None
    upper = depth if depth is not None else PAPER_DEPTH
    if (
        not given
        or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < upper for x in given)
        or len(set(given)) != len(given)
    ):
        raise HeroError.field(
            "full_attention",
            full_attention,
            f"None or a non-empty tuple of distinct 0-based encoder layers in [0, {upper - 1}] that attend over the "
            "whole image",
            "Qwen2.5-VL: full_attention=(7, 15, 23, 31) with depth=32 (its config's fullatt_block_indexes).",
        )
    return given


def _check_optional_depth(depth: object) -> int | None:
    return None if depth is None else _check_depth(depth, "depth")


def _function_aware(depth: int | None, full_attention: object = None) -> FunctionAwareSelector:
    """The paper's selector; with a depth other than 24 its default layers scaled by ``scale_layers``, and with
    ``full_attention`` snapped to those layers (``snap_layers``)."""
    default = FunctionAwareSelector()
    depth = _check_optional_depth(depth)
    full = _check_full_attention(full_attention, depth)
    low, high = default.low_layers, default.high_layers
    if depth is not None and depth != PAPER_DEPTH:
        low, high = scale_layers(low, depth), scale_layers(high, depth)
    if full is not None:
        low, high = snap_layers(low, full), snap_layers(high, full)
    return FunctionAwareSelector(low_layers=low, high_layers=high)


def _default_layer(layer: int, depth: int | None, full_attention: object = None) -> int:
    depth = _check_optional_depth(depth)
    full = _check_full_attention(full_attention, depth)
    scaled = layer if depth is None else scale_layers((layer,), depth)[0]
    return scaled if full is None else snap_layers((scaled,), full)[0]
