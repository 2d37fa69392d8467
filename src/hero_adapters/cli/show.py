"""``hero show``: plan without generating and draw the kept tokens (``--layers``: one view's CLS attention per
layer)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hero_core import HeroError

from ._args import _model_arguments, _Once
from ._console import _steps
from ._load import _single, _start, _strip_path, _table

NAME, HELP = "show", "draw which tokens are kept (no generation)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser, batch=False)
    parser.add_argument(
        "--out",
        action=_Once,
        type=Path,
        default=Path("kept_tokens.png"),
        metavar="OUT.png",
        help="the picture (.png, .jpg, .webp, ...)",
    )
    parser.add_argument(
        "--layers",
        action=_Once,
        nargs="?",
        const="thumbnail",
        default=None,
        metavar="VIEW",
        help="also draw one view's CLS attention per layer into OUT_layers.png (VIEW: 'thumbnail' or a tile "
        "number; default: no strip, 'thumbnail' when VIEW is left out)",
    )
    parser.add_argument(
        "--json", action=_Once, type=Path, default=None, metavar="OUT.json", help="write the plan (default: none)"
    )


def execute(args: argparse.Namespace) -> None:
    from ..visualize import render_layer_strip, render_plan

    if args.layers is not None and args.layers != "thumbnail" and not (args.layers.isdigit() and int(args.layers)):
        raise HeroError.field("--layers", args.layers, "'thumbnail' or a tile number >= 1")
    image, overrides, checked = _single(args)
    steps = _steps(args, 4, "loading")
    session = _start(args, checked, overrides, [("--prompt", args.prompt)], steps)
    inputs = session.host.inputs([args.prompt], [image])
    extra = session.vlm.adapter.image_inputs([image])
    steps.set_description("encoding + planning")
    report = session.vlm.plan(**inputs, **extra, query=args.prompt)
    steps.update()
    steps.close()
    encoded = report.images[0].encoded
    view = None
    if args.layers is not None:  # the tile number is checked against this image's tiles before anything is written
        view = encoded.thumbnail_index if args.layers == "thumbnail" else _tile_view(args.layers, encoded)
    print(_table(report, session, inputs))
    render_plan(image, report.images[0], args.out)
    print(f"wrote {args.out}")
    if view is not None:
        vlm = session.vlm
        layers = tuple(range(int(vlm.adapter.num_layers)))
        images = vlm.adapter.encode({**inputs, **extra}, layers)
        strip_path = _strip_path(args.out)
        name = "thumbnail" if view == encoded.thumbnail_index else f"tile {view}"
        selector, allocator = vlm.pruner.selector, vlm.pruner.allocator
        if view == encoded.thumbnail_index:  # the layers this view's selection (and the allocator) read
            read = (*getattr(selector, "high_layers", selector.layers), *getattr(allocator, "layers", ()))
        else:
            read = tuple(getattr(selector, "low_layers", selector.layers))
        render_layer_strip(
            images[0].tiles.cls_attention[:, view], layers, encoded.grid, strip_path, view_name=name, read_layers=read
        )
        print(f"wrote {strip_path}")
    if args.json is not None:
        args.json.write_text(json.dumps({"preset": args.preset, "report": report.to_dict()}, indent=2) + "\n")
        print(f"wrote {args.json}")


def _tile_view(text: str, encoded: Any) -> int:
    from hero_core.allocators import tile_views

    tiles = tile_views(encoded)
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 1 <= number <= len(tiles):
        raise HeroError.field("--layers", text, f"'thumbnail' or a tile number in [1, {len(tiles)}]")
    return tiles[number - 1]
