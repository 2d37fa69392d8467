"""The count contract (issue 18, item 1): ``hero_core.counts`` and ``Pruner.count_known`` / ``kept_count`` /
``check_kept``.

The number of patch tokens an exact-total preset keeps must follow from the image's geometry alone, and the
planner must produce exactly that number; presets whose count depends on content must say so.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hero_core import HeroError, ImageCounts, Pruner, UniformAllocator, presets
from hero_core.counts import anyres_counts, anyres_grid, exact_total, tiled_counts, unpadded_size
from hero_core.testing import encoded_tiles

from .registry import ALLOCATORS, PRESETS, tiles_for

LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _counts_of(tiles: Any) -> ImageCounts:
    return ImageCounts(tiles.num_views, tiles.num_tokens, int(tiles.valid_mask.sum()))


@pytest.mark.parametrize("row", ALLOCATORS, ids=lambda row: row.id)
def test_count_known_is_exactly_the_exact_total_allocators(row: Any) -> None:
    pruner = Pruner(0.3, row.make(), presets.hero(0.3).selector)
    assert pruner.count_known is row.exact_total


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_say_whether_their_count_is_known(name: str) -> None:
    assert presets.get(name, 0.2).count_known is PRESETS[name]


@pytest.mark.parametrize("name", sorted(name for name, exact in PRESETS.items() if exact))
@given(tiles=encoded_tiles(), ratio=st.sampled_from([0.05, 0.1, 0.2, 0.29, 0.4, 0.5, 0.77, 1.0]))
def test_the_planner_keeps_exactly_the_count_fixed_in_advance(name: str, tiles: Any, ratio: float) -> None:
    pruner = presets.get(name, ratio)
    tiles = tiles_for(name, tiles)
    relevance = torch.linspace(-0.2, 0.6, tiles.num_views)
    plan = pruner.plan(tiles, relevance)
    counts = _counts_of(tiles)
    assert int(plan.keep.sum()) == pruner.kept_count(counts) == exact_total(ratio, counts)
    assert pruner.check_kept(counts, int(plan.keep.sum())) == pruner.kept_count(counts)


def test_exact_total_values() -> None:
    # 5 views of 576 with 2880 valid: floor(0.2 * 2880) = 576; floor(0.29 * 100) is 29, not 28
    assert exact_total(0.2, ImageCounts(5, 576, 2880)) == 576
    assert exact_total(0.29, ImageCounts(1, 100, 100)) == 29
    # the valid count caps the total (a heavily padded grid at a high ratio)
    assert exact_total(0.9, ImageCounts(5, 576, 1500)) == 1500
    assert exact_total(0.5, ImageCounts(5, 576, 1500)) == 1440
    assert exact_total(1.0, ImageCounts(3, 10, 0)) == 0


def test_kept_count_refuses_content_dependent_presets_naming_the_allocator() -> None:
    with pytest.raises(
        HeroError, match=r"allocator='HeroAllocator \(count_known=False\)' is invalid.*hero-reference's floors"
    ):
        presets.hero_reference(0.2).kept_count(ImageCounts(5, 576, 2880))


def test_check_kept_names_both_numbers() -> None:
    pruner = presets.hero(0.2)
    with pytest.raises(HeroError, match=r"patch tokens kept by the plugin=575 is invalid: expected 576 = "):
        pruner.check_kept(ImageCounts(5, 576, 2880), 575, where="the plugin")
    # a content-dependent preset promises nothing: the kept number is taken as it is
    assert presets.hero_reference(0.2).check_kept(ImageCounts(5, 576, 2880), 123) == 123


def test_a_subclass_must_declare_count_known_itself() -> None:
    class Fewer(UniformAllocator):  # budgets of its own: it did not promise the exact total
        pass

    class Declared(UniformAllocator):
        count_known = True

    assert Pruner(0.2, Fewer(), presets.hero(0.2).selector).count_known is False
    assert Pruner(0.2, Declared(), presets.hero(0.2).selector).count_known is True

    class Custom:
        uses_relevance = False

        def __call__(self, *args: object) -> Any:
            raise AssertionError

    assert Pruner(0.2, Custom(), presets.hero(0.2).selector).count_known is False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"views": 0, "tokens_per_view": 4, "valid": 0}, "views"),
        ({"views": 2, "tokens_per_view": 0, "valid": 0}, "tokens_per_view"),
        ({"views": 2, "tokens_per_view": 4, "valid": 9}, "valid"),
        ({"views": 2, "tokens_per_view": 4, "valid": -1}, "valid"),
        ({"views": 2, "tokens_per_view": 4, "valid": 8, "newlines": -1}, "newlines"),
        ({"views": 2.0, "tokens_per_view": 4, "valid": 8}, "views"),
        ({"views": True, "tokens_per_view": 4, "valid": 8}, "views"),
    ],
)
def test_image_counts_refuse_bad_fields(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(HeroError, match=rf"^{field}="):
        ImageCounts(**kwargs)


def test_tokens_in_and_out_count_newlines_once() -> None:
    counts = ImageCounts(views=5, tokens_per_view=576, valid=2880, newlines=48)
    assert counts.tokens_in == 2928
    assert counts.tokens_out(576) == 624
    assert tiled_counts(7, 256) == ImageCounts(7, 256, 1792, 0)


def test_anyres_pinned_values() -> None:
    # 672 x 672: a 2 x 2 grid, nothing unpadded: 5 views, 576 + 2304 valid, 48 newlines = 2928 (concepts.md)
    assert anyres_counts((672, 672), LLAVA_NEXT_PINPOINTS, 336, 14) == ImageCounts(5, 576, 2880, 48)
    # (height 500, width 300): (672, 336) holds the whole image with the least waste -> 2 x 1 tiles (rows first);
    # the 48 x 24 grid is wider than the image (0.6 > 0.5), so rows are cut to 48 - 2 * ((48 - 40) // 2) = 40
    assert anyres_grid((500, 300), LLAVA_NEXT_PINPOINTS, 336) == (2, 1)
    assert anyres_counts((500, 300), LLAVA_NEXT_PINPOINTS, 336, 14) == ImageCounts(3, 576, 576 + 40 * 24, 40)
    # (100, 1000): 1 x 3 tiles; the new height round(100 * 72 / 1000) = 7 is odd against 24, so the host keeps
    # 24 - 2 * 8 = 8 rows (not 7): the rows left by symmetric padding, as unpad_image slices
    assert unpadded_size((24, 72), (100, 1000)) == (8, 72)
    assert anyres_counts((100, 1000), LLAVA_NEXT_PINPOINTS, 336, 14) == ImageCounts(4, 576, 576 + 8 * 72, 8)
    # a tall image cuts columns instead: (1000, 100) -> 3 x 1 tiles, 72 x 24 grid, 8 columns kept, 72 newlines
    assert anyres_counts((1000, 100), LLAVA_NEXT_PINPOINTS, 336, 14) == ImageCounts(4, 576, 576 + 72 * 8, 72)


def test_anyres_degenerate_and_bad_input() -> None:
    # an image no pinpoint holds at any scale still gets the first pinpoint, as the host's tie rule gives
    assert anyres_grid((1, 100_000), [[336, 336], [672, 672]], 336) == (1, 1)
    with pytest.raises(HeroError, match=r"^grid_pinpoints="):
        anyres_grid((10, 10), [], 336)
    with pytest.raises(HeroError, match=r"^image height="):
        anyres_counts((0, 10), LLAVA_NEXT_PINPOINTS, 336, 14)
