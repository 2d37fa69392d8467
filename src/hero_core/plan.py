"""``PrunePlan`` (the decision) and ``Pruner`` (keep ratio + allocator + selector)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._device import to_device
from ._errors import RELEVANCE_FINITE, HeroError, check_keep_ratio, check_relevance
from .counts import ImageCounts, exact_total
from .protocols import BudgetAllocator, TileEncoderOutputs, TokenSelector
from .selectors._image import IMAGE, VIEW, missing_features
from .selectors.cdpruner import missing_relevance
from .tiles import EncodedTiles

__all__ = ["Allocation", "PrunePlan", "Pruner", "Staged"]


@dataclass(frozen=True)
class Allocation:
    """What an explaining allocator decided, and why.

    ``budgets`` (V,) int64. ``importance``, ``saliency`` and ``relevance`` are (V,) float32 or None:
    the tile importance ``s`` (Eq. 3) and its two weighted parts (``alpha * v`` and
    ``(1 - alpha) * t``). The thumbnail's entries are 0: it takes a fixed quota, not a share.
    """

    budgets: Tensor
    importance: Tensor | None = None
    saliency: Tensor | None = None
    relevance: Tensor | None = None


@dataclass(frozen=True)
class Staged:
    """What a shipped allocator computed on the device before its one host read (``Pruner.plan_batch``).

    ``read`` is the tensor its split reads on the host (the tile weights); ``parts`` whatever it needs to
    finish (the importance and its parts). Private protocol of the shipped allocators: ``_stage(tiles,
    relevance) -> Staged`` then ``_finish(tiles, keep_ratio, staged) -> Allocation``.
    """

    read: Tensor
    parts: tuple[Tensor, ...] = ()


@dataclass(frozen=True)
class PrunePlan:
    """The pruning decision for one image.

    Attributes:
        keep: (V, N) bool, True for the patch tokens that go to the language model.
        budgets: (V,) int64, kept tokens per view (``keep.sum(-1) == budgets``): the allocator's budgets, or with
            a selector that chooses across views (``scope = "image"``) the per-view counts it produced.
        importance: (V,) float or None; per-view importance when the allocator explains itself.
        saliency: (V,) float or None; the visual-saliency part of ``importance``.
        relevance: (V,) float or None; the task-relevance part of ``importance``.
        keep_ratio: the requested ratio R.
        merge_into: (V, N) int64 or None. For selectors that merge (``plan_merge``: VisionZip), each token's own
            flat index ``view * N + position`` where kept, the kept token it is merged into where merged, -1 where
            dropped; the adapter adds the mean of the merged rows to their target's row. None: nothing merged.
    """

    keep: Tensor
    budgets: Tensor
    importance: Tensor | None = None
    saliency: Tensor | None = None
    relevance: Tensor | None = None
    keep_ratio: float = 1.0
    merge_into: Tensor | None = None

    @property
    def num_kept(self) -> int:
        """Patch tokens kept over all views (one host sync)."""
        return int(self.budgets.sum())

    def kept_indices(self, view: int) -> Tensor:
        """Raster indices of the kept tokens of one view, ascending (the order they are sent in)."""
        return self.keep[view].nonzero().flatten()


@dataclass(frozen=True)
class Pruner:
    """A keep ratio, a ``BudgetAllocator`` and a ``TokenSelector``: one pruning method, as a value.

    A selector chooses inside each view by default. One that declares ``scope = "image"`` (a class attribute:
    ``DivPruneSelector``, ``DartSelector``) chooses across all views of an image: it is given the total of the
    allocator's budgets, a (1,) int64 tensor, and may spread it over the views as it likes; the plan's
    ``budgets`` are then the per-view counts it produced. A selector (or allocator) that declares
    ``needs_features = True`` compares tokens by ``tiles.token_features``: ``needs_features`` says so to the
    adapter, and planning refuses tiles without them (a ``HeroError``, never another method).

    Examples:
        >>> pruner = Pruner(keep_ratio=0.2, allocator=HeroAllocator(alpha=0.7), selector=FunctionAwareSelector())
        >>> plan = pruner.plan(tiles, relevance)          # doctest: +SKIP
    """

    keep_ratio: float
    allocator: BudgetAllocator
    selector: TokenSelector

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_ratio", check_keep_ratio(self.keep_ratio))
        if not callable(self.allocator):
            raise HeroError.field("allocator", self.allocator, "a BudgetAllocator (callable)")
        if not callable(self.selector):
            raise HeroError.field("selector", self.selector, "a TokenSelector (callable)")
        layers = getattr(self.selector, "layers", None)
        if not isinstance(layers, tuple):
            raise HeroError.field("selector.layers", layers, "a tuple of encoder layer indices (may be empty)")
        scope = _scope(self.selector)
        if scope not in (VIEW, IMAGE):
            raise HeroError.field("selector.scope", scope, f"{VIEW!r} (one budget per view, the default) or {IMAGE!r}")

    @property
    def needs_features(self) -> bool:
        """Whether planning reads ``tiles.token_features`` (adapters record them only then): the selector's or the
        allocator's optional ``needs_features`` attribute (DivPrune, DART)."""
        return any(bool(getattr(part, "needs_features", False)) for part in (self.selector, self.allocator))

    @property
    def needs_token_relevance(self) -> bool:
        """Whether planning reads ``tiles.token_relevance`` (each token's CLIP cosine to the instruction; adapters
        compute it only then): the selector's or allocator's optional ``needs_token_relevance`` (CDPruner)."""
        return any(bool(getattr(part, "needs_token_relevance", False)) for part in (self.selector, self.allocator))

    @property
    def scope(self) -> str:
        """``"view"`` (the selector keeps each view's budget) or ``"image"`` (it takes the image's total)."""
        return _scope(self.selector)

    @property
    def uses_relevance(self) -> bool:
        """Whether the allocator reads a text relevance (adapters skip the text scorer otherwise)."""
        return bool(getattr(self.allocator, "uses_relevance", False))

    @property
    def layers(self) -> tuple[int, ...]:
        """Encoder layers whose CLS attention the plan needs: the selector's, then any the allocator reads."""
        extra = tuple(getattr(self.allocator, "layers", ()))
        return tuple(sorted(set(self.selector.layers) | set(extra)))

    def keeps_all(self, tiles: TileEncoderOutputs | None = None) -> bool:
        """Whether the plan keeps every valid token, known without planning (then ``plan`` reads nothing and
        adapters skip the text scorer and the attention hooks).

        The allocator decides, through an optional ``keeps_all(keep_ratio, tiles)`` method: the shipped
        exact-total allocators (``HeroAllocator(exact=True)``, ``UniformAllocator``,
        ``ThumbnailAttentionAllocator``) keep everything at R = 1, and at any R whose total
        ``floor(R * V * N)`` reaches the valid count when ``tiles``' valid counts are already on the host
        (``EncodedTiles.known_capacity``). ``hero-reference`` (``exact=False``) never does: its floors
        and caps drop tokens even at R = 1. An allocator without the method is always run, and so is a subclass
        of a shipped allocator that does not define ``keeps_all`` itself (it may budget differently).
        """
        decide = getattr(self.allocator, "keeps_all", None)
        if not callable(decide) or not _owns(self.allocator, "keeps_all"):
            return False
        checked = None if tiles is None else EncodedTiles.from_outputs(tiles)
        return bool(decide(self.keep_ratio, checked))

    @property
    def count_known(self) -> bool:
        """Whether the number of patch tokens this pruner keeps follows from an image's geometry alone
        (``hero_core.counts.ImageCounts``), before anything is encoded: then it is ``kept_count(counts)``.

        A serving engine needs this to fix an image's placeholder count before the encoder runs (the vLLM
        plugin refuses presets without it). The allocator says so through an optional ``count_known``
        attribute, which promises that its budgets always total ``exact_total`` (``min(floor(R V N), valid)``,
        HERO Eq. 4): the shipped exact-total allocators do; ``hero-reference`` (``HeroAllocator(exact=False)``)
        does not (its floors and caps depend on the image's content); nor does a custom allocator without the
        attribute, or a subclass of a shipped one that does not define it itself.
        """
        return bool(getattr(self.allocator, "count_known", False)) and _owns(self.allocator, "count_known")

    def kept_count(self, counts: ImageCounts) -> int:
        """Patch tokens kept from an image of this geometry: ``exact_total(keep_ratio, counts)``. The tokens the
        host then sends are ``counts.tokens_out(kept)`` (newlines added back).

        Raises:
            HeroError: when the count is not known in advance (``count_known`` is False), naming the allocator.
        """
        if not self.count_known:
            raise HeroError.field(
                "allocator",
                f"{type(self.allocator).__name__} (count_known=False)",
                "an allocator whose kept total is known from the image's size (count_known), e.g. presets.hero",
                "hero-reference's floors keep a content-dependent number of tokens: use it where counts are "
                "taken after planning (HeroVLM), not where they must be fixed in advance (the vLLM plugin).",
            )
        return exact_total(self.keep_ratio, counts)

    def check_kept(self, counts: ImageCounts, kept: int, *, where: str = "the plan") -> int:
        """``kept`` if it equals ``kept_count(counts)`` (when ``count_known``; else ``kept`` as it is).

        Both paths call this after planning: the transformers adapters' report and the vLLM plugin's encoder
        step. A mismatch is a contract breach (never padded or cut to fit).

        Raises:
            HeroError: naming both numbers when they differ.
        """
        if not self.count_known:
            return int(kept)
        expected = self.kept_count(counts)
        if int(kept) != expected:
            raise HeroError.field(
                f"patch tokens kept by {where}",
                int(kept),
                f"{expected} = min(floor({self.keep_ratio} * {counts.views} * {counts.tokens_per_view}), "
                f"{counts.valid} valid), the count fixed in advance",
                "The allocator or adapter breaks the count contract (hero_core.counts); please report it.",
            )
        return expected

    def plan(self, tiles: TileEncoderOutputs, relevance: Tensor | None = None) -> PrunePlan:
        """Budgets per view, then the keep mask per view (paper section 4).

        Args:
            tiles: the encoder outputs of one image.
            relevance: (V,) CLIP cosine of each view against the query, or None.

        Nothing to plan when the allocator keeps every valid token (``keeps_all``): the plan is then the
        valid mask itself, read from no value (no host sync, no NaN check, no importance).

        Host syncs: one per image with the built-in allocators and selectors (the allocator's
        ``tiles.fetch``, which also reads the tiles' host facts and checks every value for NaN/inf). A
        custom allocator adds one (its inputs checked before it runs, its budgets read back); a custom
        selector adds one (its keep mask checked against the budgets). ``plan_batch`` plans many images
        with one sync in all.

        Raises:
            HeroError: on invalid tiles or relevance, or when a custom allocator/selector breaks its contract.
        """
        return self.plan_batch([tiles], [relevance])[0]

    def plan_batch(
        self, tiles: Sequence[TileEncoderOutputs], relevance: Sequence[Tensor | None] | None = None
    ) -> list[PrunePlan]:
        """``plan`` for every image of a batch, with ONE host sync for the whole batch (per device) when the
        allocator and selector are the shipped ones: each image's tile weights are computed on the device,
        then read together with every image's host facts in one transfer (``EncodedTiles.fetch_together``).
        A custom allocator or selector is run image by image, with its syncs as in ``plan``.

        Args:
            tiles: the encoder outputs of each image.
            relevance: one (V,) relevance or None per image, or None for none at all.

        Returns:
            One ``PrunePlan`` per image, equal to ``plan`` on that image alone.
        """
        images = [EncodedTiles.from_outputs(item) for item in tiles]
        scores: list[Tensor | None] = [None] * len(images) if relevance is None else list(relevance)
        if len(scores) != len(images):
            raise HeroError.field(
                "relevance", f"{len(scores)} entries", f"one (V,) tensor or None per image ({len(images)} images)"
            )
        for checked, score in zip(images, scores, strict=True):
            check_relevance(score, checked.num_views, finite=False)
        if self.needs_features and not self.keeps_all():  # refused whatever the content: never a silent change
            for checked in images:
                if checked.token_features is None:
                    part = _feature_part(self)
                    raise missing_features(_name(part), str(getattr(part, "preset", _name(part))))
        if self.needs_token_relevance and not self.keeps_all():
            for checked in images:
                if checked.token_relevance is None:
                    part = _feature_part(self, "needs_token_relevance")
                    raise missing_relevance(_name(part), str(getattr(part, "preset", _name(part))))
        staged: dict[int, Any] = {}
        stage = getattr(self.allocator, "_stage", None) if _one_sync(self.allocator) else None
        with torch.inference_mode():
            for i, (checked, score) in enumerate(zip(images, scores, strict=True)):
                if self.keeps_all(checked):
                    continue
                if score is not None:
                    score = scores[i] = to_device(score, checked.device, score.dtype)
                    checked.check_later("relevance", score, *RELEVANCE_FINITE)
                if self.needs_features and checked.token_features is not None:
                    checked.check_later("token_features", checked.token_features, *_FEATURES_FINITE)
                if self.needs_token_relevance and checked.token_relevance is not None:
                    checked.check_later("token_relevance", checked.token_relevance, *_RELEVANCE_FINITE)
                if callable(stage):
                    staged[i] = stage(checked, score if self.uses_relevance else None)
            if staged:  # the batch's one host sync: every staged image's weights and host facts
                EncodedTiles.fetch_together([(images[i], (staged[i].read,)) for i in staged])
            return [
                self._plan_one(checked, score, staged.get(i))
                for i, (checked, score) in enumerate(zip(images, scores, strict=True))
            ]

    def _plan_one(self, checked: EncodedTiles, relevance: Tensor | None, staged: Any) -> PrunePlan:
        if self.keeps_all(checked):
            return _everything(checked, self.keep_ratio)
        if not _one_sync(self.allocator):
            checked.require_finite()  # a custom allocator sees only checked values (one sync)
        if not self.uses_relevance:
            relevance = None
        allocate = getattr(self.allocator, "allocate", None)
        if staged is not None:
            allocation: Allocation = self.allocator._finish(checked, self.keep_ratio, staged)  # type: ignore[attr-defined]
        elif callable(allocate):
            allocation = allocate(checked, relevance, self.keep_ratio)
        else:
            allocation = Allocation(budgets=self.allocator(checked, relevance, self.keep_ratio))
        budgets, counts = _checked_budgets(
            allocation.budgets, checked, self.allocator, trusted=_one_sync(self.allocator)
        )
        into: Tensor | None = None
        if self.scope == IMAGE:
            total = sum(counts)
            with torch.inference_mode(False):
                given = to_device([total], checked.device, torch.int64)  # (1,) the image's total
            checked.remember_counts(given, (total,))  # the selector reads the total without a device read
            keep = _checked_keep(self.selector(checked, given), checked, self.selector, total=total)
            budgets = keep.sum(-1)  # (V,) the per-view counts the selector produced
        elif callable(merge := getattr(self.selector, "plan_merge", None)):  # VisionZip: kept tokens absorb others
            keep, into = merge(checked, budgets)
            keep = _checked_keep(keep, checked, self.selector, budgets=budgets)
        else:
            keep = _checked_keep(self.selector(checked, budgets), checked, self.selector, budgets=budgets)
        return PrunePlan(
            keep=keep,
            budgets=budgets,
            importance=allocation.importance,
            saliency=allocation.saliency,
            relevance=allocation.relevance,
            keep_ratio=self.keep_ratio,
            merge_into=into,
        )


