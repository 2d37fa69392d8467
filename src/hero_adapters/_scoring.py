"""Relevance scoring for ``HeroVLM``: the text scorer called once per call over every image's tiles (or, for
pruners without tiles, every image's region crops), its answers checked; for pruners conditioned on each token's
relevance (``cdpruner``), the scorer's ``score_tokens`` over every view, resampled to the host's token grid."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from hero_core import HeroError, to_device
from hero_core.allocators import tile_views

from .adapter import EncodedImage

__all__ = [
    "check_token_scorer",
    "reads_query",
    "region_crops",
    "score_images",
    "token_relevance",
    "with_token_relevance",
]


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


def reads_query(pruner: Any) -> bool:
    """Whether ``pruner`` reads the question through a text scorer: the tiles' relevance (``uses_relevance``:
    hero) or each token's (``needs_token_relevance``: cdpruner)."""
    return bool(getattr(pruner, "uses_relevance", False) or getattr(pruner, "needs_token_relevance", False))


def check_token_scorer(pruner: Any, scorer: Any) -> None:
    """Refuse a pruner that reads ``token_relevance`` (``cdpruner``) without a scorer that has ``score_tokens``.

    Raises:
        HeroError: naming the preset and the scorers that work.
    """
    if not bool(getattr(pruner, "needs_token_relevance", False)) or callable(getattr(scorer, "score_tokens", None)):
        return
    raise HeroError.field(
        "text_scorer",
        None if scorer is None else _name(scorer),
        f"a text scorer with score_tokens: preset {_preset(pruner)!r} weighs each token by its CLIP cosine to the "
        "instruction",
        "Pass one of the library's CLIP scorers (hero_adapters.text_scorers.HFClipTextScorer or OpenClipTextScorer; "
        "CLI: --clip), or choose a preset that needs no text (divprune, dart).",
    )


def with_token_relevance(
    scorer: Any, pruner: Any, encoded: Sequence[EncodedImage], queries: Sequence[str | None]
) -> list[EncodedImage]:
    """Every image with ``tiles.token_relevance`` (V, N) from ``token_relevance`` over its views.

    Raises:
        HeroError: for an image without a query (naming the preset and what to pass), or a scorer answer of the
            wrong shape; NaN/inf are refused in the planner's one read.
    """
    tiles = [image.tiles for image in encoded]
    relevance = token_relevance(scorer, pruner, [image.views for image in encoded], queries, tiles)
    return [
        dataclasses.replace(image, tiles=image.tiles.replace(token_relevance=scores))
        for image, scores in zip(encoded, relevance, strict=True)
    ]


def token_relevance(
    scorer: Any, pruner: Any, views: Sequence[Tensor], queries: Sequence[str | None], tiles: Sequence[Any]
) -> list[Tensor]:
    """(V, N) float32 per image: the scorer's ``score_tokens`` (one call for every view of every image, each view
    squashed whole onto the CLIP input; (V, gh, gw) raw cosines on the CLIP tower's patch grid) resampled to the
    view's token grid ``tiles[i].grid`` (bilinear, antialiased; the identity where the grids agree: LLaVA-NeXT
    with its own CLIP-L/336). ``views[i]``: (V, 3, h, w) RGB in [0, 1], in the tiles' view order.

    Raises:
        HeroError: for an image without a query (naming the preset and what to pass), or a scorer answer of the
            wrong shape; NaN/inf are refused in the planner's one read.
    """
    check_token_scorer(pruner, scorer)
    for i, text in enumerate(queries):
        if text is None or not str(text).strip():  # blank: no instruction either (not the scorer's hint to pass None)
            raise HeroError.field(
                f"query for image {i}",
                text,
                f"the instruction: preset {_preset(pruner)!r} keeps the tokens relevant to it",
                "Put text in the prompt around the image, or pass query=...; or choose divprune / dart (no text).",
            )
    size = getattr(scorer, "image_size", None)  # the CLIP input: each whole view squashed onto it, so the token
    given = list(views)  # map covers the view (a centre crop would cut a non-square one)
    if isinstance(size, tuple) and len(size) == 2:
        given = [_squash(item, size) for item in given]
    scores = scorer.score_tokens(given, [str(text) for text in queries])
    if not isinstance(scores, (list, tuple)) or len(scores) != len(tiles):
        raise HeroError.field(
            f"text_scorer {_name(scorer)}.score_tokens output",
            scores,
            f"a list of {len(tiles)} tensors, one per image",
        )
    out = []
    for i, (item, score) in enumerate(zip(tiles, scores, strict=True)):
        count = item.num_views
        if (
            not isinstance(score, Tensor)
            or score.dim() != 3
            or score.shape[0] != count
            or not score.dtype.is_floating_point
        ):
            raise HeroError.field(
                f"text_scorer {_name(scorer)}.score_tokens output for image {i}",
                score,
                f"a float tensor ({count}, gh, gw): one raw CLIP cosine per patch of the tower's grid, per view",
            )
        grid = score[:, None].to(item.device, torch.float32)  # (V, 1, gh, gw)
        if tuple(grid.shape[-2:]) != tuple(item.grid):
            grid = F.interpolate(grid, size=item.grid, mode="bilinear", align_corners=False, antialias=True)
        out.append(grid.reshape(count, item.num_tokens))
    return out


def _squash(views: Tensor, size: tuple[int, int]) -> Tensor:
    """(V, 3, h, w) resized to ``size`` whole (bilinear, antialiased, clamped to [0, 1]); as is when it has it."""
    if tuple(views.shape[-2:]) == tuple(size):
        return views
    out = F.interpolate(views.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def _preset(pruner: Any) -> str:
    part = next(
        (p for p in (getattr(pruner, "selector", None), pruner) if getattr(p, "needs_token_relevance", False)), pruner
    )
    return str(getattr(part, "preset", type(part).__name__))


def _name(scorer: object) -> str:
    return str(getattr(scorer, "__name__", type(scorer).__name__))
