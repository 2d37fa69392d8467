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
from ._load import _processor_pixels, _processor_views, _single, _start, _strip_path, _table, _view_names
from ._output import _write_file, _write_text

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
    """Plan, then write the picture, the ``--layers`` strip and ``--json`` (each whole or not at all), and only then
    print the table: a closed stdout (``| head -1``) cannot cost a file asked for."""
    from ..visualize import render_layer_strip, render_plan

    number = args.layers is not None and args.layers.isascii() and args.layers.isdecimal()  # '²' is a digit too
    if args.layers is not None and args.layers != "thumbnail" and not (number and int(args.layers)):
        raise HeroError.field("--layers", args.layers, "'thumbnail' or a tile number >= 1")
    image, overrides, checked = _single(args)

    def tile_count(processor: Any) -> None:  # before the weights load: the processor alone says how many tiles
        if args.layers is None or args.layers == "thumbnail":
            return
        tiles = max(_processor_views(_processor_pixels(args.model, processor, args.prompt, image)) - 1, 0)
        if int(args.layers) > tiles:
            raise _no_such_tile(args.layers, tiles, f"The processor cuts {args.image} into {tiles} tile(s).")

    steps = _steps(args, 4, "loading")
    session = _start(args, checked, overrides, [("--prompt", args.prompt)], steps, also=tile_count)
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
    _write_file("--out", args.out, lambda path: render_plan(image, report.images[0], path))
    written = [args.out]
    if view is not None:
        vlm = session.vlm
        layers = tuple(range(int(vlm.adapter.num_layers)))
        images = vlm.adapter.encode({**inputs, **extra}, layers)
        strip_path = _strip_path(args.out)
        name = _view_names(encoded)[view]
        selector, allocator = vlm.pruner.selector, vlm.pruner.allocator
        if view == encoded.thumbnail_index:  # the layers this view's selection (and the allocator) read
            read = (*getattr(selector, "high_layers", selector.layers), *getattr(allocator, "layers", ()))
        else:
            read = tuple(getattr(selector, "low_layers", selector.layers))
        attention = images[0].tiles.cls_attention[:, view]
        _write_file(
            "--out (its --layers strip)",
            strip_path,
            lambda path: render_layer_strip(attention, layers, encoded.grid, path, view_name=name, read_layers=read),
        )
        written.append(strip_path)
    if args.json is not None:
        _write_text(
            "--json", args.json, json.dumps({"preset": args.preset, "report": report.to_dict()}, indent=2) + "\n"
        )
        written.append(args.json)
    print(_table(report, session, inputs))
    for path in written:
        print(f"wrote {path}")


def _no_such_tile(text: str, tiles: int, why: str = "") -> HeroError:
    expected = f"'thumbnail' or a tile number in [1, {tiles}]" if tiles else "'thumbnail' (this image has no tiles)"
    return HeroError.field("--layers", text, expected, why)


def _tile_view(text: str, encoded: Any) -> int:
    from hero_core.allocators import tile_views

    tiles = tile_views(encoded)
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 1 <= number <= len(tiles):
        raise _no_such_tile(text, len(tiles))
    return tiles[number - 1]
