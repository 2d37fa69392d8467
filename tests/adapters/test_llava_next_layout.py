"""LLaVA-NeXT geometry and layouts against slow, obviously correct re-implementations written here."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers.image_processing_utils import select_best_resolution

from hero_adapters import HeroVLM, LlavaNextAdapter
from hero_core import HeroError

SIDE, N = 4, 16  # patches per view side, patches per view of the tiny model


def _tile_features(tiny: Any, inputs: dict[str, Any], views: list[int]) -> list[torch.Tensor]:
    """Per image (V, N, D): every view's projected patch features, computed without the host's packing.

    All tiles go through the tower in one batch, as the host sends them, so the numbers are bit-identical.
    """
    config = tiny.model.config
    tiles = torch.cat([inputs["pixel_values"][i, :v] for i, v in enumerate(views)])
    with torch.inference_mode():
        out = tiny.model.model.vision_tower(tiles, output_hidden_states=True)
        feats = tiny.model.model.multi_modal_projector(out.hidden_states[config.vision_feature_layer][:, 1:])
    return list(torch.split(feats, views))


def _slow_grid(image_size: tuple[int, int]) -> tuple[int, int]:
    height, width = select_best_resolution(list(image_size), [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]])
    return height // 56, width // 56


def _slow_unpadded(image_size: tuple[int, int], grid: tuple[int, int]) -> tuple[range, range]:
    """Rows and columns of the stitched (SIDE * rows, SIDE * cols) map that hold image content (the
    processor's ``_get_unpadded_features`` arithmetic, spelled out)."""
    h, w = image_size
    rows, cols = SIDE * grid[0], SIDE * grid[1]
    if w / h > cols / rows:
        new_rows = int(round(h * (cols / w), 7))
        pad = (rows - new_rows) // 2
        return range(pad, rows - pad), range(cols)
    new_cols = int(round(w * (rows / h), 7))
    pad = (cols - new_cols) // 2
    return range(rows), range(pad, cols - pad)


def _view_patch(r: int, c: int, grid: tuple[int, int]) -> tuple[int, int]:
    """(view, patch) of stitched-map cell (r, c): local tiles are views 1.. in raster order."""
    return 1 + (r // SIDE) * grid[1] + c // SIDE, (r % SIDE) * SIDE + c % SIDE


def _slow_sequence(
    feats: torch.Tensor, newline: torch.Tensor, keep: torch.Tensor, image_size: tuple[int, int], layout: str
) -> tuple[torch.Tensor, int]:
    """Kept tokens in the layout's order with plain loops: thumbnail raster, then stitched rows + newline."""
    grid = _slow_grid(image_size)
    rows, cols = _slow_unpadded(image_size, grid)
    if layout == "reference":
        rows, cols = range(SIDE * grid[0]), range(SIDE * grid[1])
    out = [feats[0, j] for j in range(N) if keep[0, j]]
    newlines = 0
    for r in rows:
        for c in cols:
            view, patch = _view_patch(r, c, grid)
            if keep[view, patch]:
                out.append(feats[view, patch])
        out.append(newline)
        newlines += 1
    return torch.stack(out), newlines


def _random_keep(valid: torch.Tensor, seed: int) -> torch.Tensor:
    draw = torch.rand(valid.shape, generator=torch.Generator().manual_seed(seed))
    return (draw < 0.5) & valid


SIZES = [(40, 100), (90, 60), (50, 50), (100, 30), (56, 56), (30, 160), (3, 500), (500, 3)]  # + banner: no rows left


@pytest.fixture(scope="module")
def encoded(tiny: Any) -> list[tuple[Any, Any, torch.Tensor]]:
    """(image size, EncodedImage, per-view features) for shapes with padding rows, padding columns, none."""
    images = [tiny.image(h, w, seed=3) for h, w in SIZES]
    inputs = tiny.inputs(["<image>" * len(images)], images)
    adapter = LlavaNextAdapter(tiny.model)
    with torch.inference_mode():
        encoded = adapter.encode(inputs, tiny.low + tiny.high)
    feats = _tile_features(tiny, inputs, [image.tiles.num_views for image in encoded])
    return list(zip(SIZES, encoded, feats))


def test_index_map_points_at_the_host_features(tiny: Any, encoded: list[Any]) -> None:
    newline = tiny.model.model.image_newline
    for _, image, feats in encoded:
        src = image.source
        assert src.shape[0] == image.features.shape[0] == image.tokens_in
        patches = src >= 0
        expected = feats.reshape(-1, feats.shape[-1])[src[patches]]
        torch.testing.assert_close(image.features[patches], expected, rtol=0, atol=0)
        assert torch.equal(image.features[~patches], newline.expand(int((~patches).sum()), -1))


def test_valid_mask_and_tile_grid_follow_the_unpad_arithmetic(encoded: list[Any]) -> None:
    seen_rows = seen_cols = False
    for size, image, _ in encoded:
        grid = _slow_grid(size)
        rows, cols = _slow_unpadded(size, grid)
        seen_rows |= len(rows) < SIDE * grid[0]
        seen_cols |= len(cols) < SIDE * grid[1]
        valid = torch.zeros(1 + grid[0] * grid[1], N, dtype=torch.bool)
        valid[0] = True
        for r in rows:
            for c in cols:
                valid[_view_patch(r, c, grid)] = True
        assert image.tiles.tile_grid == grid
        assert image.tiles.thumbnail_index == 0
        assert image.tiles.grid == (SIDE, SIDE)
        assert torch.equal(image.tiles.valid_mask, valid)
    assert seen_rows and seen_cols  # both unpad directions are exercised


@pytest.mark.parametrize("layout", ["vanilla", "reference"])
def test_assemble_equals_the_slow_sequence(tiny: Any, encoded: list[Any], layout: str) -> None:
    adapter = LlavaNextAdapter(tiny.model, layout=layout)
    newline = tiny.model.model.image_newline
    for seed, (size, image, feats) in enumerate(encoded):
        keep = _random_keep(image.tiles.valid_mask, seed)
        out = adapter.assemble(image, keep)
        expected, newlines = _slow_sequence(feats, newline, keep, size, layout)
        torch.testing.assert_close(out.features, expected, rtol=0, atol=0)
        assert out.newline_tokens == newlines
        assert out.kept_patch_tokens == int(keep.sum())
        assert out.tokens_out == out.features.shape[0]
        # offsets index the unpruned layout sequence (the one an all-valid keep gives)
        full = adapter.assemble(image, image.tiles.valid_mask)
        assert out.layout_length == full.features.shape[0] if layout == "vanilla" else out.layout_length >= N
        if layout == "vanilla":
            assert torch.equal(full.features, image.features)  # keep-all is the host's own sequence
            assert torch.equal(full.features[out.offsets], out.features)


def test_reference_layout_puts_a_newline_on_every_padded_row(tiny: Any, encoded: list[Any]) -> None:
    vanilla, reference = LlavaNextAdapter(tiny.model), LlavaNextAdapter(tiny.model, layout="reference")
    for size, image, _ in encoded:
        grid = _slow_grid(size)
        rows, _ = _slow_unpadded(size, grid)
        empty = torch.zeros_like(image.tiles.valid_mask)
        assert reference.assemble(image, empty).newline_tokens == SIDE * grid[0]
        assert vanilla.assemble(image, empty).newline_tokens == len(rows)
        assert reference.assemble(image, empty).layout_length == N + SIDE * grid[0] * (SIDE * grid[1] + 1)


def test_views_are_unnormalised_rgb(tiny: Any, batch: dict[str, Any]) -> None:
    inputs = batch["inputs"]
    mean = torch.tensor(tiny.processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny.processor.image_processor.image_std).view(1, 3, 1, 1)
    report = HeroVLM(tiny.model, tiny.pruner(0.5), processor=tiny.processor).plan(**inputs)
    adapter = LlavaNextAdapter(tiny.model)
    with torch.inference_mode():
        images = adapter.encode(inputs, tiny.low)
    for i, image in enumerate(images):
        views = image.views
        assert views.shape == (report.images[i].views, 3, 56, 56)
        assert views.dtype == torch.float32 and views.min() >= 0.0 and views.max() <= 1.0
        torch.testing.assert_close((views - mean) / std, inputs["pixel_values"][i, : views.shape[0]], atol=1e-5, rtol=0)
    custom = LlavaNextAdapter(tiny.model, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    assert custom.image_mean == (0.5, 0.5, 0.5)
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5), image_mean=(0.1, 0.2, 0.3), processor=tiny.processor)
    assert vlm.adapter.image_mean == (0.1, 0.2, 0.3)
    assert vlm.adapter.image_std == tuple(tiny.processor.image_processor.image_std)
    with pytest.raises(HeroError, match="image_std"):
        LlavaNextAdapter(tiny.model, image_std=(0.5, 0.0, 0.5))


def _capture_llm_inputs(tiny: Any) -> tuple[list[dict[str, Any]], Any]:
    """Record (input_ids, inputs_embeds) of every LlavaNextModel / language-model call (prefill first)."""
    calls: list[dict[str, Any]] = []

    def outer(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        calls.append({"input_ids": kwargs.get("input_ids", args[0] if args else None)})

    def inner(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        calls[-1]["inputs_embeds"] = kwargs["inputs_embeds"]
        calls[-1]["position_ids"] = kwargs.get("position_ids")

    handles = (
        tiny.model.model.register_forward_pre_hook(outer, with_kwargs=True),
        tiny.model.model.language_model.register_forward_pre_hook(inner, with_kwargs=True),
    )
    return calls, handles


@pytest.mark.parametrize("layout", ["reference", "vanilla"])
def test_llm_receives_the_slow_sequence(tiny: Any, batch: dict[str, Any], layout: str) -> None:
    """End to end: the embeddings the language model gets at the image positions are the slow sequence of
    each image's plan (reference preset + reference layout, and paper preset + vanilla layout)."""
    inputs = batch["inputs"]
    preset = "hero-reference" if layout == "reference" else "hero"
    vlm = HeroVLM(tiny.model, tiny.pruner(0.4, preset), layout=layout)
    calls, handles = _capture_llm_inputs(tiny)
    try:
        vlm.generate(**inputs, max_new_tokens=2, do_sample=False)
    finally:
        for handle in handles:
            handle.remove()
    prefill = calls[0]
    is_image = prefill["input_ids"] == tiny.image_token_id
    received = prefill["inputs_embeds"][is_image]  # images in batch order
    newline = tiny.model.model.image_newline
    expected = []
    feats = _tile_features(tiny, inputs, [report.views for report in vlm.last_report.images])
    for i, report in enumerate(vlm.last_report.images):
        sizes = tuple(inputs["image_sizes"][i].tolist())
        sequence, newlines = _slow_sequence(feats[i], newline, report.plan.keep, sizes, layout)
        assert report.newline_tokens == newlines
        assert report.tokens_out == sequence.shape[0] == report.kept_patch_tokens + newlines
        expected.append(sequence)
    torch.testing.assert_close(received, torch.cat(expected), rtol=0, atol=0)
    assert vlm.last_report.tokens_out < vlm.last_report.tokens_in or layout == "reference"
