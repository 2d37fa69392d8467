"""HERO for hosts without tiles (Qwen2.5-VL, Qwen3-VL): ``RegionAllocator`` and ``HeroNativePruner``.

This is the library's adaptation of HERO, not the paper's method: the paper budgets over the K local tiles and
the thumbnail of an AnyRes image, and the HERO spec leaves budgets without tiles out of scope. A native-
resolution host sends ONE view per image, a (gh, gw) grid of merged tokens in raster order. The adaptation
gives the HERO roles to parts of that one view:

- **the thumbnail's role**: a global quota, ``floor(global_share * T)`` of the total ``T``, taken first by the
  late layers' (``high_layers``) stand-in attention over the whole image (Eq. 5 over all N tokens);
- **the tiles' role**: regions of about ``region x region`` merged tokens (12 x 12 = one 336-px CLIP input at
  28 px per merged token). The rest of the total is split over the regions by HERO's tile rule (Eq. 1-4):
  saliency ``cos(mean of the region's token_features, cls_tokens[0])``, relevance the caller's CLIP score of
  the region's crop, the same ``alpha`` / temperatures and the same exact integer split, capped by the tokens
  each region has left after the global picks. Inside each region the tokens left are ranked by the
  early-middle layers' (``low_layers``) stand-in attention (Eq. 6).

The total is the paper preset's ``exact_total`` (``min(floor(R N), valid)``), so the kept count is known from
the image's size alone (``Pruner.count_known``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ._arith import apportion, floor_ratio
from ._device import to_device
from ._errors import RELEVANCE_FINITE, HeroError, check_keep_ratio, check_positive, check_unit_interval
from .allocators._split import budgets_tensor, keeps_all
from .counts import ImageCounts, exact_total
from .plan import PrunePlan, Pruner
from .protocols import TileEncoderOutputs
from .selectors import FunctionAwareSelector
from .selectors._rank import keep_top, reduce_heads
from .tiles import EncodedTiles

__all__ = ["GLOBAL_SHARE", "HeroNativePruner", "NativePlan", "RegionAllocator"]

#: The thumbnail's share of HERO's total: ``B_g = floor(R N)`` of ``B = floor(R V N)`` (HERO_SPEC.md, step 2),
#: i.e. 1 / V, and V = 5 (2 x 2 tiles + the thumbnail) on LLaVA-NeXT-7B's square images, the paper's setting.
GLOBAL_SHARE = 0.2

Box = tuple[int, int, int, int]

_FEATURES_FINITE = ("finite values (found NaN or inf)", "Check the pixels and the encoder's dtype.")
_NATIVE_FIX = "hero-native is for hosts without tiles; use presets.hero for tiled hosts (LLaVA-NeXT, InternVL)."


@dataclass(frozen=True)
class RegionAllocator:
    """The budget side of ``presets.hero_native``: regions of one view, a global quota, HERO's tile rule.

    - regions: ``rows = max(1, round(gh / region))`` by ``cols = max(1, round(gw / region))`` (halves round
      up), boundaries ``floor(i * gh / rows)`` and ``floor(j * gw / cols)``: about equal boxes that cover every
      token once, in raster order (``regions``);
    - total ``T = min(floor(R N), valid)`` (``exact_total``, HERO Eq. 4 with V = 1); global quota
      ``G = floor(global_share * floor(R N))`` (the thumbnail's role; taken by ``HeroNativePruner``);
    - region importance (Eq. 1-3): ``v = softmax(cos(e_r, cls) / tau_v)`` with ``e_r`` the mean of region r's
      ``token_features`` and ``cls = cls_tokens[0]``, ``t = softmax(rel / tau_t)``, ``s = alpha v + (1 - alpha) t``
      (``s = v`` without relevance), in float64;
    - the pool ``T - G`` split over the regions in proportion to ``s`` by capped largest remainders
      (``apportion``, the split every exact allocator uses), each capped at the tokens it has left.

    As a ``BudgetAllocator`` it returns the (1,) total; the split needs the global picks, so
    ``HeroNativePruner`` calls its parts.

    Args:
        region: region side in merged tokens, >= 1. Default 12 (one 336-px CLIP input at 28 px per token).
        global_share: share of the total taken by global attention first, in [0, 1). Default 0.2
            (``GLOBAL_SHARE``: the thumbnail's 1 / V in the paper's LLaVA-NeXT setting, V = 5).
        alpha: weight of saliency against relevance, in [0, 1]. Default 0.5 (as ``HeroAllocator``).
        tau_v: saliency temperature > 0. Default 0.05.
        tau_t: relevance temperature > 0. Default 0.05.
    """

    region: int = 12
    global_share: float = GLOBAL_SHARE
    alpha: float = 0.5
    tau_v: float = 0.05
    tau_t: float = 0.05

    def __post_init__(self) -> None:
        if isinstance(self.region, bool) or not isinstance(self.region, int) or self.region < 1:
            raise HeroError.field(
                "region",
                self.region,
                "an int >= 1: the region side in merged tokens",
                "12 is one 336-px CLIP input at 28 px per merged token.",
            )
        share = self.global_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= float(share) < 1.0:
            raise HeroError.field(
                "global_share",
                share,
                "a float in [0, 1): the share of the kept tokens chosen over the whole image first",
                f"The default {GLOBAL_SHARE} is the thumbnail's share in the paper; 0 turns the global quota off.",
            )
        object.__setattr__(self, "global_share", float(share))
        object.__setattr__(self, "alpha", check_unit_interval("alpha", self.alpha))
        object.__setattr__(self, "tau_v", check_positive("tau_v", self.tau_v))
        object.__setattr__(self, "tau_t", check_positive("tau_t", self.tau_t))

    @property
    def uses_relevance(self) -> bool:
        """Relevance only matters when it has weight: ``alpha < 1``."""
        return self.alpha < 1.0

    @property
    def count_known(self) -> bool:
        """Its kept total is ``exact_total`` of the image's geometry (``Pruner.count_known``)."""
        return True

    def keeps_all(self, keep_ratio: float, tiles: EncodedTiles | None = None) -> bool:
        """Whether every valid token is kept, known before planning: at R = 1, and when the total reaches the
        valid count already read to the host."""
        return keeps_all(keep_ratio, tiles)

    def __call__(self, tiles: TileEncoderOutputs, relevance: Tensor | None, keep_ratio: float, /) -> Tensor:
        """The (1,) int64 total ``min(floor(R N), valid)`` of a one-view image (one host sync)."""
        checked = one_view(EncodedTiles.from_outputs(tiles))
        total = exact_total(keep_ratio, ImageCounts(1, checked.num_tokens, sum(checked.capacity)))
        return budgets_tensor(checked, [total])

    def regions(self, grid: tuple[int, int]) -> list[Box]:
        """(row0, col0, row1, col1) half-open boxes in token-grid units, in raster order of the regions."""
        rows, cols = grid
        row_cuts, col_cuts = _cuts(rows, self.region), _cuts(cols, self.region)
        return [
            (row_cuts[i], col_cuts[j], row_cuts[i + 1], col_cuts[j + 1])
            for i in range(len(row_cuts) - 1)
            for j in range(len(col_cuts) - 1)
        ]

    def region_ids(self, grid: tuple[int, int], device: torch.device) -> Tensor:
        """(N,) int64: the region (index into ``regions(grid)``) of every token, raster order."""
        rows, cols = grid
        row_cuts, col_cuts = _cuts(rows, self.region), _cuts(cols, self.region)
        row_of = [i for i in range(len(row_cuts) - 1) for _ in range(row_cuts[i], row_cuts[i + 1])]  # (gh,)
        col_of = [j for j in range(len(col_cuts) - 1) for _ in range(col_cuts[j], col_cuts[j + 1])]  # (gw,)
        row_id = to_device(row_of, device, torch.long)
        col_id = to_device(col_of, device, torch.long)
        return (row_id[:, None] * (len(col_cuts) - 1) + col_id[None, :]).flatten()

    def quotas(self, keep_ratio: float, num_tokens: int) -> tuple[int, int]:
        """(``floor(R N)``, the global quota ``floor(global_share * floor(R N))``), without reading the device.

        The total is ``min(floor(R N), valid)``; when ``valid`` is the smaller, every valid token is kept
        and the quota does not matter."""
        upper = floor_ratio(check_keep_ratio(keep_ratio), num_tokens)
        return upper, floor_ratio(self.global_share, upper)

    def importance(
        self, tiles: EncodedTiles, region_ids: Tensor, num_regions: int, relevance: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(importance, saliency part, relevance part) of every region, each (R,) float64 (Eq. 1-3).

        ``relevance`` is (R,) or None (then ``s = v``). Regions without valid tokens have saliency cosine 0.
        """
        features = tiles.token_features
        if features is None:
            raise _no_features()
        member = region_ids[None, :] == torch.arange(num_regions, device=tiles.device)[:, None]  # (R, N)
        member = (member & tiles.valid_mask[0][None, :]).float()
        sums = member @ features[0].float()  # (R, D) a matmul, not index_add: deterministic on every device
        means = sums.double() / member.sum(-1, keepdim=True).double().clamp_min(1.0)
        cls = tiles.cls_tokens[0].double()
        cosine = F.cosine_similarity(means, cls[None, :], dim=-1)  # (R,)
        saliency = torch.softmax(cosine / self.tau_v, dim=0)  # Eq. 1
        if relevance is not None and self.alpha < 1.0:
            task = torch.softmax(relevance.double() / self.tau_t, dim=0)  # Eq. 2
            saliency_part, relevance_part = self.alpha * saliency, (1.0 - self.alpha) * task  # Eq. 3
        else:
            saliency_part, relevance_part = saliency, torch.zeros_like(saliency)
        return saliency_part + relevance_part, saliency_part, relevance_part

    @staticmethod
    def split(pool: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
        """The pool over the regions: capped largest remainders in proportion to ``weights`` (``apportion``).

        Raises:
            HeroError: on weights that are not finite and non-negative (a softmax that overflowed).
        """
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise HeroError.field(
                "region importance", list(weights), "finite non-negative scores", "Raise tau_v / tau_t."
            )
        return apportion(pool, weights, caps)


@dataclass(frozen=True)
class NativePlan(PrunePlan):
    """``PrunePlan`` of ``HeroNativePruner`` (V = 1), with the region decision behind it.

    Attributes:
        regions: the (row0, col0, row1, col1) boxes, in the order of ``region_*`` and of the relevance.
        region_budgets: (R,) int64, the tokens each region keeps beyond the global picks; None when every
            valid token is kept.
        global_keep: (N,) bool, the global picks (high-layer attention over the whole image); None likewise.
        region_importance, region_saliency, region_relevance: (R,) float32, ``s`` and its two weighted parts
            (Eq. 3); None likewise.
    """

    regions: tuple[Box, ...] = ()
    region_budgets: Tensor | None = None
    global_keep: Tensor | None = None
    region_importance: Tensor | None = None
    region_saliency: Tensor | None = None
    region_relevance: Tensor | None = None


@dataclass(frozen=True)
class _Staged:
    """One image's device work before the batch's host read."""

    read: Tensor  # (2R,) float64: region importance, then the tokens each region has left
    upper: int
    quota: int
    region_ids: Tensor
    global_keep: Tensor
    parts: tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class HeroNativePruner(Pruner):
    """HERO for one-view hosts (the library's adaptation; module docstring): ``presets.hero_native``.

    ``allocator`` (a ``RegionAllocator``) holds the budget fields; ``selector`` (a ``FunctionAwareSelector``)
    the layers and head reduction: ``high_layers`` pick the global quota over the whole image,
    ``low_layers`` rank the tokens inside each region. ``plan(tiles, relevance)`` takes relevance of shape
    (R,), one raw CLIP cosine per box of ``regions(tiles)``, or None.

    Needs ``tiles.token_features`` (an adapter that records them, e.g. the Qwen hosts) and one view.
    """

    allocator: RegionAllocator = field(default_factory=RegionAllocator)
    selector: FunctionAwareSelector = field(default_factory=FunctionAwareSelector)

    def __post_init__(self) -> None:
        super().__post_init__()
        if type(self.allocator) is not RegionAllocator:
            raise HeroError.field("allocator", self.allocator, "a RegionAllocator (hero-native's budget part)")
        if type(self.selector) is not FunctionAwareSelector:
            raise HeroError.field(
                "selector", self.selector, "a FunctionAwareSelector (hero-native's layers and head reduction)"
            )

    def regions(self, tiles: TileEncoderOutputs) -> list[Box]:
        """(row0, col0, row1, col1) half-open boxes in token-grid units, in the order relevance is given."""
        return self.allocator.regions(one_view(EncodedTiles.from_outputs(tiles)).grid)

    def plan_batch(
        self, tiles: Sequence[TileEncoderOutputs], relevance: Sequence[Tensor | None] | None = None
    ) -> list[PrunePlan]:
        """``plan`` for every image, with ONE host sync for the batch (per device): each image's region weights
        and leftover counts are computed on the device, then read together with its host facts.

        Args:
            tiles: one-view encoder outputs with ``token_features``, one per image.
            relevance: per image, (R,) raw CLIP cosines (one per box of ``regions``) or None; or None for all.

        Raises:
            HeroError: on tiles with more than one view or without ``token_features``, on relevance of the
                wrong shape, dtype or with NaN/inf, on layers the adapter did not record.
        """
        return list(self._plan_batch(tiles, relevance))

    def plan(self, tiles: TileEncoderOutputs, relevance: Tensor | None = None) -> NativePlan:
        """The plan of one image: the global picks, then the region budgets and picks (module docstring).

        Args:
            tiles: one-view encoder outputs with ``token_features``.
            relevance: (R,) raw CLIP cosines, one per box of ``regions(tiles)`` in that order, or None
                (saliency only, as ``hero`` without a query).

        Host syncs: one (the region weights and leftover counts, read with the tiles' host facts); none when
        every valid token is kept (``keeps_all``).
        """
        return self._plan_batch([tiles], [relevance])[0]

    def _plan_batch(
        self, tiles: Sequence[TileEncoderOutputs], relevance: Sequence[Tensor | None] | None
    ) -> list[NativePlan]:
        images = [one_view(EncodedTiles.from_outputs(item)) for item in tiles]
        scores: list[Tensor | None] = [None] * len(images) if relevance is None else list(relevance)
        if len(scores) != len(images):
            raise HeroError.field(
                "relevance", f"{len(scores)} entries", f"one (R,) tensor or None per image ({len(images)} images)"
            )
        boxes = [self.allocator.regions(image.grid) for image in images]
        for score, box in zip(scores, boxes, strict=True):
            _check_relevance(score, len(box))
        staged: dict[int, _Staged] = {}
        with torch.inference_mode():
            for i, (image, score) in enumerate(zip(images, scores, strict=True)):
                if self.keeps_all(image):
                    continue
                if image.token_features is None:
                    raise _no_features()
                if image.token_features.shape[-1] != image.cls_tokens.shape[-1]:
                    raise HeroError.field(
                        "tiles.token_features",
                        image.token_features,
                        f"width D = {image.cls_tokens.shape[-1]}, the width of cls_tokens (both are stand-in "
                        "embeddings of the same space)",
                    )
                if score is not None:
                    score = to_device(score, image.device, score.dtype)
                    image.check_later("relevance", score, *RELEVANCE_FINITE)
                image.check_later("token_features", image.token_features, *_FEATURES_FINITE)
                staged[i] = self._stage(image, score if self.uses_relevance else None, len(boxes[i]))
            if staged:  # the batch's one host sync
                EncodedTiles.fetch_together([(images[i], (staged[i].read,)) for i in staged])
            return [
                self._finish(image, tuple(box), staged.get(i))
                for i, (image, box) in enumerate(zip(images, boxes, strict=True))
            ]

    def _stage(self, tiles: EncodedTiles, relevance: Tensor | None, num_regions: int) -> _Staged:
        """Global picks, region ids, importance and leftover counts, all on the device (no host read)."""
        upper, quota = self.allocator.quotas(self.keep_ratio, tiles.num_tokens)
        valid = tiles.valid_mask[0]  # (N,)
        high = self._scores(tiles, self.selector.high_layers, "high_layers")  # (N,) Eq. 5 over the whole image
        with torch.inference_mode(False):
            quota_t = to_device([quota], tiles.device, torch.int64)
        global_keep = keep_top(high[None, :], quota_t, valid[None, :])[0]  # (N,)
        region_ids = self.allocator.region_ids(tiles.grid, tiles.device)  # (N,)
        left = torch.zeros(num_regions, dtype=torch.float64, device=tiles.device)
        left.index_add_(0, region_ids, (valid & ~global_keep).double())  # (R,) exact small integers
        parts = self.allocator.importance(tiles, region_ids, num_regions, relevance)
        return _Staged(torch.cat([parts[0], left]), upper, quota, region_ids, global_keep, parts)

    def _finish(self, tiles: EncodedTiles, boxes: tuple[Box, ...], staged: _Staged | None) -> NativePlan:
        if staged is None:
            return self._everything(tiles, boxes)
        (read,) = tiles.fetch(staged.read)  # free: read by fetch_together with the host facts
        valid_count = tiles.capacity[0]
        total = min(staged.upper, valid_count)
        if total >= valid_count:  # the total reaches the valid count: every valid token (as keeps_all)
            return self._everything(tiles, boxes)
        num_regions = len(boxes)
        weights, left = read[:num_regions], [int(x) for x in read[num_regions:]]
        shares = self.allocator.split(total - staged.quota, weights, left)
        with torch.inference_mode(False):
            region_budgets = to_device(shares, tiles.device, torch.int64)
        sizes = [(r1 - r0) * (c1 - c0) for r0, c0, r1, c1 in boxes]
        starts = to_device([sum(sizes[:r]) for r in range(num_regions)], tiles.device, torch.long)
        low = self._scores(tiles, self.selector.low_layers, "low_layers")  # (N,) Eq. 6
        open_ = tiles.valid_mask[0] & ~staged.global_keep
        masked = low.masked_fill(~open_, float("-inf"))
        by_score = torch.sort(masked, descending=True, stable=True).indices  # ties: lower position first
        by_region = torch.sort(staged.region_ids[by_score], stable=True).indices
        order = by_score[by_region]  # (N,) grouped by region, best first inside each
        region_of = staged.region_ids[order]
        rank = torch.arange(tiles.num_tokens, device=tiles.device) - starts[region_of]  # rank inside the region
        chosen = rank < region_budgets[region_of]
        in_regions = torch.zeros_like(chosen).scatter_(0, order, chosen)
        keep = (staged.global_keep | in_regions)[None, :]  # (1, N)
        importance, saliency, relevance = (part.float() for part in staged.parts)
        return NativePlan(
            keep=keep,
            budgets=budgets_tensor(tiles, [total]),
            keep_ratio=self.keep_ratio,
            regions=boxes,
            region_budgets=region_budgets,
            global_keep=staged.global_keep,
            region_importance=importance,
            region_saliency=saliency,
            region_relevance=relevance,
        )

    def _scores(self, tiles: EncodedTiles, layers: tuple[int, ...], name: str) -> Tensor:
        """(N,) stand-in attention of ``layers``, heads reduced as ``FunctionAwareSelector`` does, layer mean."""
        attention = tiles.layer_attention(layers, field=f"hero-native {name}")[:, 0]  # (L, H, N)
        return reduce_heads(attention, self.selector.head_reduction).mean(0)

    def _everything(self, tiles: EncodedTiles, boxes: tuple[Box, ...]) -> NativePlan:
        known = tiles.known_capacity
        with torch.inference_mode(False):
            budgets = tiles.valid_mask.sum(-1) if known is None else to_device(list(known), tiles.device, torch.int64)
        if known is not None:
            tiles.remember_counts(budgets, known)
        return NativePlan(keep=tiles.valid_mask.clone(), budgets=budgets, keep_ratio=self.keep_ratio, regions=boxes)


def one_view(tiles: EncodedTiles) -> EncodedTiles:
    """``tiles`` if it holds one view (a host without tiles); a HeroError otherwise."""
    if tiles.num_views != 1:
        raise HeroError.field("tiles.num_views", tiles.num_views, "1 (one view per image)", _NATIVE_FIX)
    return tiles


def _cuts(length: int, region: int) -> list[int]:
    """Region boundaries along one side: ``floor(i * length / parts)`` for i in 0..parts,
    ``parts = max(1, round(length / region))`` (halves round up, exact integers)."""
    parts = max(1, (2 * length + region) // (2 * region))
    return [i * length // parts for i in range(parts + 1)]


def _check_relevance(relevance: Any, num_regions: int) -> None:
    """None or a (R,) float tensor, one CLIP score per region (values checked in the plan's one host read)."""
    if relevance is None:
        return
    if not isinstance(relevance, Tensor) or relevance.shape != (num_regions,):
        raise HeroError.field(
            "relevance",
            relevance,
            f"None or a tensor of shape ({num_regions},), one CLIP score per box of pruner.regions(tiles)",
            "hero-native scores regions, not views: crop the image at each box and score every crop.",
        )
    if not relevance.dtype.is_floating_point:
        raise HeroError.field("relevance", relevance, *RELEVANCE_FINITE)


def _no_features() -> HeroError:
    return HeroError.field(
        "tiles.token_features",
        None,
        "a (1, N, D) float tensor of per-token stand-in embeddings (hero-native's region saliency)",
        "Use an adapter that records token features (the Qwen2.5-VL / Qwen3-VL hosts), or presets.hero on tiled hosts.",
    )
