"""Hypothesis strategies of ``hero_core.testing`` (imported on first use: hypothesis is the ``test`` extra)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import Tensor

from ._make_tiles import DEFAULT_LAYERS, PADDINGS, make_tiles
from .tiles import EncodedTiles

__all__ = ["encoded_tiles", "keep_ratios", "relevances"]


@st.composite
def encoded_tiles(
    draw: st.DrawFn,
    *,
    max_views: int = 9,
    max_side: int = 7,
    max_heads: int = 3,
    layers: tuple[int, ...] = DEFAULT_LAYERS,
    paddings: tuple[str, ...] = PADDINGS,
    separated: bool | None = None,
    token_features: bool | None = False,
    token_relevance: bool | None = False,
) -> EncodedTiles:
    """Hypothesis strategy for valid ``EncodedTiles``: random V, grid, heads, thumbnail index and padding.

    Args:
        max_views: largest V (at least 1: a thumbnail alone is a valid input).
        max_side: largest patch rows / cols of a view.
        layers: recorded encoder layers (defaults cover every shipped preset).
        paddings: padding styles to draw from (see ``make_tiles``).
        separated: force (True) or forbid (False) dtype-robust attention values; None draws both.
        token_features: add (True) or leave out (False, the default) per-token embeddings (``make_tiles``);
            None draws both.
        token_relevance: add (True) or leave out (False, the default) each token's CLIP-cosine-like relevance to
            an instruction (``make_tiles``); None draws both.
    """
    num_views = draw(st.integers(1, max_views))
    grid = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    return make_tiles(
        num_views=num_views,
        grid=grid,
        num_heads=draw(st.integers(1, max_heads)),
        layers=layers,
        thumbnail_index=draw(st.sampled_from([0, num_views - 1])),
        padding=draw(st.sampled_from(paddings)),
        pad_amount=draw(st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0])),
        separated=draw(st.booleans()) if separated is None else separated,
        token_features=draw(st.booleans()) if token_features is None else token_features,
        token_relevance=draw(st.booleans()) if token_relevance is None else token_relevance,
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def keep_ratios() -> st.SearchStrategy[float]:
    """Keep ratios in (0, 1], weighted towards the values people use and the edges (1e-3, 1)."""
    common = st.sampled_from([1.0, 0.5, 0.4, 0.25, 0.2, 0.1, 0.05, 1e-3])
    return st.one_of(common, st.floats(min_value=1e-4, max_value=1.0, exclude_min=True, allow_nan=False))


def relevances(num_views: int) -> st.SearchStrategy[Tensor]:
    """(V,) CLIP-cosine-like scores in [-1, 1], ties included."""
    value = st.one_of(st.floats(-1.0, 1.0, allow_nan=False), st.sampled_from([0.0, 0.25]))
    return st.lists(value, min_size=num_views, max_size=num_views).map(lambda xs: torch.tensor(xs, dtype=torch.float32))
