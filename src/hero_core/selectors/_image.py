"""What the selectors that choose across all views of an image share (``scope = "image"``: DivPrune, DART,
CDPruner).

Such a selector takes the image's total budget instead of one budget per view. ``Pruner.plan`` hands it the
allocator's total as a (1,) int64 tensor whose host value the tiles remember (no device read); a direct call
may pass per-view budgets (V,) instead, of which the total is used. It returns the usual (V, N) keep mask
with exactly that many valid positions, spread over the views as the method chooses.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .._errors import HeroError
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles

__all__ = [
    "IMAGE",
    "VIEW",
    "FeatureSelector",
    "features_of",
    "image_total",
    "keep_from",
    "missing_features",
    "unit",
    "valid_tokens",
]

#: The two scopes a selector may declare (``scope`` class attribute; absent means ``VIEW``).
VIEW = "view"
IMAGE = "image"


def image_total(tiles: EncodedTiles, budgets: Any, name: str) -> int:
    """The image's total budget as a host int: ``budgets.sum()``, read from the host ints the tiles remember
    for this very tensor (``Pruner.plan``: no device read), else read back (one host sync, a direct call).

    Raises:
        HeroError: on budgets that are not a (1,) or (V,) integer tensor, or a total outside [0, valid].
    """
    views = tiles.num_views
    if (
        not isinstance(budgets, Tensor)
        or budgets.dim() != 1
        or budgets.shape[0] not in (1, views)
        or budgets.dtype.is_floating_point
        or budgets.dtype == torch.bool
    ):
        raise HeroError.field(
            "budgets", budgets, f"an integer tensor of shape (1,) (the image's total) or ({views},) (one per view)"
        )
    known = tiles.known_counts(budgets)
    total = sum(known) if known is not None else int(budgets.sum())
    valid = sum(tiles.capacity)
    if not 0 <= total <= valid:
        raise HeroError.field(f"{name} total budget", total, f"0 <= total <= {valid} valid tokens of the image")
    return total


def valid_tokens(tiles: EncodedTiles) -> Tensor:
    """(n,) int64 flat indices ``view * N + position`` of the image's valid tokens, ascending, on the tiles'
    device. ``n`` (the valid count) is a host int already read, so no data-dependent shape (no host sync)."""
    count = sum(tiles.capacity)
    flat = tiles.valid_mask.reshape(-1)  # (V N,)
    order = torch.sort((~flat).to(torch.uint8), stable=True).indices  # valid first, each group in raster order
    return order[:count]


def features_of(tiles: EncodedTiles, index: Tensor, name: str, preset: str) -> Tensor:
    """(n, D) float32 token features of the flat ``index`` (``valid_tokens``).

    Raises:
        HeroError: naming the preset and what to pass when ``tiles.token_features`` is None.
    """
    features = tiles.token_features
    if features is None:
        raise missing_features(name, preset)
    flat = features.reshape(-1, features.shape[-1])  # (V N, D)
    return flat.index_select(0, index).float()


def unit(features: Tensor) -> Tensor:
    """(n, D) rows scaled to unit L2 norm (a zero row stays zero: cosine 0 with every token)."""
    return F.normalize(features, dim=-1, eps=1e-12)


def keep_from(tiles: EncodedTiles, chosen: Tensor) -> Tensor:
    """(V, N) bool mask with the flat indices ``chosen`` set."""
    keep = torch.zeros(tiles.num_views * tiles.num_tokens, dtype=torch.bool, device=tiles.device)
    keep.index_fill_(0, chosen, True)
    return keep.reshape(tiles.num_views, tiles.num_tokens)


def missing_features(name: str, preset: str) -> HeroError:
    """The refusal of a preset that compares tokens by their features, planned on tiles without them."""
    return HeroError.field(
        "tiles.token_features",
        None,
        f"a (V, N, D) float tensor of per-token features: preset {preset!r} ({name}) compares the tokens by them",
        "Plan through hero_adapters.HeroVLM (it records token features when pruner.needs_features), or build "
        "EncodedTiles with token_features=... from the features the host sends its LLM.",
    )


class FeatureSelector:
    """The steps the shipped whole-image selectors share (DivPrune, DART, CDPruner): the image's total, its valid
    tokens, every one of them when the total reaches them, none at 0, else the method's ``_pick`` (by default its
    ``_order`` of their features, float32), whose picks are kept. A subclass sets ``preset`` and ``_order`` or
    ``_pick`` (and ``_one_sync`` itself: ``Pruner`` trusts only a class that declares it)."""

    scope: ClassVar[str] = IMAGE
    needs_features: ClassVar[bool] = True
    preset: ClassVar[str]

    @property
    def layers(self) -> tuple[int, ...]:
        return ()

    def __call__(self, tiles: TileEncoderOutputs, budgets: Tensor, /) -> Tensor:
        checked = EncodedTiles.from_outputs(tiles).require_finite()  # free after the planner's fetch
        total = image_total(checked, budgets, type(self).__name__)
        index = valid_tokens(checked)  # (n,)
        if total >= index.shape[0]:
            return checked.valid_mask.clone()  # every valid token (also when the image has none)
        if total == 0:
            return torch.zeros_like(checked.valid_mask)
        return keep_from(checked, index.index_select(0, self._pick(checked, index, total)))

    def _pick(self, tiles: EncodedTiles, index: Tensor, total: int) -> Tensor:
        """(total,) positions in ``index`` (the valid tokens' flat indices, (n,)), 0 < total < n, in the method's
        pick order; by default ``_order`` of their features."""
        return self._order(features_of(tiles, index, type(self).__name__, self.preset), total)

    def _order(self, features: Tensor, total: int) -> Tensor:
        """(total,) rows of ``features`` (n, D), 0 < total < n, in the method's pick order."""
        raise NotImplementedError
