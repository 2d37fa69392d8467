"""Ready-made pruning methods, each a ``Pruner`` value; every hyperparameter can be overridden.

>>> from hero_core import presets
>>> pruner = presets.hero(0.2, alpha=0.7, low_layers=(4, 5, 6))
>>> pruner = presets.get("hero-reference", 0.4)
>>> pruner = presets.hero(0.2, depth=27)          # the paper's layers scaled to a 27-layer encoder

Layer numbers: the paper's defaults are given for CLIP ViT-L/14 (24 layers, ``PAPER_DEPTH``). Every preset
takes ``depth=``, the depth of the host's vision encoder; the default layers are then mapped onto that depth
by ``scale_layers`` (see its docstring for the rule and the reason). Layers passed explicitly are never
scaled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ._errors import HeroError
from .allocators import HeroAllocator, ThumbnailAttentionAllocator, UniformAllocator
from .plan import Pruner
from .selectors import ClsAttentionSelector, FunctionAwareSelector, RandomSelector, StridedSelector

__all__ = [
    "PAPER_DEPTH",
    "PRESETS",
    "cls_attention",
    "get",
    "hero",
    "hero_reference",
    "scale_layers",
    "thumbnail_attention",
    "uniform_random",
    "uniform_strided",
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


def hero(keep_ratio: float, *, depth: int | None = None, **overrides: Any) -> Pruner:
    """HERO as the paper describes it (Li et al., "HERO: Rethinking Visual Token Early Dropping in
    High-Resolution Large Vision-Language Models"): exact budgets (Eq. 1-4) and function-aware
    selection with the head mean (Eq. 5-6).

    Args:
        keep_ratio: fraction of patch tokens kept, in (0, 1].
        depth: the vision encoder's number of layers. None (or 24) keeps the paper's layers
            ``low_layers=(5, 6, 7, 8)``, ``high_layers=(21,)`` for CLIP ViT-L/14; another depth scales them
            (``scale_layers``: 12 layers -> (2, 3, 4) and (10,)). Explicit layer overrides are used as given.
        overrides: any field of ``HeroAllocator`` or ``FunctionAwareSelector``.
    """
    return _build(keep_ratio, HeroAllocator(), _function_aware(depth), overrides, depth)


def hero_reference(keep_ratio: float, *, depth: int | None = None, **overrides: Any) -> Pruner:
    """HERO as the authors' public code computes it: padding-density prior (weight 0.2), plain floors
    without redistribution, and the re-softmax-then-mean head reduction. ``depth`` as in ``hero``."""
    allocator = HeroAllocator(density_weight=0.2, exact=False)
    selector = dataclasses.replace(_function_aware(depth), head_reduction="softmax_mean")
    return _build(keep_ratio, allocator, selector, overrides, depth)


def uniform_random(keep_ratio: float, *, depth: int | None = None, **overrides: Any) -> Pruner:
    """Baseline: the same ratio per view, random positions (seeded). Override ``seed``.

    It reads no layers: ``depth`` is checked and otherwise ignored (so ``get(name, r, depth=...)`` works
    for every preset)."""
    return _build(keep_ratio, UniformAllocator(), RandomSelector(), overrides, _check_optional_depth(depth))


def uniform_strided(keep_ratio: float, *, depth: int | None = None, **overrides: Any) -> Pruner:
    """Baseline: the same ratio per view, spatially uniform positions (plain downsampling). ``depth`` is
    checked and otherwise ignored, as in ``uniform_random``."""
    return _build(keep_ratio, UniformAllocator(), StridedSelector(), overrides, _check_optional_depth(depth))


def cls_attention(keep_ratio: float, *, depth: int | None = None, **overrides: Any) -> Pruner:
    """FasterVLM (Zhang et al. 2024, arXiv:2412.01818) applied per view: the same ratio per view, and the
    tokens one layer's CLS attends to most (default layer 22 of 24, scaled to ``depth`` by
    ``scale_layers``: 27 layers -> 25). Override ``layer`` (used as given), ``head_reduction``."""
    selector = ClsAttentionSelector(layer=_default_layer(ClsAttentionSelector().layer, depth))
    return _build(keep_ratio, UniformAllocator(), selector, overrides, depth)


def thumbnail_attention(keep_ratio: float, *, depth: int | None = None, **overrides: Any) -> Pruner:
    """HiRED (Arif et al., AAAI 2025, arXiv:2408.10945) / GlobalCom2 (Liu et al. 2025, arXiv:2501.05179):
    tile budgets from the thumbnail's CLS-attention mass over each tile, then single-layer CLS-attention
    selection inside every view. ``layer`` sets both; ``allocator_layer`` / ``selector_layer`` one each.
    The default layer 22 is scaled to ``depth`` (``scale_layers``); explicit layers are used as given."""
    layer = overrides.pop("layer", _default_layer(ThumbnailAttentionAllocator().layer, depth))
    allocator = ThumbnailAttentionAllocator(layer=overrides.pop("allocator_layer", layer))
    selector = ClsAttentionSelector(layer=overrides.pop("selector_layer", layer))
    return _build(keep_ratio, allocator, selector, overrides, depth)


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


def _build(
    keep_ratio: float, allocator: Any, selector: Any, overrides: dict[str, Any], depth: int | None = None
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
    pruner = Pruner(
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


def _check_optional_depth(depth: object) -> int | None:
    return None if depth is None else _check_depth(depth, "depth")


def _function_aware(depth: int | None) -> FunctionAwareSelector:
    """The paper's selector; with a depth other than 24 its default layers scaled by ``scale_layers``."""
    default = FunctionAwareSelector()
    depth = _check_optional_depth(depth)
    if depth is None or depth == PAPER_DEPTH:
        return default
    return FunctionAwareSelector(
        low_layers=scale_layers(default.low_layers, depth), high_layers=scale_layers(default.high_layers, depth)
    )


def _default_layer(layer: int, depth: int | None) -> int:
    depth = _check_optional_depth(depth)
    return layer if depth is None else scale_layers((layer,), depth)[0]
