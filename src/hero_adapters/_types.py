"""What an adapter hands to ``HeroVLM``: one ``EncodedImage`` per image, one ``AssembledImage`` per plan."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from hero_core import EncodedTiles

__all__ = ["AssembledImage", "EncodedImage"]


@dataclass(frozen=True)
class EncodedImage:
    """One image after the host's own vision encoder (V views, N patch tokens per view, T = tokens_in).

    Attributes:
        tiles: the planner's input (CLS tokens, CLS attention, valid mask, grids).
        features: (T, D) the host's unpruned LLM-side sequence for this image, newlines included.
        source: (T,) int64: ``view * N + patch`` that each position of ``features`` comes from, -1 for a
            newline token. Learned by running the host's own packing on an index tensor.
        views: (V, 3, h, w) float32 RGB in [0, 1] (the host's normalisation undone), for text scorers.
        image_size: (height, width) of the original image.
    """

    tiles: EncodedTiles
    features: Tensor
    source: Tensor
    views: Tensor
    image_size: tuple[int, int]

    @property
    def tokens_in(self) -> int:
        """What the unpruned host sends to the LLM for this image (newlines included)."""
        return int(self.features.shape[0])


@dataclass(frozen=True)
class AssembledImage:
    """The kept tokens of one image, in the order the LLM receives them (k = tokens_out).

    Attributes:
        features: (k, D) kept patch features and newline tokens in the layout's order.
        offsets: (k,) int64 position of each token inside the layout's unpruned sequence
            (for ``positions="original"``).
        layout_length: length of the layout's unpruned sequence (vanilla: ``tokens_in``).
        kept_patch_tokens: patch tokens in ``features``.
        newline_tokens: newline tokens in ``features``.
    """

    features: Tensor
    offsets: Tensor
    layout_length: int
    kept_patch_tokens: int
    newline_tokens: int

    @property
    def tokens_out(self) -> int:
        """Tokens sent to the LLM for this image."""
        return self.kept_patch_tokens + self.newline_tokens
