"""The ``hero`` command: answer with pruning (one image, or every row of a data file), evaluate it on a data file,
draw the plan, profile the encoder's layers, run the demo, the FLOPs model and benchmarks.

Every bad argument or input ends with one line on stderr (``hero: error: ...``, naming the flag) and exit code
2, before anything expensive runs: paths, extensions, prompts, images and ``--set`` fields are checked before
the model loads (layer numbers against the encoder depth in the checkpoint's ``config.json``). Notes go through
the standard ``logging`` module (loggers ``hero_adapters`` and ``hero_core``): ``-q`` hides them, ``-v`` adds
debug lines with timings. Results go to stdout.

One module per subcommand (``run``, ``show``, ``layers``, ``eval_``, ``flops``, ``bench``, ``demo``), each with
its ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``execute(args)``; the shared parts are ``_args`` (the
parser's pieces), ``_checks`` (what is checked before anything loads), ``_load`` (loading a host) and
``_console`` (logging and progress bars).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from hero_core import HeroError

from .. import __version__
from . import bench, demo, eval_, flops, layers, run, show
from ._args import _Formatter, _one_line, _Parser, _verbosity

# Names other code reads from ``hero_adapters.cli`` (tests, tools), still found where they were before the split.
from ._checks import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from ._checks import LAYER_FIELDS as LAYER_FIELDS
from ._console import LOGGERS as LOGGERS
from ._console import PIPE_CLOSED, _configure_logging, _stdout_closed
from .demo import DEMO_FILES as DEMO_FILES
from .flops import SHAPES as SHAPES

__all__ = ["main"]

EXAMPLES = """\
examples:
  hero demo                                   # no download: real geometry, random weights
  hero run --model ./llava-v1.6-vicuna-7b-hf --clip ./clip-vit-large-patch14-336 \\
           --image photo.jpg --prompt "What is written on the sign?" --keep-ratio 0.2 --show kept.png
  hero run --model ./llava-v1.6-vicuna-7b-hf --image photo.jpg --prompt "Describe it." --compare
  hero run --model ./llava-v1.6-vicuna-7b-hf --data rows.jsonl --batch-size 4 --json answers.jsonl
  hero show --model ./llava-v1.6-vicuna-7b-hf --image photo.jpg --prompt "Describe it." --out kept.png --layers
  hero show --model ./InternVL3-1B-hf --image photo.jpg --prompt "Describe it." --out kept.png
  hero layers --model ./InternVL3-1B-hf --images photos/ extra.jpg --json layers.json
  hero eval --model ./llava-v1.6-vicuna-7b-hf --clip ./clip-vit-large-patch14-336 --data rows.jsonl \\
            --keep-ratios 1 0.4 0.2 --presets hero uniform-random --json eval.json
  hero flops --shape vicuna-7b --tokens 2673 1105 583
  hero bench core

data files (--data): JSON Lines, one row per line, relative image paths read from the file's folder:
  {"id": "q1", "image": "images/sign.jpg", "prompt": "What is written on the sign?", "answer": "stop"}
"""

#: The subcommands, in the order ``hero --help`` lists them.
COMMANDS: tuple[ModuleType, ...] = (run, show, layers, eval_, demo, flops, bench)


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hero",
        description="HERO visual-token pruning for high-resolution VLMs.",
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"hero {__version__}")
    _verbosity(parser, top=True)
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    for module in COMMANDS:
        sub = commands.add_parser(
            module.NAME, help=module.HELP, description=module.HELP, epilog=EXAMPLES, formatter_class=_Formatter
        )
        module.add_arguments(sub)
    return parser


# -------------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hero`` console script; returns the exit code (0, 2 for any bad input, 130 on ^C, 141
    when stdout's reader went away: ``| head``, quietly, after the files asked for are written).

    ``hero`` without a command prints the help and returns 0.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    verbose, quiet = getattr(args, "verbose", 0), getattr(args, "quiet", False)
    if verbose and quiet:
        parser.error("argument -q/--quiet: not allowed with argument -v/--verbose")
    handler = {module.NAME: module.execute for module in COMMANDS}[args.command]
    restore = _configure_logging(verbose, quiet)
    try:
        handler(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe shows inside the try
    except BrokenPipeError:  # `hero show ... | head -1`: the reader went away; every file asked for is written
        _stdout_closed()
        return PIPE_CLOSED
    except HeroError as error:
        print(f"hero: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hero: interrupted", file=sys.stderr)
        return 130
    finally:
        restore()
    return 0
