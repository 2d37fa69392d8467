"""Single-layer CLS-attention selection (FasterVLM style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .._errors import HeroError
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles
from ._rank import keep_top, reduce_heads
from .function_aware import HEAD_REDUCTIONS, check_layers

__all__ = ["ClsAttentionSelector"]


@dataclass(frozen=True)
class ClsAttentionSelector:
    """Every view, thumbnail included, keeps the tokens one layer's CLS attends to most.

    FasterVLM ("[CLS] Attention is All You Need for Training-Free Visual Token Pruning",
    Zhang et al. 2024, arXiv:2412.01818) ranks by the CLS attention of the layer the features come
    from (CLIP ViT-L's penultimate, 0-based index 22); HiRED and GlobalCom2 select inside each tile the
    same way. HERO section 3.2 argues one layer cannot serve tiles and thumbnail alike.

    Args:
        layer: 0-based encoder layer. Default 22.
        head_reduction: ``"mean"`` or ``"softmax_mean"``.
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: keeps exactly the budgets (keep_top), no read-back check

    layer: int = 22
    head_reduction: str = "mean"

    def __post_init__(self) -> None:
        check_layers("layer", (self.layer,))
        if self.head_reduction not in HEAD_REDUCTIONS:
            raise HeroError.field("head_reduction", self.head_reduction, f"one of {HEAD_REDUCTIONS}")

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def __call__(self, tiles: TileEncoderOutputs, budgets: Tensor, /) -> Tensor:
        checked = EncodedTiles.from_outputs(tiles).require_finite()  # free after the planner's fetch
        scores = reduce_heads(
            checked.layer_attention(self.layers, field="ClsAttentionSelector.layer")[0], self.head_reduction
        )  # (V, N)
        return keep_top(scores, budgets, checked.valid_mask)
