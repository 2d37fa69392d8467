"""CDPruner: a conditional DPP over the image's tokens, conditioned on the instruction (Zhang et al., NeurIPS 2025)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._errors import HeroError
from ..tiles import EncodedTiles
from ._image import FeatureSelector, features_of, unit
from .divprune import _similarity

__all__ = ["CDPrunerSelector", "conditional_relevance", "missing_relevance"]

#: Floor of a pick's remaining gain before the square root (no division by zero); gains above it are used as is.
_GAIN_FLOOR = 1e-30
#: Remaining gains at most this fraction of the largest ``diag(L)`` are float32 rounding of zero: L's rank is spent.
_RANK_FLOOR = 1e-5


@dataclass(frozen=True)
class CDPrunerSelector(FeatureSelector):
    """Keep the image's tokens that maximise a determinantal point process conditioned on the instruction.

    CDPruner ("Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs",
    Zhang, Liu, Li, Lu, Zhang, Pan, She and Zhang, NeurIPS 2025, arXiv:2506.10967; code at
    github.com/Theia-4869/CDPruner). Over the image's valid tokens, with ``x_i`` the unit ``token_features``
    (what the host's LLM receives) and ``s_i`` the raw cosine of token i to the instruction in CLIP's joint
    space (``token_relevance``):

    - relevance ``r = -s`` (``negate``: the authors' code negates the cosine, ``(-relevance).mean(-1)``; CLIP's
      patch tokens score inversely to the text), min-max normalised over the image as that code does,
      ``r = (r - min r + 1e-6) / (max r - min r)`` (all ones when every token scores the same);
    - with ``theta < 1``, ``r = exp(theta / (2 (1 - theta)) r)`` (the paper's trade-off; the authors' released
      code leaves it out, which is ``theta = 1``, the default);
    - the conditional kernel ``L = diag(r) (X X^T) diag(r)``;
    - greedy MAP inference of the DPP (Chen, Zhang and Zhou, NeurIPS 2018): each step keeps the token that
      multiplies ``det(L_S)`` the most, by an incremental Cholesky factor (``O(n)`` memory per kept token,
      ``O(b^2 n)`` in all), never a log-det per step. Ties go to the lower flat position ``view * N + position``.
      Once L's rank is spent (more tokens asked for than the features span), the rest are taken by relevance
      weight, largest first, so the count stays exact.

    Chooses across views (``scope = "image"``) with the image's total budget. Needs ``token_features``
    (``needs_features``) and ``token_relevance`` (``needs_token_relevance``: adapters compute it only then,
    from the text scorer's ``score_tokens``); reads no attention.

    Args:
        theta: in (0, 1]; 1 (the default) uses the normalised relevance as it is.
        negate: negate the cosine before normalising, as the authors' code does (default True).
        max_matrix_tokens: most valid tokens for which the (n, n) kernel is kept, >= 0; above it each step
            computes its one row (``O(n D)``). Default 8192.
    """

    _one_sync: ClassVar[bool] = True  # Pruner.plan: keeps exactly the total on valid positions, no read-back check
    preset: ClassVar[str] = "cdpruner"
    needs_token_relevance: ClassVar[bool] = True

    theta: float = 1.0
    negate: bool = True
    max_matrix_tokens: int = 8192

    def __post_init__(self) -> None:
        theta = self.theta
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0.0 < float(theta) <= 1.0:
            raise HeroError.field("theta", theta, "a number in (0, 1]: 1 uses the relevance as it is")
        if not isinstance(self.negate, bool):
            raise HeroError.field("negate", self.negate, "True (the authors' code) or False")
        value = self.max_matrix_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HeroError.field("max_matrix_tokens", value, "an int >= 0")

    def _pick(self, tiles: EncodedTiles, index: Tensor, total: int) -> Tensor:
        name = type(self).__name__
        x = unit(features_of(tiles, index, name, self.preset))  # (n, D)
        scores = tiles.token_relevance
        if scores is None:
            raise missing_relevance(name, self.preset)
        raw = scores.reshape(-1).index_select(0, index).float()  # (n,)
        weight = conditional_relevance(raw, theta=float(self.theta), negate=self.negate)  # (n,)
        gains = weight.square() * x.square().sum(-1)  # (n,) diag(L): w_i^2 for a unit row, 0 for a zero one
        if x.shape[0] <= self.max_matrix_tokens:
            kernel = _similarity(x).mul_(weight[:, None]).mul_(weight[None, :])  # (n, n) L
            return _greedy_map(lambda j: kernel.index_select(0, j)[0], gains, total)
        return _greedy_map(lambda j: weight * weight.index_select(0, j) * (x @ x.index_select(0, j)[0]), gains, total)


def missing_relevance(name: str, preset: str) -> HeroError:
    """The refusal of a preset conditioned on the instruction, planned on tiles without ``token_relevance``."""
    return HeroError.field(
        "tiles.token_relevance",
        None,
        f"a (V, N) float tensor of each token's CLIP cosine to the instruction: preset {preset!r} ({name}) weighs "
        "the tokens by it",
        "Plan through hero_adapters.HeroVLM with a text scorer that has score_tokens (the library's CLIP scorers) "
        "and a prompt with text, or build EncodedTiles with token_relevance=...",
    )


def _greedy_map(row: Callable[[Tensor], Tensor], gains: Tensor, count: int) -> Tensor:
    """(count,) int64 indices in the order greedy MAP inference of the DPP with kernel L picks them.

    ``row(j)`` is ``L[j]`` (n,) for a (1,) index tensor ``j``; ``gains`` (n,) is ``diag(L)``, consumed. Step i keeps
    ``j = argmax gains`` (the factor ``det(L_{S+j}) / det(L_S)``), then ``e = (L[j] - C[:i, j] C[:i]) / sqrt(gains[j])``
    becomes row i of the Cholesky factor ``C`` and ``gains -= e^2`` (Chen et al. 2018, Algorithm 1).

    When every remaining gain is at most ``_RANK_FLOOR`` times the largest diagonal entry (L's rank is spent: more
    tokens asked for than the features have dimensions, or the rest duplicate the chosen ones), every next token
    adds nothing to the determinant; the rest are then taken by ``diag(L)`` (their relevance weight), largest
    first, so the count stays exact. No host read: indices and the switch stay on the device.
    """
    n = gains.shape[0]
    fallback = gains.clone()  # diag(L), the order once the rank is spent
    floor = gains.max() * _RANK_FLOOR  # () on the device
    factor = gains.new_zeros(count, n)  # (count, n) C
    picks = torch.empty(count, dtype=torch.long, device=gains.device)
    for i in range(count):
        spent = gains.max() <= floor  # () bool
        j = torch.where(spent, fallback, gains).argmax().view(1)  # (1,)
        picks[i : i + 1] = j
        if i + 1 == count:
            break
        e = row(j)
        if i:
            done = factor[:i]  # (i, n)
            e = e - done.index_select(1, j)[:, 0] @ done
        e = torch.where(spent, 0.0, e / gains.index_select(0, j).clamp_min(_GAIN_FLOOR).sqrt())
        factor[i] = e
        gains.sub_(e.square())
        gains.index_fill_(0, j, float("-inf"))  # never picked again
        fallback.index_fill_(0, j, float("-inf"))
    return picks


def conditional_relevance(raw: Tensor, *, theta: float = 1.0, negate: bool = True) -> Tensor:
    """(n,) CDPruner's per-token weight from the raw cosines ``raw`` (n,): negated (``negate``), min-max normalised
    as the authors' code does, ``(r - min + 1e-6) / (max - min)``, then ``exp(theta / (2 (1 - theta)) r)`` when
    ``theta < 1``. Every weight is 1 when the cosines are all equal (no preference among the tokens)."""
    r = -raw if negate else raw
    low, high = r.min(), r.max()
    spread = high - low
    r = torch.where(spread > 0, (r - low + 1e-6) / spread.clamp_min(torch.finfo(r.dtype).tiny), torch.ones_like(r))
    if theta < 1.0:
        r = torch.exp(theta / (2.0 * (1.0 - theta)) * r)
    return r
