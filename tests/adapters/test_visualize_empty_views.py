"""A view without valid positions (all padding) is drawn as padding and labelled as such, not with an importance
(issue 16: tiles with no valid position showed importance 1/3).

The tiny LLaVA-NeXT (56-px views of 4 x 4 patches) puts a 4000 x 20 image into a 1 x 2 grid (112 x 56 px), where
it is under one patch high: both tiles are padding. hero_core still gives each tile an importance (Eq. 1-3 score
every tile's CLS; two identical padding tiles get about 1/2 each, three get 1/3 on LLaVA-NeXT-7B's 1 x 3 grid),
with a budget capped at 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters import HeroVLM, visualize
from hero_adapters.visualize import _plan_layout, render_plan


@pytest.fixture
def labels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every label text render_plan draws, in order."""
    drawn: list[str] = []
    real = visualize._label

    def record(draw: Any, xy: tuple[float, float], text: str, font: Any) -> None:
        drawn.append(text)
        real(draw, xy, text, font)

    monkeypatch.setattr(visualize, "_label", record)
    return drawn


def _plan(tiny: Any, height: int, width: int) -> Any:
    vlm = HeroVLM(tiny.model, tiny.pruner(0.2), processor=tiny.processor)
    image = tiny.image(height, width)
    inputs = tiny.inputs(["USER: <image> describe ASSISTANT:"], [image])
    with torch.no_grad():
        report = vlm.plan(**inputs, **vlm.adapter.image_inputs([image])).images[0]
    return image, report


def test_tiles_without_valid_positions_are_labelled_so(tiny: Any, labels: list[str]) -> None:
    image, report = _plan(tiny, 20, 4000)
    assert report.valid_tokens == [16, 0, 0] and report.budgets == [9, 0, 0]
    importance = report.plan.importance.tolist()
    assert importance[1] > 0 and importance[2] > 0  # the allocator's scores, not shown for these tiles
    pixels = np.asarray(render_plan(image, report))
    assert labels == [
        "tile 1: no valid positions (all padding)",
        "tile 2: no valid positions (all padding)",
        "thumbnail: 9/16",
    ]
    # drawn as padding: the grey checkerboard of the legend's padding swatch, no kept or pruned mark
    layout = _plan_layout(image.size, report)
    (sx0, sy0, sx1, sy1), _ = layout.legend["padding"]
    swatch = {tuple(p) for p in pixels[sy0:sy1, sx0:sx1].reshape(-1, 3)}
    for view in (1, 2):
        x0, y0, x1, y1 = layout.views[view]
        inner = pixels[y0 + 30 : y1 - 6, x0 + 6 : x1 - 6].reshape(-1, 3)  # inside the edges, below the label
        assert inner.size and {tuple(p) for p in inner} <= swatch


def test_tiles_with_content_keep_their_count_and_importance(tiny: Any, labels: list[str]) -> None:
    image, report = _plan(tiny, 112, 112)
    render_plan(image, report)
    importance = report.plan.importance.tolist()
    budgets, valid = report.budgets, report.valid_tokens
    tiles = [v for v in range(report.views) if v != report.encoded.thumbnail_index]
    assert labels == [
        *(f"tile {k + 1}: {budgets[v]}/{valid[v]}  s={importance[v]:.2f}" for k, v in enumerate(tiles)),
        f"thumbnail: {budgets[report.encoded.thumbnail_index]}/16",
    ]
