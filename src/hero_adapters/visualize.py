"""Pictures of a plan (like HERO's Figure 7): which tokens of every view were kept, and why.

``render_plan`` draws the original image with each local tile's patches marked, the thumbnail panel beside
it, each tile labelled with its budget and the importance split (saliency vs relevance), and a legend; a tile
without valid positions (all padding) is drawn as padding and labelled "no valid positions" instead.
``render_layer_strip`` draws one view's CLS attention, layer by layer, with a colour scale and the layers
the preset reads marked: the view HERO section 3.2 uses to motivate low layers for tiles and a late layer
for the thumbnail.

The marks read on any content: a pruned patch is greyed, faded toward mid grey and hatched with black and
white lines (each line shows where the other does not: on dark, light and saturated pixels alike); a kept
patch keeps its pixels, and every kept region is outlined in magenta; the processor's padding of the canvas
is a grey checkerboard, neither content nor pruned. ``_paint`` is the one function that draws them, for the
patches and for the legend's swatches alike.

The tile geometry comes from the adapter: ``ImageReport.view_boxes`` says where every view lies on the
original image (LLaVA-NeXT: a padded canvas with the image centred; InternVL: tiles that partition the
resized image); the thumbnail is the whole image, drawn beside.

An image of one view (a native-resolution host such as Qwen-VL: no tiles, no thumbnail) is drawn once, large,
with its kept tokens marked on it; when the plan has regions (``hero_core.NativePlan`` of ``presets.hero_native``)
each region is outlined and labelled with its kept/total tokens and importance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hero_core import HeroError
from hero_core.allocators import tile_views

from .extras import require
from .report import ImageReport, _floats

__all__ = ["load_font", "render_layer_strip", "render_plan"]

# What a shown pixel belongs to (one int8 per pixel of a panel).
_KEPT, _PRUNED, _PADDING, _PLAIN = 0, 1, 2, 3  # _PLAIN: image pixels no view covers, drawn as they are
_LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 luminance weights
_FADE = 0.55  # pruned pixels: this share of their luminance, the rest mid grey ...
_FADE_TO = 118.0
_HATCH_PERIOD = 8  # ... under diagonal lines along x + y: black at phase 0, white at phase 4
_CHECKER = 4  # padding: squares of this side, alternating the two greys
_CHECKER_GREYS = ((150, 150, 156), (190, 190, 196))
_OUTLINE = (255, 0, 255)  # edge of every kept region: a colour photographs rarely hold
_OUTLINE_WIDTH = 2
_SWATCH = 16  # legend swatch side: two hatch / checkerboard periods

_BG = (250, 250, 250)
_INK = (20, 20, 20)
_SALIENCY = (66, 133, 244)
_RELEVANCE = (234, 67, 53)
_READ = (220, 20, 60)  # the frame of a layer the preset reads (no viridis colour is red)

_MARGIN, _HEADER, _FOOTER, _LEGEND_LINE = 16, 34, 84, 20


def _pil() -> Any:
    return require("PIL.Image")


def load_font(size: int) -> Any:
    font_module = require("PIL.ImageFont")
    try:
        return font_module.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return font_module.load_default()


def _paint(content: np.ndarray, states: np.ndarray, origin: tuple[int, int]) -> np.ndarray:
    """The shown pixels of a block of patches: the one drawing of kept, pruned and padding, legend included.

    Args:
        content: (h, w, 3) uint8 image pixels.
        states: (h, w) int8, per pixel ``_KEPT``, ``_PRUNED``, ``_PADDING`` or ``_PLAIN``.
        origin: where ``content[0, 0]`` lies in the picture; hatch and checkerboard are aligned to the picture,
            so that neighbouring patches join and a legend swatch repeats a patch exactly.

    Returns:
        (h, w, 3) uint8: pruned pixels greyed, faded and hatched black and white; padding a checkerboard; kept
        pixels unchanged but for a magenta line along the inside edge of each kept region.
    """
    h, w = states.shape
    ys, xs = np.mgrid[origin[1] : origin[1] + h, origin[0] : origin[0] + w]
    pixels = content.astype(np.float64)
    pruned, padding, kept = states == _PRUNED, states == _PADDING, states == _KEPT
    faded = _FADE * (pixels @ _LUMA) + (1 - _FADE) * _FADE_TO  # (h, w)
    pixels[pruned] = faded[pruned][:, None]
    phase = (xs + ys) % _HATCH_PERIOD
    pixels[pruned & (phase == 0)] = 0
    pixels[pruned & (phase == _HATCH_PERIOD // 2)] = 255
    checker = ((xs // _CHECKER + ys // _CHECKER) % 2).astype(bool)
    pixels[padding & ~checker] = _CHECKER_GREYS[0]
    pixels[padding & checker] = _CHECKER_GREYS[1]
    pixels[kept & ~_eroded(kept, _OUTLINE_WIDTH)] = _OUTLINE
    painted: np.ndarray = pixels.round().clip(0, 255).astype(np.uint8)
    return painted


def _eroded(mask: np.ndarray, width: int) -> np.ndarray:
    """``mask`` less its pixels within ``width`` (Chebyshev distance) of a pixel outside it or of the border."""
    h, w = mask.shape
    padded = np.pad(mask, width, constant_values=False)
    core = mask.copy()
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            core &= padded[dy : dy + h, dx : dx + w]
    return core


def _edges(start: float, stop: float, count: int) -> np.ndarray:
    """(count + 1,) integer pixel edges of ``count`` equal cells over [start, stop): neighbours share an edge."""
    return np.round(np.linspace(start, stop, count + 1)).astype(int)


@dataclass(frozen=True)
class _Layout:
    """Where everything of ``render_plan``'s picture lies, in picture pixels (boxes are x0, y0, x1, y1, ends
    exclusive).

    Attributes:
        size: (width, height) of the picture.
        panel: the canvas of the local tiles (the original image and the processor's padding around it).
        image: where the original image lies in the picture.
        thumbnail: the thumbnail panel.
        views: view -> its box in the picture (local tiles on the panel, the thumbnail on its panel).
        grid: (rows, cols) of patches per view.
        legend: legend swatch boxes by key (``kept``, ``pruned``, ``padding``, ``saliency``, ``relevance``)
            and the text beside each.
    """

    size: tuple[int, int]
    panel: tuple[int, int, int, int]
    image: tuple[int, int, int, int]
    thumbnail: tuple[int, int, int, int]
    views: dict[int, tuple[int, int, int, int]]
    grid: tuple[int, int]
    legend: dict[str, tuple[tuple[int, int, int, int], str]]

    def patches(self, view: int) -> np.ndarray:
        """(N, 4) int boxes of ``view``'s patches in raster order, in picture pixels; neighbours share edges."""
        x0, y0, x1, y1 = self.views[view]
        rows, cols = self.grid
        xe, ye = _edges(x0, x1, cols), _edges(y0, y1, rows)
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        boxes: np.ndarray = np.stack([xe[c], ye[r], xe[c + 1], ye[r + 1]], axis=-1).reshape(-1, 4)
        return boxes


#: The label of a view without valid positions (all padding), in place of its kept/valid count and importance.
_NO_VALID = "no valid positions (all padding)"

_LEGEND = (
    ("kept", "kept patch (region outlined)"),
    ("pruned", "pruned patch"),
    ("padding", "padding (never kept)"),
    ("saliency", "saliency share of importance s"),
    ("relevance", "relevance share"),
)


def _plan_layout(size: tuple[int, int], report: ImageReport, display: int = 672, font: Any = None) -> _Layout:
    """The picture's geometry for an image of ``size`` (width, height); ``font`` is the legend's (default 12 px)."""
    font = load_font(12) if font is None else font
    encoded = report.encoded
    boxes = report.view_boxes
    if boxes is None or len(boxes) != encoded.num_views:
        raise HeroError.field(
            "report.view_boxes",
            boxes,
            f"one box per view ({encoded.num_views}): where each view lies on the original image",
            "The adapter could not tell without the image sizes: pass the processor to HeroVLM and the adapter's "
            "image_inputs(images) with the processor outputs.",
        )
    width, height = size
    tiles = tile_views(encoded)
    thumb = encoded.thumbnail_index
    single = not tiles  # one view (a native-resolution host): drawn on the main panel, no thumbnail panel
    # The canvas the local tiles cover, in fractions of the original image (padding lies outside [0, 1]);
    # shown pixels below: `sx`, `sy` of them per unit fraction of the image's width, height.
    local = [boxes[v] for v in (tiles or [thumb])]
    x0, y0 = min(0.0, *(b[0] for b in local)), min(0.0, *(b[1] for b in local))
    x1, y1 = max(1.0, *(b[2] for b in local)), max(1.0, *(b[3] for b in local))
    unit = display / max((x1 - x0) * width, (y1 - y0) * height)  # shown pixels per image pixel
    sx, sy = width * unit, height * unit
    panel_w, panel_h = max(1, round((x1 - x0) * sx)), max(1, round((y1 - y0) * sy))
    ix, iy = _MARGIN + round(-x0 * sx), _HEADER + round(-y0 * sy)
    image = (ix, iy, ix + max(1, round(sx)), iy + max(1, round(sy)))
    views = {
        v: (
            round(_MARGIN + (boxes[v][0] - x0) * sx),
            round(_HEADER + (boxes[v][1] - y0) * sy),
            round(_MARGIN + (boxes[v][2] - x0) * sx),
            round(_HEADER + (boxes[v][3] - y0) * sy),
        )
        for v in (tiles or [thumb])
    }
    if single:
        out_w, body_h = panel_w + 2 * _MARGIN, panel_h
        shown = [(key, text) for key, text in _LEGEND if key in _legend_keys(report)]
    else:
        side = display // 2
        tx = 2 * _MARGIN + panel_w
        views[thumb] = (tx, _HEADER, tx + side, _HEADER + side)
        out_w, body_h = panel_w + side + 3 * _MARGIN, max(panel_h, side + 40)
        shown = list(_LEGEND)
    # Legend: swatch, text, in lines as wide as the picture (one line unless the picture is narrow).
    placed: list[tuple[int, int, str, str]] = []  # (x, line, key, text)
    x, line = _MARGIN, 0
    for key, text in shown:
        item = _SWATCH + 6 + round(font.getlength(text))
        if x > _MARGIN and x + item > out_w - _MARGIN:
            x, line = _MARGIN, line + 1
        placed.append((x, line, key, text))
        x += item + 22
    lines = line + 1
    out_h = body_h + _HEADER + _FOOTER + _LEGEND_LINE * (lines - 1)
    top = out_h - _FOOTER - _LEGEND_LINE * (lines - 1) + 10
    legend = {
        key: ((x, top + n * _LEGEND_LINE, x + _SWATCH, top + n * _LEGEND_LINE + _SWATCH), text)
        for x, n, key, text in placed
    }
    return _Layout(
        size=(out_w, out_h),
        panel=(_MARGIN, _HEADER, _MARGIN + panel_w, _HEADER + panel_h),
        image=image,
        thumbnail=views[thumb],
        views=views,
        grid=encoded.grid,
        legend=legend,
    )


def _legend_keys(report: ImageReport) -> set[str]:
    """The legend entries a one-view picture needs: kept and pruned; padding where the view has any; the importance
    split where the plan scored regions with both parts."""
    keys = {"kept", "pruned"}
    if not bool(report.encoded.valid_mask.all()):
        keys.add("padding")
    if (
        _region_floats(report.plan, "region_saliency") is not None
        and _region_floats(report.plan, "region_relevance") is not None
    ):
        keys |= {"saliency", "relevance"}
    return keys


def _region_floats(plan: Any, name: str) -> list[float] | None:
    """A per-region tensor of a ``NativePlan`` (``region_importance``, ...) as floats, or None (another plan, or
    none recorded)."""
    value = getattr(plan, name, None)
    return _floats(value) if isinstance(value, torch.Tensor) else None


def _states(layout: _Layout, box: tuple[int, int, int, int], views: Sequence[int], report: ImageReport) -> np.ndarray:
    """(h, w) int8 states of the pixels of ``box``: each view's patches kept, pruned or padding (invalid)."""
    keep = report.plan.keep.cpu().numpy()
    valid = report.encoded.valid_mask.cpu().numpy()
    states = np.full((box[3] - box[1], box[2] - box[0]), _PLAIN, dtype=np.int8)
    for view in views:
        patch_state = np.where(valid[view], np.where(keep[view], _KEPT, _PRUNED), _PADDING).astype(np.int8)
        for (px0, py0, px1, py1), state in zip(layout.patches(view), patch_state, strict=True):
            states[py0 - box[1] : py1 - box[1], px0 - box[0] : px1 - box[0]] = state
    return states


def render_plan(
    image: Any,
    report: ImageReport,
    path: str | Path | None = None,
    *,
    display: int = 672,
    title: str | None = None,
) -> Any:
    """Draw the kept tokens of one image (thumbnail panel on the right) and optionally save a PNG.

    The picture is ``panel + display // 2 + 48`` pixels wide and ``max(panel, display // 2 + 40) + 118`` high,
    where the panel, the local tiles' canvas, has ``display`` pixels on its longer side (a narrow picture whose
    legend takes more than one line is 20 pixels higher per extra line). An image of one view (no tiles: a
    native-resolution host) has no thumbnail panel: its one view is the panel, ``panel + 32`` pixels wide and
    ``panel + 118`` high (legend lines likewise), with the plan's regions outlined when it has any.

    Args:
        image: the original ``PIL.Image`` the report was made from.
        report: the image's ``ImageReport`` (``HeroVLM.plan(...).images[i]``).
        path: where to write the PNG, or None.
        display: the longest side of the drawn image, in pixels.
        title: a line above the picture (default: the preset's counts).

    Returns:
        The picture as a ``PIL.Image`` (RGB).
    """
    image_module = _pil()
    draw_module = require("PIL.ImageDraw")
    font, small = load_font(15), load_font(12)
    layout = _plan_layout(image.size, report, display, small)
    encoded, plan = report.encoded, report.plan
    thumb = encoded.thumbnail_index
    tiles = tile_views(encoded)
    rgb = image.convert("RGB")
    out = image_module.new("RGB", layout.size, _BG)

    # The local tiles' canvas: the image where it lies, padding around it (also inside partial patches).
    panel, placed = layout.panel, layout.image
    canvas = image_module.new("RGB", (panel[2] - panel[0], panel[3] - panel[1]), _BG)
    canvas.paste(
        rgb.resize((placed[2] - placed[0], placed[3] - placed[1])), (placed[0] - panel[0], placed[1] - panel[1])
    )
    single = not tiles
    states = _states(layout, panel, tiles or [thumb], report)
    inside = np.zeros(states.shape, dtype=bool)
    inside[
        max(0, placed[1] - panel[1]) : max(0, placed[3] - panel[1]),
        max(0, placed[0] - panel[0]) : max(0, placed[2] - panel[0]),
    ] = True
    states[~inside] = _PADDING
    out.paste(image_module.fromarray(_paint(np.asarray(canvas), states, panel[:2])), panel[:2])
    box = layout.thumbnail
    if not single:
        thumbnail = np.asarray(rgb.resize((box[2] - box[0], box[3] - box[1])))
        out.paste(image_module.fromarray(_paint(thumbnail, _states(layout, box, [thumb], report), box[:2])), box[:2])

    draw = draw_module.Draw(out)
    heading = title or (
        f"keep ratio {plan.keep_ratio:g}: {report.kept_patch_tokens} patch + {report.newline_tokens} newline tokens "
        f"= {report.tokens_out} of {report.tokens_in} ({100 * report.effective_ratio:.1f}%)"
    )
    draw.text((_MARGIN, 9), heading, fill=_INK, font=font)
    budgets = plan.budgets.tolist()
    counts = encoded.valid_mask.sum(-1).tolist()
    importance = _floats(plan.importance)
    saliency, relevance = _floats(plan.saliency), _floats(plan.relevance)
    for k, view in enumerate(tiles):
        bx0, by0, bx1, by1 = layout.views[view]
        _tile_edge(draw, (bx0, by0, bx1 - 1, by1 - 1))
        if counts[view] == 0:
            # All padding: nothing to keep, so no importance is shown (the allocator still scores the view's CLS
            # like any tile's, e.g. 1/3 for three identical padding tiles, but its budget is capped at 0).
            _label(draw, (bx0 + 6, by0 + 6), f"tile {k + 1}: {_NO_VALID}", small)
            continue
        label = f"tile {k + 1}: {budgets[view]}/{counts[view]}"
        if importance is not None:
            label += f"  s={importance[view]:.2f}"
        _label(draw, (bx0 + 6, by0 + 6), label, small)
        if saliency is not None and relevance is not None and importance is not None:
            _split_bar(draw, (bx0 + 6, by0 + 24), saliency[view], relevance[view])
    if single:
        regions = _draw_regions(draw, layout, report, small)
        _tile_edge(draw, (box[0], box[1], box[2] - 1, box[3] - 1))
        if not regions:
            _label(draw, (box[0] + 6, box[1] + 6), f"image: {budgets[thumb]}/{counts[thumb]}", small)
    else:
        _tile_edge(draw, (box[0], box[1], box[2] - 1, box[3] - 1))
        _label(draw, (box[0] + 6, box[1] + 6), f"thumbnail: {budgets[thumb]}/{counts[thumb]}", small)

    swatch_states = {"kept": _KEPT, "pruned": _PRUNED, "padding": _PADDING}
    for key, ((sx0, sy0, sx1, sy1), text) in layout.legend.items():
        if key in swatch_states:
            block = np.full((sy1 - sy0, sx1 - sx0), swatch_states[key], dtype=np.int8)
            base = np.full((*block.shape, 3), _BG, dtype=np.uint8)
            out.paste(image_module.fromarray(_paint(base, block, (sx0, sy0))), (sx0, sy0))
        else:
            draw.rectangle([sx0, sy0, sx1 - 1, sy1 - 1], fill=_SALIENCY if key == "saliency" else _RELEVANCE)
        draw.text((sx1 + 6, sy0 + 1), text, fill=_INK, font=small)
    below = max(y1 for (_, _, _, y1), _ in layout.legend.values()) + 8
    if single:
        what = "region label: kept/all tokens of the region" if regions else "label: kept/valid tokens"
        detail = f"{what}; layout {report.layout}; query: {report.query!r}"
        note = "one view: the image at the host's own resolution (no tiles, no thumbnail)"
        if regions:
            note += f"; {regions} regions outlined (hero-native)"
    else:
        detail = f"tile label: kept/valid patch tokens; layout {report.layout}; query: {report.query!r}"
        note = "thumbnail panel: the whole image as the model's global view"
    draw.text((_MARGIN, below), detail[:140], fill=_INK, font=small)
    draw.text((_MARGIN, below + 20), note, fill=_INK, font=small)
    if path is not None:
        out.save(Path(path))
    return out


def _draw_regions(draw: Any, layout: _Layout, report: ImageReport, font: Any) -> int:
    """Outline the regions of a one-view plan (``NativePlan.regions``: (row0, col0, row1, col1) boxes of the token
    grid) on its view, each labelled ``region i: kept/all`` with its importance and split bar when the plan has
    them; returns how many were drawn (0 for a plan without regions)."""
    regions = tuple(getattr(report.plan, "regions", ()) or ())
    view = report.encoded.thumbnail_index
    rows, cols = layout.grid
    if not regions or any(len(r) != 4 or not 0 <= r[0] < r[2] <= rows or not 0 <= r[1] < r[3] <= cols
                          for r in regions):  # fmt: skip
        return 0
    x0, y0, x1, y1 = layout.views[view]
    xe, ye = _edges(x0, x1, cols), _edges(y0, y1, rows)
    keep = report.plan.keep[view].reshape(rows, cols).cpu().numpy()
    importance = _region_floats(report.plan, "region_importance")
    saliency = _region_floats(report.plan, "region_saliency")
    relevance = _region_floats(report.plan, "region_relevance")
    for r0, c0, r1, c1 in regions:
        _tile_edge(draw, (int(xe[c0]), int(ye[r0]), int(xe[c1]) - 1, int(ye[r1]) - 1))
    for i, (r0, c0, r1, c1) in enumerate(regions):  # labels over every edge
        label = f"region {i + 1}: {int(keep[r0:r1, c0:c1].sum())}/{(r1 - r0) * (c1 - c0)}"
        if importance is not None and len(importance) == len(regions):
            label += f"  s={importance[i]:.2f}"
        _label(draw, (int(xe[c0]) + 6, int(ye[r0]) + 6), label, font)
        if saliency is not None and relevance is not None and len(saliency) == len(relevance) == len(regions):
            _split_bar(draw, (int(xe[c0]) + 6, int(ye[r0]) + 24), saliency[i], relevance[i])
    return len(regions)


def render_layer_strip(
    cls_attention: torch.Tensor,
    layers: tuple[int, ...],
    grid: tuple[int, int],
    path: str | Path | None = None,
    *,
    view_name: str = "view",
    cell: int = 120,
    read_layers: Sequence[int] = (),
) -> Any:
    """One view's CLS attention per layer (head mean) as a strip of heat maps, optionally saved as PNG.

    Each map is scaled from its own minimum (dark violet) to its maximum (yellow), the two values written under
    it; a colour bar below the maps gives the scale. The layers in ``read_layers`` get a red frame.

    The picture is ``max(min(L, 8) * (cell + 8) + 8, its text's width)`` pixels wide and
    ``30 + lines * (cell + 34) + 52`` high, for ``lines = ceil(L / 8)`` rows of maps.

    Args:
        cls_attention: (L, H, N) the view's CLS->patch attention for ``layers``.
        layers: the 0-based encoder layer of each entry.
        grid: (rows, cols) of patches, rows * cols == N.
        path: where to write the PNG, or None.
        view_name: the view's name in the title (``"thumbnail"``, ``"tile 2"``).
        cell: side of one heat map, in pixels.
        read_layers: the layers the preset reads for this view, marked (those not in ``layers`` are listed
            in the legend as not drawn).
    """
    image_module = _pil()
    draw_module = require("PIL.ImageDraw")
    if cls_attention.dim() != 3 or cls_attention.shape[0] != len(layers):
        raise HeroError.field("cls_attention", cls_attention, f"(L={len(layers)}, H, N) for one view")
    maps = cls_attention.float().mean(dim=1).reshape(len(layers), *grid).cpu().numpy()  # (L, rows, cols)
    read = sorted(set(int(layer) for layer in read_layers))
    font = load_font(12)
    title = f"CLS attention of the {view_name}, per layer (mean over heads)"
    bar_w, bar_h = 160, 10
    scale_text = "min to max of each map (the values under it)"
    missing = [layer for layer in read if layer not in layers]
    read_text = "layers the preset reads: " + ", ".join(map(str, read))
    if missing:
        read_text += f" ({', '.join(map(str, missing))} not drawn)"
    per_row = min(len(layers), 8)
    lines = (len(layers) + per_row - 1) // per_row
    text_w = max(font.getlength(title), bar_w + 6 + font.getlength(scale_text), 26 + font.getlength(read_text))
    width = max(per_row * (cell + 8) + 8, 16 + round(text_w))
    maps_h = lines * (cell + 34)
    out = image_module.new("RGB", (width, 30 + maps_h + 52), _BG)
    draw = draw_module.Draw(out)
    draw.text((8, 8), title, fill=_INK, font=font)
    for i, (layer, heat) in enumerate(zip(layers, maps, strict=True)):
        x, y = 8 + (i % per_row) * (cell + 8), 30 + (i // per_row) * (cell + 34)
        low, high = float(heat.min()), float(heat.max())
        span = high - low
        scaled = (heat - low) / span if span > 1e-6 * max(abs(high), 1e-12) else np.zeros_like(heat)
        out.paste(image_module.fromarray(_colormap(scaled)).resize((cell, cell), 0), (x, y))
        marked = layer in read
        if marked:
            draw.rectangle([x - 4, y - 4, x + cell + 3, y + cell + 3], outline=_READ, width=3)
        name = f"layer {layer}" + ("  read" if marked else "")
        draw.text((x, y + cell + 4), name, fill=_READ if marked else _INK, font=font)
        draw.text((x, y + cell + 18), f"{low:.3g} to {high:.3g}", fill=_INK, font=font)
    y = 30 + maps_h + 4
    bar = _colormap(np.broadcast_to(np.linspace(0.0, 1.0, bar_w), (bar_h, bar_w)))
    out.paste(image_module.fromarray(bar), (8, y))
    draw.rectangle([7, y - 1, 8 + bar_w, y + bar_h], outline=_INK)
    draw.text((8 + bar_w + 6, y - 2), scale_text, fill=_INK, font=font)
    draw.text((8, y + bar_h + 2), "min", fill=_INK, font=font)
    draw.text((8 + bar_w - round(font.getlength("max")), y + bar_h + 2), "max", fill=_INK, font=font)
    if read:
        y += bar_h + 20
        draw.rectangle([8, y, 21, y + 13], outline=_READ, width=3)
        draw.text((30, y), read_text, fill=_INK, font=font)
    if path is not None:
        out.save(Path(path))
    return out


def _colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] to uint8 RGB along a dark-blue -> teal -> yellow ramp (viridis-like)."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    position = np.clip(values, 0.0, 1.0) * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    colours: np.ndarray = (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)
    return colours


def _tile_edge(draw: Any, box: tuple[int, int, int, int]) -> None:
    """A tile's border: white between two black lines, visible on any content."""
    x0, y0, x1, y1 = box
    draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0), width=3)
    draw.rectangle([x0 + 1, y0 + 1, x1 - 1, y1 - 1], outline=(255, 255, 255), width=1)


def _label(draw: Any, xy: tuple[float, float], text: str, font: Any) -> None:
    x, y = xy
    box = draw.textbbox((x, y), text, font=font)
    draw.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill=(255, 255, 255))
    draw.text((x, y), text, fill=_INK, font=font)


def _split_bar(draw: Any, xy: tuple[float, float], saliency: float, relevance: float, width: int = 90) -> None:
    """A bar of the tile's importance: saliency part then relevance part (scaled so s = 1 fills it)."""
    x, y = xy
    s_w, r_w = round(width * saliency), round(width * relevance)
    draw.rectangle([x - 1, y - 1, x + width + 1, y + 7], fill=(255, 255, 255), outline=(120, 120, 120))
    if s_w:
        draw.rectangle([x, y, x + s_w, y + 6], fill=_SALIENCY)
    if r_w:
        draw.rectangle([x + s_w, y, x + s_w + r_w, y + 6], fill=_RELEVANCE)
