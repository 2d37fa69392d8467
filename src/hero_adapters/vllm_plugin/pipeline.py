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

from hero_core import EncodedTiles, HeroError, ImageCounts, PrunePlan, Pruner, TextScorer, to_device
from hero_core.allocators import tile_views

from .._features import add_merged
from .._scoring import token_relevance

__all__ = [
    "AnyresImage",
    "Planned",
    "assemble_vanilla",
    "cls_rows_from_qk",
    "cls_rows_from_qkv",
    "combine_head_parts",
    "plan_encoded",
    "plan_images",
    "unconditioned",
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
    *,
    features: Sequence[Tensor] | None = None,
    all_views: Callable[[int], Tensor] | None = None,
) -> list[PrunePlan]:
    """The plan of every image: tiles from the tower's outputs, relevance from one scorer call for the batch,
    then one ``plan_batch`` per keep ratio in the batch.

    Args:
        images: the batch's images.
        cls_tokens: per image (V, D) last-layer CLS states (before the post-layernorm).
        rows: per image (L, V, H, T) CLS rows of ``layers`` (CLS key first).
        layers: the 0-based encoder layers of ``rows``.
        pruner_for: the pruner at a keep ratio.
        scorer: the relevance scorer (None: no relevance).
        views: image index -> its local tiles (K, 3, h, w), RGB in [0, 1], for the scorer.
        features: per image (V, N, D) projected patch features, view-major (for presets that read token
            features; the slots the host unpads away are zeroed, as the transformers path leaves them).
        all_views: image index -> all its views (V, 3, h, w), RGB in [0, 1] (for ``cdpruner``'s token relevance).
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
    table = None
    if features is not None:  # zero where the host sends no row (its unpadding), as HeroVLM's token table has it
        table = [torch.where(t.valid_mask[..., None], f.to(t.device), 0) for t, f in zip(tiles, features, strict=True)]
    return plan_encoded(images, tiles, pruner_for, scorer, views, token_features=table, all_views=all_views)


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
    *,
    token_features: Sequence[Tensor] | None = None,
    all_views: Callable[[int], Tensor] | None = None,
) -> list[PrunePlan]:
    """The plan of every image from its encoder outputs: relevance from one scorer call for the batch (as
    ``HeroVLM._score`` computes it), then one ``plan_batch`` per keep ratio in the batch.

    Presets that read more than attention get it here, as ``HeroVLM`` gives it: ``token_features`` (V, N, D) per
    image for ``needs_features`` (divprune, dart, cdpruner, visionzip); for ``needs_token_relevance`` (cdpruner)
    each token's CLIP cosine to the query from the scorer's ``score_tokens`` over ``all_views`` (one call for the
    batch). An image without a query has no instruction to condition on: its token relevance is uniform (the
    DPP then weighs diversity alone), which ``unconditioned`` reports and the plugin records.

    Args:
        images: the batch's images.
        tiles: their encoder outputs.
        pruner_for: the pruner at a keep ratio.
        scorer: the relevance scorer (None: no relevance).
        local_views: image index -> its local tiles (K, 3, h, w) in ``tile_views`` order, RGB in [0, 1].
        token_features: per image (V, N, D), the features the LLM-side rows are made of.
        all_views: image index -> all its views (V, 3, h, w) in the tiles' view order, RGB in [0, 1].

    Raises:
        HeroError: a preset that needs features without ``token_features`` (from ``plan_batch``), or token
            relevance without a scorer that has ``score_tokens`` or without ``all_views``.
    """
    tiles = list(tiles)
    needs = [pruner_for(image.keep_ratio) for image in images]
    for i, pruner in enumerate(needs):
        if pruner.needs_features and token_features is not None:  # without them plan_batch names the preset
            tiles[i] = tiles[i].replace(token_features=token_features[i].to(tiles[i].device))
    missing = unconditioned(images, pruner_for)  # planned without a question: uniform relevance below
    asked = [i for i, p in enumerate(needs) if p.needs_token_relevance and not p.keeps_all() and not missing[i]]
    if asked:
        if all_views is None:
            raise HeroError.field("all_views", None, "every view of each image, for the token relevance")
        scored = token_relevance(
            scorer, needs[asked[0]], [all_views(i) for i in asked], [images[i].query for i in asked],
            [tiles[i] for i in asked],
        )  # fmt: skip
        for i, scores in zip(asked, scored, strict=True):
            tiles[i] = tiles[i].replace(token_relevance=scores)
    for i in (i for i, flag in enumerate(missing) if flag):  # no query: nothing to condition on
        uniform = torch.zeros(tiles[i].valid_mask.shape, dtype=torch.float32, device=tiles[i].device)
        tiles[i] = tiles[i].replace(token_relevance=uniform)
    relevance = _relevance(images, tiles, pruner_for, scorer, local_views)
    plans: list[PrunePlan | None] = [None] * len(images)
    for ratio in sorted({image.keep_ratio for image in images}):
        chosen = [i for i, image in enumerate(images) if image.keep_ratio == ratio]
        got = pruner_for(ratio).plan_batch([tiles[i] for i in chosen], [relevance[i] for i in chosen])
        for i, plan in zip(chosen, got, strict=True):
            plans[i] = plan
    return [plan for plan in plans if plan is not None]


def unconditioned(images: Sequence[Planned], pruner_for: Callable[[float], Pruner]) -> list[bool]:
    """Per image: planned by a preset conditioned on the instruction (cdpruner) without one (no query), so
    with uniform token relevance, i.e. diversity alone."""
    return [
        image.query is None
        and pruner_for(image.keep_ratio).needs_token_relevance
        and not pruner_for(image.keep_ratio).keeps_all()
        for image in images
    ]


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


def assemble_vanilla(
    image: AnyresImage,
    keep: Tensor,
    features: Tensor,
    newline: Tensor,
    pruner: Pruner,
    merge_into: Tensor | None = None,
) -> Tensor:
    """The rows the LLM receives for one image: the kept patch features and every newline, in the host's order.

    Args:
        image: the image (its layout and counts).
        keep: (V, N) bool keep mask.
        features: (V * N, D) projected patch features, view-major.
        newline: (D,) the model's ``image_newline``.
        pruner: the pruner its count was fixed with (the count contract is checked here).
        merge_into: (V, N) the plan's merges (VisionZip), applied to the host's rows as ``HeroVLM`` applies them.

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
    if merge_into is None:
        return table.index_select(0, torch.where(chosen < 0, features.shape[0], chosen))
    rows = table.index_select(0, torch.where(ids < 0, features.shape[0], ids))  # the host's unpruned rows
    return add_merged(rows, ids, merge_into)[sent]
