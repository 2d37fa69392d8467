"""How many tokens an image sends, before any tensor work: the count contract shared by every path.

A serving engine fixes an image's placeholder count from the image's size alone, before the encoder runs
(vLLM: ``get_num_image_tokens``), and the rows the encoder step returns must be exactly that many. The
transformers path needs no such promise, but checks the same number after planning. Both call the functions
here, so there is one source for it:

- ``ImageCounts``: what a host's geometry says about one image (views V, tokens per view N, valid patch
  tokens, and tokens the layout sends besides patches, such as LLaVA-NeXT's row newlines);
- ``anyres_counts``: that geometry for LLaVA-NeXT's AnyRes tiling (best-fit grid, unpadding, one newline
  per unpadded row), written out in plain integers so it runs where the host's code is not importable;
- ``tiled_counts``: hosts whose views are all fully valid (InternVL-style tilers, after pixel shuffle);
- ``exact_total``: the paper preset's kept patch tokens, ``min(floor(R V N), valid)`` (HERO Eq. 4), the
  total ``exact_split`` apportions and ``Pruner.kept_count`` returns.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._arith import floor_ratio
from ._errors import HeroError, check_keep_ratio

__all__ = [
    "ImageCounts",
    "anyres_counts",
    "anyres_grid",
    "anyres_layout",
    "exact_total",
    "tiled_counts",
    "unpadded_size",
]


@dataclass(frozen=True)
class ImageCounts:
    """One image's token geometry, known from its size alone.

    Args:
        views: V, the thumbnail plus the local tiles (a single-view image: 1).
        tokens_per_view: N, the patch tokens of one view as the LLM receives them.
        valid: valid patch tokens over all views (``<= V * N``; LLaVA-NeXT's unpadding removes some).
        newlines: tokens the host's layout sends besides patch tokens and never prunes (LLaVA-NeXT: one
            per unpadded grid row); 0 for hosts without them.
    """

    views: int
    tokens_per_view: int
    valid: int
    newlines: int = 0

    def __post_init__(self) -> None:
        views = _count("views", self.views, 1)
        tokens = _count("tokens_per_view", self.tokens_per_view, 1)
        valid = _count("valid", self.valid, 0)
        _count("newlines", self.newlines, 0)
        if valid > views * tokens:
            raise HeroError.field(
                "valid", valid, f"at most views * tokens_per_view = {views * tokens}", "Check the host's geometry."
            )

    @property
    def tokens_in(self) -> int:
        """Tokens the unpruned host sends for this image: valid patch tokens plus newlines."""
        return self.valid + self.newlines

    def tokens_out(self, kept: int) -> int:
        """Tokens sent when ``kept`` patch tokens are kept: ``kept`` plus every newline (never pruned)."""
        return _count("kept", kept, 0) + self.newlines


def exact_total(keep_ratio: float, counts: ImageCounts) -> int:
    """Patch tokens an exact-total allocator keeps: ``min(floor(R * V * N), valid)`` (HERO Eq. 4).

    ``R`` is read as the decimal it prints as (``floor_ratio``), so ``0.29 * 100`` keeps 29.

    Raises:
        HeroError: on a keep ratio outside (0, 1] or counts that are not an ``ImageCounts``.
    """
    if not isinstance(counts, ImageCounts):
        raise HeroError.field("counts", counts, "an ImageCounts (views, tokens_per_view, valid, newlines)")
    ratio = check_keep_ratio(keep_ratio)
    return min(floor_ratio(ratio, counts.views * counts.tokens_per_view), counts.valid)


def tiled_counts(views: int, tokens_per_view: int) -> ImageCounts:
    """A host whose every view is fully valid and sends no extra tokens (InternVL: tiles plus thumbnail)."""
    views = _count("views", views, 1)
    tokens = _count("tokens_per_view", tokens_per_view, 1)
    return ImageCounts(views=views, tokens_per_view=tokens, valid=views * tokens)


def anyres_grid(image_size: Sequence[int], grid_pinpoints: Sequence[Sequence[int]], tile_size: int) -> tuple[int, int]:
    """(rows, cols) of local tiles LLaVA-NeXT's AnyRes picks for an image of ``image_size`` = (height, width).

    The pinpoint (height, width) with the largest effective resolution (the image scaled to fit inside it,
    capped at the image's own area), ties to the least waste, first in order on a full tie; then each side
    divided by ``tile_size`` (transformers' ``select_best_resolution`` and ``get_anyres_image_grid_shape``).
    """
    height, width = _size(image_size)
    tile = _count("tile_size", tile_size, 1)
    pinpoints = _pinpoints(grid_pinpoints)
    best = pinpoints[0]  # replaced by the first pinpoint at the latest: its waste beats infinity
    best_effective, best_waste = 0, float("inf")
    for pin_h, pin_w in pinpoints:
        scale = min(pin_w / width, pin_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = pin_w * pin_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (pin_h, pin_w), effective, waste
    return best[0] // tile, best[1] // tile


def unpadded_size(grid_size: Sequence[int], image_size: Sequence[int]) -> tuple[int, int]:
    """(rows, cols) of a stitched (rows, cols) feature grid after LLaVA-NeXT removes the padding the resize
    to the pinpoint added (transformers' ``unpad_image``): the short side keeps ``size - 2 * pad`` where
    ``pad = (size - round(original * scale, 7)) // 2``."""
    rows, cols = (_count("grid_size", side, 1) for side in _pair("grid_size", grid_size))
    height, width = _size(image_size)
    if width / height > cols / rows:
        new = int(round(height * (cols / width), 7))
        return rows - 2 * ((rows - new) // 2), cols
    new = int(round(width * (rows / height), 7))
    return rows, cols - 2 * ((cols - new) // 2)


def anyres_counts(
    image_size: Sequence[int], grid_pinpoints: Sequence[Sequence[int]], tile_size: int, patch_size: int
) -> ImageCounts:
    """LLaVA-NeXT's geometry for one image (the vanilla layout: the host's own sequence).

    Views: the thumbnail plus ``rows * cols`` tiles, each ``s * s`` patch tokens with ``s = tile_size //
    patch_size`` (the CLS dropped). Valid: the thumbnail's ``s * s`` plus the unpadded stitched grid. Newlines:
    one per unpadded row. ``counts.tokens_in`` is what the host sends (vLLM's ``get_num_image_tokens``).

    Args:
        image_size: the original (height, width) in pixels.
        grid_pinpoints: the config's ``image_grid_pinpoints``, (height, width) pairs.
        tile_size: the vision tower's input size (``vision_config.image_size``).
        patch_size: the vision tower's patch size.
    """
    tile = _count("tile_size", tile_size, 1)
    patch = _count("patch_size", patch_size, 1)
    side = tile // patch
    if side < 1:
        raise HeroError.field("patch_size", patch, f"at most tile_size = {tile}")
    rows, cols = anyres_grid(image_size, grid_pinpoints, tile)
    if rows < 1 or cols < 1:
        raise HeroError.field("grid_pinpoints", grid_pinpoints, f"pinpoints at least tile_size = {tile} on each side")
    kept_rows, kept_cols = unpadded_size((rows * side, cols * side), image_size)
    valid = side * side + kept_rows * kept_cols  # the thumbnail, then the unpadded stitched grid
    return ImageCounts(views=1 + rows * cols, tokens_per_view=side * side, valid=valid, newlines=kept_rows)


def anyres_layout(
    image_size: Sequence[int], grid_pinpoints: Sequence[Sequence[int]], tile_size: int, patch_size: int
) -> Tensor:
    """LLaVA-NeXT's unpruned image sequence as ids: (T,) int64 on the CPU, ``view * N + patch`` for a patch
    token and -1 for a newline, T = ``anyres_counts(...).tokens_in``.

    The thumbnail (view 0) in raster order, then the stitched grid of local tiles (raster order of tiles,
    views 1..K) after unpadding, row by row, each row followed by a newline (transformers'
    ``pack_image_features``). Pruning in the vanilla layout sends the newlines and the kept patch ids in this
    order; ``valid_mask`` of the views is where the ids point.
    """
    tile = _count("tile_size", tile_size, 1)
    side = tile // _count("patch_size", patch_size, 1)
    rows, cols = anyres_grid(image_size, grid_pinpoints, tile)
    height, width = rows * side, cols * side
    kept_rows, kept_cols = unpadded_size((height, width), image_size)
    top, left = (height - kept_rows) // 2, (width - kept_cols) // 2
    r = torch.arange(top, top + kept_rows)[:, None]
    c = torch.arange(left, left + kept_cols)[None, :]
    view = 1 + (r // side) * cols + c // side
    ids = view * side * side + (r % side) * side + c % side  # (kept_rows, kept_cols)
    grid = torch.cat([ids, torch.full((kept_rows, 1), -1)], dim=1).flatten()
    return torch.cat([torch.arange(side * side), grid])


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise HeroError.field(name, value, f"an int >= {minimum}")
    return int(value)


def _pair(name: str, value: Any) -> tuple[Any, Any]:
    try:
        first, second = value
    except (TypeError, ValueError):
        raise HeroError.field(name, value, "a (height, width) pair of ints") from None
    return first, second


def _size(image_size: Any) -> tuple[int, int]:
    height, width = _pair("image_size", image_size)
    return _count("image height", height, 1), _count("image width", width, 1)


def _pinpoints(grid_pinpoints: Any) -> list[tuple[int, int]]:
    if isinstance(grid_pinpoints, (str, bytes)) or not isinstance(grid_pinpoints, Sequence) or not grid_pinpoints:
        raise HeroError.field("grid_pinpoints", grid_pinpoints, "a non-empty list of (height, width) pairs")
    out = []
    for pin in grid_pinpoints:
        height, width = _pair("grid_pinpoints entry", pin)
        out.append((_count("grid_pinpoints height", height, 1), _count("grid_pinpoints width", width, 1)))
    return out
