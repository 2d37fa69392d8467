"""What pruners read beyond attention, and merged rows: token features for pruners that ask for them
(``Pruner.needs_features``: DivPrune, DART, CDPruner, VisionZip), each token's relevance to its query
(``Pruner.needs_token_relevance``: CDPruner), and the rows of tokens merged into kept ones (VisionZip's plan).

An adapter may record ``EncodedTiles.token_features`` itself (the Qwen hosts do: the tower's last states per
merged token). Otherwise ``HeroVLM`` builds them from what every adapter already returns: the host's unpruned
LLM-side rows (``EncodedImage.features``) placed at their (view, token) slots by the adapter's ``source`` map.
Slots no row comes from (padding the host unpads away) stay zero; they are not valid, so no selector keeps
them. No host read: newline rows (source -1) go to a spare row that is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ._scoring import with_token_relevance
from .adapter import EncodedImage

__all__ = ["add_merged", "merge_planned", "merged_rows", "pruner_inputs", "token_table", "with_token_features"]


def pruner_inputs(
    pruner: Any, scorer: Any, encoded: Sequence[EncodedImage], queries: Sequence[str | None], timer: Any
) -> list[EncodedImage]:
    """``encoded`` with what ``pruner`` reads beyond attention: ``token_features`` when it ``needs_features``,
    ``token_relevance`` (the scorer's ``score_tokens``, timed as the "score" stage) when it
    ``needs_token_relevance``."""
    images = list(encoded)
    if bool(getattr(pruner, "needs_features", False)):
        images = [with_token_features(image) for image in images]
    if bool(getattr(pruner, "needs_token_relevance", False)):
        with timer.stage("score"):  # cdpruner: each token's CLIP cosine to its image's query
            images = with_token_relevance(scorer, pruner, images, queries)
    return images


def merge_planned(encoded: Sequence[EncodedImage], plans: Sequence[Any]) -> list[EncodedImage]:
    """Every image with its plan's merges applied (``merged_rows``); plans without ``merge_into`` merge nothing."""
    return [merged_rows(image, getattr(plan, "merge_into", None)) for image, plan in zip(encoded, plans, strict=True)]


def merged_rows(image: EncodedImage, merge_into: Tensor | None) -> EncodedImage:
    """``image`` with its rows merged by ``add_merged`` (unchanged without ``merge_into``). No host read."""
    if merge_into is None:
        return image
    return dataclasses.replace(image, features=add_merged(image.features, image.source, merge_into))


def add_merged(rows: Tensor, source: Tensor, merge_into: Tensor) -> Tensor:
    """The rows of merged tokens added into their targets' (VisionZip): each kept token's row ``f_t`` becomes
    ``f_t + mean(f_a)`` over the tokens ``a`` whose ``merge_into`` is ``t`` (unchanged when none is), every
    column alike (Qwen3-VL's DeepStack levels too).

    Args:
        rows: (T, D) the image's rows in the host's order.
        source: (T,) each row's flat slot ``view * N + position``; -1 (a newline) stays as it is.
        merge_into: (V, N) int64, ``PrunePlan.merge_into``.
    """
    source = source.to(rows.device)
    slots = merge_into.numel()
    into = merge_into.reshape(-1).to(rows.device)  # (V N,)
    target = torch.where(source >= 0, into.index_select(0, source.clamp(min=0)), torch.full_like(source, -1))
    merged = (target >= 0) & (target != source)  # (T,) rows merged into another token
    spare = torch.full_like(target, slots)  # rows that merge nowhere go to a spare slot
    bucket = torch.where(merged, target, spare)
    # float32 sums for half types, float64 kept; on CUDA float64 always: its index_add_ adds in no fixed order,
    # and float64 sums round to the same row in the rows' dtype whatever the order (run to run, and rank to rank
    # under tensor parallelism, where each rank merges for itself).
    acc = torch.float64 if rows.is_cuda else torch.promote_types(rows.dtype, torch.float32)
    wide = rows.to(acc)
    sums = rows.new_zeros((slots + 1, rows.shape[-1]), dtype=acc)
    sums.index_add_(0, bucket, wide)
    counts = rows.new_zeros(slots + 1, dtype=acc).index_add_(0, bucket, merged.to(acc))
    mean = sums[:slots] / counts[:slots].clamp(min=1.0)[:, None]  # (V N, D) per target slot
    own = torch.where(source >= 0, source, torch.full_like(source, slots))  # each row's own slot
    gain = torch.cat([mean, mean.new_zeros(1, mean.shape[-1])]).index_select(0, own)  # (T, D)
    return (wide + gain).to(rows.dtype)  # a row nothing merges into gains 0: unchanged in any dtype


def with_token_features(image: EncodedImage) -> EncodedImage:
    """``image`` with ``tiles.token_features`` (V, N, D) filled from its features and source map, unless the
    adapter recorded them already."""
    tiles = image.tiles
    if getattr(tiles, "token_features", None) is not None:
        return image
    table = token_table(image.features, image.source, tiles.num_views, tiles.num_tokens).to(tiles.device)
    return dataclasses.replace(image, tiles=tiles.replace(token_features=table))


def token_table(rows: Tensor, source: Tensor, views: int, tokens: int) -> Tensor:
    """(V, N, D): each row (T, D) at its slot ``source`` (T,) names; slots no row comes from stay zero, newline
    rows (-1) are dropped."""
    slots = views * tokens
    source = source.to(rows.device)
    index = torch.where(source >= 0, source, torch.full_like(source, slots))  # newlines -> the spare row
    table = rows.new_zeros((slots + 1, int(rows.shape[-1]))).index_copy_(0, index, rows)
    return table[:slots].reshape(views, tokens, -1)
