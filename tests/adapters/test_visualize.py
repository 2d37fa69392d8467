"""The kept-token picture reads on any content; its legend is drawn as its patches are; the layer strip has a
colour scale and marks the layers the preset reads (issue 10, item 3).

Plans come from the tiny LLaVA-NeXT of the host matrix (4 x 4 patches per 56-px view): a 112 x 112 image is
a 2 x 2 grid without padding, a 100 x 40 one a 1 x 2 grid padded above and below.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from PIL import Image

from hero_adapters import HeroVLM, ImageReport
from hero_adapters.visualize import _colormap, _plan_layout, render_layer_strip, render_plan

from .hosts import host_row

SQUARE, WIDE = (112, 112), (100, 40)  # (width, height)
BLACK, WHITE, RED, GREEN, BLUE = (0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)


@cache
def _report(colour: tuple[int, int, int], size: tuple[int, int], keep_ratio: float) -> ImageReport:
    host = host_row("llava_next")
    picture = Image.new("RGB", size, colour)
    vlm = HeroVLM(host.model, host.pruner(keep_ratio), processor=host.processor)
    inputs = host.inputs([host.text("USER: {} describe ASSISTANT:")], [picture])
    return vlm.plan(**inputs, **vlm.adapter.image_inputs([picture])).images[0]


def _render(colour: tuple[int, int, int], size: tuple[int, int], keep_ratio: float) -> np.ndarray:
    """(H, W, 3) uint8 picture of a plain image of ``colour``."""
    return np.asarray(render_plan(Image.new("RGB", size, colour), _report(colour, size, keep_ratio)))


def _crop(pixels: np.ndarray, box: tuple[int, int, int, int], inset: int = 0) -> np.ndarray:
    x0, y0, x1, y1 = box
    return pixels[y0 + inset : y1 - inset, x0 + inset : x1 - inset]


def _changed(a: np.ndarray, b: np.ndarray, threshold: int = 40) -> np.ndarray:
    """Per pixel: some channel differs by more than ``threshold``."""
    return np.abs(a.astype(int) - b.astype(int)).max(axis=-1) > threshold


def _patches(size: tuple[int, int], report: ImageReport, view: int, kept: bool) -> list[tuple[int, int, int, int]]:
    """Boxes of ``view``'s valid patches that were kept (or pruned), in the picture of an image of ``size``."""
    layout = _plan_layout(size, report)
    keep, valid = report.plan.keep[view].tolist(), report.encoded.valid_mask[view].tolist()
    return [tuple(box) for box, k, v in zip(layout.patches(view).tolist(), keep, valid, strict=True) if v and k == kept]


def _contains(region: np.ndarray, block: np.ndarray) -> bool:
    """Whether some window of ``region`` equals ``block`` exactly."""
    windows = np.lib.stride_tricks.sliding_window_view(region, block.shape)  # (.., .., 1, h, w, 3)
    return bool((windows == block).all(axis=(-3, -2, -1)).any())


@pytest.mark.parametrize("colour", [BLACK, WHITE, RED, GREEN], ids=["black", "white", "red", "green"])
def test_pruning_changes_most_of_the_tile_panel_on_dark_light_and_saturated_images(colour) -> None:
    """Keep ratio 1 against 0.2: with 80 % of the patches pruned, most of the tiles' pixels must look different."""
    full, pruned = _render(colour, SQUARE, 1.0), _render(colour, SQUARE, 0.2)
    layout = _plan_layout(SQUARE, _report(colour, SQUARE, 0.2))
    assert full.shape == pruned.shape
    for box in (layout.panel, layout.thumbnail):
        share = _changed(_crop(full, box), _crop(pruned, box)).mean()
        assert share > 0.3, f"{colour}: only {share:.0%} of {box} changed"


@pytest.mark.parametrize("colour", [BLACK, WHITE, RED, GREEN, BLUE, (128, 128, 128), (118, 118, 118)])
def test_every_pruned_patch_shows_on_its_own_colour(colour) -> None:
    """Mid greys too: whatever the content, a good share of each pruned patch's pixels differ from it."""
    report = _report(colour, SQUARE, 0.2)
    pixels = _render(colour, SQUARE, 0.2)
    boxes = _patches(SQUARE, report, report.encoded.thumbnail_index, kept=False)
    assert boxes
    for box in boxes[1:]:  # the first may hold the thumbnail's label
        changed = _changed(_crop(pixels, box, inset=3), np.array(colour, dtype=np.uint8))
        assert changed.mean() > 0.2, f"{colour}: pruned patch {box} is {1 - changed.mean():.0%} its content"


