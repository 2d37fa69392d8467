"""``make_tiles``: deterministic synthetic ``EncodedTiles`` (``hero_core.testing`` re-exports it; the hypothesis
strategies in ``_strategies`` build on it, so it lives apart from both and neither imports the other)."""

from __future__ import annotations

import torch

from ._errors import HeroError
from .tiles import EncodedTiles

__all__ = ["DEFAULT_LAYERS", "PADDINGS", "make_tiles"]

#: Layers every generated ``EncodedTiles`` records: those the shipped presets read.
DEFAULT_LAYERS: tuple[int, ...] = (5, 6, 7, 8, 21, 22)

PADDINGS = ("none", "rows", "cols", "random")


def make_tiles(
    *,
    num_views: int,
    grid: tuple[int, int],
    num_heads: int = 2,
    layers: tuple[int, ...] = DEFAULT_LAYERS,
    width: int = 8,
    thumbnail_index: int = 0,
    padding: str = "none",
    pad_amount: float = 0.25,
    separated: bool = False,
    token_features: bool = False,
    token_relevance: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> EncodedTiles:
    """Deterministic synthetic ``EncodedTiles`` (the building block of ``encoded_tiles``).

    Args:
        num_views: V, the tiles plus the thumbnail.
        grid: (rows, cols) of patches in one view.
        padding: how local tiles are padded: ``"none"``, ``"rows"`` / ``"cols"`` (LLaVA-NeXT-style bands
            at the end of each tile) or ``"random"`` (any positions). The thumbnail is never padded.
        pad_amount: fraction of each padded tile's rows, columns or positions that are padding.
        separated: if True, every view's attention takes distinct values spaced by a factor 2^(1/16)
            (identical over heads and layers), so rankings survive a cast to bfloat16 / float16.
        token_features: if True, also draw ``token_features`` (V, N, width) and make ``cls_tokens`` their mean
            over each view's tokens (the mean-token stand-in of hosts without a CLS token, ``query_source
            "mean-token"``); the other tensors are the same as without it.
        token_relevance: if True, also draw ``token_relevance`` (V, N), uniform in [-0.3, 0.3] like CLIP cosines
            (drawn after everything else, so the other tensors are the same as without it).
        seed: seeds a CPU generator; the same arguments give the same tensors.
    """
    generator = torch.Generator().manual_seed(seed)
    rows, cols = grid
    tokens = rows * cols
    valid = torch.ones(num_views, rows, cols, dtype=torch.bool)
    for view in range(num_views):
        if view == thumbnail_index or padding == "none":
            continue
        if padding == "rows":
            valid[view, rows - int(pad_amount * rows) :, :] = False
        elif padding == "cols":
            valid[view, :, cols - int(pad_amount * cols) :] = False
        elif padding == "random":
            valid[view] = torch.rand(rows, cols, generator=generator) >= pad_amount
        else:
            raise HeroError.field("padding", padding, f"one of {PADDINGS}")
    if separated:
        ranks = torch.stack([torch.randperm(tokens, generator=generator) for _ in range(num_views)])  # (V, N)
        values = torch.pow(2.0, -ranks.double() / 16.0) / tokens
        attention = values[None, :, None, :].expand(len(layers), num_views, num_heads, tokens).clone()
    else:
        logits = 3.0 * torch.randn(len(layers), num_views, num_heads, tokens + 1, generator=generator)
        attention = torch.softmax(logits.double(), dim=-1)[..., 1:]  # drop the CLS key
    tile_count = num_views - 1
    tile_grid = _tile_grid(tile_count)
    cls_tokens = torch.randn(num_views, width, generator=generator)
    features = None
    if token_features:  # drawn last, so the other tensors do not depend on it
        features = torch.randn(num_views, tokens, width, generator=generator)
        cls_tokens = features.mean(dim=1)
    relevance = None
    if token_relevance:
        relevance = (torch.rand(num_views, tokens, generator=generator) - 0.5) * 0.6
    return EncodedTiles(
        cls_tokens=cls_tokens.to(dtype=dtype, device=device),
        cls_attention=attention.to(dtype=dtype, device=device),
        attention_layers=tuple(layers),
        valid_mask=valid.flatten(1).to(device),
        thumbnail_index=thumbnail_index,
        grid=(rows, cols),
        tile_grid=tile_grid,
        query_source="mean-token" if token_features else "cls",
        token_features=None if features is None else features.to(dtype=dtype, device=device),
        token_relevance=None if relevance is None else relevance.to(dtype=dtype, device=device),
    )


def _tile_grid(count: int) -> tuple[int, int] | None:
    """The most square (rows, cols) arrangement of ``count`` tiles, or None for no tiles."""
    if count == 0:
        return None
    rows = max(r for r in range(1, int(count**0.5) + 1) if count % r == 0)
    return (rows, count // rows)
