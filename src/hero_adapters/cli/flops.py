"""``hero flops``: prefill FLOPs and KV cache of a LLaMA-style LLM at several sequence lengths."""

from __future__ import annotations

import argparse
from pathlib import Path

from hero_core import VICUNA_7B, VICUNA_13B, HeroError, ModelShape

from .._paths import is_file
from ._args import _Once, _one_line, _verbosity
from ._checks import _positive

NAME, HELP = "flops", "prefill FLOPs and KV cache of a LLaMA-style LLM"
SHAPES = {"vicuna-7b": VICUNA_7B, "vicuna-13b": VICUNA_13B}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shape", action=_Once, default="vicuna-7b", help="vicuna-7b, vicuna-13b or a config.json path"
    )
    parser.add_argument(
        "--tokens",
        action=_Once,
        type=int,
        nargs="+",
        required=True,
        help="sequence lengths (first = baseline)",
    )
    parser.add_argument(
        "--bytes", action=_Once, type=int, default=2, help="bytes per cached value (2 for fp16/bf16, 4 for fp32)"
    )
    _verbosity(parser, top=False)


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


def execute(args: argparse.Namespace) -> None:
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
