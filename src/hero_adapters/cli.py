"""The ``hero`` command: answer with pruning (one image, or every row of a data file), evaluate it on a data file,
draw the plan, profile the encoder's layers, run the demo, the FLOPs model and benchmarks.

Every bad argument or input ends with one line on stderr (``hero: error: ...``, naming the flag) and exit code
2, before anything expensive runs: paths, extensions, prompts, images and ``--set`` fields are checked before
the model loads (layer numbers against the encoder depth in the checkpoint's ``config.json``). Notes go through
the standard ``logging`` module (loggers ``hero_adapters`` and ``hero_core``): ``-q`` hides them, ``-v`` adds
debug lines with timings. Results go to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import torch

from hero_core import VICUNA_7B, VICUNA_13B, HeroError, ModelShape, presets

from . import __version__
from ._paths import check_folder, check_path, exists, is_file
from .bench import BENCHMARKS
from .rows import PLACEHOLDER, Row, check_placeholders, open_image

__all__ = ["main"]

_LOG = logging.getLogger("hero_adapters.cli")  # also under `python -m hero_adapters.cli`
#: The loggers ``-v`` / ``-q`` configure: the library's own.
LOGGERS = ("hero_adapters", "hero_core")

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

SHAPES = {"vicuna-7b": VICUNA_7B, "vicuna-13b": VICUNA_13B}
#: What ``hero layers --images FOLDER`` takes from a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Files ``hero demo`` writes into its ``--out`` folder (a folder holding only these may be written again).
DEMO_FILES = ("report.json", "report.md", "input.png", "kept_tokens*.png")
#: Preset fields that name encoder layers (checked against the encoder's depth).
LAYER_FIELDS = ("low_layers", "high_layers", "layer", "allocator_layer", "selector_layer")


# ------------------------------------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one readable line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"hero: error: {_one_line(message)} (see `{self.prog} --help`)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The examples as written, and every option's help ending with its default (where it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or not action.option_strings
            or action.nargs == 0  # flags: -v, -q, --compare
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or action.required
        ):
            return text
        return f"{text} (default: {_shown(default).replace('%', '%%')})"


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(item) for item in value) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class _Once(argparse.Action):
    """Store the value; refuse the option a second time (argparse alone silently keeps the last one)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given: set[str] = namespace.__dict__.setdefault("_given", set())
        if self.dest in given:
            parser.error(
                f"argument {option_string}: given twice ({_shown(getattr(namespace, self.dest))!r}, then "
                f"{_shown(values)!r}); give it once"
            )
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def _ratio(text: str) -> float:
    """A keep ratio in (0, 1]; argparse prefixes the flag (``argument --keep-ratios: ...``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use e.g. 0.2") from None
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"{text} is outside (0, 1]: a keep ratio is the fraction of patch tokens KEPT, e.g. 0.2"
        )
    return value


class _Override(NamedTuple):
    """One ``--set KEY=VALUE``: the field, its parsed value and the text as typed (for messages)."""

    key: str
    value: Any
    text: str


def _override(text: str) -> _Override:
    """``KEY=VALUE``: ints, floats, comma-separated int tuples (``low_layers=4,5,6``) or strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. --set alpha=0.7")
    if "," in raw or key.endswith("layers"):
        try:
            return _Override(key, tuple(int(x) for x in raw.split(",") if x.strip()), text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: layers are comma-separated ints, e.g. 4,5,6") from None
    for cast in (int, float):
        try:
            return _Override(key, cast(raw), text)
        except ValueError:
            pass
    return _Override(key, {"true": True, "false": False}.get(raw.lower(), raw), text)


def _layouts() -> list[str]:
    """Every layout some host adapter offers (the adapters are the one source)."""
    from . import hosts  # noqa: F401  (registers the host adapters)
    from .adapter import all_layouts

    return list(all_layouts())


def _verbosity(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``-v`` / ``-q``, before or after the command (``hero -v run ...`` and ``hero run -v ...``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else argparse.SUPPRESS,
        help="also print debug lines (timings, what was loaded)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="print results and errors only: no notes, no progress bars",
    )


def _device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", action=_Once, default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present"
    )
    parser.add_argument(
        "--dtype",
        action=_Once,
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA, float32 on the CPU",
    )


def _pruning_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clip",
        action=_Once,
        default=None,
        help="CLIP checkpoint directory or cached hub id, for task relevance; always loaded and checked when "
        "given (default: none: tile budgets come from visual saliency alone)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field, e.g. --set alpha=0.7 --set low_layers=4,5,6 (default: the preset's own "
        "fields, its layers scaled to the encoder's depth)",
    )
    parser.add_argument(
        "--layout",
        action=_Once,
        default=None,
        choices=_layouts(),
        help="token layout (default: the host's own, 'vanilla')",
    )


