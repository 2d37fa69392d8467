"""``hero bench``: run one benchmark (or all) with the options that follow its name."""

from __future__ import annotations

import argparse
import importlib

from hero_core import HeroError

from ..bench import BENCHMARKS, SERVING_BENCHMARKS

NAME, HELP = "bench", "run the benchmarks (JSON + Markdown table)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "which",
        nargs="?",
        default="core",
        choices=[*BENCHMARKS, *SERVING_BENCHMARKS, "all"],
        help="which benchmark (default: core); 'all' runs every one but serve (which needs vLLM)",
    )
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see its --help)")


def execute(args: argparse.Namespace) -> None:
    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    modules = {**BENCHMARKS, **SERVING_BENCHMARKS}
    for name in names:
        try:
            module = importlib.import_module(f"hero_adapters.bench.{modules[name]}")
        except ImportError as error:
            raise HeroError.field("bench", name, f"one of {list(modules)}", str(error)) from error
        module.main(list(args.rest))
