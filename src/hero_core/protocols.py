"""The four seams of the library (ARCHITECTURE.md, "Public contract").

Every ``__call__`` takes positional-only parameters so that a plain function or a lambda fits
wherever a class does. Shapes use one alphabet: V views, N patch tokens per view, H heads,
L recorded layers, D width.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["BudgetAllocator", "TextScorer", "TileEncoderOutputs", "TokenSelector"]


@runtime_checkable
class TileEncoderOutputs(Protocol):
    """What the vision encoder tells the planner about the views of ONE image.

    Attributes:
        cls_tokens: (V, D) float. Last-layer CLS embedding of every view, before any post-norm.
        cls_attention: (L, V, H, N) float. Per-head softmax probability of the CLS query on each
            patch key (the softmax ran over all N + 1 keys), for the layers in ``attention_layers``.
        attention_layers: the 0-based encoder layer of each entry along L.
        valid_mask: (V, N) bool. True where the position holds image content (not padding).
        thumbnail_index: which view is the global thumbnail (LLaVA-NeXT: 0, InternVL: V - 1).
        grid: (rows, cols) of patch tokens in one view; rows * cols == N.
    """

    @property
    def cls_tokens(self) -> Tensor: ...

    @property
    def cls_attention(self) -> Tensor: ...

    @property
    def attention_layers(self) -> tuple[int, ...]: ...

    @property
    def valid_mask(self) -> Tensor: ...

    @property
    def thumbnail_index(self) -> int: ...

    @property
    def grid(self) -> tuple[int, int]: ...


class TextScorer(Protocol):
    """Relevance of every view to the instruction (HERO Eq. 2's raw CLIP score).

    ``views`` is (V, 3, h, w) RGB in [0, 1]; the scorer does its own resizing and normalisation.
    Returns (V,) float: the cosine between each view's image embedding and the text embedding,
    NOT multiplied by CLIP's logit scale.
    """

    def __call__(self, views: Tensor, text: str, /) -> Tensor: ...


class BudgetAllocator(Protocol):
    """Splits the token budget of one image over its views.

    Returns (V,) int64 with ``0 <= budgets[v] <= valid_mask[v].sum()``. ``uses_relevance`` tells the
    adapter whether computing a text relevance is worth it (it is skipped when False).
    """

    @property
    def uses_relevance(self) -> bool: ...

    def __call__(self, tiles: TileEncoderOutputs, relevance: Tensor | None, keep_ratio: float, /) -> Tensor: ...


class TokenSelector(Protocol):
    """Chooses which patch tokens of each view to keep, given the per-view budgets.

    Returns a (V, N) bool keep mask with exactly ``budgets[v]`` True entries in row v, all on valid
    positions. ``layers`` names the encoder layers whose CLS attention it reads, so adapters hook
    only those.
    """

    @property
    def layers(self) -> tuple[int, ...]: ...

    def __call__(self, tiles: TileEncoderOutputs, budgets: Tensor, /) -> Tensor: ...
