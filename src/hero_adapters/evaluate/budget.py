"""Matched-count evaluation (``hero eval --tokens``): a budget of T tokens per image instead of a keep ratio.

An image's budget becomes the keep ratio ``R_i`` with ``floor(R_i V N) = P_i`` (``hero_core.counts.exact_total``),
so every exact-total preset keeps ``min(P_i, valid)`` patch tokens of that image. Images differ in size (LLaVA-NeXT's
AnyRes grid, InternVL's tiles), so ``R_i`` is chosen per image, from the geometry of its encoder outputs, when
the image is planned: ``TokenBudget`` is a pruner that ``HeroVLM`` calls like any other (``.plan_encoded``,
``.layers``) and that plans each image with the preset built at that image's ratio.

Two conventions for T (papers use both; the output says which):

- newlines not counted (the default): ``P_i = T``. LLaVA-NeXT / OneVision row newlines, never pruned, are sent on
  top, as the keep ratio does not count them either.
- newlines counted (``count_newlines=True``, ``hero eval --count-newlines``): T counts every image token sent to
  the LLM, so ``P_i = max(T - newlines_i, 0)``, ``newlines_i`` being the image's newline count in the adapter's
  layout. Every newline is sent whatever is kept (``assemble_source``, LLaVA-NeXT's reference layout), so the
  count is known before planning: the adapter assembles the image with nothing kept. An image with more newlines
  than T keeps no patch token and still sends its newlines (more than T); ``evaluate`` counts such images.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from hero_core import HeroError, PrunePlan
from hero_core import presets as _presets
from hero_core.counts import ImageCounts, exact_total

__all__ = ["TokenBudget", "budget_ratio", "check_exact", "newline_counts"]


def check_exact(preset: str, field: str, pruner: Any = None) -> None:
    """Refuse a preset that cannot keep exactly T tokens per image (``Pruner.count_known`` False: hero-reference,
    whose floors keep a content-dependent count), naming it as ``field``; ``pruner`` is the preset built, if it is."""
    if not (pruner if pruner is not None else _presets.get(preset, 1.0)).count_known:
        raise HeroError.field(
            field,
            preset,
            "a preset that keeps exactly T tokens per image (Pruner.count_known)",
            f"{preset}'s floors keep a content-dependent number of tokens; compare it at keep ratios instead, or "
            "use hero (the paper's exact budgets).",
        )


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


def newline_counts(adapter: Any, encoded: Sequence[Any]) -> list[int]:
    """Each image's newline tokens in ``adapter``'s layout: what it sends with NO patch token kept (every newline
    is sent whatever is kept). One host read for the call when the adapter has ``assemble_batch``; 0 on hosts
    without newlines (InternVL, Qwen-VL)."""
    nothing = [torch.zeros_like(image.tiles.valid_mask) for image in encoded]  # (V, N) bool, all False
    assemble_batch = getattr(adapter, "assemble_batch", None)
    if callable(assemble_batch):
        assembled = assemble_batch(list(encoded), nothing)
    else:
        assembled = [adapter.assemble(image, keep) for image, keep in zip(encoded, nothing, strict=True)]
    return [int(out.newline_tokens) for out in assembled]


def _counts(tiles: Any) -> ImageCounts:
    views, per_view = (int(side) for side in tiles.valid_mask.shape)
    known = getattr(tiles, "known_capacity", None)
    valid = sum(known) if known is not None else int(tiles.valid_mask.sum())
    return ImageCounts(views=views, tokens_per_view=per_view, valid=valid)


class TokenBudget:
    """A pruner for ``HeroVLM`` that keeps ``min(P, valid)`` patch tokens of every image: ``P = T``, or with
    ``count_newlines`` ``P = max(T - newlines, 0)`` (T then counts every image token sent, newlines included).

    Each image is planned by ``presets.get(preset, budget_ratio(P, counts), **options)``, ``counts`` read
    from the image's encoder outputs (views, tokens per view, valid tokens). Everything else (layers, whether
    the preset uses relevance or token features) is the preset's. ``HeroVLM`` plans through ``plan_encoded`` (it
    hands over the adapter, whose layout gives the newline counts) and checks every image with ``check_kept``:
    the kept count equals the budget exactly. The newline count is per image, so ``plan_encoded`` remembers the
    expected counts of the call it planned (per thread) and ``check_kept`` takes them in order, checking that
    each belongs to the image geometry it is asked about.

    Why per image and not per call: ``HeroVLM``'s pruner is one object for the whole call, and the images of a
    batch have different geometries; building the preset's pruner for the image when the image is planned needs
    no change to ``hero_core`` (a ``Pruner``'s keep ratio is fixed per value). The cost: the images of a call are
    planned one by one, not in one ``plan_batch``.
    """

    plan_batch = None  # one image at a time (each its own ratio)
    keeps_all = None  # never "keep everything" up front: a budget is per image

    def __init__(
        self, preset: str, tokens: int, options: Mapping[str, Any] | None = None, *, count_newlines: bool = False
    ) -> None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise HeroError.field("tokens", tokens, "an int >= 1 (tokens per image)")
        if not isinstance(count_newlines, bool):
            raise HeroError.field("count_newlines", count_newlines, "True or False")
        self.preset = preset
        self.tokens = tokens
        self.count_newlines = count_newlines
        self.options = dict(options or {})
        self.base = _presets.get(preset, 1.0, **self.options)
        check_exact(preset, "preset", self.base)
        self._built: dict[float, Any] = {}
        self._planned = threading.local()  # .expected: deque of (counts, newlines) of the last plan_encoded call

    def __getattr__(self, name: str) -> Any:  # layers, uses_relevance, needs_features, scope, ...: the preset's
        if name.startswith("_") or name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __repr__(self) -> str:
        counted = ", count_newlines=True" if self.count_newlines else ""
        return f"TokenBudget({self.preset!r}, tokens={self.tokens}{counted}, options={self.options!r})"

    def patch_budget(self, newlines: int = 0) -> int:
        """Patch tokens the budget leaves an image with ``newlines`` newline tokens: T, or with ``count_newlines``
        ``max(T - newlines, 0)``."""
        return max(self.tokens - newlines, 0) if self.count_newlines else self.tokens

    def pruner_for(self, counts: ImageCounts, patches: int | None = None) -> Any:
        """The preset at the ratio that keeps ``min(patches, counts.valid)`` (default T) of an image of this
        geometry."""
        ratio = budget_ratio(self.tokens if patches is None else patches, counts)
        if ratio not in self._built:
            self._built[ratio] = _presets.get(self.preset, ratio, **self.options)
        return self._built[ratio]

    def kept_count(self, counts: ImageCounts, newlines: int = 0) -> int:
        return min(self.patch_budget(newlines), counts.valid)

    def plan(self, tiles: Any, relevance: Any = None) -> Any:
        """One image, newlines not counted (with ``count_newlines`` the layout is needed: ``plan_encoded``)."""
        if self.count_newlines:
            raise HeroError.field(
                "count_newlines", True, "planned through plan_encoded(adapter, encoded, relevance)",
                "Newlines counted in T need the adapter's layout: HeroVLM passes it; TokenBudget.plan sees tiles only.",
            )  # fmt: skip
        return self.pruner_for(_counts(tiles)).plan(tiles, relevance)

    def plan_encoded(self, adapter: Any, encoded: Sequence[Any], relevance: Sequence[Any]) -> list[Any]:
        """``HeroVLM``'s plan hook: one plan per encoded image, each keeping ``min(P_i, valid_i)`` patch tokens
        (``P_i = max(T - newlines_i, 0)`` with ``count_newlines``; an image with ``P_i = 0`` keeps nothing)."""
        newlines = newline_counts(adapter, encoded) if self.count_newlines else [0] * len(encoded)
        plans: list[Any] = []
        expected: deque[tuple[ImageCounts, int]] = deque()
        for image, rel, count in zip(encoded, relevance, newlines, strict=True):
            counts, patches = _counts(image.tiles), self.patch_budget(count)
            if patches == 0:  # the newlines alone fill T
                plans.append(_nothing(image.tiles))
            else:
                plans.append(self.pruner_for(counts, patches).plan(image.tiles, rel))
            expected.append((counts, count))
        self._planned.expected = expected
        return plans

    def check_kept(self, counts: ImageCounts, kept: int, *, where: str = "the plan") -> int:
        """``kept`` if it equals ``kept_count`` of the image (its newline count from ``plan_encoded``)."""
        pending: deque[tuple[ImageCounts, int]] | None = getattr(self._planned, "expected", None)
        newlines = 0
        if pending:
            planned, newlines = pending.popleft()
            if planned != counts:
                raise HeroError(
                    f"{where}: TokenBudget planned an image of {planned} but is asked to check one of {counts} "
                    "(HeroVLM checks the images in the order planned). This is a bug."
                )
        elif self.count_newlines:
            raise HeroError(f"{where}: TokenBudget(count_newlines=True) checks only images planned by plan_encoded")
        expected, patches = self.kept_count(counts, newlines), self.patch_budget(newlines)
        if kept != expected:
            budget = f"max({self.tokens} - {newlines} newlines, 0)" if self.count_newlines else f"{self.tokens}"
            raise HeroError(
                f"{where}: kept {kept} patch tokens; a budget of {self.tokens} tokens per image keeps min({budget}"
                f", valid={counts.valid}) = {expected} ({self.preset} at keep ratio "
                f"{budget_ratio(patches, counts) if patches else 0.0!r}). This is a bug in the preset's allocator."
            )
        return kept


def _nothing(tiles: Any) -> PrunePlan:
    """No patch token kept (the image's newlines alone fill its budget)."""
    views = int(tiles.valid_mask.shape[0])
    budgets = torch.zeros(views, dtype=torch.int64, device=tiles.valid_mask.device)  # (V,)
    return PrunePlan(keep=torch.zeros_like(tiles.valid_mask), budgets=budgets, keep_ratio=0.0)
