"""What happened to every image: budgets, kept tokens, newlines, counts against the unpruned model, timings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from torch import Tensor

from hero_core import EncodedTiles, PrunePlan

__all__ = ["RATIO_NOTE_FACTOR", "ImageReport", "PruneReport"]

_LOG = logging.getLogger("hero_adapters")

#: A note is due when an image's effective ratio (tokens sent / tokens the unpruned model sends) exceeds the
#: requested keep ratio by more than this factor (1.1: more than 10%, relative).
RATIO_NOTE_FACTOR = 1.1


def _floats(tensor: Tensor | None) -> list[float] | None:
    return None if tensor is None else [float(x) for x in tensor.detach().float().cpu().tolist()]


def _tile_scores(tensor: Tensor | None, thumbnail: int) -> list[float | None] | None:
    """Relevance for JSON: None at the thumbnail, which is not scored."""
    if tensor is None:
        return None
    values: list[float | None] = [float(x) for x in tensor.detach().float().cpu().tolist()]
    values[thumbnail] = None
    return values


def _empty_views(valid: list[int]) -> str:
    """`` (views 1 and 2 have no valid position)`` for the views without one; empty when every view has one."""
    empty = [str(view) for view, count in enumerate(valid) if count == 0]
    if not empty:
        return ""
    if len(empty) == 1:
        return f" (view {empty[0]} has no valid position)"
    return f" (views {', '.join(empty[:-1])} and {empty[-1]} have no valid position)"


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
        """Patch tokens kept per view (the thumbnail is view ``encoded.thumbnail_index``); the planner's host ints
        when it recorded them (no device read)."""
        known = getattr(self.encoded, "known_counts", None)
        counts = known(self.plan.budgets) if callable(known) else None
        return [int(b) for b in (counts if counts is not None else self.plan.budgets.tolist())]

    @property
    def valid_tokens(self) -> list[int]:
        """Non-padding patch positions per view (the most a view can keep); ``EncodedTiles`` read them already
        when the plan was made (no device read)."""
        capacity = getattr(self.encoded, "capacity", None)
        if isinstance(capacity, tuple):
            return [int(v) for v in capacity]
        return [int(v) for v in self.encoded.valid_mask.sum(-1).tolist()]

    @property
    def effective_ratio(self) -> float:
        """``tokens_out / tokens_in``: the share of the unpruned image sequence that reached the LLM."""
        return self.tokens_out / self.tokens_in if self.tokens_in else 1.0

    @property
    def ratio_note(self) -> str | None:
        """Why this image sends more than ``RATIO_NOTE_FACTOR`` x the keep ratio of its tokens, or None when it
        does not (the effective ratio is at most 1.1 x R).

        Two causes, both read off the report's counts: the plan keeps a larger share of the patch tokens than R
        (its budget counts all V x N view positions, padding included: ``B = floor(R V N)``, HERO_SPEC step 2,
        so padded views' share goes to the views with content), and the row newlines, which are never pruned.
        """
        keep_ratio = float(self.plan.keep_ratio)
        sent, unpruned, newlines = self.tokens_out, self.tokens_in, self.newline_tokens
        bound = Fraction(repr(RATIO_NOTE_FACTOR)) * Fraction(repr(keep_ratio))  # exact for the values as written
        if unpruned <= 0 or Fraction(sent, unpruned) <= bound:
            return None
        patches_in, kept = unpruned - newlines, self.kept_patch_tokens
        reasons = []
        if patches_in > 0 and Fraction(kept, patches_in) > bound:
            share = (
                f"{kept} of the {patches_in} patch tokens the unpruned model sends are kept ({kept / patches_in:.0%})"
            )
            views, positions, valid = self.views, self.encoded.num_tokens, self.valid_tokens
            padding = views * positions - sum(valid)
            if padding > 0:
                reasons.append(
                    f"the budget counts all {views} x {positions} = {views * positions} view positions, {padding} of "
                    f"them padding{_empty_views(valid)}, so {share}"
                )
            else:
                reasons.append(f"with budgets {self.budgets}, {share}")
        if newlines > 0:
            reasons.append(f"{newlines} of the {sent} tokens sent are row newlines, which are never pruned")
        return (
            f"image {self.index} sends {sent} of its {unpruned} image tokens ({sent / unpruned:.0%}) at keep ratio "
            f"{keep_ratio:g}: {'; '.join(reasons)}."
        )

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
            "ratio_note": self.ratio_note,
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

    @property
    def ratio_note(self) -> str | None:
        """The images' ``ratio_note``s in one line, or None when no image sends more than 1.1 x its keep ratio."""
        notes = [note for note in (image.ratio_note for image in self.images) if note is not None]
        if not notes:
            return None
        return "effective keep ratio above the requested one: " + " ".join(
            f"{note[0].upper()}{note[1:]}" for note in notes
        )

    def warn_ratio(self, said: set[str] | None = None) -> None:
        """Log ``ratio_note`` as a note (INFO) of the ``hero_adapters`` logger, unless it is None or already in
        ``said`` (then added to it): ``HeroVLM`` passes its own set, so a wrapper says each distinct note once.
        The command line shows notes unless ``-q``; in Python, read ``ratio_note`` or enable the logger's INFO."""
        note = self.ratio_note
        if note is None or (said is not None and note in said):
            return
        if said is not None:
            if len(said) >= 1024:  # bounded: a long evaluation meets many distinct notes
                said.clear()
            said.add(note)
        _LOG.info("%s", note)

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
            "ratio_note": self.ratio_note,
        }
