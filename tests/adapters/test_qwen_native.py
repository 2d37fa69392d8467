"""hero-native on the Qwen hosts: region crops reach the scorer where the regions lie, the default layers are the
tower's full-attention ones, and the baselines keep the same number of tokens."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hero_adapters import HeroVLM
from hero_adapters._scoring import region_crops
from hero_adapters.adapter import preset_options
from hero_core import presets

from .hosts import host_row

QWEN = ("qwen2_5_vl", "qwen3_vl")


def _one_bright_region(row: Any) -> tuple[dict[str, Any], int, Any]:
    """A black image with one white rectangle, the inputs of one prompt, and the index of the region it fills."""
    pixels = np.zeros((96, 192, 3), dtype=np.uint8)
    inputs = row.inputs([row.text("USER: {} describe ASSISTANT:")], [Image.fromarray(pixels)])
    grid = inputs["image_grid_thw"][0].tolist()
    rows, cols = grid[1] // 2, grid[2] // 2
    pruner = row.pruner(0.5)
    boxes = pruner.allocator.regions((rows, cols))
    assert len(boxes) >= 4, boxes
    target = len(boxes) - 2  # neither the first nor the last region
    r0, c0, r1, c1 = boxes[target]
    y0, x0, y1, x1 = (round(v) for v in (r0 * 96 / rows, c0 * 192 / cols, r1 * 96 / rows, c1 * 192 / cols))
    pixels[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = 255
    inputs = row.inputs([row.text("USER: {} describe ASSISTANT:")], [Image.fromarray(pixels)])
    return inputs, target, pruner


@pytest.mark.parametrize("name", QWEN)
def test_the_scorer_gets_one_crop_per_region_in_region_order(name: str) -> None:
    row = host_row(name)
    inputs, target, pruner = _one_bright_region(row)
    seen: list[torch.Tensor] = []

    def brightness(views: torch.Tensor, text: str) -> torch.Tensor:
        seen.append(views)
        return views.mean(dim=(1, 2, 3))

    vlm = HeroVLM(row.model, pruner, brightness, processor=row.processor)
    report = vlm.plan(**inputs, query="what is bright")
    image = report.images[0]
    regions = vlm.pruner.regions(image.encoded)
    assert len(seen) == 1 and seen[0].shape[0] == len(regions)
    assert image.relevance is not None and image.relevance.shape == (len(regions),)
    assert int(image.relevance.argmax()) == target  # the crop of the bright region, at its own index
    assert float(image.relevance.max()) > 0.5 > float(image.relevance.min())


def test_region_crops_cut_the_view_at_the_token_grid() -> None:
    """Pixel boxes are token boxes scaled by the view's pixels per token (here 10 px per token), resized to the
    largest crop: a 2 x 3 grid split into (0, 0, 1, 2) and (1, 2, 2, 3) boxes."""
    view = torch.arange(20 * 30, dtype=torch.float32).reshape(1, 1, 20, 30).expand(1, 3, 20, 30) / 600
    image = type("Image", (), {"views": view, "tiles": type("Tiles", (), {"grid": (2, 3)})()})()
    crops = region_crops(image, [(0, 0, 1, 2), (1, 2, 2, 3)])  # type: ignore[arg-type]
    assert crops.shape == (2, 3, 10, 20)
    torch.testing.assert_close(crops[0], view[0, :, 0:10, 0:20])  # the largest crop is taken as it is
    assert float(crops[1].min()) >= float(view[0, 0, 10, 20]) - 1e-6  # the second comes from the bottom right
    assert float(crops[1].max()) <= float(view[0, 0, 19, 29]) + 1e-6


def test_default_layers_are_the_towers_full_attention_layers() -> None:
    row = host_row("qwen2_5_vl")
    vlm = HeroVLM(row.model, presets.hero(0.5, depth=6), processor=row.processor)
    options = preset_options(vlm.adapter)
    assert options == {"depth": 6, "full_attention": (2, 5)}
    for name in ("hero-native", "hero", "cls-attention", "thumbnail-attention"):
        pruner = presets.get(name, 0.5, **options)
        assert set(pruner.layers) <= {2, 5}, (name, pruner.layers)
    other = HeroVLM(host_row("qwen3_vl").model, presets.hero(0.5, depth=6)).adapter
    assert preset_options(other)["full_attention"] is None


@pytest.mark.parametrize("name", QWEN)
def test_baselines_send_the_same_count_as_hero_native(name: str) -> None:
    row = host_row(name)
    inputs = row.batch()
    counts = {}
    for preset in ("hero-native", "cls-attention", "uniform-strided", "uniform-random"):
        overrides: dict[str, Any] = {"region": 2} if preset == "hero-native" else {}
        pruner = presets.get(preset, 0.3, depth=6, **overrides)
        report = HeroVLM(row.model, pruner, processor=row.processor).plan(**inputs)
        counts[preset] = [image.tokens_out for image in report.images]
    assert len({tuple(c) for c in counts.values()}) == 1, counts
    tokens_in = [image.tokens_in for image in report.images]
    assert counts["hero-native"] == [int(0.3 * n) for n in tokens_in]