def _everything(tiles: EncodedTiles, keep_ratio: float) -> PrunePlan:
    """Every valid token of every view (what any allocator and selector keep when the budgets are the capacity)."""
    known = tiles.known_capacity
    with torch.inference_mode(False):
        budgets = tiles.valid_mask.sum(-1) if known is None else to_device(list(known), tiles.device, torch.int64)
    if known is not None:
        tiles.remember_counts(budgets, known)
    return PrunePlan(keep=tiles.valid_mask.clone(), budgets=budgets, keep_ratio=keep_ratio)


def _owns(allocator: object, name: str) -> bool:
    """The allocator's ``keeps_all`` / ``count_known`` speaks for its own budgets: a shipped class, or a class
    that defines it itself (a subclass of a shipped allocator that overrides its budgets does not inherit it)."""
    return _one_sync(allocator) or name in vars(type(allocator))


def _one_sync(part: object) -> bool:
    """A built-in allocator or selector (its own class, not a subclass that may override ``__call__``)."""
    return vars(type(part)).get("_one_sync") is True


def _checked_budgets(
    budgets: Any, tiles: EncodedTiles, allocator: object, *, trusted: bool
) -> tuple[Tensor, tuple[int, ...]]:
    name = f"{type(allocator).__name__} budgets"
    if (
        not isinstance(budgets, Tensor)
        or budgets.shape != (tiles.num_views,)
        or budgets.dtype != torch.int64
        or budgets.device != tiles.device
    ):
        raise HeroError.field(name, budgets, f"an int64 tensor of shape ({tiles.num_views},) on {tiles.device}")
    # a shipped allocator's budgets were built from host ints (exact_split & co.): no read-back; a custom
    # allocator's are always read back, whatever it did to them after exact_split
    counts = tiles.known_counts(budgets) if trusted else None
    if counts is None:
        counts = tuple(int(c) for c in tiles.fetch(budgets)[0])  # one host sync
    capacity = tiles.capacity
    if any(not 0 <= count <= cap for count, cap in zip(counts, capacity, strict=True)):
        raise HeroError.field(name, list(counts), f"0 <= budgets[v] <= valid tokens of view v = {list(capacity)}")
    return budgets, counts


