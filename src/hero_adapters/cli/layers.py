"""``hero layers``: profile every encoder layer's CLS attention over the images given and suggest HERO's low /
high layers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hero_core import HeroError

from .._paths import exists, is_file
from ..rows import open_image
from ._args import _device_arguments, _model_flag, _Once, _one_line, _verbosity
from ._checks import IMAGE_SUFFIXES, _check_outputs, _check_prompt, _check_weights, _Checked
from ._console import _steps
from ._load import _load_host
from ._output import _write_text

NAME, HELP = "layers", "profile every encoder layer's CLS attention and suggest HERO's low / high layers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _model_flag(parser)
    parser.add_argument(
        "--images",
        action=_Once,
        required=True,
        nargs="+",
        type=Path,
        metavar="IMG",
        help=f"image files and/or folders (every image directly inside: {', '.join(IMAGE_SUFFIXES)})",
    )
    parser.add_argument(
        "--prompt",
        action=_Once,
        default="Describe the image.",
        help="text the processor formats with each image (the vision encoder does not read it)",
    )
    parser.add_argument(
        "--json", action=_Once, type=Path, default=None, metavar="OUT.json", help="write the profile (default: none)"
    )
    _device_arguments(parser)
    _verbosity(parser, top=False)


def _image_paths(paths: Sequence[Path]) -> list[Path]:
    """The image files named, and those directly inside the folders named, each checked to be an image."""
    import warnings

    from ..extras import require

    image_module = require("PIL.Image")
    found: list[Path] = []
    for path in paths:
        if exists(path) and path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise HeroError.field(
                    "--images", str(path), f"image files or a folder with images in it ({', '.join(IMAGE_SUFFIXES)})"
                )
            found += inside
        elif is_file(path):
            found.append(path)
        else:
            raise HeroError.field("--images", str(path), "image files or folders that exist", "Check the path.")
    found = _distinct(found)
    bombs = (image_module.DecompressionBombError, image_module.DecompressionBombWarning)
    for path in found:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", image_module.DecompressionBombWarning)
                with image_module.open(path) as image:
                    image.verify()
        except bombs as error:
            raise HeroError.field(
                "--images",
                str(path),
                f"images of at most {image_module.MAX_IMAGE_PIXELS} pixels (Pillow's decompression-bomb limit)",
                f"{_one_line(error)} Downscale it first.",
            ) from error
        except (OSError, ValueError, SyntaxError) as error:
            raise HeroError.field("--images", str(path), "readable images (PNG, JPEG, ...)", str(error)) from error
    return found


def _distinct(paths: Sequence[Path]) -> list[Path]:
    """Each file once, in the order first named: the same file named twice, or through a folder and by name, or
    through another path to it (a link, ``./``), is one image, not two."""
    kept: list[Path] = []
    seen: set[tuple[int, int] | Path] = set()
    for path in paths:
        try:
            status = path.stat()
            key: tuple[int, int] | Path = (status.st_dev, status.st_ino)
        except OSError:
            key = path.resolve()
        if key not in seen:
            seen.add(key)
            kept.append(path)
    return kept


def execute(args: argparse.Namespace) -> None:
    from ..adapter import get_adapter
    from ..evaluate import device_dtype, host_config
    from ..layers import layer_profile

    _check_prompt("--prompt", args.prompt)
    paths = _image_paths(args.images)  # every image checked before the model loads
    _check_outputs([("--json", args.json, "json")], inputs=[("--images", p) for p in paths],
                   folders=[("--model", args.model)])  # fmt: skip
    device, dtype = device_dtype(args.device, args.dtype)
    config = host_config(args.model)
    _check_weights("--model", args.model)
    steps = _steps(args, 2 + len(paths), "loading")
    host = _load_host(args, _Checked(device, dtype, None, config), steps, [("--prompt", args.prompt)])
    adapter = get_adapter(host.model, processor=host.processor)

    def batches() -> Iterator[dict[str, Any]]:
        for path in paths:
            steps.set_description(f"encoding {path.name}")
            image = open_image(path, "--images")
            yield {**host.inputs([args.prompt], [image]), **adapter.image_inputs([image])}
            steps.update()

    profile = layer_profile(adapter, batches())
    steps.close()
    low, high = profile.suggest()
    if args.json is not None:  # the file asked for first: a closed stdout (`| head`) cannot cost it
        payload = {"model": str(args.model), "images": [str(p) for p in paths], "profile": profile.to_dict()}
        _write_text("--json", args.json, json.dumps(payload, indent=2) + "\n")
    print(
        f"{args.model}: {host.model.config.model_type}, vision encoder of {profile.depth} layers, query "
        f"{profile.query_source!r}; {profile.num_images} image(s), {profile.num_views} views of {profile.num_tokens} "
        f"tokens, top-k = {profile.top_k_fraction:.0%} of a view's valid tokens"
    )
    print(profile.table())
    if profile.high_norm_tokens is not None:
        print(f"high-norm tokens: {profile.high_norm_tokens:.1f} per view (feature norm > median + 3 scaled MADs)")
    if profile.boundary is not None and profile.stage_entropy is not None:
        before, after = profile.stage_entropy
        print(
            f"two-stage boundary: layer {profile.boundary} (mean entropy {before:.3f} before it, {after:.3f} "
            "from it on)"
        )
    else:
        print(f"no entropy drop found: suggesting the paper's layers scaled to {profile.depth} layers")
    print(
        f"suggested: --set low_layers={','.join(map(str, low))} --set high_layers={','.join(map(str, high))}"
        "  (a heuristic from the paper's finding 2; docs/presets.md)"
    )
    if args.json is not None:
        print(f"wrote {args.json}")
