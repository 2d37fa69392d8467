"""Loading for the commands that run a host: ``--clip``, the host (prompts checked against its processor before the
weights load), the pruned wrapper around it, and what ``run`` and ``show`` print about a plan."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hero_core import HeroError, ModelShape, presets

from ..rows import PLACEHOLDER, check_placeholders, open_image
from ._args import _one_line, _Override
from ._checks import _check_outputs, _check_overrides, _check_prompt, _Checked, _precheck
from ._console import _Steps

_LOG = logging.getLogger("hero_adapters.cli")


def _load_clip(args: argparse.Namespace, checked: _Checked) -> Any:
    from ..text_scorers import HFClipTextScorer

    source = args.clip
    try:
        with _hf_bars(args):
            return HFClipTextScorer.from_pretrained(source, device=checked.device, dtype=checked.dtype)
    except HeroError as error:
        message = _one_line(error)
        if message.startswith("path_or_id"):
            raise HeroError("--clip" + message.removeprefix("path_or_id")) from error
        raise HeroError(f"--clip={source!r}: {message}") from error


@contextmanager
def _hf_bars(args: argparse.Namespace) -> Iterator[None]:
    """transformers' own loading bars off under ``-q`` (and on again after)."""
    from ..extras import require

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
    from ..evaluate import load_host

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
    from ..adapter import get_adapter
    from ..vlm import HeroVLM

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


def _sync(session: _Session) -> None:
    if session.host.device.type == "cuda":
        torch.cuda.synchronize(session.host.device)


def _timed(session: _Session, call: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    _sync(session)
    start = time.perf_counter()
    out = call()
    _sync(session)
    return out, time.perf_counter() - start


def _decode(session: _Session, sequences: torch.Tensor, length: int, row: int = 0) -> str:
    return str(session.processor.decode(sequences[row, length:], skip_special_tokens=True)).strip()
