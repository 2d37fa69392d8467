"""Relevance scoring for ``HeroVLM``: the text scorer called once per call over every image's tiles (or, for
pruners without tiles, every image's region crops), its answers checked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from hero_core import HeroError, to_device
from hero_core.allocators import tile_views

from .adapter import EncodedImage

__all__ = ["region_crops", "score_images"]


def score_images(
    scorer: Any, pruner: Any, encoded: Sequence[EncodedImage], queries: Sequence[str | None]
) -> list[Tensor | None]:
    """Relevance per image with a query (None without), checked: (V,) the scorer's raw CLIP cosine of every LOCAL
    TILE (the thumbnail's entry 0), or for a pruner with ``regions`` (``presets.hero_native``, hosts without
    tiles) (R,) one cosine per region crop of the image's one view.

    Only the tiles are scored: HERO's Eq. 2 ranks tiles, and no allocator reads the thumbnail's score, so the
    CLIP image tower runs over K views, not V. A scorer with ``score_batch`` (the library's) is called ONCE
    for the whole call, every image's tiles together, each distinct query embedded once; a plain
    ``(views, text) -> (K,)`` function is called image by image.
    """
    regions = getattr(pruner, "regions", None)
    if callable(regions):  # a pruner without tiles (presets.hero_native): crops of the one view, per region
        asked, views = [], []
        for i, (image, text) in enumerate(zip(encoded, queries, strict=True)):
            if text is not None:
                crops = region_crops(image, regions(image.tiles))
                asked.append((i, torch.arange(int(crops.shape[0]), device=image.tiles.device)))
                views.append(crops)
    else:
        asked = [
            (i, to_device(tile_views(image.tiles), image.tiles.device, torch.long))  # one upload per image
            for i, (image, text) in enumerate(zip(encoded, queries, strict=True))
            if text is not None and image.tiles.num_views > 1
        ]
        views = [encoded[i].views.index_select(0, others.to(encoded[i].views.device)) for i, others in asked]
    texts = [str(queries[i]) for i, _ in asked]
    batch = getattr(scorer, "score_batch", None)
    if callable(batch):
        scores = batch(views, texts)
        if not isinstance(scores, (list, tuple)) or len(scores) != len(asked):
            raise HeroError.field(
                f"text_scorer {_name(scorer)}.score_batch output",
                type(scores).__name__,
                f"a list of {len(asked)} tensors, one per image given",
            )
    else:
        scores = [scorer(item, text) for item, text in zip(views, texts, strict=True)]
    scored: dict[int, Tensor] = {}
    for (i, others), score in zip(asked, scores, strict=True):
        count, tiles = int(others.numel()), encoded[i].tiles
        name = f"text_scorer {_name(scorer)} output for image {i}"
        expected = f"a finite float tensor of shape ({count},): one raw CLIP cosine per view it was given"
        fix = "Fix the scorer; it receives views (K, 3, h, w) RGB in [0, 1] (tiles or region crops) and the query."
        if not isinstance(score, Tensor) or score.shape != (count,) or not score.dtype.is_floating_point:
            raise HeroError.field(name, score, expected, fix)
        zeros = torch.zeros(len(others) if callable(regions) else tiles.num_views, device=tiles.device)
        scored[i] = zeros.index_copy(0, others, score.detach().to(tiles.device, torch.float32))
        # NaN/inf are refused in the planner's one read of the batch (no host sync per image here)
        tiles.check_later(name, scored[i], expected, fix)
    return [
        None
        if text is None
        else scored.get(i, torch.zeros(image.tiles.num_views, dtype=torch.float32, device=image.tiles.device))
        for i, (image, text) in enumerate(zip(encoded, queries, strict=True))
    ]


def region_crops(image: EncodedImage, boxes: Sequence[tuple[int, int, int, int]]) -> Tensor:
    """(R, 3, h, w) crops of an image's one view at ``boxes`` ((row0, col0, row1, col1) half-open, in units of the
    view's token grid), each resized (bilinear, antialiased) to the largest crop's size, for a text scorer."""
    view = image.views[0:1]  # (1, 3, H, W)
    rows, cols = image.tiles.grid
    height, width = int(view.shape[-2]), int(view.shape[-1])
    pixel_boxes = [
        (
            r0 * height // rows,
            c0 * width // cols,
            max(r1 * height // rows, r0 * height // rows + 1),
            max(c1 * width // cols, c0 * width // cols + 1),
        )
        for r0, c0, r1, c1 in boxes
    ]
    size = (max(b[2] - b[0] for b in pixel_boxes), max(b[3] - b[1] for b in pixel_boxes))
    crops = [
        torch.nn.functional.interpolate(
            view[..., y0:y1, x0:x1], size=size, mode="bilinear", antialias=True, align_corners=False
        )
        for y0, x0, y1, x1 in pixel_boxes
    ]
    return torch.cat(crops, dim=0).clamp_(0.0, 1.0)


def _name(scorer: object) -> str:
    return str(getattr(scorer, "__name__", type(scorer).__name__))
