"""Pictures of a plan (like HERO's Figure 7): which tokens of every view were kept, and why.

``render_plan`` draws the original image with each local tile's pruned patches masked, the thumbnail
panel beside it, each tile labelled with its budget and the importance split (saliency vs relevance),
and a legend. ``render_layer_strip`` draws one view's CLS attention, layer by layer: the view HERO
section 3.2 uses to motivate low layers for tiles and a late layer for the thumbnail.

The tile geometry comes from the adapter: ``ImageReport.view_boxes`` says where every view lies on the
original image (LLaVA-NeXT: a padded canvas with the image centred; InternVL: tiles that partition the
resized image); the thumbnail is the whole image, drawn beside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hero_core import HeroError
from hero_core.allocators import tile_views

from .extras import require
from .report import ImageReport, _floats

__all__ = ["load_font", "render_layer_strip", "render_plan"]

_TILE_EDGE = (255, 214, 10)
_PADDING = (205, 205, 210)
_MASK = (16, 16, 24)
_BG = (250, 250, 250)
_INK = (20, 20, 20)
_SALIENCY = (66, 133, 244)
_RELEVANCE = (234, 67, 53)


def _pil() -> Any:
    return require("PIL.Image")


def load_font(size: int) -> Any:
    font_module = require("PIL.ImageFont")
    try:
        return font_module.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return font_module.load_default()


def _masked(view_image: Any, keep: np.ndarray, valid: np.ndarray, boxes: np.ndarray, alpha: int = 170) -> Any:
    """Darken the pruned valid patches of one view; ``boxes`` (N, 4) are patch boxes in ``view_image`` pixels."""
    image_module = _pil()
    draw_module = require("PIL.ImageDraw")
    overlay = image_module.new("RGBA", view_image.size, (0, 0, 0, 0))
    draw = draw_module.Draw(overlay)
    for index in np.flatnonzero(valid & ~keep):
        x0, y0, x1, y1 = boxes[index]
        draw.rectangle([x0, y0, x1, y1], fill=(*_MASK, alpha))
    return image_module.alpha_composite(view_image.convert("RGBA"), overlay)


def _grid_boxes(rows: int, cols: int, x0: float, y0: float, width: float, height: float) -> np.ndarray:
    """(rows * cols, 4) raster-order boxes of a rows x cols patch grid over the given rectangle."""
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pw, ph = width / cols, height / rows
    boxes = np.stack([x0 + c * pw, y0 + r * ph, x0 + (c + 1) * pw - 1, y0 + (r + 1) * ph - 1], axis=-1)
    return boxes.reshape(-1, 4)


def render_plan(
    image: Any,
    report: ImageReport,
    path: str | Path | None = None,
    *,
    display: int = 672,
    title: str | None = None,
) -> Any:
    """Draw the kept tokens of one image (thumbnail panel on the right) and optionally save a PNG.

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
    encoded, plan = report.encoded, report.plan
    rows, cols = encoded.grid
    keep = plan.keep.cpu().numpy()
    valid = encoded.valid_mask.cpu().numpy()
    thumb = encoded.thumbnail_index
    tiles = tile_views(encoded)
    boxes = report.view_boxes
    if boxes is None or len(boxes) != encoded.num_views:
        raise HeroError.field(
            "report.view_boxes",
            boxes,
            f"one box per view ({encoded.num_views}): where each view lies on the original image",
            "The adapter could not tell without the image sizes: pass the processor to HeroVLM and the adapter's "
            "image_inputs(images) with the processor outputs.",
        )
    width, height = image.size
    # The canvas the local tiles cover, in fractions of the original image (padding lies outside [0, 1]);
    # everything below is in shown pixels, `scale` of them per image width / height fraction.
    local = [boxes[v] for v in tiles] or [(0.0, 0.0, 1.0, 1.0)]
    x0, y0 = min(0.0, *(b[0] for b in local)), min(0.0, *(b[1] for b in local))
    x1, y1 = max(1.0, *(b[2] for b in local)), max(1.0, *(b[3] for b in local))
    unit = display / max((x1 - x0) * width, (y1 - y0) * height)  # shown pixels per image pixel
    sx, sy = width * unit, height * unit  # shown pixels per unit fraction

    def shown(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        return ((box[0] - x0) * sx, (box[1] - y0) * sy, (box[2] - x0) * sx, (box[3] - y0) * sy)

    panel = image_module.new("RGBA", (max(1, round((x1 - x0) * sx)), max(1, round((y1 - y0) * sy))), (*_PADDING, 255))
    picture = image.convert("RGBA").resize((max(1, round(sx)), max(1, round(sy))))
    panel.paste(picture, (round(-x0 * sx), round(-y0 * sy)))
    for view in tiles:
        bx0, by0, bx1, by1 = shown(boxes[view])
        patch_boxes = _grid_boxes(rows, cols, bx0, by0, bx1 - bx0, by1 - by0)
        panel = _masked(panel, keep[view], valid[view], patch_boxes)
    thumb_side = display // 2
    thumbnail = image.convert("RGB").resize((thumb_side, thumb_side))
    thumb_boxes = _grid_boxes(rows, cols, 0, 0, thumb_side, thumb_side)
    thumbnail = _masked(thumbnail, keep[thumb], valid[thumb], thumb_boxes)

    margin, header, footer = 16, 34, 84
    out_w = panel.size[0] + thumb_side + 3 * margin
    out_h = max(panel.size[1], thumb_side + 40) + header + footer
    out = image_module.new("RGB", (out_w, out_h), _BG)
    out.paste(panel.convert("RGB"), (margin, header))
    out.paste(thumbnail.convert("RGB"), (2 * margin + panel.size[0], header))
    draw = draw_module.Draw(out)
    font, small = load_font(15), load_font(12)
    heading = title or (
        f"keep ratio {plan.keep_ratio:g}: {report.kept_patch_tokens} patch + {report.newline_tokens} newline tokens "
        f"= {report.tokens_out} of {report.tokens_in} ({100 * report.effective_ratio:.1f}%)"
    )
    draw.text((margin, 9), heading, fill=_INK, font=font)
    budgets = plan.budgets.tolist()
    counts = valid.sum(-1).tolist()
    importance = _floats(plan.importance)
    saliency, relevance = _floats(plan.saliency), _floats(plan.relevance)
    for k, view in enumerate(tiles):
        bx0, by0, bx1, by1 = shown(boxes[view])
        x, y = margin + bx0 + 6, header + by0 + 6
        label = f"tile {k + 1}: {budgets[view]}/{counts[view]}"
        if importance is not None:
            label += f"  s={importance[view]:.2f}"
        _label(draw, (x, y), label, small)
        if saliency is not None and relevance is not None and importance is not None:
            _split_bar(draw, (x, y + 18), saliency[view], relevance[view])
        draw.rectangle([margin + bx0, header + by0, margin + bx1, header + by1], outline=_TILE_EDGE, width=2)
    tx = 2 * margin + panel.size[0]
    _label(draw, (tx + 6, header + 6), f"thumbnail: {budgets[thumb]}/{counts[thumb]}", small)
    # legend
    ly = out_h - footer + 12
    draw.rectangle([margin, ly, margin + 14, ly + 14], fill=_MASK)
    draw.text((margin + 20, ly), "pruned patch", fill=_INK, font=small)
    draw.rectangle([margin + 130, ly, margin + 144, ly + 14], outline=_INK, fill=_BG)
    draw.text((margin + 150, ly), "kept patch", fill=_INK, font=small)
    draw.rectangle([margin + 250, ly, margin + 264, ly + 14], fill=_SALIENCY)
    draw.text((margin + 270, ly), "saliency share of importance s", fill=_INK, font=small)
    draw.rectangle([margin + 490, ly, margin + 504, ly + 14], fill=_RELEVANCE)
    draw.text((margin + 510, ly), "relevance share", fill=_INK, font=small)
    draw.rectangle([margin + 630, ly, margin + 644, ly + 14], fill=_PADDING)
    draw.text((margin + 650, ly), "padding (never kept)", fill=_INK, font=small)
    detail = f"tile label: kept/valid patch tokens; layout {report.layout}; query: {report.query!r}"
    draw.text((margin, ly + 24), detail[:140], fill=_INK, font=small)
    draw.text((margin, ly + 44), "thumbnail panel: the whole image as the model's global view", fill=_INK, font=small)
    if path is not None:
        out.save(Path(path))
    return out


def render_layer_strip(
    cls_attention: torch.Tensor,
    layers: tuple[int, ...],
    grid: tuple[int, int],
    path: str | Path | None = None,
    *,
    view_name: str = "view",
    cell: int = 120,
) -> Any:
    """One view's CLS attention per layer (head mean) as a strip of heat maps, optionally saved as PNG.

    Args:
        cls_attention: (L, H, N) the view's CLS->patch attention for ``layers``.
        layers: the 0-based encoder layer of each entry.
        grid: (rows, cols) of patches, rows * cols == N.
        path: where to write the PNG, or None.
    """
    image_module = _pil()
    draw_module = require("PIL.ImageDraw")
    if cls_attention.dim() != 3 or cls_attention.shape[0] != len(layers):
        raise HeroError.field("cls_attention", cls_attention, f"(L={len(layers)}, H, N) for one view")
    maps = cls_attention.float().mean(dim=1).reshape(len(layers), *grid).cpu().numpy()  # (L, rows, cols)
    per_row = min(len(layers), 8)
    lines = (len(layers) + per_row - 1) // per_row
    out = image_module.new("RGB", (per_row * (cell + 8) + 8, lines * (cell + 26) + 30), _BG)
    draw = draw_module.Draw(out)
    font = load_font(12)
    draw.text(
        (8, 8), f"CLS attention of the {view_name}, per layer (mean over heads, max-normalised)", fill=_INK, font=font
    )
    for i, (layer, heat) in enumerate(zip(layers, maps, strict=True)):
        x, y = 8 + (i % per_row) * (cell + 8), 30 + (i // per_row) * (cell + 26)
        tile = image_module.fromarray(_colormap(heat / max(float(heat.max()), 1e-12))).resize((cell, cell), 0)
        out.paste(tile, (x, y))
        draw.text((x, y + cell + 4), f"layer {layer}", fill=_INK, font=font)
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
