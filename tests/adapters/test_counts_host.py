"""The count contract against the host (issue 18, item 1): ``hero_core.counts`` is pure integer arithmetic, so
it must agree with transformers' own LLaVA-NeXT geometry for every image size, and the transformers path must
keep exactly ``Pruner.kept_count`` (checked after planning; a breach is a HeroError naming both numbers).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hero_adapters import HeroVLM
from hero_adapters.testing import LLAVA_NEXT_7B_PINPOINTS
from hero_core import HeroError, ImageCounts, Pruner, UniformAllocator, presets
from hero_core.counts import anyres_counts, anyres_grid, anyres_layout, tiled_counts, unpadded_size

from .hosts import LLAVA_PINPOINTS, host_row

transformers = pytest.importorskip("transformers")
from transformers.image_processing_utils import select_best_resolution  # noqa: E402
from transformers.models.llava_next.modeling_llava_next import (  # noqa: E402
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

#: (pinpoints, tile pixels, patch pixels): LLaVA-NeXT-7B's, the tiny test host's, and a non-square set whose
#: tile is not a multiple of the patch count of the others
GEOMETRIES = [
    (LLAVA_NEXT_7B_PINPOINTS, 336, 14),
    (LLAVA_PINPOINTS, 56, 14),
    ([[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152], [1152, 768]], 384, 16),
]
SIDES = st.integers(min_value=1, max_value=5000)


@settings(max_examples=3000)
@given(height=SIDES, width=SIDES, geometry=st.sampled_from(GEOMETRIES))
def test_anyres_counts_equal_transformers_for_any_size(height: int, width: int, geometry: Any) -> None:
    pinpoints, tile, patch = geometry
    pins = [list(p) for p in pinpoints]
    side = tile // patch
    rows, cols = anyres_grid((height, width), pins, tile)
    assert (rows * tile, cols * tile) == tuple(select_best_resolution((height, width), pins))
    assert (rows, cols) == tuple(get_anyres_image_grid_shape((height, width), pins, tile))
    stitched = torch.empty((0, rows * side, cols * side))  # unpad_image only slices: an empty channel axis
    host_rows, host_cols = unpad_image(stitched, (height, width)).shape[1:]
    assert unpadded_size((rows * side, cols * side), (height, width)) == (host_rows, host_cols)
    counts = anyres_counts((height, width), pins, tile, patch)
    assert counts.views == image_size_to_num_patches((height, width), pins, tile)
    assert counts.valid == side * side + host_rows * host_cols
    assert counts.newlines == host_rows


@pytest.mark.parametrize("size", [(56, 56), (30, 200), (200, 30), (97, 61), (1, 300), (300, 1), (113, 112)])
def test_counts_equal_the_processor_and_the_adapters_layout(size: tuple[int, int]) -> None:
    """The processor's placeholder count and the adapter's packed layout (the host's pack_image_features on an
    index map) give the same numbers as ``anyres_counts`` for extreme aspect ratios."""
    row = host_row("llava_next")
    height, width = size
    inputs = row.inputs([row.text("describe {}")], [row.image(height, width)])
    vision = row.model.config.vision_config
    counts = anyres_counts((height, width), row.model.config.image_grid_pinpoints, vision.image_size, vision.patch_size)
    placeholders = int((inputs["input_ids"] == row.model.config.image_token_id).sum())
    assert counts.tokens_in == placeholders
    vlm = HeroVLM(row.model, row.pruner(0.3), processor=row.processor)
    encoded = vlm.adapter.encode(inputs, ())[0]
    assert encoded.tokens_in == counts.tokens_in
    assert int(encoded.tiles.valid_mask.sum()) == counts.valid
    assert (encoded.tiles.num_views, encoded.tiles.num_tokens) == (counts.views, counts.tokens_per_view)


@pytest.mark.parametrize("name", ["llava_next", "internvl", "llava_onevision"])
@pytest.mark.parametrize("ratio", [0.15, 0.5, 1.0])
def test_the_report_keeps_the_count_fixed_in_advance(name: str, ratio: float) -> None:
    row = host_row(name)
    images = [row.image(50, 170, seed=1), row.image(130, 60, seed=2)]
    inputs = row.inputs([row.text("what is {} here"), row.text("and {} there")], images)
    pruner = row.pruner(ratio)
    vlm = HeroVLM(row.model, pruner, processor=row.processor)
    report = vlm.plan(**inputs, query=["red", "blue"])
    for image in report.images:
        tiles = image.encoded
        counts = ImageCounts(tiles.num_views, tiles.num_tokens, int(tiles.valid_mask.sum()))
        assert image.kept_patch_tokens == pruner.kept_count(counts)
    if name == "internvl":  # every view fully valid: the whole tiled count
        for image in report.images:
            counts = tiled_counts(image.encoded.num_views, image.encoded.num_tokens)
            assert image.kept_patch_tokens == pruner.kept_count(counts)


class _Short(UniformAllocator):
    """Claims the exact total (it defines count_known itself) but keeps one token fewer in the first view."""

    count_known = True

    def __call__(self, tiles: Any, relevance: Any, keep_ratio: float, /) -> Any:
        budgets = UniformAllocator()(tiles, relevance, keep_ratio).clone()
        budgets[0] -= 1
        return budgets


def test_a_broken_count_promise_is_refused_naming_both_numbers() -> None:
    row = host_row("llava_next")
    inputs = row.inputs([row.text("hi {} there")], [row.image(60, 100)])
    pruner = Pruner(0.5, _Short(), presets.uniform_strided(0.5).selector)
    vlm = HeroVLM(row.model, pruner, processor=row.processor)
    tiles = vlm.adapter.encode(inputs, ())[0].tiles
    expected = pruner.kept_count(ImageCounts(tiles.num_views, tiles.num_tokens, int(tiles.valid_mask.sum())))
    message = rf"patch tokens kept by LlavaNextAdapter for image 0={expected - 1} is invalid: expected {expected} = "
    with pytest.raises(HeroError, match=message):
        vlm.plan(**inputs)


@settings(max_examples=300)
@given(height=SIDES, width=SIDES, geometry=st.sampled_from(GEOMETRIES))
def test_anyres_layout_is_the_hosts_packing(height: int, width: int, geometry: Any) -> None:
    """``anyres_layout`` against transformers' own ``pack_image_features`` run on an index map (the oracle the
    LLaVA-NeXT adapter uses), for any size and three geometries."""
    from types import SimpleNamespace

    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

    pinpoints, tile, patch = geometry
    pins = [list(p) for p in pinpoints]
    config = SimpleNamespace(
        vision_config=SimpleNamespace(image_size=tile, patch_size=patch), image_grid_pinpoints=pins
    )
    counts = anyres_counts((height, width), pins, tile, patch)
    n = counts.tokens_per_view
    index = [torch.arange(counts.views * n, dtype=torch.float64).view(counts.views, n, 1)]
    sizes = torch.tensor([[height, width]])
    newline = torch.tensor([-1.0], dtype=torch.float64)
    packed, _ = LlavaNextModel.pack_image_features(SimpleNamespace(config=config), index, sizes, "default", newline)
    layout = anyres_layout((height, width), pins, tile, patch)
    assert torch.equal(layout, packed[0][:, 0].round().long())
    assert layout.shape[0] == counts.tokens_in
    assert int((layout >= 0).sum()) == counts.valid
