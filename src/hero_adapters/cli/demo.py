"""``hero demo``: the embedded demo (real LLaVA-NeXT geometry, random weights, nothing downloaded)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hero_core import HeroError

from .._paths import check_folder
from ..rows import open_image
from ._args import _Once, _ratio, _verbosity

NAME, HELP = "demo", "the embedded demo (no download; random weights)"
#: Files ``hero demo`` writes into its ``--out`` folder (a folder holding only these may be written again).
DEMO_FILES = ("report.json", "report.md", "input.png", "kept_tokens*.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image",
        action=_Once,
        type=Path,
        default=None,
        help="use this image instead of the drawn test card (default: the test card)",
    )
    parser.add_argument(
        "--out",
        action=_Once,
        type=Path,
        default=Path("demo-out"),
        help="a new or empty folder, or one an earlier demo wrote (its report and pictures are replaced)",
    )
    parser.add_argument("--keep-ratios", action=_Once, type=_ratio, nargs="+", default=[0.4, 0.2], help="HERO's R")
    _verbosity(parser, top=False)


def _check_demo_folder(out: Path) -> None:
    """``demo --out`` is a folder: refuse an existing file, and a folder holding anything a demo did not write."""
    check_folder("--out", out, parents=False)  # refuses an existing file too
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not any(p.match(name) for name in DEMO_FILES))
        if foreign:
            raise HeroError.field(
                "--out",
                str(out),
                "a new or empty folder, or one an earlier `hero demo` wrote",
                f"It holds {foreign[0]!r}{' and more' if len(foreign) > 1 else ''}; name another folder.",
            )


def execute(args: argparse.Namespace) -> None:
    from ..demo import run_demo

    _check_demo_folder(args.out)
    image = None
    if args.image is not None:
        if args.out.is_dir() and args.image.resolve().parent == args.out.resolve():
            raise HeroError.field("--image", str(args.image), "an image outside --out (the demo writes there)")
        image = open_image(args.image, "--image")
    run_demo(args.out, image=image, keep_ratios=args.keep_ratios)
    print("The weights are RANDOM: the answers are noise; token counts, plans and timings are real.")
    print(
        "With real checkpoints:\n  hero run --model /path/to/llava-v1.6-vicuna-7b-hf "
        "--clip /path/to/clip-vit-large-patch14-336 --image photo.jpg --prompt '...' --keep-ratio 0.2 "
        "--show kept.png"
    )
