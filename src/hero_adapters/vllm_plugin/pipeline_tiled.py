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

from hero_core import EncodedTiles, HeroError, ImageCounts, Pruner, TextScorer, to_device
from hero_core.allocators import tile_views

__all__ = [
    "TiledImage",
    "assemble_tiled",
    "cls_rows_from_qk",
    "merge_groups",
    "merge_rows",
    "plan_tiled",
    "token_grid",
]


def cls_rows_from_qk(query: Tensor, key: Tensor, heads: int, scale: float | None = None) -> Tensor:
    """(B, heads, T) float32 CLS attention rows from a layer's queries and keys, each (B, T, heads * d), as its
    attention kernel receives them (InternViT: after the optional qk-norm, which normalises the full width).

    The first token is the CLS: its query row ``softmax(q_cls . K^T * scale)`` over every key, the CLS key
    included (as ``cls_attention_hooks`` records it in the transformers path); ``scale`` defaults to ``d ** -0.5``.
    """
    if query.dim() != 3 or query.shape != key.shape or query.shape[-1] % heads:
        raise HeroError.field(
            "query / key", f"{tuple(query.shape)} / {tuple(key.shape)}", f"two (B, T, {heads} * head_dim) tensors"
        )
    batch, tokens, width = query.shape
    dim = width // heads
    q_cls = query[:, 0].float().view(batch, heads, dim)
    keys = key.float().view(batch, tokens, heads, dim)
    logits = torch.einsum("bhd,bthd->bht", q_cls, keys) * (dim**-0.5 if scale is None else scale)
    return logits.softmax(dim=-1)


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
) -> list[Tensor]:
    """The keep mask (V, N) of every image: tiles from the tower's outputs, relevance from one scorer call for
    the batch, then one ``plan_batch`` per keep ratio in the batch.

    Args:
        images: the batch's images.
        cls_tokens: per image (V, D) last-layer CLS states (after the tower's final norm, as the host reads them).
        rows: per image (L, V, H, N) CLS rows of ``layers``, merged per LLM token (``merge_rows``).
        layers: the 0-based encoder layers of ``rows``.
        pruner_for: the pruner at a keep ratio.
        scorer: the relevance scorer (None: no relevance).
        views: image index -> its views (V, 3, h, w), RGB in [0, 1] (the local tiles are scored).
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
    relevance = _relevance(images, tiles, pruner_for, scorer, views)
    keeps: list[Tensor | None] = [None] * len(images)
    for ratio in sorted({image.keep_ratio for image in images}):
        chosen = [i for i, image in enumerate(images) if image.keep_ratio == ratio]
        plans = pruner_for(ratio).plan_batch([tiles[i] for i in chosen], [relevance[i] for i in chosen])
        for i, plan in zip(chosen, plans, strict=True):
            keeps[i] = plan.keep
    return [keep for keep in keeps if keep is not None]


def _relevance(
    images: Sequence[TiledImage],
    tiles: Sequence[EncodedTiles],
    pruner_for: Callable[[float], Pruner],
    scorer: TextScorer | None,
    views: Callable[[int], Tensor],
) -> list[Tensor | None]:
    """(V,) relevance per image with a query whose pruner reads it (the thumbnail's entry 0), as
    ``HeroVLM._score`` computes it: the scorer's raw CLIP cosine of every local tile, one batched call."""
    asked = [
        i
        for i, image in enumerate(images)
        if scorer is not None
        and image.query is not None
        and image.counts.views > 1
        and pruner_for(image.keep_ratio).uses_relevance
        and not pruner_for(image.keep_ratio).keeps_all(tiles[i])
    ]
    out: list[Tensor | None] = [None] * len(images)
    if not asked or scorer is None:
        return out
    locals_ = {i: tile_views(tiles[i]) for i in asked}
    given = [views(i).index_select(0, to_device(locals_[i], views(i).device, torch.long)) for i in asked]
    texts = [str(images[i].query) for i in asked]
    batch = getattr(scorer, "score_batch", None)
    got = batch(given, texts) if callable(batch) else [scorer(v, t) for v, t in zip(given, texts, strict=True)]
    for i, score in zip(asked, got, strict=True):
        others = to_device(locals_[i], tiles[i].device, torch.long)
        name = f"CLIP scorer output for image {i} of the batch"
        expected = f"a finite float tensor of shape ({int(others.numel())},)"
        if not isinstance(score, Tensor) or score.shape != others.shape:
            raise HeroError.field(name, score, expected)
        scored = torch.zeros(tiles[i].num_views, dtype=torch.float32, device=tiles[i].device)
        out[i] = scored.index_copy(0, others, score.detach().to(tiles[i].device, torch.float32))
        tiles[i].check_later(name, out[i], expected)  # type: ignore[arg-type]
    return out


def assemble_tiled(image: TiledImage, keep: Tensor, features: Tensor, pruner: Pruner) -> Tensor:
    """The rows the LLM receives for one image: the kept tokens' features in view order (tiles, then the
    thumbnail), what the transformers InternVL adapter's ``assemble`` sends.

    Args:
        image: the image (its counts).
        keep: (V, N) bool keep mask.
        features: (V * N, D) projected token features, view-major.
        pruner: the pruner its count was fixed with (the count contract is checked here).

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
    return features.index_select(0, chosen)
