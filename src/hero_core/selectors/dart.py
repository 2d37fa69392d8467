"""DART: pivot tokens, then the tokens that duplicate them least (Wen et al. 2025)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._errors import HeroError
from ._image import FeatureSelector

__all__ = ["PIVOT_RULES", "DartSelector"]

#: How pivots are ranked: by the L1 norm of their feature (DART's code: ``torch.norm(k, p=1)``) or its L2 norm.
PIVOT_RULES = ("l1", "l2")

#: Smallest product of norms a cosine divides by (Edge-LLM's ``max(|p| |c|, 1e-8)``).
_EPS = 1e-8


@dataclass(frozen=True)
class DartSelector(FeatureSelector):
    """Pivot tokens, then, pivot by pivot, the tokens least similar to it: duplicates of a pivot are dropped.

    DART ("Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More", Wen, Gao,
    Wang, Zhang, Zhang, Li, He and Zhang, 2025, arXiv:2502.11494; github.com/ZichenWen1/DART). Over the image's
    valid tokens, with a total budget ``b``:

    1. pivots: the ``p = min(pivots, b)`` tokens of largest feature norm (``pivot_rule``; ties to the lower flat
       position ``view * N + position``). The paper's code ranks by the L1 norm (``torch.norm(k, p=1)``) of the
       key states of LLM layer 2; TensorRT Edge-LLM's ``DartPruner`` (``--visualPrune``), the integration this
       follows, ranks the LLM's input embeddings by their L1 norm before the LLM runs (its ``pruned_layer=0``
       variant). Here the rule is applied to ``token_features``, the features the adapter hands over.
    2. growth: the pivots are kept; then for pivot ``i = 0 .. p - 1`` (in pivot order) with ``r`` tokens still to
       keep, the ``ceil(r / (p - i))`` candidates of lowest cosine similarity to that pivot are kept and leave
       the candidates (ties to the lower position). The last pivot takes what remains, so exactly ``b`` are kept.

    As in Edge-LLM, the similarity is the cosine of the features; text pivots (DART's ``pivot_text_token``) are
    not used: the core sees the image only. Vectorised: one (p, n) similarity product, then one stable sort per
    pivot (``O(p n D + p n log n)``); no loop over tokens.

    Chooses across views (``scope = "image"``): it takes the image's total budget, and the plan reports the
    per-view counts it produced. Needs ``token_features`` (``needs_features``); reads no attention.

    Args:
        pivots: pivot tokens per image, >= 1. Default 4 (DART's ``pivot_image_token``, Edge-LLM's
            ``pivotImageTokens``).
        pivot_rule: ``"l1"`` (default, DART and Edge-LLM) or ``"l2"``: the norm that ranks the pivots.
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: keeps exactly the total on valid positions, no read-back check
    preset: ClassVar[str] = "dart"

    pivots: int = 4
    pivot_rule: str = "l1"

    def __post_init__(self) -> None:
        if isinstance(self.pivots, bool) or not isinstance(self.pivots, int) or self.pivots < 1:
            raise HeroError.field("pivots", self.pivots, "an int >= 1")
        if self.pivot_rule not in PIVOT_RULES:
            raise HeroError.field("pivot_rule", self.pivot_rule, f"one of {PIVOT_RULES}")

    def _order(self, features: Tensor, total: int) -> Tensor:
        n = int(features.shape[0])
        count = min(self.pivots, total)
        l2 = torch.linalg.vector_norm(features, dim=-1)  # (n,)
        norms = torch.linalg.vector_norm(features, ord=1, dim=-1) if self.pivot_rule == "l1" else l2
        pivots = torch.sort(norms, descending=True, stable=True).indices[:count]  # (p,)
        dots = features.index_select(0, pivots) @ features.T  # (p, n)
        scale = (l2.index_select(0, pivots)[:, None] * l2[None, :]).clamp_min(_EPS)
        sims = dots / scale  # (p, n) cosine of each pivot with every token (0 for a zero feature)
        candidate = torch.ones(n, dtype=torch.bool, device=sims.device)
        candidate.index_fill_(0, pivots, False)
        chosen = [pivots]
        remaining = total - count
        for i in range(count):
            if remaining <= 0:
                break
            take = -(-remaining // (count - i))  # ceil(remaining / pivots left)
            score = sims[i].masked_fill(~candidate, float("inf"))
            picks = torch.sort(score, stable=True).indices[:take]  # least similar candidates first
            candidate.index_fill_(0, picks, False)
            chosen.append(picks)
            remaining -= take
        return torch.cat(chosen)