def _model_arguments(parser: argparse.ArgumentParser, *, batch: bool) -> None:
    parser.add_argument(
        "--model",
        action=_Once,
        required=True,
        help="checkpoint directory or cached hub id of a supported host (LLaVA-NeXT, InternVL, LLaVA-OneVision)",
    )
    parser.add_argument(
        "--image",
        action=_Once,
        required=not batch,
        type=Path,
        help="the image file" + (" (required unless --data)" if batch else ""),
    )
    parser.add_argument(
        "--prompt",
        action=_Once,
        required=not batch,
        help="the question / instruction, without an <image> placeholder (the image is placed before it)"
        + (" (required unless --data)" if batch else ""),
    )
    if batch:
        parser.add_argument(
            "--data",
            action=_Once,
            type=Path,
            default=None,
            metavar="ROWS.jsonl",
            help='answer every row of a JSON Lines file {"id", "image", "prompt", "answer"?} instead of --image / '
            "--prompt; the model loads once (default: none)",
        )
    parser.add_argument(
        "--keep-ratio", action=_Once, type=_ratio, default=0.2, help="fraction of patch tokens kept, in (0, 1]"
    )
    parser.add_argument(
        "--preset", action=_Once, default="hero", choices=sorted(presets.PRESETS), help="pruning method"
    )
    _pruning_arguments(parser)
    _device_arguments(parser)
    _verbosity(parser, top=False)


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

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(
            name, help=text, description=text, epilog=EXAMPLES, formatter_class=_Formatter
        )
        return sub

    run = command("run", "answer a prompt with pruning (one image, or every row of --data)")
    _model_arguments(run, batch=True)
    run.add_argument("--max-new-tokens", action=_Once, type=int, default=64, help="greedy decoding limit")
    run.add_argument(
        "--batch-size", action=_Once, type=int, default=None, help="with --data: rows per generate call (default: 1)"
    )
    run.add_argument(
        "--compare",
        action="store_true",
        help="also run the unpruned model: both warmed up, then timed alternately (--repeats), medians printed",
    )
    run.add_argument(
        "--repeats",
        action=_Once,
        type=int,
        default=None,
        help="with --compare: timed runs of each path (default: 3)",
    )
    run.add_argument(
        "--show",
        action=_Once,
        type=Path,
        default=None,
        metavar="OUT.png",
        help="also draw the kept tokens (.png, .jpg, .webp, ...; default: no picture)",
    )
    run.add_argument(
        "--json",
        action=_Once,
        type=Path,
        default=None,
        metavar="OUT.json",
        help="write the report as JSON; with --data, JSON Lines: one result per row, in input order, written "
        "as rows finish (default: none)",
    )

    show = command("show", "draw which tokens are kept (no generation)")
    _model_arguments(show, batch=False)
    show.add_argument(
        "--out",
        action=_Once,
        type=Path,
        default=Path("kept_tokens.png"),
        metavar="OUT.png",
        help="the picture (.png, .jpg, .webp, ...)",
    )
    show.add_argument(
        "--layers",
        action=_Once,
        nargs="?",
        const="thumbnail",
        default=None,
        metavar="VIEW",
        help="also draw one view's CLS attention per layer into OUT_layers.png (VIEW: 'thumbnail' or a tile "
        "number; default: no strip, 'thumbnail' when VIEW is left out)",
    )
    show.add_argument(
        "--json", action=_Once, type=Path, default=None, metavar="OUT.json", help="write the plan (default: none)"
    )

    layers = command("layers", "profile every encoder layer's CLS attention and suggest HERO's low / high layers")
    layers.add_argument(
        "--model",
        action=_Once,
        required=True,
        help="checkpoint directory or cached hub id of a supported host (LLaVA-NeXT, InternVL, LLaVA-OneVision)",
    )
    layers.add_argument(
        "--images",
        action=_Once,
        required=True,
        nargs="+",
        type=Path,
        metavar="IMG",
        help=f"image files and/or folders (every image directly inside: {', '.join(IMAGE_SUFFIXES)})",
    )
    layers.add_argument(
        "--prompt",
        action=_Once,
        default="Describe the image.",
        help="text the processor formats with each image (the vision encoder does not read it)",
    )
    layers.add_argument(
        "--json", action=_Once, type=Path, default=None, metavar="OUT.json", help="write the profile (default: none)"
    )
    _device_arguments(layers)
    _verbosity(layers, top=False)

    evaluation = command(
        "eval", "pruned against unpruned answers on a data file: agreement, accuracy, image tokens, prefill speed-up"
    )
    evaluation.add_argument(
        "--model",
        action=_Once,
        required=True,
        help="checkpoint directory or cached hub id of a supported host (LLaVA-NeXT, InternVL, LLaVA-OneVision)",
    )
    evaluation.add_argument(
        "--data",
        action=_Once,
        required=True,
        type=Path,
        metavar="ROWS.jsonl",
        help='JSON Lines, one row per line: {"id": ..., "image": PATH, "prompt": ..., "answer": ... (optional)}; '
        "relative image paths are read from the file's folder",
    )
    evaluation.add_argument(
        "--keep-ratios",
        action=_Once,
        type=_ratio,
        nargs="+",
        default=[1.0, 0.4, 0.2],
        metavar="R",
        help="fractions of patch tokens kept",
    )
    methods = evaluation.add_mutually_exclusive_group()
    methods.add_argument(
        "--preset",
        action=_Once,
        default=None,
        choices=sorted(presets.PRESETS),
        metavar="PRESET",
        help="pruning method (default: hero)",
    )
    methods.add_argument(
        "--presets",
        action=_Once,
        nargs="+",
        default=None,
        choices=sorted(presets.PRESETS),
        metavar="PRESET",
        help=f"several methods, each at every keep ratio (of {', '.join(sorted(presets.PRESETS))}; default: "
        "--preset's one)",
    )
    _pruning_arguments(evaluation)
    evaluation.add_argument("--batch-size", action=_Once, type=int, default=1, help="rows per generate call")
    evaluation.add_argument("--max-new-tokens", action=_Once, type=int, default=32, help="greedy decoding limit")
    _device_arguments(evaluation)
    evaluation.add_argument(
        "--json", action=_Once, type=Path, default=None, metavar="OUT.json", help="write the results (default: none)"
    )
    _verbosity(evaluation, top=False)

    demo = command("demo", "the embedded demo (no download; random weights)")
    demo.add_argument(
        "--image",
        action=_Once,
        type=Path,
        default=None,
        help="use this image instead of the drawn test card (default: the test card)",
    )
    demo.add_argument(
        "--out",
        action=_Once,
        type=Path,
        default=Path("demo-out"),
        help="a new or empty folder, or one an earlier demo wrote (its report and pictures are replaced)",
    )
    demo.add_argument("--keep-ratios", action=_Once, type=_ratio, nargs="+", default=[0.4, 0.2], help="HERO's R")
    _verbosity(demo, top=False)

    flops = command("flops", "prefill FLOPs and KV cache of a LLaMA-style LLM")
    flops.add_argument("--shape", action=_Once, default="vicuna-7b", help="vicuna-7b, vicuna-13b or a config.json path")
    flops.add_argument(
        "--tokens",
        action=_Once,
        type=int,
        nargs="+",
        required=True,
        help="sequence lengths (first = baseline)",
    )
    flops.add_argument(
        "--bytes", action=_Once, type=int, default=2, help="bytes per cached value (2 for fp16/bf16, 4 for fp32)"
    )
    _verbosity(flops, top=False)

    bench = command("bench", "run the benchmarks (JSON + Markdown table)")
    bench.add_argument(
        "which", nargs="?", default="core", choices=[*BENCHMARKS, "all"], help="which benchmark (default: core)"
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see its --help)")
    return parser


