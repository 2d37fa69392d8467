"""``hero flops``: prefill FLOPs and KV cache of a LLaMA-style LLM at several sequence lengths."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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
        shape = ModelShape.from_config(path, name=path.name)
    except HeroError as error:
        raise HeroError(f"--shape {name}: {_one_line(error)}") from error
    _check_decoder(name, json.loads(path.read_text()))  # readable JSON: from_config read it
    return shape


def _check_decoder(name: str, config: dict[str, Any]) -> None:
    """The language model part of ``config`` (its ``text_config`` / ``llm_config``, else itself, as
    ``ModelShape.from_config`` reads it) is a decoder LLM: not an encoder-decoder, and of a model type that
    transformers knows as a causal LM, when it knows the type at all (a CLIP config's text tower is an encoder of
    the same fields, and its FLOPs would be wrong without a word)."""
    text = config.get("text_config") or config.get("llm_config") or config
    kind = text.get("model_type") if isinstance(text, dict) else None
    why = ""
    if config.get("is_encoder_decoder") or (isinstance(text, dict) and text.get("is_encoder_decoder")):
        why = "it is an encoder-decoder model"
    elif isinstance(kind, str):
        try:
            from transformers.models.auto import configuration_auto, modeling_auto
        except ImportError:  # without transformers the type cannot be told; the fields were there
            return
        known = getattr(configuration_auto, "CONFIG_MAPPING_NAMES", {})
        if kind in known and kind not in getattr(modeling_auto, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", {kind: None}):
            top = config.get("model_type")
            part = f" (the {'text_config' if text is not config else 'config'} of a {top!r} config)" if top else ""
            why = f"its language part is model_type {kind!r}{part}, not a decoder LLM"
    if why:
        raise HeroError.field(
            "--shape",
            name,
            "the config.json of a decoder LLM (LLaMA-style) or of a VLM whose text_config is one",
            f"{why[0].upper()}{why[1:]}. Give the VLM's or the LLM's own config.json.",
        )


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
