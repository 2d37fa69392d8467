"""The one vectorised top-k used by every selector."""

from __future__ import annotations

import torch
from torch import Tensor

from .._errors import HeroError

__all__ = ["keep_top", "reduce_heads"]


def keep_top(scores: Tensor, budgets: Tensor, valid: Tensor) -> Tensor:
    """Keep the ``budgets[v]`` highest-scoring valid positions of each view.

    Args:
        scores: (V, N) float; higher is kept first.
        budgets: (V,) int64, at most the valid count of each view.
        valid: (V, N) bool; invalid positions are never kept.

    Returns:
        (V, N) bool keep mask. Equal scores go to the lower position index (one stable sort, no loop).
    """
    views = scores.shape[0]
    if (
        not isinstance(budgets, torch.Tensor)
        or budgets.shape != (views,)
        or budgets.dtype.is_floating_point
        or budgets.dtype == torch.bool
    ):
        raise HeroError.field("budgets", budgets, f"an integer tensor of shape ({views},), one budget per view")
    masked = scores.float().masked_fill(~valid, float("-inf"))
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices  # (V, N)
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)  # (V, N) rank of each position
    return (rank < budgets.to(scores.device)[:, None]) & valid


def reduce_heads(attention: Tensor, how: str) -> Tensor:
    """Reduce (..., H, N) CLS attention over heads to (..., N), in float32.

    ``"mean"``: average over heads (paper). ``"softmax_mean"``: first re-apply a softmax over the N
    patch values of each head, then average (what the authors' code does to the probabilities).
    """
    attention = attention.float()
    if how == "softmax_mean":
        attention = torch.softmax(attention, dim=-1)
    return attention.mean(dim=-2)
