"""The plugin's encoder step without vLLM: CLS rows from a fused q/k/v projection, the tensor-parallel head
combination, and plan + assemble of a batch of LLaVA-NeXT images in the vanilla layout.

Everything here takes plain tensors, so the main test environment checks it against the transformers path
(eager attention, ``HeroVLM.plan``) without a vLLM install; ``llava_next.py`` feeds it from vLLM's modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from hero_core import EncodedTiles, HeroError, ImageCounts, Pruner, TextScorer, to_device
from hero_core.allocators import tile_views

__all__ = [
    "AnyresImage",
    "Planned",
    "assemble_vanilla",
    "cls_rows_from_qk",
    "cls_rows_from_qkv",
    "combine_head_parts",
    "plan_encoded",
    "plan_images",
]


def cls_rows_from_qkv(qkv: Tensor, heads: int, scale: float | None = None) -> Tensor:
    """(B, heads, T) float32 CLS attention rows from a fused projection output (B, T, 3 * heads * d): its query
    and key thirds through ``cls_rows_from_qk``. ``heads`` are the heads this rank holds (all of them without
    tensor parallelism)."""
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * heads):
        raise HeroError.field("qkv", qkv, f"a (B, T, 3 * {heads} * head_dim) fused projection output")
    query, key, _ = qkv.chunk(3, dim=-1)
    return cls_rows_from_qk(query, key, heads, scale)


def cls_rows_from_qk(query: Tensor, key: Tensor, heads: int, scale: float | None = None) -> Tensor:
    """(B, heads, T) float32 CLS attention rows from a layer's queries and keys, each (B, T, heads * d), as its
    attention kernel receives them (InternViT: after the optional qk-norm).

    The first token is the CLS: its query row ``softmax(q_cls . K^T * scale)`` over every key, the CLS key
    included (as ``cls_attention_hooks`` records it in the transformers path); ``scale`` defaults to ``d ** -0.5``.
    Only the CLS query and the keys are taken to float32.
    """
    if query.dim() != 3 or query.shape != key.shape or query.shape[-1] % heads:
        raise HeroError.field(
            "query / key", f"{tuple(query.shape)} / {tuple(key.shape)}", f"two (B, T, {heads} * head_dim) tensors"
        )
    batch, tokens, width = query.shape
    dim = width // heads
    q_cls = query[:, 0].float().reshape(batch, heads, dim)
    keys = key.float().reshape(batch, tokens, heads, dim)
    logits = torch.einsum("bhd,bthd->bht", q_cls, keys) * (dim**-0.5 if scale is None else scale)
    return logits.softmax(dim=-1)


def combine_head_parts(parts: Sequence[Tensor]) -> Tensor:
    """Per-rank rows (B, H / tp, T) -> (B, H, T): vLLM's column-parallel q/k/v gives rank r the heads
    ``[r H / tp, (r + 1) H / tp)``, so the ranks' parts in rank order are the heads in the model's order (what
    ``tensor_model_parallel_all_gather(rows, dim=1)`` returns on every rank, so every rank plans the same)."""
    return torch.cat(list(parts), dim=1)


@dataclass(frozen=True)
class AnyresImage:
    """One LLaVA-NeXT image as the plugin's encoder step sees it.

    Attributes:
        counts: its geometry (``hero_core.counts.anyres_counts``): what its placeholders were counted from.
        layout: (T,) ids of the unpruned sequence (``anyres_layout``): ``view * N + patch``, -1 = newline.
        tile_grid: (rows, cols) of local tiles.
        keep_ratio: the request's keep ratio.
        query: the request's question, or None.
    """

    counts: ImageCounts
    layout: Tensor
    tile_grid: tuple[int, int]
    keep_ratio: float
    query: str | None


def plan_images(
    images: Sequence[AnyresImage],
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
        cls_tokens: per image (V, D) last-layer CLS states (before the post-layernorm).
        rows: per image (L, V, H, T) CLS rows of ``layers`` (CLS key first).
        layers: the 0-based encoder layers of ``rows``.
        pruner_for: the pruner at a keep ratio.
        scorer: the relevance scorer (None: no relevance).
        views: image index -> its local tiles (K, 3, h, w), RGB in [0, 1], for the scorer.
    """
    tiles: list[EncodedTiles] = []
    for image, cls, attention in zip(images, cls_tokens, rows, strict=True):
        side = math.isqrt(image.counts.tokens_per_view)
        valid = torch.zeros(image.counts.views * image.counts.tokens_per_view + 1, dtype=torch.bool)
        valid.index_fill_(0, image.layout + 1, True)  # slot 0 takes the newlines (-1 + 1)
        tiles.append(
            EncodedTiles(
                cls_tokens=cls.float(),
                cls_attention=attention[..., 1:],
                attention_layers=layers,
                valid_mask=to_device(valid[1:].view(image.counts.views, -1), cls.device, torch.bool),
                thumbnail_index=0,
                grid=(side, side),
                tile_grid=image.tile_grid,
            )
        )
    return plan_encoded(images, tiles, pruner_for, scorer, views)


