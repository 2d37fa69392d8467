"""The note when an image sends more than 1.1 x the keep ratio of its tokens, with the reason (issue 16, item 2).

Two causes, both in the report's counts: the budget counts all V x N view positions, padding included
(HERO_SPEC step 2: ``B = floor(R V N)``), so a padded image keeps a larger share of its patch tokens than R; and
LLaVA-NeXT's row newlines, which are never pruned. Every expected number below is worked out by hand.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.report import ImageReport, PruneReport
from hero_core import presets
from hero_core.testing import make_tiles


def _report(
    valid: list[int], grid: tuple[int, int], keep_ratio: float, newlines: int, index: int = 0, **counts: int
) -> ImageReport:
    """An image whose views have ``valid`` leading valid positions each (the thumbnail is view 0), planned by
    the ``hero`` preset; tokens in / out as a vanilla LLaVA-NeXT sends them (valid patches + newlines) unless
    ``counts`` say otherwise."""
    tiles = make_tiles(num_views=len(valid), grid=grid)
    positions = grid[0] * grid[1]
    mask = torch.arange(positions)[None, :] < torch.tensor(valid)[:, None]  # (V, N)
    tiles = tiles.replace(valid_mask=mask)
    plan = presets.hero(keep_ratio).plan(tiles, None)
    kept = int(plan.budgets.sum())
    return ImageReport(
        index=index,
        prompt=0,
        plan=plan,
        encoded=tiles,
        tokens_in=counts.get("tokens_in", sum(valid) + newlines),
        tokens_out=counts.get("tokens_out", kept + newlines),
        kept_patch_tokens=counts.get("kept", kept),
        newline_tokens=newlines,
    )


def test_padding_and_newlines_are_named_with_their_counts() -> None:
    # V = 5 views of N = 4 x 6 = 24 positions; valid: thumbnail 24, tiles 24, 6, 0, 0 -> 54 patch tokens sent
    # unpruned. B = floor(0.25 * 5 * 24) = 30 <= 54, so 30 are kept (56% of 54); 120 - 54 = 66 positions are
    # padding. 6 newlines: 60 tokens in, 36 out (60% > 1.1 x 0.25).
    image = _report([24, 24, 6, 0, 0], (4, 6), 0.25, newlines=6, index=2)
    assert image.budgets[0] >= 6 and sum(image.budgets) == 30 and image.budgets[3:] == [0, 0]
    assert (image.tokens_in, image.tokens_out) == (60, 36)
    assert image.ratio_note == (
        "image 2 sends 36 of its 60 image tokens (60%) at keep ratio 0.25: the budget counts all 5 x 24 = 120 view "
        "positions, 66 of them padding (views 3 and 4 have no valid position), so 30 of the 54 patch tokens the "
        "unpruned model sends are kept (56%); 6 of the 36 tokens sent are row newlines, which are never pruned."
    )
    assert image.to_dict()["ratio_note"] == image.ratio_note


def test_one_view_without_content_is_named_in_the_singular() -> None:
    # V = 3, N = 2 x 8 = 16; valid 16, 8, 0 -> 24 sent. B = floor(0.5 * 48) = 24 = every valid position (100%).
    image = _report([16, 8, 0], (2, 8), 0.5, newlines=0)
    assert image.ratio_note == (
        "image 0 sends 24 of its 24 image tokens (100%) at keep ratio 0.5: the budget counts all 3 x 16 = 48 view "
        "positions, 24 of them padding (view 2 has no valid position), so 24 of the 24 patch tokens the unpruned "
        "model sends are kept (100%)."
    )


def test_newlines_alone_when_the_patches_keep_the_ratio() -> None:
    # V = 3, N = 16, no padding: B = floor(0.25 * 48) = 12 of 48 patch tokens (exactly R); 12 newlines make it
    # 24 of 60 (40% > 27.5%).
    image = _report([16, 16, 16], (2, 8), 0.25, newlines=12)
    assert image.ratio_note == (
        "image 0 sends 24 of its 60 image tokens (40%) at keep ratio 0.25: 12 of the 24 tokens sent are row "
        "newlines, which are never pruned."
    )


def test_the_bound_is_more_than_ten_percent_relative() -> None:
    # keep ratio 0.5: 11 of 20 is exactly 1.1 x R (no note), 12 of 20 is above it.
    at = _report([16, 16, 16], (2, 8), 0.5, newlines=0, tokens_in=20, tokens_out=11, kept=11)
    assert at.ratio_note is None
    above = _report([16, 16, 16], (2, 8), 0.5, newlines=0, tokens_in=20, tokens_out=12, kept=12)
    budgets = above.budgets  # the thumbnail's quota floor(0.5 x 16) = 8, the tiles' 16 by importance
    assert budgets[0] == 8 and sum(budgets) == 24
    assert above.ratio_note == (
        f"image 0 sends 12 of its 20 image tokens (60%) at keep ratio 0.5: with budgets {budgets}, 12 of the 20 "
        "patch tokens the unpruned model sends are kept (60%)."
    )
    assert _report([16, 16, 16], (2, 8), 1.0, newlines=12).ratio_note is None  # R = 1 sends everything: 100%
    assert _report([16, 16, 16], (2, 8), 0.5, newlines=0).ratio_note is None  # 24 of 48: exactly R
    # keep ratio 0.7: 77 of 100 is exactly 1.1 x R, which floats put above it (11 * 0.7 * 100 = 769.9999999999999)
    assert _report([16, 16, 16], (2, 8), 0.7, newlines=0, tokens_in=100, tokens_out=77, kept=77).ratio_note is None
    assert _report([16, 16, 16], (2, 8), 0.7, newlines=0, tokens_in=100, tokens_out=78, kept=78).ratio_note


def test_the_batch_note_joins_the_images_that_have_one() -> None:
    first = _report([16, 16, 16], (2, 8), 0.25, newlines=12)
    quiet = _report([16, 16, 16], (2, 8), 0.5, newlines=0, index=1)
    third = _report([16, 8, 0], (2, 8), 0.5, newlines=0, index=2)
    report = PruneReport(images=[first, quiet, third])
    assert report.ratio_note == (
        "effective keep ratio above the requested one: Image 0 sends 24 of its 60 image tokens (40%) at keep ratio "
        "0.25: 12 of the 24 tokens sent are row newlines, which are never pruned. Image 2 sends 24 of its 24 image "
        "tokens (100%) at keep ratio 0.5: the budget counts all 3 x 16 = 48 view positions, 24 of them padding "
        "(view 2 has no valid position), so 24 of the 24 patch tokens the unpruned model sends are kept (100%)."
    )
    assert report.to_dict()["ratio_note"] == report.ratio_note
    assert PruneReport(images=[quiet]).ratio_note is None and PruneReport(images=[]).ratio_note is None


# ------------------------------------------------------------------------------- through HeroVLM, once per call
def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hero_adapters" and r.levelno == logging.INFO]


def test_a_4000_by_20_image_gets_one_note_per_wrapper(tiny: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The issue's case on the tiny LLaVA-NeXT (56-px views of 4 x 4 patches, N = 16): a 4000 x 20 image goes
    into a 1 x 2 grid (112 x 56 px), where it is under one patch high, so both tiles are padding; the unpruned
    model sends the thumbnail's 16 tokens and no newline (the unpadded map has no row). B = floor(0.2 x 3 x 16)
    = 9, all on the thumbnail: 9 of 16 sent (56%) at keep ratio 0.2."""
    wide = tiny.image(20, 4000)
    square = tiny.image(112, 112)  # 2 x 2 grid, no padding: 16 of 80 patches kept (20%) + 8 newlines: 24 of 88
    vlm = HeroVLM(tiny.model, tiny.pruner(0.2), processor=tiny.processor)
    inputs = tiny.inputs(["USER: <image> describe ASSISTANT:", "USER: <image> what ASSISTANT:"], [wide, square])
    with caplog.at_level(logging.INFO, logger="hero_adapters"), torch.no_grad():
        vlm.generate(**inputs, max_new_tokens=2)
        assert len(_warnings(caplog)) == 1  # one call, one line for both images
        vlm.generate(**inputs, max_new_tokens=2)
    images = vlm.last_report.images
    assert [(i.tokens_in, i.tokens_out, i.kept_patch_tokens, i.newline_tokens) for i in images] == [
        (16, 9, 9, 0),
        (88, 24, 16, 8),
    ]
    assert images[0].valid_tokens == [16, 0, 0] and images[0].budgets == [9, 0, 0]
    expected = (
        "effective keep ratio above the requested one: Image 0 sends 9 of its 16 image tokens (56%) at keep ratio "
        "0.2: the budget counts all 3 x 16 = 48 view positions, 32 of them padding (views 1 and 2 have no valid "
        "position), so 9 of the 16 patch tokens the unpruned model sends are kept (56%). Image 1 sends 24 of its 88 "
        "image tokens (27%) at keep ratio 0.2: 8 of the 24 tokens sent are row newlines, which are never pruned."
    )
    assert _warnings(caplog) == [expected]  # the same note again is not repeated by the same wrapper
    with caplog.at_level(logging.INFO, logger="hero_adapters"), torch.no_grad():
        HeroVLM(tiny.model, tiny.pruner(0.2), processor=tiny.processor).generate(**inputs, max_new_tokens=2)
    assert _warnings(caplog) == [expected, expected]  # another wrapper says it again


def test_no_warning_within_the_bound(tiny: Any, caplog: pytest.LogCaptureFixture) -> None:
    # 112 x 112 at keep ratio 0.5: B = floor(0.5 x 5 x 16) = 40 of 80 patches + 8 newlines = 48 of 88 (54.5% <= 55%)
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5), processor=tiny.processor)
    with caplog.at_level(logging.INFO, logger="hero_adapters"), torch.no_grad():
        vlm.generate(**tiny.inputs(["USER: <image> describe ASSISTANT:"], [tiny.image(112, 112)]), max_new_tokens=2)
    (image,) = vlm.last_report.images
    assert (image.tokens_in, image.tokens_out) == (88, 48)
    assert _warnings(caplog) == []