# -------------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hero`` console script; returns the exit code (0, 2 for any bad input, 130 on ^C).

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
    handlers: dict[str, Callable[[argparse.Namespace], None]] = {
        "run": _run,
        "show": _show,
        "layers": _layers,
        "eval": _eval,
        "demo": _demo,
        "flops": _flops,
        "bench": _bench,
    }
    restore = _configure_logging(verbose, quiet)
    try:
        handlers[args.command](args)
    except HeroError as error:
        print(f"hero: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hero: interrupted", file=sys.stderr)
        return 130
    finally:
        restore()
    return 0


def _one_line(error: BaseException | str) -> str:
    """The message on one line (line breaks in messages from transformers or Pillow become spaces)."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(error)).strip()


class _Format(logging.Formatter):
    """``hero: note: ...`` (INFO), ``hero: warning: ...``, ``hero: debug: ...``: one line each."""

    def format(self, record: logging.LogRecord) -> str:
        label = {logging.DEBUG: "debug", logging.INFO: "note", logging.WARNING: "warning"}.get(record.levelno, "error")
        return f"hero: {label}: {_one_line(record.getMessage())}"


def _configure_logging(verbose: int, quiet: bool) -> Callable[[], None]:
    """Send the library's loggers to stderr for one command (INFO; ``-q`` WARNING; ``-v`` DEBUG); returns the undo."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(level)
        logger.addHandler(handler)
        logger.propagate = False

    def restore() -> None:
        for logger, old_level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = propagate

    return restore


