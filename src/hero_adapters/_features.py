"""Token features for pruners that ask for them (``Pruner.needs_features``: DivPrune, DART, ...).

An adapter may record ``EncodedTiles.token_features`` itself (the Qwen hosts do: the tower's last states per
merged token). Otherwise ``HeroVLM`` builds them from what every adapter already returns: the host's unpruned
LLM-side rows (``EncodedImage.features``) placed at their (view, token) slots by the adapter's ``source`` map.
Slots no row comes from (padding the host unpads away) stay zero; they are not valid, so no selector keeps
them. No host read: newline rows (source -1) go to a spare row that is dropped.
"""

from __future__ import annotations

import dataclasses

import torch

from .adapter import EncodedImage

__all__ = ["with_token_features"]


def with_token_features(image: EncodedImage) -> EncodedImage:
    """``image`` with ``tiles.token_features`` (V, N, D) filled from its features and source map, unless the
    adapter recorded them already."""
    tiles = image.tiles
    if getattr(tiles, "token_features", None) is not None:
        return image
    views, tokens = tiles.num_views, tiles.num_tokens
    features = image.features
    width = int(features.shape[-1])
    slots = views * tokens
    source = image.source.to(features.device)
    index = torch.where(source >= 0, source, torch.full_like(source, slots))  # newlines -> the spare row
    table = features.new_zeros((slots + 1, width)).index_copy_(0, index, features)
    token_features = table[:slots].reshape(views, tokens, width).to(tiles.device)
    return dataclasses.replace(image, tiles=tiles.replace(token_features=token_features))
