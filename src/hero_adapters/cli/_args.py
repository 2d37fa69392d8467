"""The parser's parts shared by the subcommands: one-line usage errors, options given once, keep ratios,
``--set KEY=VALUE``, and the option groups several commands take (model, pruning, device, verbosity)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from hero_core import presets


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


def _budget(text: str) -> int:
    """A token budget per image: an int >= 1; argparse prefixes the flag (``argument --tokens: ...``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of tokens; use e.g. 320") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is below 1: a budget is the patch tokens KEPT per image, e.g. 320")
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
    from .. import hosts  # noqa: F401  (registers the host adapters)
    from ..adapter import all_layouts

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
        "given (default: none: tile budgets, hero-native's region budgets, come from visual saliency alone; "
        "cdpruner needs it)",
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


def _model_flag(parser: argparse.ArgumentParser) -> None:
    """``--model``: every command that loads a host takes it."""
    parser.add_argument(
        "--model",
        action=_Once,
        required=True,
        help="checkpoint directory or cached hub id of a supported host (LLaVA-NeXT, InternVL, LLaVA-OneVision)",
    )


def _model_arguments(parser: argparse.ArgumentParser, *, batch: bool) -> None:
    _model_flag(parser)
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


def _one_line(error: BaseException | str) -> str:
    """The message on one line (line breaks in messages from transformers or Pillow become spaces)."""
    return re.sub(r"\s*[\r\n]+\s*", " ", str(error)).strip()
