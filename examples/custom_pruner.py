"""Compose your own pruner from hero_core parts, and write a selector of your own.

Runs offline in seconds on synthetic encoder outputs with LLaVA-NeXT-7B geometry (a 2 x 2 grid of tiles
plus the thumbnail, 24 x 24 patches per view, 16 heads, the bottom quarter of every tile padded):

    python examples/custom_pruner.py

A pruner is a value: ``Pruner(keep_ratio, allocator, selector)``. Any callable with the protocol's
signature fits; a selector also names the encoder layers it reads (``layers``), so that adapters hook
exactly those. ``hero_core.testing`` (the ``test`` extra) holds your parts to the library's invariants.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hero_core import EncodedTiles, HeroAllocator, Pruner, StridedSelector, TileEncoderOutputs, presets
from hero_core.testing import check_selector, make_tiles


@dataclass(frozen=True)
class MaxHeadSelector:
    """Keep, in every view, the tokens that the most attentive head of one layer's CLS attends to.

    (The shipped selectors average over heads; this is an example of a variant, not a recommendation.)

    Args:
        layer: 0-based encoder layer whose CLS attention is read.
    """

    layer: int = 22

    @property
    def layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def __call__(self, tiles: TileEncoderOutputs, budgets: torch.Tensor, /) -> torch.Tensor:
        checked = EncodedTiles.from_outputs(tiles)
        scores = checked.layer_attention(self.layers)[0].amax(dim=1)  # (V, N): max over heads
        scores = scores.masked_fill(~checked.valid_mask, float("-inf"))  # padding is never kept
        order = scores.argsort(dim=-1, descending=True, stable=True)  # (V, N), ties to the lower index
        positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)  # (V, N) rank of every position
        return (rank < budgets[:, None]) & checked.valid_mask  # exactly budgets[v] per view


def describe(name: str, pruner: Pruner, tiles: EncodedTiles, relevance: torch.Tensor) -> None:
    plan = pruner.plan(tiles, relevance)
    parts = f"{type(pruner.allocator).__name__} + {type(pruner.selector).__name__}"
    print(f"{name:<26} {parts:<40} layers {pruner.layers!s:<18} budgets {plan.budgets.tolist()} = {plan.num_kept}")


def main() -> None:
    tiles = make_tiles(num_views=5, grid=(24, 24), num_heads=16, padding="rows", seed=0)
    relevance = torch.tensor([0.0, 0.31, 0.22, 0.18, 0.25])  # CLIP cosine per view (the thumbnail's is unused)
    print(f"V={tiles.num_views} views, N={tiles.num_tokens} positions each, valid {tiles.valid_mask.sum(-1).tolist()}")

    # 1. Shipped parts, composed differently: HERO's budgets (more weight on saliency), strided positions.
    strided = Pruner(keep_ratio=0.2, allocator=HeroAllocator(alpha=0.8), selector=StridedSelector())
    # 2. HERO's budgets with a selector of our own.
    max_head = Pruner(keep_ratio=0.2, allocator=HeroAllocator(alpha=0.8), selector=MaxHeadSelector(layer=22))
    # 3. The paper's HERO, for comparison: the same total, other choices.
    for name, pruner in (
        ("HERO budgets + strided", strided),
        ("HERO budgets + max head", max_head),
        ("presets.hero(0.2)", presets.hero(0.2)),
    ):
        describe(name, pruner, tiles, relevance)

    # Hold the custom selector to the library's invariants: exact counts, valid positions only, deterministic.
    budgets = max_head.plan(tiles, relevance).budgets
    check_selector(MaxHeadSelector(), tiles, budgets)
    print("MaxHeadSelector passes hero_core.testing.check_selector")


if __name__ == "__main__":
    main()
