"""Matched-count evaluation (``hero eval --tokens``): a budget of T patch tokens per image instead of a keep ratio.

An image's budget becomes the keep ratio ``R_i`` with ``floor(R_i V N) = T`` (``hero_core.counts.exact_total``),
so every exact-total preset keeps ``min(T, valid)`` patch tokens of that image. Images differ in size (LLaVA-NeXT's
AnyRes grid, InternVL's tiles), so ``R_i`` is chosen per image, from the geometry of its encoder outputs, when
the image is planned: ``TokenBudget`` is a pruner that ``HeroVLM`` calls like any other (``.plan``, ``.layers``)
and that plans each image with the preset built at that image's ratio. Newlines (LLaVA-NeXT / OneVision row
tokens, never pruned) are not counted in T, as the keep ratio does not count them: the table reports them in the
image tokens sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hero_core import HeroError
from hero_core import presets as _presets
from hero_core.counts import ImageCounts, exact_total

__all__ = ["TokenBudget", "budget_ratio"]


def budget_ratio(tokens: int, counts: ImageCounts) -> float:
    """The keep ratio at which an exact-total preset keeps ``min(tokens, counts.valid)`` patch tokens.

    ``tokens / (V N)`` read as a float can floor one below ``tokens`` (``exact_total`` reads the ratio as the
    decimal it prints as); the ratio is nudged one float step at a time until ``exact_total`` gives ``tokens``
    exactly. A budget of at least ``V N`` is ratio 1 (every valid token).
    """
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise HeroError.field("tokens", tokens, "an int >= 1 (patch tokens per image)")
    total = counts.views * counts.tokens_per_view
    if tokens >= total:
        return 1.0
    full = ImageCounts(views=counts.views, tokens_per_view=counts.tokens_per_view, valid=total)
    ratio = tokens / total
    for _ in range(64):
        got = exact_total(ratio, full)
        if got == tokens:
            return ratio
        ratio = math.nextafter(ratio, math.inf if got < tokens else 0.0)
    raise HeroError(f"no keep ratio keeps exactly {tokens} of {total} patch tokens (a float rounding bug)")


class TokenBudget:
    """A pruner for ``HeroVLM`` that keeps ``min(tokens, valid)`` patch tokens of every image.

    Each image is planned by ``presets.get(preset, budget_ratio(tokens, counts), **options)``, ``counts`` read
    from the image's encoder outputs (views, tokens per view, valid tokens). Everything else (layers, whether
    the preset uses relevance or token features) is the preset's. ``HeroVLM`` checks every plan with
    ``check_kept``: the kept count equals the budget exactly.

    Why per image and not per call: ``HeroVLM``'s pruner is one object for the whole call, and the images of a
    batch have different geometries; building the preset's pruner for the image when the image is planned needs
    no change to ``HeroVLM`` or ``hero_core`` (a ``Pruner``'s keep ratio is fixed per value). The cost: the
    images of a call are planned one by one, not in one ``plan_batch``.
    """

    plan_batch = None  # one image at a time (each its own ratio); HeroVLM then calls ``plan``
    keeps_all = None  # never "keep everything" up front: a budget is per image

    def __init__(self, preset: str, tokens: int, options: Mapping[str, Any] | None = None) -> None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise HeroError.field("tokens", tokens, "an int >= 1 (patch tokens per image)")
        self.preset = preset
        self.tokens = tokens
        self.options = dict(options or {})
        self.base = _presets.get(preset, 1.0, **self.options)
        self._built: dict[float, Any] = {}

    def __getattr__(self, name: str) -> Any:  # layers, uses_relevance, needs_features, scope, ...: the preset's
        if name.startswith("_") or name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __repr__(self) -> str:
        return f"TokenBudget({self.preset!r}, tokens={self.tokens}, options={self.options!r})"

    def pruner_for(self, counts: ImageCounts) -> Any:
        """The preset at the ratio that keeps ``min(tokens, counts.valid)`` of an image of this geometry."""
        ratio = budget_ratio(self.tokens, counts)
        if ratio not in self._built:
            self._built[ratio] = _presets.get(self.preset, ratio, **self.options)
        return self._built[ratio]

    def kept_count(self, counts: ImageCounts) -> int:
        return min(self.tokens, counts.valid)

    def plan(self, tiles: Any, relevance: Any = None) -> Any:
        views, per_view = (int(side) for side in tiles.valid_mask.shape)
        known = getattr(tiles, "known_capacity", None)
        valid = sum(known) if known is not None else int(tiles.valid_mask.sum())
        counts = ImageCounts(views=views, tokens_per_view=per_view, valid=valid)
        return self.pruner_for(counts).plan(tiles, relevance)

    def check_kept(self, counts: ImageCounts, kept: int, *, where: str = "the plan") -> int:
        expected = self.kept_count(counts)
        if kept != expected:
            raise HeroError(
                f"{where}: kept {kept} patch tokens; a budget of {self.tokens} tokens per image keeps min({self.tokens}"
                f", valid={counts.valid}) = {expected} ({self.preset} at keep ratio "
                f"{budget_ratio(self.tokens, counts)!r}). This is a bug in the preset's allocator."
            )
        return kept
