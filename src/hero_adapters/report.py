"""What happened to every image: budgets, kept tokens, newlines, counts against the unpruned model, timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from hero_core import EncodedTiles, PrunePlan

__all__ = ["ImageReport", "PruneReport"]


def _floats(tensor: Tensor | None) -> list[float] | None:
    return None if tensor is None else [float(x) for x in tensor.detach().float().cpu().tolist()]


def _tile_scores(tensor: Tensor | None, thumbnail: int) -> list[float | None] | None:
    """Relevance for JSON: None at the thumbnail, which is not scored."""
    if tensor is None:
        return None
    values: list[float | None] = [float(x) for x in tensor.detach().float().cpu().tolist()]
    values[thumbnail] = None
    return values


@dataclass(frozen=True)
class ImageReport:
    """One image of the batch (V views: the thumbnail and K local tiles).

    Attributes:
        index: position of the image in ``pixel_values``.
        prompt: row of ``input_ids`` whose placeholders it filled (None when no prompt was given).
        plan: the pruning decision (keep mask (V, N), budgets (V,), importance ...).
        encoded: the encoder outputs the plan was made from (``TileEncoderOutputs``).
        tokens_in: tokens the unpruned host sends to the LLM for this image (newlines included).
        tokens_out: tokens sent after pruning (kept patch tokens + newline tokens).
        kept_patch_tokens: patch tokens sent (the plan's total budget).
        newline_tokens: newline tokens sent (never pruned, not counted in the keep ratio).
        layout: ``"vanilla"`` or ``"reference"``.
        query: the text the views were scored against, or None.
        relevance: (V,) the text scorer's raw cosines of the local tiles (the thumbnail is not scored; its
            entry is 0, and None in ``to_dict``), or None when no scorer ran.
        view_boxes: where each view lies on the original image, as (x0, y0, x1, y1) fractions of its width and
            height (tiles of a padded canvas reach outside [0, 1]), or None where the host's inputs do not tell.
    """

    index: int
    prompt: int | None
    plan: PrunePlan
    encoded: EncodedTiles
    tokens_in: int
    tokens_out: int
    kept_patch_tokens: int
    newline_tokens: int
    layout: str = "vanilla"
    query: str | None = None
    relevance: Tensor | None = None
    view_boxes: tuple[tuple[float, float, float, float], ...] | None = None

    @property
    def views(self) -> int:
        """V: local tiles plus the thumbnail."""
        return self.encoded.num_views

    @property
    def budgets(self) -> list[int]:
        """Patch tokens kept per view (the thumbnail is view ``encoded.thumbnail_index``)."""
        return [int(b) for b in self.plan.budgets.tolist()]

    @property
    def valid_tokens(self) -> list[int]:
        """Non-padding patch positions per view (the most a view can keep)."""
        return [int(v) for v in self.encoded.valid_mask.sum(-1).tolist()]

    @property
    def effective_ratio(self) -> float:
        """``tokens_out / tokens_in``: the share of the unpruned image sequence that reached the LLM."""
        return self.tokens_out / self.tokens_in if self.tokens_in else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors but short per-view lists)."""
        return {
            "index": self.index,
            "prompt": self.prompt,
            "views": self.views,
            "tile_grid": list(self.encoded.tile_grid) if self.encoded.tile_grid else None,
            "query_source": self.encoded.query_source,
            "valid_tokens": self.valid_tokens,
            "budgets": self.budgets,
            "keep_ratio": self.plan.keep_ratio,
            "kept_patch_tokens": self.kept_patch_tokens,
            "newline_tokens": self.newline_tokens,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "effective_ratio": self.effective_ratio,
            "layout": self.layout,
            "query": self.query,
            "importance": _floats(self.plan.importance),
            "relevance": _tile_scores(self.relevance, self.encoded.thumbnail_index),
            "thumbnail_index": self.encoded.thumbnail_index,
            "view_boxes": [list(box) for box in self.view_boxes] if self.view_boxes is not None else None,
        }


@dataclass(frozen=True)
class PruneReport:
    """Every image of one call, in the order of ``pixel_values``, and the time spent per stage.

    Attributes:
        images: one ``ImageReport`` per image.
        timings: seconds per stage: ``encode``, ``score``, ``plan``, ``assemble`` and, for ``generate`` /
            ``forward``, ``generate`` / ``forward`` (the host call).
        positions: ``"contiguous"`` or ``"original"``.
    """

    images: list[ImageReport]
    timings: dict[str, float] = field(default_factory=dict)
    positions: str = "contiguous"

    @property
    def tokens_in(self) -> int:
        """Image tokens the unpruned host would have sent, all images."""
        return sum(image.tokens_in for image in self.images)

    @property
    def tokens_out(self) -> int:
        """Image tokens sent, all images."""
        return sum(image.tokens_out for image in self.images)

    @property
    def kept_patch_tokens(self) -> int:
        return sum(image.kept_patch_tokens for image in self.images)

    @property
    def newline_tokens(self) -> int:
        return sum(image.newline_tokens for image in self.images)

    @property
    def effective_ratio(self) -> float:
        """``tokens_out / tokens_in`` over the batch (1.0 when there were no images)."""
        return self.tokens_out / self.tokens_in if self.tokens_in else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: totals, timings and one entry per image."""
        return {
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "kept_patch_tokens": self.kept_patch_tokens,
            "newline_tokens": self.newline_tokens,
            "effective_ratio": self.effective_ratio,
            "positions": self.positions,
            "timings": dict(self.timings),
            "images": [image.to_dict() for image in self.images],
        }