def _checked_keep(
    keep: Any, tiles: EncodedTiles, selector: object, *, budgets: Tensor | None = None, total: int | None = None
) -> Tensor:
    """A selector's keep mask: (V, N) bool on the tiles' device, on valid positions only, with exactly ``budgets``
    per view, or, for a selector that chooses across views, exactly ``total`` over the image. The shipped
    selectors are trusted (no read); another is checked in one host sync."""
    name = f"{type(selector).__name__} keep mask"
    shape = (tiles.num_views, tiles.num_tokens)
    if not isinstance(keep, Tensor) or keep.shape != shape or keep.dtype != torch.bool or keep.device != tiles.device:
        raise HeroError.field(name, keep, f"a bool tensor of shape {shape} on {tiles.device}")
    if _one_sync(selector):
        return keep  # keep_top / the whole-image selectors keep exactly their budget on valid positions
    outside = (keep & ~tiles.valid_mask).any()
    if budgets is not None:
        if bool(outside | (keep.sum(-1) != budgets).any()):
            raise HeroError.field(
                name,
                keep.sum(-1).tolist(),
                f"exactly budgets = {budgets.tolist()} kept per view, on valid positions only",
            )
    elif bool(outside | (keep.sum() != total)):  # one host sync
        raise HeroError.field(
            name, int(keep.sum()), f"exactly the image's total {total} kept over all views, on valid positions only"
        )
    return keep


_FEATURES_FINITE = ("finite values (found NaN or inf)", "Check the pixels and the encoder's dtype.")
_RELEVANCE_FINITE = ("finite values (found NaN or inf)", "Check the text scorer's score_tokens and its dtype.")


def _scope(selector: object) -> str:
    """A selector's declared scope: ``"view"`` unless it says ``scope = "image"``."""
    return str(getattr(selector, "scope", VIEW))


def _name(part: object) -> str:
    return type(part).__name__


def _feature_part(pruner: Pruner, need: str = "needs_features") -> object:
    """The part that reads the token features (``need``: or the token relevance); it may name its preset in a
    ``preset`` class attribute."""
    return next(part for part in (pruner.selector, pruner.allocator) if getattr(part, need, False))
