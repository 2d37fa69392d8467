"""HERO's function-aware token selection (paper section 4.2, Eq. 5-6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._errors import HeroError
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles
from ._rank import keep_top, reduce_heads

__all__ = ["HEAD_REDUCTIONS", "FunctionAwareSelector", "check_layers"]

HEAD_REDUCTIONS = ("mean", "softmax_mean")


@dataclass(frozen=True)
class FunctionAwareSelector:
    """Tiles keep the tokens early-middle layers' CLS attends to; the thumbnail, a late layer's.

    - thumbnail score ``g_j = mean_{l in high_layers} headreduce(A[l, thumb, :, j])``   (Eq. 5)
    - tile score ``u_ij = mean_{l in low_layers} headreduce(A[l, i, :, j])``            (Eq. 6)

    Each view keeps its ``budgets[v]`` top positions (valid ones only, ties to the lower index), in
    raster order. Early-to-middle layers attend to foreground objects (fine detail for the tiles);
    late layers to a few background "artifact" tokens that carry global context (the thumbnail).

    Args:
        low_layers: 0-based encoder layers for the tiles. Default (5, 6, 7, 8) for CLIP ViT-L/14.
        high_layers: 0-based encoder layers for the thumbnail. Default (21,).
        head_reduction: ``"mean"`` (paper) or ``"softmax_mean"`` (the authors' code).
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: keeps exactly the budgets (keep_top), no read-back check

    low_layers: tuple[int, ...] = (5, 6, 7, 8)
    high_layers: tuple[int, ...] = (21,)
    head_reduction: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "low_layers", check_layers("low_layers", self.low_layers))
        object.__setattr__(self, "high_layers", check_layers("high_layers", self.high_layers))
        if self.head_reduction not in HEAD_REDUCTIONS:
            raise HeroError.field("head_reduction", self.head_reduction, f"one of {HEAD_REDUCTIONS}")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.low_layers) | set(self.high_layers)))

    def __call__(self, tiles: TileEncoderOutputs, budgets: Tensor, /) -> Tensor:
        checked = EncodedTiles.from_outputs(tiles).require_finite()  # free after the planner's fetch
        low = reduce_heads(
            checked.layer_attention(self.low_layers, field="FunctionAwareSelector.low_layers"), self.head_reduction
        ).mean(0)  # (V, N)
        thumb = checked.thumbnail_index
        high = reduce_heads(
            checked.layer_attention(self.high_layers, field="FunctionAwareSelector.high_layers")[:, thumb],
            self.head_reduction,
        ).mean(0)  # (N,)
        is_thumb = torch.arange(checked.num_views, device=checked.device) == thumb
        scores = torch.where(is_thumb[:, None], high[None, :], low)  # (V, N)
        return keep_top(scores, budgets, checked.valid_mask)


def check_layers(name: str, layers: object) -> tuple[int, ...]:
    """A non-empty tuple of distinct non-negative ints (lists are accepted and converted)."""
    if isinstance(layers, list):
        layers = tuple(layers)
    if (
        not isinstance(layers, tuple)
        or not layers
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
        or len(set(layers)) != len(layers)
    ):
        raise HeroError.field(name, layers, "a non-empty tuple of distinct 0-based encoder layer indices")
    return layers
