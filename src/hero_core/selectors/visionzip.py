"""VisionZip: dominant tokens by CLS attention plus contextual tokens merged from the rest (Yang et al., CVPR 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._device import to_device
from .._errors import HeroError
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles
from ._image import features_of, unit
from ._rank import keep_top, reduce_heads
from .function_aware import HEAD_REDUCTIONS, check_layers

__all__ = ["VisionZipSelector"]


@dataclass(frozen=True)
class VisionZipSelector:
    """Each view keeps its budget as dominant tokens (CLS attention) and contextual tokens that absorb the rest.

    VisionZip ("VisionZip: Longer is Better but Not Necessary in Vision Language Models", Yang, Chen, Tian, Yang,
    Chen, Jia and Yu, CVPR 2025, arXiv:2412.04467; code at github.com/dvlab-research/VisionZip). In every view,
    with budget ``b`` of ``n`` valid tokens (``b < n``):

    - ``c = floor(b * contextual + 1/2)`` contextual tokens, ``d = b - c`` dominant tokens: the ``d`` valid tokens
      the CLS query attends to most at ``layer`` (heads averaged; the released code sums them, the same order);
    - the ``n - d`` others, in raster order, give ``c`` targets, every ``max(1, (n - d) // c)``-th from the first;
    - every other remaining token is assigned to the target of largest cosine similarity (ties: the first target)
      and merged into it: the target's LLM-side row becomes ``row(target) + mean(rows assigned to it)``, as the
      released code does (``target_hidden + aggregated_hidden``). The merge is carried by the plan
      (``PrunePlan.merge_into``) and applied by the adapter to the rows it sends.

    Where this differs from the released code, which runs inside CLIP: similarity is the cosine of
    ``token_features`` (the rows the host's LLM receives, or the Qwen towers' last states) instead of the
    layer's attention keys, and the merge adds LLM-side rows (after the projector) instead of the tower's hidden
    states (before it). Counts are the released ones: the target and dominant tokens are what the view keeps,
    exactly its budget (merged tokens count against it).

    Args:
        layer: 0-based encoder layer of the dominant ranking. Default 22 (CLIP ViT-L/14's penultimate, where the
            released code reads the attention).
        contextual: share of each view's budget given to contextual tokens, in [0, 1). Default 10 / 64 (the
            released LLaVA settings: 54 + 10 of 64, 108 + 20 of 128, 162 + 30 of 192; its Qwen code uses 5 / 70).
        head_reduction: ``"mean"`` or ``"softmax_mean"``.
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: keeps exactly the budgets, no read-back check
    preset: ClassVar[str] = "visionzip"
    needs_features: ClassVar[bool] = True

    layer: int = 22
    contextual: float = 10 / 64
    head_reduction: str = "mean"

    def __post_init__(self) -> None:
        check_layers("layer", (self.layer,))
        share = self.contextual
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= float(share) < 1.0:
            raise HeroError.field("contextual", share, "a share in [0, 1) of each view's budget (0: dominant only)")
        if self.head_reduction not in HEAD_REDUCTIONS:
            raise HeroError.field("head_reduction", self.head_reduction, f"one of {HEAD_REDUCTIONS}")

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def __call__(self, tiles: TileEncoderOutputs, budgets: Tensor, /) -> Tensor:
        return self.plan_merge(tiles, budgets)[0]

    def plan_merge(self, tiles: TileEncoderOutputs, budgets: Tensor, /) -> tuple[Tensor, Tensor]:
        """(keep (V, N) bool, merge_into (V, N) int64): ``merge_into`` is each token's own flat index
        ``view * N + position`` where kept, its target's where merged into a contextual token, -1 where dropped."""
        checked = EncodedTiles.from_outputs(tiles).require_finite()  # free after the planner's fetch
        views, tokens = checked.num_views, checked.num_tokens
        counts = _view_counts(checked, budgets)
        capacity = checked.capacity
        contextual = [
            int(b * float(self.contextual) + 0.5) if 0 < b < n else 0 for b, n in zip(counts, capacity, strict=True)
        ]
        dominant = [b - c for b, c in zip(counts, contextual, strict=True)]
        attention = checked.layer_attention(self.layers, field="VisionZipSelector.layer")[0]  # (V, H, N)
        scores = reduce_heads(attention, self.head_reduction)  # (V, N)
        with torch.inference_mode(False):
            given = to_device(dominant, checked.device, torch.int64)
        keep = keep_top(scores, given, checked.valid_mask)  # (V, N) the dominant tokens
        flat = torch.arange(views * tokens, device=checked.device).reshape(views, tokens)
        into = torch.where(keep, flat, torch.full_like(flat, -1))
        if not any(contextual):
            return keep, into
        features = checked.token_features
        if features is None:
            features_of(checked, flat[0, :1], type(self).__name__, self.preset)  # raises, naming the preset
        assert features is not None
        rest = checked.valid_mask & ~keep  # (V, N)
        for view, count in enumerate(contextual):
            if count == 0:
                continue
            left = capacity[view] - dominant[view]  # the remaining valid tokens of the view
            step = max(1, left // count)
            rank = rest[view].long().cumsum(0) - 1  # rank of each remaining token in raster order
            target = rest[view] & (rank % step == 0) & (rank // step < count)  # (N,) exactly `count` targets
            ids = torch.sort((~target).to(torch.uint8), stable=True).indices[:count]  # (count,) their positions
            x = unit(features[view].float())  # (N, D)
            nearest = ids.index_select(0, (x @ x.index_select(0, ids).T).argmax(dim=-1))  # (N,) most similar target
            merged = rest[view] & ~target
            into[view] = torch.where(merged, view * tokens + nearest, into[view])
            into[view] = torch.where(target, flat[view], into[view])
            keep[view] |= target
        return keep, into


def _view_counts(tiles: EncodedTiles, budgets: Tensor) -> tuple[int, ...]:
    """The per-view budgets as host ints: what ``Pruner.plan`` remembered for this tensor, else read (one sync)."""
    views = tiles.num_views
    if (
        not isinstance(budgets, Tensor)
        or budgets.shape != (views,)
        or budgets.dtype.is_floating_point
        or budgets.dtype == torch.bool
    ):
        raise HeroError.field("budgets", budgets, f"an integer tensor of shape ({views},), one budget per view")
    known = tiles.known_counts(budgets)
    counts = known if known is not None else tuple(int(b) for b in budgets.tolist())
    bad = [(b, n) for b, n in zip(counts, tiles.capacity, strict=True) if not 0 <= b <= n]
    if bad:
        raise HeroError.field(
            "budgets", list(counts), f"0 <= budget <= valid tokens of the view ({list(tiles.capacity)})"
        )
    return counts
