"""Seeded random selection: the baseline a pruning method must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._device import to_device
from .._errors import HeroError
from ..protocols import TileEncoderOutputs
from ..tiles import EncodedTiles
from ._rank import keep_top

__all__ = ["RandomSelector"]


@dataclass(frozen=True)
class RandomSelector:
    """Keep ``budgets[v]`` valid positions of each view chosen uniformly at random.

    Deterministic for a given ``seed`` and shape (the generator runs on the CPU, so CPU and CUDA
    agree). Random pruning is a strong baseline on many benchmarks (UniPruneBench, VTC-Bench); a
    method that does not beat it on your data is not worth its cost.

    Args:
        seed: seed of the generator, re-seeded on every call.
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: keeps exactly the budgets (keep_top), no read-back check

    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise HeroError.field("seed", self.seed, "an int")

    @property
    def layers(self) -> tuple[int, ...]:
        return ()

    def __call__(self, tiles: TileEncoderOutputs, budgets: Tensor, /) -> Tensor:
        checked = EncodedTiles.from_outputs(tiles).require_finite()  # free after the planner's fetch
        generator = torch.Generator().manual_seed(self.seed)
        scores = torch.rand(checked.num_views, checked.num_tokens, generator=generator)  # (V, N)
        return keep_top(to_device(scores, checked.device, scores.dtype), budgets, checked.valid_mask)
