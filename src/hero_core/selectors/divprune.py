"""DivPrune: max-min diversity over all valid tokens of an image (Alvar et al., CVPR 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._errors import HeroError
from ._image import FeatureSelector, unit

__all__ = ["DivPruneSelector"]

#: Rows of the similarity matrix computed per matrix product (``_similarity``).
_STRIP = 768


@dataclass(frozen=True)
class DivPruneSelector(FeatureSelector):
    """Keep the most diverse set of tokens of the whole image, by cosine distance of ``token_features``.

    DivPrune ("DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", Alvar, Singh, Akbari
    and Zhang, CVPR 2025, arXiv:2503.02175) casts pruning as a max-min diversity problem and solves it greedily
    (its Eq. 3): with ``d(i, j) = 1 - cos(f_i, f_j)`` over the image's valid tokens,

    - first pick: the token farthest from its nearest neighbour, ``argmax_i min_{j != i} d(i, j)``. This is what
      the authors' code does (``DivPrune`` in github.com/vbdi/divprune, also copied into LightCompress'
      ``divprune``): at step 0 it scores each token by the second-smallest entry of its column of the distance
      matrix (``topk(2, largest=False).values[1]``, the smallest being the token's distance to itself);
    - then, ``b - 1`` times: add the token whose minimum distance to the chosen set is largest, keeping one
      (n,) min-distance vector updated with the new token's row (``O(n)`` per step).

    Equivalently (and so computed here) in similarities: the first pick has the smallest nearest-neighbour
    similarity, each next one the smallest maximum similarity to the chosen set. Ties go to the lower flat
    position ``view * N + position`` (``argmin`` returns the first). A chosen token is never picked again (the
    authors' code relies on its distance to itself being 0). Padding is never a candidate nor a neighbour.

    Cost: the (n, n) float32 similarity matrix, ``O(n^2 D)`` once, computed in row strips of which only the
    upper triangle is multiplied; then ``O(b n)``. Above ``max_matrix_tokens`` valid tokens the matrix is not
    kept (``O(n D)`` memory): the first pick's nearest neighbours are found strip by strip and each step
    computes its one row (``O(b n D)``).

    Chooses across views (``scope = "image"``): it takes the image's total budget, and the plan reports the
    per-view counts it produced. Needs ``token_features`` (``needs_features``); reads no attention.

    Args:
        max_matrix_tokens: most valid tokens for which the (n, n) similarity matrix is kept, >= 0. Default 8192
            (256 MiB of float32).
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: keeps exactly the total on valid positions, no read-back check
    preset: ClassVar[str] = "divprune"

    max_matrix_tokens: int = 8192

    def __post_init__(self) -> None:
        value = self.max_matrix_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HeroError.field("max_matrix_tokens", value, "an int >= 0")

    def _order(self, features: Tensor, total: int) -> Tensor:
        x = unit(features)  # (n, D)
        greedy = _greedy_with_matrix if x.shape[0] <= self.max_matrix_tokens else _greedy_by_rows
        return greedy(x, total)  # (total,) rows of x in pick order


def _similarity(x: Tensor) -> Tensor:
    """(n, n) cosine similarities of the unit rows ``x``: each strip of rows multiplies only the columns from its
    own first row on; the block below the diagonal is the transpose of the one above (half the products)."""
    n = x.shape[0]
    sim = torch.empty(n, n, dtype=x.dtype, device=x.device)
    for start in range(0, n, _STRIP):
        stop = min(start + _STRIP, n)
        block = x[start:stop] @ x[start:].T  # (s, n - start)
        sim[start:stop, start:] = block
        sim[stop:, start:stop] = block[:, stop - start :].T
    return sim


def _greedy_with_matrix(x: Tensor, count: int) -> Tensor:
    """(count,) int64 rows of ``x`` in the order DivPrune picks them, with the similarity matrix kept."""
    sim = _similarity(x)
    sim.fill_diagonal_(float("-inf"))
    first = sim.amax(dim=1).argmin()  # () the token whose nearest neighbour is least similar
    sim.fill_diagonal_(float("inf"))  # a chosen token's own entry makes it never chosen again
    nearest = sim.index_select(0, first.view(1))[0].clone()  # (n,) max similarity to the chosen set
    picks = [first]
    for _ in range(count - 1):
        pick = nearest.argmin()
        torch.maximum(nearest, sim.index_select(0, pick.view(1))[0], out=nearest)
        picks.append(pick)
    return torch.stack(picks)


def _greedy_by_rows(x: Tensor, count: int) -> Tensor:
    """As ``_greedy_with_matrix`` in ``O(n D)`` memory: nearest neighbours strip by strip, one row per step."""
    n = x.shape[0]
    nn = torch.empty(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, _STRIP):
        stop = min(start + _STRIP, n)
        block = x[start:stop] @ x.T  # (s, n)
        block.diagonal(offset=start).fill_(float("-inf"))
        nn[start:stop] = block.amax(dim=1)
    first = nn.argmin()
    nearest = x @ x.index_select(0, first.view(1))[0]  # (n,)
    nearest.index_fill_(0, first.view(1), float("inf"))
    picks = [first]
    for _ in range(count - 1):
        pick = nearest.argmin()
        torch.maximum(nearest, x @ x.index_select(0, pick.view(1))[0], out=nearest)
        nearest.index_fill_(0, pick.view(1), float("inf"))
        picks.append(pick)
    return torch.stack(picks)