def test_legend_swatches_are_drawn_as_the_patches_are() -> None:
    """On an image of the legend's own base colour, each swatch is what the picture's patches show."""
    report = _report(WHITE, WIDE, 0.3)
    layout = _plan_layout(WIDE, report)
    legend = np.asarray(render_plan(Image.new("RGB", WIDE, WHITE), report))
    base = tuple(int(c) for c in _crop(legend, layout.legend["kept"][0])[8, 8])  # the kept swatch's inside
    picture = Image.new("RGB", WIDE, base)
    report = _report(base, WIDE, 0.3)
    layout = _plan_layout(WIDE, report)
    pixels = np.asarray(render_plan(picture, report))
    swatch = {key: _crop(pixels, layout.legend[key][0]) for key in ("kept", "pruned", "padding")}
    thumb = report.encoded.thumbnail_index

    # pruned: the swatch is a window of a pruned patch (same greying, same hatch, aligned to the picture)
    boxes = _patches(WIDE, report, thumb, kept=False)[1:]
    assert boxes and all(_contains(_crop(pixels, box, inset=3), swatch["pruned"]) for box in boxes)
    # padding: a window of the padding above the image
    panel, image = layout.panel, layout.image
    assert image[1] - panel[1] > 24, "the 100 x 40 image should leave padding above it"
    above = pixels[panel[1] + 3 : image[1], panel[0] + 3 : panel[2] - 3]
    assert _contains(above, swatch["padding"])
    # kept: the image's pixels inside, the outline that a kept patch next to a pruned one has on that side
    assert tuple(swatch["kept"][8, 8]) == base
    outline = {tuple(c) for c in np.concatenate([swatch["kept"][0], swatch["kept"][-1]])}
    assert len(outline) == 1 and outline != {base}
    keep = report.plan.keep[thumb].reshape(report.encoded.grid)
    edges = [
        (box, row, col)
        for (box, row, col) in (
            (layout.patches(thumb)[r * keep.shape[1] + c], r, c)
            for r in range(keep.shape[0])
            for c in range(keep.shape[1] - 1)
        )
        if keep[row, col] and not keep[row, col + 1]
    ]
    assert edges, "the plan should have a kept patch left of a pruned one"
    for (x0, y0, x1, y1), _, _ in edges:
        assert tuple(pixels[(y0 + y1) // 2, x1 - 1]) in outline  # its right edge: the outline
        assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == base  # its middle: the image, unchanged


def test_padding_is_neither_content_nor_pruned() -> None:
    """Whatever colour the image has, even the padding's own, the padding shows a colour the content lacks."""
    report = _report(BLACK, WIDE, 0.3)
    layout = _plan_layout(WIDE, report)
    padding = _crop(np.asarray(render_plan(Image.new("RGB", WIDE, BLACK), report)), layout.legend["padding"][0])
    pruned = _crop(np.asarray(render_plan(Image.new("RGB", WIDE, BLACK), report)), layout.legend["pruned"][0])
    padding_colours = {tuple(int(v) for v in c) for c in padding.reshape(-1, 3)}
    assert padding_colours.isdisjoint({tuple(int(v) for v in c) for c in pruned.reshape(-1, 3)})
    panel, image = layout.panel, layout.image
    assert panel[3] - image[3] > 24, "the 100 x 40 image should leave padding below it"
    for colour in sorted(padding_colours):
        pixels = _render(colour, WIDE, 1.0)
        below = pixels[image[3] : panel[3] - 3, panel[0] + 3 : panel[2] - 3].reshape(-1, 3)  # no labels there
        assert _changed(below, np.array(colour, dtype=np.uint8), threshold=20).mean() > 0.3, colour


def test_picture_size_formula() -> None:
    """The size tests/adapters/test_cli.py expects of ``hero run --show``."""
    for size in (SQUARE, WIDE):
        report = _report(WHITE, size, 0.5)
        rows, cols = report.encoded.tile_grid
        unit = 672 / max(rows, cols)
        panel_w, panel_h = round(cols * unit), round(rows * unit)
        expected = (panel_w + 336 + 3 * 16, max(panel_h, 336 + 40) + 34 + 84)
        assert render_plan(Image.new("RGB", size, WHITE), report).size == expected


def test_layer_strip_has_a_colour_scale() -> None:
    """Flat maps (every patch alike) draw in one colour; the colour bar still runs from one end of the ramp
    to the other."""
    flat = torch.full((4, 2, 16), 1 / 17)
    pixels = np.asarray(render_layer_strip(flat, (0, 1, 2, 3), (4, 4)))
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    ends = [tuple(c) for c in _colormap(np.array([0.0, 1.0]))]
    assert all(end in colours for end in ends)
    ramp = {tuple(c) for c in _colormap(np.linspace(0.0, 1.0, 1001))}
    assert len(colours & ramp) > 100
    assert pixels.shape[:2] == (30 + (120 + 34) + 52, 4 * 128 + 8)  # header, one row of maps, colour bar


def test_layer_strip_marks_the_layers_the_preset_reads() -> None:
    attention = torch.rand((4, 2, 16), generator=torch.Generator().manual_seed(0))
    layers, cell = (0, 1, 2, 3), 120
    plain = np.asarray(render_layer_strip(attention, layers, (4, 4)))
    marked = np.asarray(render_layer_strip(attention, layers, (4, 4), read_layers=(2, 9)))
    assert plain.shape == marked.shape
    maps = slice(0, 30 + cell + 34)  # the heat maps and their labels, not the legend below
    changed = np.flatnonzero((plain[maps] != marked[maps]).any(axis=-1).any(axis=0))  # changed columns
    x = 8 + 2 * (cell + 8)  # layer 2's map
    assert changed.size and changed.min() >= x - 4 and changed.max() < x + cell + 4
    assert (plain[maps.stop :] != marked[maps.stop :]).any()  # the legend names them (9: not drawn)
