"""The plugin's encoder step for a tiled host (InternVL) without vLLM: CLS rows from a layer's (normed) queries and
keys, the 2 x 2 merge groups of a pixel shuffle, the CLS rows summed per merged LLM token, and plan + assemble of a
batch of images whose views are local tiles plus a thumbnail LAST (none for a single view).

Everything here takes plain tensors, so the main test environment checks it against the transformers InternVL
adapter (``HeroVLM.plan``, ``InternVLAdapter.assemble``) without a vLLM install; ``internvl.py`` feeds it from
vLLM's ``InternS1`` modules. It mirrors ``hosts/internvl.py``: planning counts the LLM tokens (every view fully
valid, N = tokens per view after the merge), each token's CLS attention is the sum over the patches it merges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hero_core import EncodedTiles, HeroError, ImageCounts, PrunePlan, Pruner, TextScorer, to_device
from hero_core.allocators import tile_views

from .._features import add_merged
from .pipeline import plan_encoded

__all__ = [
    "TiledImage",
    "assemble_tiled",
    "merge_groups",
    "merge_rows",
    "plan_tiled",
    "token_grid",
]


def merge_groups(patch_grid: tuple[int, int], shuffle: Callable[[Tensor], Tensor]) -> Tensor:
    """(N, r) int64: the patches each LLM token of a view merges (r = 4 for a 2 x 2 shuffle), learned by running
    the host's own ``shuffle`` ((1, rows, cols, 1) -> (1, rows', cols', r)) on an index map of the CLS-free patches.

    Raises:
        HeroError: when the shuffle does not put every patch in exactly one token.
    """
    rows, cols = patch_grid
    index = torch.arange(rows * cols, dtype=torch.float64).view(1, rows, cols, 1)
    shuffled = shuffle(index)
    groups = shuffled.reshape(-1, shuffled.shape[-1]).round().long()
    if sorted(groups.flatten().tolist()) != list(range(rows * cols)):
        raise HeroError.field("pixel_shuffle", "index map", "every patch in exactly one LLM token")
    return groups


def merge_rows(rows: Tensor, groups: Tensor) -> Tensor:
    """(L, B, H, 1 + P) CLS rows (CLS key first) -> (L, B, H, N): the CLS key's column dropped and each LLM
    token's patches summed (``groups`` (N, r) from ``merge_groups``)."""
    return rows[..., 1:][..., groups.to(rows.device)].sum(-1)


def token_grid(tokens: int) -> tuple[int, int]:
    """(rows, cols) of a view's LLM tokens: square when it can be, else one row (as the transformers adapter)."""
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else (1, tokens)


@dataclass(frozen=True)
class TiledImage:
    """One InternVL image as the plugin's encoder step sees it.

    Attributes:
        counts: its geometry (``hero_core.counts.tiled_counts(views, N)``): what its placeholders were counted from.
        tile_grid: (rows, cols) of local tiles, or None (a single view, or unknown).
        keep_ratio: the request's keep ratio.
        query: the request's question, or None.
    """

    counts: ImageCounts
    tile_grid: tuple[int, int] | None
    keep_ratio: float
    query: str | None

    @property
    def thumbnail_index(self) -> int:
        """The thumbnail is the LAST view; a single view plays the thumbnail."""
        return self.counts.views - 1 if self.counts.views > 1 else 0


def plan_tiled(
    images: Sequence[TiledImage],
    cls_tokens: Sequence[Tensor],
    rows: Sequence[Tensor],
    layers: tuple[int, ...],
    pruner_for: Callable[[float], Pruner],
    scorer: TextScorer | None,
    views: Callable[[int], Tensor],
    *,
    features: Sequence[Tensor] | None = None,
) -> list[PrunePlan]:
    """The plan of every image: tiles from the tower's outputs, relevance from one scorer call for the batch,
    then one ``plan_batch`` per keep ratio in the batch.

    Args:
        images: the batch's images.
        cls_tokens: per image (V, D) last-layer CLS states (after the tower's final norm, as the host reads them).
        rows: per image (L, V, H, N) CLS rows of ``layers``, merged per LLM token (``merge_rows``).
        layers: the 0-based encoder layers of ``rows``.
        pruner_for: the pruner at a keep ratio.
        scorer: the relevance scorer (None: no relevance).
        views: image index -> its views (V, 3, h, w), RGB in [0, 1] (the local tiles are scored; every view for
            ``cdpruner``'s token relevance).
        features: per image (V, N, D) projected token features (for presets that read token features).
    """
    tiles: list[EncodedTiles] = []
    for image, cls, attention in zip(images, cls_tokens, rows, strict=True):
        counts = image.counts
        tiles.append(
            EncodedTiles(
                cls_tokens=cls.float(),
                cls_attention=attention,
                attention_layers=layers,
                valid_mask=torch.ones(counts.views, counts.tokens_per_view, dtype=torch.bool, device=cls.device),
                thumbnail_index=image.thumbnail_index,
                grid=token_grid(counts.tokens_per_view),
                tile_grid=image.tile_grid,
            )
        )

    def local_views(i: int) -> Tensor:
        all_views = views(i)
        return all_views.index_select(0, to_device(tile_views(tiles[i]), all_views.device, torch.long))

    return plan_encoded(images, tiles, pruner_for, scorer, local_views, token_features=features, all_views=views)


def assemble_tiled(
    image: TiledImage, keep: Tensor, features: Tensor, pruner: Pruner, merge_into: Tensor | None = None
) -> Tensor:
    """The rows the LLM receives for one image: the kept tokens' features in view order (tiles, then the
    thumbnail), what the transformers InternVL adapter's ``assemble`` sends.

    Args:
        image: the image (its counts).
        keep: (V, N) bool keep mask.
        features: (V * N, D) projected token features, view-major.
        pruner: the pruner its count was fixed with (the count contract is checked here).
        merge_into: (V, N) the plan's merges (VisionZip), applied as ``HeroVLM`` applies them.

    Raises:
        HeroError: when the rows differ from the count fixed in advance (never padded or cut).
    """
    counts = image.counts
    if tuple(keep.shape) != (counts.views, counts.tokens_per_view) or features.shape[0] != counts.tokens_in:
        raise HeroError.field(
            "keep / features",
            f"{tuple(keep.shape)} / {tuple(features.shape)}",
            f"({counts.views}, {counts.tokens_per_view}) / ({counts.tokens_in}, D)",
        )
    chosen = keep.flatten().to(features.device).nonzero().squeeze(1)
    pruner.check_kept(counts, int(chosen.shape[0]), where="the vLLM plugin's encoder step")
    if merge_into is not None:
        features = add_merged(features, torch.arange(counts.tokens_in, device=features.device), merge_into)
    return features.index_select(0, chosen)
