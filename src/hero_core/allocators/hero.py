"""HERO's content-adaptive budget allocation (paper section 4.1, Eq. 1-4)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .._arith import floor_ratio
from .._device import to_device
from .._errors import HeroError, check_positive, check_unit_interval
from ..plan import Allocation, Staged
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles
from ._split import budgets_tensor, exact_split, keeps_all, prepare, tile_views

__all__ = ["HeroAllocator"]


@dataclass(frozen=True)
class HeroAllocator:
    """Tile budgets from visual saliency and task relevance (HERO, Eq. 1-4).

    For each local tile i (the thumbnail excluded):

    - saliency ``c_i = cos(CLS_i, CLS_thumb)``, ``v = softmax(c / tau_v)``  (Eq. 1)
    - relevance ``t = softmax(r / tau_t)`` from the CLIP cosine ``r``        (Eq. 2)
    - importance ``s = alpha * v + (1 - alpha) * t``                          (Eq. 3)

    and, when ``density_weight`` w > 0 (the authors' code uses 0.2), ``s <- w * d + (1 - w) * s`` with the
    padding-density prior ``d_i = (n_i / N) / (sum_k n_k / N + 1e-6)``. Without relevance ``s = v``.

    Budgets (Eq. 4): with ``exact=True`` (paper preset) the total is ``min(floor(R * V * N), valid)``, the
    thumbnail takes ``min(floor(R * N), n_thumb)`` and the tiles share the rest by capped largest
    remainders. With ``exact=False`` (the authors' code) ``b_i = min(floor(s_i * floor(K * N * R)), n_i)``
    and what the floors and caps cut off is dropped.

    Args:
        alpha: weight of saliency against relevance, in [0, 1]. Default 0.5 (the sweep's midpoint).
        tau_v: saliency temperature > 0. Default 0.05.
        tau_t: relevance temperature > 0. Default 0.05.
        density_weight: weight of the padding-density prior, in [0, 1]. Default 0 (paper).
        exact: paper budgets (True) or the reference code's floors (False).
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: relevance checked and budgets remembered in its one fetch

    alpha: float = 0.5
    tau_v: float = 0.05
    tau_t: float = 0.05
    density_weight: float = 0.0
    exact: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_unit_interval("alpha", self.alpha))
        object.__setattr__(self, "tau_v", check_positive("tau_v", self.tau_v))
        object.__setattr__(self, "tau_t", check_positive("tau_t", self.tau_t))
        object.__setattr__(self, "density_weight", check_unit_interval("density_weight", self.density_weight))
        if not isinstance(self.exact, bool):
            raise HeroError.field("exact", self.exact, "True (paper budgets) or False (reference floors)")

    @property
    def uses_relevance(self) -> bool:
        """Relevance only matters when it has weight: ``alpha < 1``."""
        return self.alpha < 1.0

    def __call__(self, tiles: TileEncoderOutputs, relevance: Tensor | None, keep_ratio: float, /) -> Tensor:
        return self.allocate(tiles, relevance, keep_ratio).budgets

    def keeps_all(self, keep_ratio: float, tiles: EncodedTiles | None = None) -> bool:
        """Whether every valid token is kept, known before planning (``Pruner.keeps_all``): never with the
        reference floors (``exact=False``), which drop tokens even at R = 1."""
        return self.exact and keeps_all(keep_ratio, tiles)

    @property
    def count_known(self) -> bool:
        """Whether the kept total follows from the image's geometry alone (``Pruner.count_known``): the paper
        budgets keep ``exact_total``; the reference floors (``exact=False``) keep a content-dependent number."""
        return self.exact

    def allocate(self, tiles: TileEncoderOutputs, relevance: Tensor | None, keep_ratio: float) -> Allocation:
        """Budgets with the importance behind them (reported in float32; the thumbnail's entries are 0)."""
        checked, relevance, keep_ratio = prepare(tiles, relevance, keep_ratio)
        return self._finish(checked, keep_ratio, self._stage(checked, relevance))

    def _stage(self, tiles: EncodedTiles, relevance: Tensor | None) -> Staged:
        """The importance on the device, and what the split reads of it (the tiles' weights, or all of it)."""
        importance, saliency, relevance_part = self.importance(tiles, relevance)
        others = to_device(tile_views(tiles), tiles.device, torch.long)
        read = importance.index_select(0, others) if self.exact else importance
        return Staged(read, (importance, saliency, relevance_part))

    def _finish(self, tiles: EncodedTiles, keep_ratio: float, staged: Staged) -> Allocation:
        importance, saliency, relevance_part = staged.parts
        if self.exact:
            budgets = exact_split(tiles, keep_ratio, staged.read)
        else:
            budgets = self._reference_budgets(tiles, keep_ratio, staged.read)
        return Allocation(
            budgets=budgets, importance=importance.float(), saliency=saliency.float(), relevance=relevance_part.float()
        )

    def importance(self, tiles: EncodedTiles, relevance: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(importance, saliency part, relevance part), each (V,) float64 with 0 at the thumbnail.

        Computed in float64 whatever the input dtype: tau = 0.01 overflows half precision, and budgets
        are floors of these numbers, so they should not depend on summation order.
        """
        others = to_device(tile_views(tiles), tiles.device, torch.long)
        cls = tiles.cls_tokens.double()  # (V, D)
        cosine = F.cosine_similarity(cls[others], cls[tiles.thumbnail_index].unsqueeze(0), dim=-1)  # (K,)
        saliency = torch.softmax(cosine / self.tau_v, dim=0)  # Eq. 1
        if relevance is not None and self.alpha < 1.0:
            task = torch.softmax(relevance.double()[others] / self.tau_t, dim=0)  # Eq. 2
            saliency_part, relevance_part = self.alpha * saliency, (1.0 - self.alpha) * task  # Eq. 3
        else:
            saliency_part, relevance_part = saliency, torch.zeros_like(saliency)
        score = saliency_part + relevance_part
        if self.density_weight > 0:
            count = tiles.valid_mask[others].sum(-1).double() / tiles.num_tokens  # (K,) n_i / N
            density = count / (count.sum() + 1e-6)
            rest = 1.0 - self.density_weight
            score = self.density_weight * density + rest * score
            saliency_part, relevance_part = rest * saliency_part, rest * relevance_part
        views = tiles.num_views
        return (
            _scatter(score, others, views),
            _scatter(saliency_part, others, views),
            _scatter(relevance_part, others, views),
        )

    @staticmethod
    def _reference_budgets(tiles: EncodedTiles, keep_ratio: float, importance: Tensor) -> Tensor:
        """The authors' floors: thumbnail ``floor(R N)``, tile i ``min(floor(s_i * floor(K N R)), n_i)``."""
        (scores,) = tiles.fetch(importance)  # the one host sync (with the tiles' facts)
        if not all(math.isfinite(x) for x in scores):
            raise HeroError.field(
                "importance", importance, "finite scores", "Raise tau_v / tau_t: the softmax overflowed."
            )
        capacity = tiles.capacity
        others = tile_views(tiles)
        pool = floor_ratio(keep_ratio, len(others) * tiles.num_tokens)
        budgets = [min(math.floor(scores[v] * pool), capacity[v]) for v in range(tiles.num_views)]
        budgets[tiles.thumbnail_index] = min(floor_ratio(keep_ratio, tiles.num_tokens), capacity[tiles.thumbnail_index])
        return budgets_tensor(tiles, budgets)


def _scatter(values: Tensor, index: Tensor, num_views: int) -> Tensor:
    """(K,) tile values into a (V,) vector with 0 at the thumbnail."""
    return torch.zeros(num_views, dtype=values.dtype, device=values.device).index_copy(0, index, values)