class Planned(Protocol):
    """What planning reads of an image besides its encoder outputs (``AnyresImage``, ``TiledImage``)."""

    @property
    def counts(self) -> ImageCounts: ...
    @property
    def keep_ratio(self) -> float: ...
    @property
    def query(self) -> str | None: ...


def plan_encoded(
    images: Sequence[Planned],
    tiles: Sequence[EncodedTiles],
    pruner_for: Callable[[float], Pruner],
    scorer: TextScorer | None,
    local_views: Callable[[int], Tensor],
) -> list[Tensor]:
    """The keep mask (V, N) of every image from its encoder outputs: relevance from one scorer call for the batch
    (as ``HeroVLM._score`` computes it), then one ``plan_batch`` per keep ratio in the batch.

    Args:
        images: the batch's images.
        tiles: their encoder outputs.
        pruner_for: the pruner at a keep ratio.
        scorer: the relevance scorer (None: no relevance).
        local_views: image index -> its local tiles (K, 3, h, w) in ``tile_views`` order, RGB in [0, 1].
    """
    relevance = _relevance(images, tiles, pruner_for, scorer, local_views)
    keeps: list[Tensor | None] = [None] * len(images)
    for ratio in sorted({image.keep_ratio for image in images}):
        chosen = [i for i, image in enumerate(images) if image.keep_ratio == ratio]
        plans = pruner_for(ratio).plan_batch([tiles[i] for i in chosen], [relevance[i] for i in chosen])
        for i, plan in zip(chosen, plans, strict=True):
            keeps[i] = plan.keep
    return [keep for keep in keeps if keep is not None]


def _relevance(
    images: Sequence[Planned],
    tiles: Sequence[EncodedTiles],
    pruner_for: Callable[[float], Pruner],
    scorer: TextScorer | None,
    local_views: Callable[[int], Tensor],
) -> list[Tensor | None]:
    """(V,) relevance per image with a query whose pruner reads it (the thumbnail's entry 0): the scorer's raw CLIP
    cosine of every local tile, one batched call."""
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
    given = [local_views(i) for i in asked]
    texts = [str(images[i].query) for i in asked]
    batch = getattr(scorer, "score_batch", None)
    got = batch(given, texts) if callable(batch) else [scorer(v, t) for v, t in zip(given, texts, strict=True)]
    for i, score in zip(asked, got, strict=True):
        others = to_device(tile_views(tiles[i]), tiles[i].device, torch.long)
        name = f"CLIP scorer output for image {i} of the batch"
        expected = f"a finite float tensor of shape ({int(others.numel())},)"
        if not isinstance(score, Tensor) or score.shape != others.shape:
            raise HeroError.field(name, score, expected)
        scored = torch.zeros(tiles[i].num_views, dtype=torch.float32, device=tiles[i].device)
        out[i] = scored.index_copy(0, others, score.detach().to(tiles[i].device, torch.float32))
        tiles[i].check_later(name, out[i], expected)  # type: ignore[arg-type]
    return out


def assemble_vanilla(image: AnyresImage, keep: Tensor, features: Tensor, newline: Tensor, pruner: Pruner) -> Tensor:
    """The rows the LLM receives for one image: the kept patch features and every newline, in the host's order.

    Args:
        image: the image (its layout and counts).
        keep: (V, N) bool keep mask.
        features: (V * N, D) projected patch features, view-major.
        newline: (D,) the model's ``image_newline``.
        pruner: the pruner its count was fixed with (the count contract is checked here).

    Raises:
        HeroError: when the rows differ from the count fixed in advance (never padded or cut).
    """
    ids = to_device(image.layout, features.device, torch.long)
    sent = (ids < 0) | keep.flatten().to(features.device)[ids.clamp(min=0)]
    chosen = ids[sent]
    kept = int((chosen >= 0).sum())
    pruner.check_kept(image.counts, kept, where="the vLLM plugin's encoder step")
    expected = image.counts.tokens_out(kept)
    if int(chosen.shape[0]) != expected:
        raise HeroError.field("rows for the image's placeholders", int(chosen.shape[0]), f"{expected} rows")
    table = torch.cat([features, newline.to(features.dtype)[None]], dim=0)  # row V * N is the newline
    return table.index_select(0, torch.where(chosen < 0, features.shape[0], chosen))