class _Steps:
    """A tqdm bar on stderr (on a terminal only: ``disable=None``; never with ``-q``), and result lines on stdout
    that do not break it."""

    def __init__(self, total: int, desc: str, quiet: bool) -> None:
        self.bar: Any = None
        if not quiet:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm comes with transformers
                return
            self.bar = tqdm(total=total, desc=desc, leave=False, disable=None, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_description(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def write(self, line: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _steps(args: argparse.Namespace, total: int, desc: str) -> _Steps:
    return _Steps(total, desc, bool(getattr(args, "quiet", False)))


# ------------------------------------------------------------------------------------------------ checks
def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise HeroError.field(flag, value, "an int >= 1")


def _image_formats() -> tuple[str, ...]:
    """The picture suffixes Pillow can write here (of ``IMAGE_SUFFIXES``)."""
    from .extras import require

    image_module = require("PIL.Image")
    image_module.init()
    known = image_module.registered_extensions()
    return tuple(s for s in IMAGE_SUFFIXES if known.get(s) in image_module.SAVE)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return exists(a) and exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _check_outputs(
    outputs: Sequence[tuple[str, Path | None, str]],
    inputs: Sequence[tuple[str, Path]] = (),
    folders: Sequence[tuple[str, str | Path | None]] = (),
) -> None:
    """Refuse, before anything runs, an output that cannot be what its flag writes.

    Args:
        outputs: (flag, path or None, kind) with kind ``"image"`` (needs a picture suffix Pillow writes) or
            ``"json"`` (must not have a picture suffix).
        inputs: (flag, path) of every file read: an output must not be one of them.
        folders: (flag, path) of checkpoint folders read: an output must not lie inside one.
    """
    written: list[tuple[str, Path]] = []
    for flag, path, kind in outputs:
        if path is None:
            continue
        check_path(flag, path)
        if path.is_dir():
            raise HeroError.field(flag, str(path), "a file path, not a directory", "Name a file inside it.")
        suffix = path.suffix.lower()
        if kind == "image":
            formats = _image_formats()
            if suffix not in formats:
                raise HeroError.field(
                    flag, str(path), f"a picture file name ending in one of {', '.join(formats)}", "E.g. kept.png."
                )
        elif suffix in IMAGE_SUFFIXES:
            raise HeroError.field(flag, str(path), "a JSON file name, e.g. out.json, not a picture's")
        folder = path.resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise HeroError.field(flag, str(path), "a file in an existing, writable folder")
        for source, read in inputs:
            if _same_file(path, read):
                raise HeroError.field(
                    flag, str(path), f"a file other than {source} (it would be overwritten)", "Name a new file."
                )
        for source, checkpoint in folders:
            if (
                checkpoint is not None
                and Path(checkpoint).is_dir()
                and path.resolve().is_relative_to(Path(checkpoint).resolve())
            ):
                raise HeroError.field(flag, str(path), f"a path outside the {source} checkpoint folder")
        for other, earlier in written:
            if _same_file(path, earlier):
                raise HeroError.field(flag, str(path), f"a file other than {other}'s", "Name two different files.")
        written.append((flag, path))


def _check_prompt(flag: str, prompt: str) -> None:
    if not prompt.strip():
        raise HeroError.field(
            flag, prompt, "a non-empty question / instruction", "E.g. 'What is written on the sign?'."
        )
    check_placeholders(flag, prompt)


def _config_depth(config: Any) -> int | None:
    """The vision encoder's depth as the checkpoint's config gives it (``vision_config.num_hidden_layers``)."""
    depth = getattr(getattr(config, "vision_config", None), "num_hidden_layers", None)
    return depth if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 2 else None


def _check_clip(source: str) -> None:
    """``--clip``'s config, read before anything loads: a directory with a config.json, or a cached hub id, of a
    full CLIP model."""
    from .extras import require

    transformers = require("transformers")
    local = Path(source)
    if exists(local) and not (local / "config.json").is_file():
        raise HeroError.field("--clip", source, "a CLIP checkpoint directory with a config.json, or a cached hub id")
    try:
        config = transformers.AutoConfig.from_pretrained(
            source, local_files_only=exists(local) and local.is_dir(), trust_remote_code=False
        )
    except (OSError, ValueError) as error:
        from .evaluate import refused_checkpoint

        raise refused_checkpoint("--clip", source, error) or HeroError.field(
            "--clip",
            source,
            "a CLIP checkpoint directory or a cached hub id",
            "Check the path (a hub id is read from the local cache when HF_HUB_OFFLINE=1).",
        ) from error
    if getattr(config, "model_type", None) != "clip":
        raise HeroError.field(
            "--clip model_type",
            getattr(config, "model_type", None),
            "'clip': a full CLIP checkpoint with a text tower, e.g. openai/clip-vit-large-patch14-336",
            f"{source} is not one.",
        )


def _load_clip(args: argparse.Namespace, checked: _Checked) -> Any:
    from .text_scorers import HFClipTextScorer

    source = args.clip
    try:
        with _hf_bars(args):
            return HFClipTextScorer.from_pretrained(source, device=checked.device, dtype=checked.dtype)
    except HeroError as error:
        message = _one_line(error)
        if message.startswith("path_or_id"):
            raise HeroError("--clip" + message.removeprefix("path_or_id")) from error
        raise HeroError(f"--clip={source!r}: {message}") from error


def _set_error(item: _Override, error: HeroError, preset: str | None) -> HeroError:
    """A preset's message about one ``--set`` field, worded with the flag as typed."""
    message = _one_line(error)
    head, sep, rest = message.partition(" is invalid: ")
    where = f" (preset {preset})" if preset else ""
    if sep and head.partition("=")[0] == item.key:
        return HeroError(f"--set {item.text} is invalid{where}: {rest}")
    return HeroError(f"--set {item.text}{where}: {message}")


def _check_overrides(
    names: Sequence[str],
    ratios: Sequence[float],
    overrides: Sequence[_Override],
    depth: int | None,
    depth_from: str,
) -> dict[str, dict[str, Any]]:
    """Every ``--set`` field checked against the presets it goes to (``route_overrides``), alone and together,
    and its layers against ``depth`` (None: not known yet, checked again once the model has loaded).

    Returns:
        preset -> the fields it receives.
    """
    from .evaluate import route_overrides

    keys = [item.key for item in overrides]
    reserved = {"name": "--preset", "keep_ratio": "--keep-ratio", "depth": "the encoder depth of --model"}
    for item in overrides:
        if item.key in reserved:
            raise HeroError(
                f"--set {item.text} is invalid: {item.key} is not a preset field; it is set by {reserved[item.key]}."
            )
    twice = [key for i, key in enumerate(keys) if key in keys[:i]]
    if twice:
        raise HeroError.field("--set", twice[0], "each field once", f"{twice[0]} is given twice.")
    by_key = {item.key: item for item in overrides}
    routed = route_overrides(names, depth or presets.PAPER_DEPTH, {item.key: item.value for item in overrides})
    several = len(names) > 1
    for preset in names:
        for key, value in routed[preset].items():
            item = by_key[key]
            if depth is not None and key in LAYER_FIELDS:
                layers = value if isinstance(value, tuple) else (value,)
                if any(isinstance(x, int) and not 0 <= x < depth for x in layers):
                    raise HeroError(
                        f"--set {item.text} is invalid: expected layers in [0, {depth - 1}]: the vision encoder of "
                        f"--model has {depth} layers ({depth_from})."
                    )
            for ratio in ratios:
                try:
                    presets.get(preset, ratio, depth=depth, **{key: value})
                except HeroError as error:
                    raise _set_error(item, error, preset if several else None) from error
        for ratio in ratios:
            try:
                presets.get(preset, ratio, depth=depth, **routed[preset])
            except HeroError as error:
                given = " ".join(f"--set {by_key[key].text}" for key in routed[preset])
                raise HeroError(f"{given}: {_one_line(error)}") from error
    return routed


@dataclass
class _Checked:
    """What the cheap checks found: the device and dtype, the encoder depth from the config (or None)."""

    device: torch.device
    dtype: torch.dtype
    depth: int | None


def _precheck(
    args: argparse.Namespace, names: Sequence[str], ratios: Sequence[float], overrides: Sequence[_Override]
) -> _Checked:
    """The model's config (supported type, encoder depth), the ``--set`` fields and ``--clip``'s config; nothing
    loads."""
    from .evaluate import device_dtype, host_config

    device, dtype = device_dtype(args.device, args.dtype)
    config = host_config(args.model)
    depth = _config_depth(config)
    _check_overrides(names, ratios, overrides, depth, "vision_config.num_hidden_layers in its config.json")
    if args.clip is not None:
        _check_clip(args.clip)
    return _Checked(device, dtype, depth)


@contextmanager
def _hf_bars(args: argparse.Namespace) -> Iterator[None]:
    """transformers' own loading bars off under ``-q`` (and on again after)."""
    from .extras import require

    hf_logging = require("transformers").utils.logging
    off = bool(getattr(args, "quiet", False)) and hf_logging.is_progress_bar_enabled()
    if off:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if off:
            hf_logging.enable_progress_bar()


def _load_host(args: argparse.Namespace, checked: _Checked, steps: _Steps, prompts: Sequence[tuple[str, str]]) -> Any:
    """``load_host`` with the prompts checked against the processor's placeholder before the weights load."""
    from .evaluate import load_host

    with _hf_bars(args):
        return load_host(
            args.model,
            device=checked.device,
            dtype=checked.dtype,
            steps=steps,
            check_processor=_image_token_check(prompts),
        )


def _image_token_check(prompts: Sequence[tuple[str, str]]) -> Callable[[Any], None]:
    """After the processor loads and before the weights do: no prompt holds the processor's own placeholder."""

    def check(processor: Any) -> None:
        token = getattr(processor, "image_token", None)
        tokens = (PLACEHOLDER, token) if isinstance(token, str) else (PLACEHOLDER,)
        for flag, prompt in prompts:
            check_placeholders(flag, prompt, tokens)

    return check


# ------------------------------------------------------------------------------------------------ flops
def _shape(name: str) -> ModelShape:
    if name in SHAPES:
        return SHAPES[name]
    path = Path(name)
    if not is_file(path):
        raise HeroError.field("--shape", name, f"one of {sorted(SHAPES)} or a config.json file that exists")
    try:
        return ModelShape.from_config(path, name=path.name)
    except HeroError as error:
        raise HeroError(f"--shape {name}: {_one_line(error)}") from error


def _flops(args: argparse.Namespace) -> None:
    if any(n <= 0 for n in args.tokens):
        raise HeroError.field("--tokens", args.tokens, "positive sequence lengths")
    _positive("--bytes", args.bytes)
    shape = _shape(args.shape)
    base_flops = shape.prefill_flops(args.tokens[0])
    base_kv = shape.kv_cache_bytes(args.tokens[0], args.bytes)
    print(
        f"{shape.name}: {shape.num_layers} layers, d={shape.hidden_size}, MLP {shape.intermediate_size}, "
        f"KV width {shape.kv_hidden_size}, {args.bytes} bytes per value"
    )
    print(f"{'tokens':>8} {'prefill TFLOPs':>15} {'vs first':>9} {'KV cache MiB':>13} {'saved MiB':>10}")
    for n in args.tokens:
        flops, kv = shape.prefill_flops(n), shape.kv_cache_bytes(n, args.bytes)
        print(
            f"{n:>8} {flops / 1e12:>15.2f} {flops / base_flops:>8.1%} {kv / 2**20:>13.1f} "
            f"{(base_kv - kv) / 2**20:>10.1f}"
        )


# ------------------------------------------------------------------------------------------------ bench
def _bench(args: argparse.Namespace) -> None:
    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    for name in names:
        try:
            module = importlib.import_module(f"hero_adapters.bench.{BENCHMARKS[name]}")
        except ImportError as error:
            raise HeroError.field("bench", name, f"one of {list(BENCHMARKS)}", str(error)) from error
        module.main(list(args.rest))


# ------------------------------------------------------------------------------------------------- demo
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


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

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


# ------------------------------------------------------------------------------------------- run / show
@dataclass
class _Session:
    """The loaded host, the pruned wrapper around it and the LLM's shape (for FLOPs): one per command."""

    host: Any
    vlm: Any
    shape: ModelShape

    @property
    def model(self) -> Any:
        return self.host.model

    @property
    def processor(self) -> Any:
        return self.host.processor


def _start(
    args: argparse.Namespace,
    checked: _Checked,
    overrides: Sequence[_Override],
    prompts: Sequence[tuple[str, str]],
    steps: _Steps,
) -> _Session:
    """Load ``--clip`` (when given, used or not), then the host; build the preset at the encoder's real depth."""
    from .adapter import get_adapter
    from .vlm import HeroVLM

    started = time.perf_counter()
    scorer = None
    if args.clip is not None:
        steps.set_description("loading CLIP")
        scorer = _load_clip(args, checked)
        _LOG.debug("loaded --clip %s in %.2f s", args.clip, time.perf_counter() - started)
    steps.update()
    host = _load_host(args, checked, steps, prompts)
    _LOG.debug("loaded --model %s in %.2f s on %s, %s", args.model, time.perf_counter() - started, host.device,
               str(host.dtype).removeprefix("torch."))  # fmt: skip
    # The paper's layers are CLIP ViT-L/14's: scaled to this encoder's depth (explicit --set layers are kept).
    depth = int(get_adapter(host.model, processor=host.processor).num_layers)
    _check_overrides([args.preset], [args.keep_ratio], overrides, depth, "counted in the loaded model")
    pruner = presets.get(args.preset, args.keep_ratio, depth=depth, **{o.key: o.value for o in overrides})
    if pruner.uses_relevance and scorer is None:
        _LOG.info("no --clip given: tile budgets come from visual saliency alone")
    elif scorer is not None and not pruner.uses_relevance:
        _LOG.info("--clip loaded and checked, but preset %r reads no relevance: it is not used", args.preset)
        scorer = None
    vlm = HeroVLM(host.model, pruner, scorer, layout=args.layout, processor=host.processor)
    return _Session(host=host, vlm=vlm, shape=ModelShape.from_config(host.model.config.to_dict()))


def _single(args: argparse.Namespace) -> tuple[Any, list[_Override], _Checked]:
    """One image and prompt (``run`` / ``show``): every cheap check, in order; returns (image, overrides, checked)."""
    _check_prompt("--prompt", args.prompt)
    overrides = list(args.overrides)
    outputs: list[tuple[str, Path | None, str]] = [
        ("--show", getattr(args, "show", None), "image"),
        ("--out", getattr(args, "out", None), "image"),
    ]
    if getattr(args, "layers", None) is not None:
        outputs.append(("--out (its --layers strip)", _strip_path(args.out), "image"))
    outputs.append(("--json", args.json, "json"))
    _check_outputs(outputs, inputs=[("--image", args.image)], folders=[("--model", args.model), ("--clip", args.clip)])
    image = open_image(args.image, "--image")
    checked = _precheck(args, [args.preset], [args.keep_ratio], overrides)
    return image, overrides, checked


def _strip_path(out: Path) -> Path:
    return out.with_name(out.stem + "_layers.png")


def _table(report: Any, session: _Session, inputs: dict[str, Any], image_index: int = 0) -> str:
    """Per view: budget, kept, importance and its parts; totals: tokens, ratio, FLOPs, KV cache, stage times."""
    image = report.images[image_index]
    plan = image.plan
    valid = image.valid_tokens
    kept = plan.keep.sum(-1).tolist()

    def column(tensor: torch.Tensor | None) -> list[str]:
        return ["-"] * len(valid) if tensor is None else [f"{x:.3f}" for x in tensor.tolist()]

    importance, saliency, relevance = column(plan.importance), column(plan.saliency), column(plan.relevance)
    lines = [
        f"{'view':<10} {'valid':>6} {'budget':>7} {'kept':>6} {'importance':>11} {'saliency':>9} {'relevance':>10}"
    ]
    for view, budget in enumerate(image.budgets):
        name = "thumbnail" if view == image.encoded.thumbnail_index else f"tile {view}"
        lines.append(
            f"{name:<10} {valid[view]:>6} {budget:>7} {kept[view]:>6} {importance[view]:>11} {saliency[view]:>9} "
            f"{relevance[view]:>10}"
        )
    prompt_tokens = int(inputs["input_ids"].shape[1])
    before, after = prompt_tokens, prompt_tokens - report.tokens_in + report.tokens_out
    flops_before, flops_after = session.shape.prefill_flops(before), session.shape.prefill_flops(after)
    kv_bytes = 2 if session.host.dtype != torch.float32 else 4
    kv_saved = session.shape.kv_cache_bytes(before - after, kv_bytes)
    stages = ", ".join(f"{name} {1e3 * seconds:.0f} ms" for name, seconds in report.timings.items())
    lines += [
        "",
        f"image tokens: {report.tokens_in} -> {report.tokens_out} ({report.kept_patch_tokens} patch + "
        f"{report.newline_tokens} newline), effective ratio {report.effective_ratio:.3f}",
        f"prompt: {before} -> {after} tokens; prefill {flops_before / 1e12:.2f} -> {flops_after / 1e12:.2f} TFLOPs "
        f"({flops_after / flops_before:.1%}); KV cache saved {kv_saved / 2**20:.1f} MiB",
        f"time: {stages}",
    ]
    return "\n".join(lines)


def _check_run_mode(args: argparse.Namespace) -> None:
    """``--data`` or ``--image`` + ``--prompt``, and the options that belong to each."""
    if args.data is not None:
        for flag, value in (("--image", args.image), ("--prompt", args.prompt)):
            if value is not None:
                raise HeroError(
                    f"--data and {flag} are mutually exclusive: every row of --data names its own image and prompt"
                )
        for flag, given in (("--compare", args.compare), ("--show", args.show is not None)):
            if given:
                raise HeroError(
                    f"--data and {flag} are mutually exclusive: {flag} is for one --image (hero eval --data "
                    "compares pruned and unpruned answers over a data file)"
                )
    else:
        missing = [flag for flag, value in (("--image", args.image), ("--prompt", args.prompt)) if value is None]
        if missing:
            raise HeroError(
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required: give --image and "
                "--prompt, or --data ROWS.jsonl for many"
            )
        if args.batch_size is not None:
            raise HeroError("--batch-size is for --data (rows per generate call); one --image is one call")
    if args.repeats is not None and not args.compare:
        raise HeroError("--repeats is for --compare (timed runs of each path)")
    _positive("--max-new-tokens", args.max_new_tokens)
    _positive("--batch-size", args.batch_size)
    _positive("--repeats", args.repeats)


def _run(args: argparse.Namespace) -> None:
    _check_run_mode(args)
    if args.data is not None:
        _run_rows(args)
        return
    image, overrides, checked = _single(args)
    repeats = args.repeats or 3
    steps = _steps(args, 4 + (2 + 2 * repeats if args.compare else 1), "loading")
    session = _start(args, checked, overrides, [("--prompt", args.prompt)], steps)
    inputs = session.host.inputs([args.prompt], [image])
    extra = session.vlm.adapter.image_inputs([image])
    options = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    steps.update()
    length = int(inputs["input_ids"].shape[1])

    def pruned() -> torch.Tensor:
        out: torch.Tensor = session.vlm.generate(**inputs, **extra, query=args.prompt, **options)
        return out

    timing: dict[str, Any] | None = None
    if args.compare:
        sequences, plain, report, timing = _compare(session, pruned, inputs, options, repeats, steps)
    else:
        steps.set_description("generating (pruned)")
        sequences, seconds = _timed(session, pruned)
        report = session.vlm.last_report
        steps.update()
        _LOG.debug("pruned generate: %.3f s", seconds)
    steps.close()
    answer = _decode(session, sequences, length)
    print(f"answer ({args.preset}, keep ratio {args.keep_ratio:g}): {answer}")
    if timing is not None:
        print(f"answer (unpruned): {_decode(session, plain, length)}")
        speedup = timing["unpruned_median"] / timing["pruned_median"] if timing["pruned_median"] > 0 else math.nan
        print(
            f"time: pruned {timing['pruned_median']:.3f} s, unpruned {timing['unpruned_median']:.3f} s "
            f"({speedup:.2f}x; generate, median of {repeats} alternating runs after one warm-up of each; "
            f"{timing['pruned_new_tokens']} and {timing['unpruned_new_tokens']} new tokens)"
        )
        if timing["pruned_new_tokens"] != timing["unpruned_new_tokens"]:
            _LOG.warning(
                "the answers have different lengths, so the times include different numbers of decoding steps; "
                "hero eval measures the prefill (time to first token) alone"
            )
    print()
    print(_table(report, session, inputs))
    if args.show is not None:
        from .visualize import render_plan

        render_plan(image, report.images[0], args.show)
        print(f"wrote {args.show}")
    if args.json is not None:
        payload: dict[str, Any] = {"answer": answer, "preset": args.preset, "report": report.to_dict()}
        if timing is not None:
            payload["unpruned"] = {"answer": _decode(session, plain, length), "seconds": timing["unpruned_median"]}
            payload["timing"] = timing
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")


def _sync(session: _Session) -> None:
    if session.host.device.type == "cuda":
        torch.cuda.synchronize(session.host.device)


def _timed(session: _Session, call: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    _sync(session)
    start = time.perf_counter()
    out = call()
    _sync(session)
    return out, time.perf_counter() - start


def _compare(
    session: _Session,
    pruned: Callable[[], torch.Tensor],
    inputs: dict[str, Any],
    options: dict[str, Any],
    repeats: int,
    steps: _Steps,
) -> tuple[torch.Tensor, torch.Tensor, Any, dict[str, Any]]:
    """Pruned and unpruned ``generate``, same options: one warm-up call of each (untimed: lazy hooks, kernels and
    caches set up on either side), then ``repeats`` timed rounds in alternating order (pruned first, then unpruned
    first, ...), so that drift and one-time costs land on neither side. Wall time of the whole call on both sides
    (HERO's encode, score and plan included). Returns (pruned, unpruned, pruned report, timing)."""
    from .attach import host_generate

    plain_generate = host_generate(session.model)

    def plain() -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = plain_generate(**inputs, **options)
        return out

    calls = {"pruned": pruned, "unpruned": plain}
    for name in ("pruned", "unpruned"):
        steps.set_description(f"warm-up ({name})")
        _, seconds = _timed(session, calls[name])
        _LOG.debug("warm-up %s: %.3f s", name, seconds)
        steps.update()
    times: dict[str, list[float]] = {"pruned": [], "unpruned": []}
    outputs: dict[str, torch.Tensor] = {}
    report = None
    for round_ in range(repeats):
        order = ("pruned", "unpruned") if round_ % 2 == 0 else ("unpruned", "pruned")
        for name in order:
            steps.set_description(f"round {round_ + 1}/{repeats} ({name})")
            outputs[name], seconds = _timed(session, calls[name])
            times[name].append(seconds)
            if name == "pruned":
                report = session.vlm.last_report
            _LOG.debug("round %d %s: %.3f s", round_ + 1, name, seconds)
            steps.update()
    timing = {
        "what": "wall time of generate, median of the timed runs; one untimed warm-up of each path first, then "
        "the paths alternate (pruned first in odd rounds, unpruned first in even ones)",
        "warmup": 1,
        "repeats": repeats,
        "pruned_seconds": times["pruned"],
        "unpruned_seconds": times["unpruned"],
        "pruned_median": statistics.median(times["pruned"]),
        "unpruned_median": statistics.median(times["unpruned"]),
        # generate's time grows with the answer: a shorter answer on one side is part of its time
        "pruned_new_tokens": int(outputs["pruned"].shape[1] - inputs["input_ids"].shape[1]),
        "unpruned_new_tokens": int(outputs["unpruned"].shape[1] - inputs["input_ids"].shape[1]),
    }
    return outputs["pruned"], outputs["unpruned"], report, timing


def _decode(session: _Session, sequences: torch.Tensor, length: int, row: int = 0) -> str:
    return str(session.processor.decode(sequences[row, length:], skip_special_tokens=True)).strip()


def _show(args: argparse.Namespace) -> None:
    from .visualize import render_layer_strip, render_plan

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


# ------------------------------------------------------------------------------------------ run --data
def _row_result(row: Row, answer: str, images: Sequence[Any], preset: str, keep_ratio: float) -> dict[str, Any]:
    """One line of ``run --data --json``: the row, the answer, its image tokens and the plan summary."""
    tokens_in = sum(image.tokens_in for image in images)
    tokens_out = sum(image.tokens_out for image in images)
    return {
        "id": row.id,
        "line": row.line,
        "image": str(row.image),
        "prompt": row.prompt,
        "reference": row.answer,
        "answer": answer,
        "preset": preset,
        "keep_ratio": keep_ratio,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "effective_ratio": tokens_out / tokens_in if tokens_in else 1.0,
        "kept_patch_tokens": sum(image.kept_patch_tokens for image in images),
        "newline_tokens": sum(image.newline_tokens for image in images),
        "budgets": [image.budgets for image in images],
        "valid_tokens": [image.valid_tokens for image in images],
        "tile_grid": [list(image.encoded.tile_grid) if image.encoded.tile_grid else None for image in images],
    }


def _run_rows(args: argparse.Namespace) -> None:
    """``run --data``: every row answered with pruning, in input order, ``--batch-size`` rows per generate call;
    the model loads once. With ``--json`` each finished batch's results are written (and flushed) at once, so a
    row that fails keeps every row before it."""
    from .rows import read_rows

    batch_size = args.batch_size or 1
    overrides = list(args.overrides)
    _check_outputs([("--json", args.json, "jsonl")], inputs=[("--data", args.data)],
                   folders=[("--model", args.model), ("--clip", args.clip)])  # fmt: skip
    rows = read_rows(args.data)  # every row checked; images exist
    _check_outputs(
        [("--json", args.json, "jsonl")],
        inputs=[(f"--data {args.data}, line {row.line}: image", row.image) for row in rows],
    )
    checked = _precheck(args, [args.preset], [args.keep_ratio], overrides)
    prompts = [(f"--data {args.data}, line {row.line}: prompt", row.prompt) for row in rows]
    steps = _steps(args, 3, "loading")
    session = _start(args, checked, overrides, prompts, steps)
    steps.close()
    where = f"--data {args.data}"
    options = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    bar = _steps(args, len(rows), "answering")
    out: Any = None  # opened with the first answered batch: a run that fails at once leaves an existing file as it was
    done: list[dict[str, Any]] = []
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            lines = ", ".join(str(row.line) for row in batch)
            located = f"{where}, line{'s' if len(batch) > 1 else ''} {lines}"
            began = time.perf_counter()
            try:
                images = [open_image(row.image, f"{where}, line {row.line}: image") for row in batch]
                prompts_ = [row.prompt for row in batch]
                inputs = session.host.inputs(prompts_, images)
                extra = session.vlm.adapter.image_inputs(images)
                sequences = session.vlm.generate(**inputs, **extra, query=prompts_, **options)
                report = session.vlm.last_report
            except KeyboardInterrupt:
                kept = f" The {len(done)} row(s) before it are in {args.json}." if out is not None and done else ""
                _LOG.warning("interrupted at %s.%s", located, kept)
                raise
            except (HeroError, torch.cuda.OutOfMemoryError) as error:
                kept = f" The {len(done)} row(s) before it are in {args.json}." if out is not None and done else ""
                message = _one_line(error)
                if not message.startswith(f"{where}, line"):
                    message = f"{located}: {message}"
                if not message.endswith((".", ")")):
                    message += "."
                fix = (
                    " Use a smaller --batch-size or --max-new-tokens."
                    if isinstance(error, torch.cuda.OutOfMemoryError)
                    else ""
                )
                raise HeroError(f"{message}{fix}{kept}") from error
            length = int(inputs["input_ids"].shape[1])
            seconds = time.perf_counter() - began
            _LOG.debug("%s: %.3f s", located, seconds)
            for i, row in enumerate(batch):
                images_of_row = [image for image in report.images if image.prompt == i]
                result = _row_result(row, _decode(session, sequences, length, i), images_of_row, args.preset,
                                     args.keep_ratio)  # fmt: skip
                result["batch_seconds"] = seconds
                done.append(result)
                if args.json is not None:
                    if out is None:
                        out = args.json.open("w", encoding="utf-8")
                    out.write(json.dumps(result) + "\n")
                bar.write(
                    f"{row.id}: {result['answer']}  [{result['tokens_in']} -> {result['tokens_out']} image tokens]"
                )
            if out is not None:
                out.flush()
            bar.update(len(batch))
    finally:
        bar.close()
        if out is not None:
            out.close()
    tokens_in = sum(r["tokens_in"] for r in done)
    tokens_out = sum(r["tokens_out"] for r in done)
    print(
        f"{len(done)} rows ({args.preset}, keep ratio {args.keep_ratio:g}): image tokens {tokens_in} -> {tokens_out} "
        f"(effective ratio {tokens_out / tokens_in if tokens_in else 1.0:.3f})"
    )
    if args.json is not None:
        print(f"wrote {args.json}")


# ------------------------------------------------------------------------------------------------- eval
def _eval(args: argparse.Namespace) -> None:
    """The options, the data file, its images' existence, the output path, the ``--set`` fields (layers against the
    config's depth) and ``--clip``'s config are checked before the model loads; the JSON is written once, at the
    end (or, when a row fails, with the rows before it and ``"complete": false``)."""
    from .adapter import get_adapter
    from .evaluate import Evaluation, EvaluationError, check_options, evaluate
    from .rows import read_rows

    names, ratios = check_options(
        args.presets or [args.preset or "hero"], args.keep_ratios, args.batch_size, args.max_new_tokens, flags=True
    )
    folders = [("--model", args.model), ("--clip", args.clip)]
    _check_outputs([("--json", args.json, "json")], inputs=[("--data", args.data)], folders=folders)
    rows = read_rows(args.data)
    _check_outputs(
        [("--json", args.json, "json")],
        inputs=[(f"--data {args.data}, line {row.line}: image", row.image) for row in rows],
    )
    overrides = list(args.overrides)
    checked = _precheck(args, names, ratios, overrides)
    steps = _steps(args, 3, "loading")
    scorer = None
    if args.clip is not None:
        steps.set_description("loading CLIP")
        scorer = _load_clip(args, checked)
    steps.update()
    prompts = [(f"--data {args.data}, line {row.line}: prompt", row.prompt) for row in rows]
    host = _load_host(args, checked, steps, prompts)
    steps.close()
    depth = int(get_adapter(host.model, processor=host.processor).num_layers)
    _check_overrides(names, ratios, overrides, depth, "counted in the loaded model")
    if scorer is None and any(presets.get(name, 1.0).uses_relevance for name in names):
        _LOG.info("no --clip given: tile budgets come from visual saliency alone")

    def write(result: Evaluation) -> None:
        if args.json is not None:
            payload = result.to_dict()
            payload["settings"]["clip"] = args.clip
            args.json.write_text(json.dumps(payload, indent=2) + "\n")

    calls = math.ceil(len(rows) / args.batch_size) * (1 + len(names) * len(ratios))
    bar = _steps(args, calls, "evaluating")
    try:
        result = evaluate(
            host,
            rows,
            presets=names,
            keep_ratios=ratios,
            overrides={item.key: item.value for item in overrides},
            scorer=scorer,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            layout=args.layout,
            data=args.data,
            progress=bar,
            on_failure=write,
        )
    except EvaluationError as error:
        where = f" The {error.partial.rows} row(s) before it are in {args.json} (complete: false)." if args.json else ""
        raise HeroError(f"{_one_line(error)}{where}") from error
    finally:
        bar.close()
    print(result.table())
    print()
    overhead = result.overhead
    print(f"overhead beyond generate: {'-' if overhead is None else f'{overhead:.1%}'} of the run")
    if args.json is not None:
        write(result)
        print(f"wrote {args.json}")


# ----------------------------------------------------------------------------------------------- layers
def _image_paths(paths: Sequence[Path]) -> list[Path]:
    """The image files named, and those directly inside the folders named, each checked to be an image."""
    import warnings

    from .extras import require

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


def _layers(args: argparse.Namespace) -> None:
    from .adapter import get_adapter
    from .evaluate import device_dtype, host_config
    from .layers import layer_profile

    _check_prompt("--prompt", args.prompt)
    paths = _image_paths(args.images)  # every image checked before the model loads
    _check_outputs([("--json", args.json, "json")], inputs=[("--images", p) for p in paths],
                   folders=[("--model", args.model)])  # fmt: skip
    device, dtype = device_dtype(args.device, args.dtype)
    host_config(args.model)
    steps = _steps(args, 2 + len(paths), "loading")
    host = _load_host(args, _Checked(device, dtype, None), steps, [("--prompt", args.prompt)])
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
        payload = {"model": str(args.model), "images": [str(p) for p in paths], "profile": profile.to_dict()}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
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


if __name__ == "__main__":
    raise SystemExit(main())
