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

from .._scoring import reads_query
from ..rows import PLACEHOLDER, check_placeholders, open_image
from ._args import _one_line, _Override
from ._checks import _check_outputs, _check_overrides, _check_prompt, _Checked, _checkpoint_folder, _precheck
from ._console import _stderr_is_terminal, _Steps

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
    """transformers' (and huggingface_hub's) own loading bars off under ``-q`` and whenever stderr is not a terminal
    (and on again after). transformers draws them with plain tqdm, which draws into a pipe or a log file too:
    ``disable=None``, our own bars' "only on a terminal", is not its default."""
    from ..extras import require

    hf_logging = require("transformers").utils.logging
    hidden = bool(getattr(args, "quiet", False)) or not _stderr_is_terminal()
    off = hidden and hf_logging.is_progress_bar_enabled()
    if off:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if off:
            hf_logging.enable_progress_bar()


def _load_host(
    args: argparse.Namespace,
    checked: _Checked,
    steps: _Steps,
    prompts: Sequence[tuple[str, str]],
    also: Callable[[Any], None] | None = None,
) -> Any:
    """``load_host`` with, after the processor loads and before the weights do: the prompts checked against the
    processor's placeholder, the processor tried once (``_check_processor``), and ``also(processor)``."""
    from ..evaluate import load_host

    def check(processor: Any) -> None:
        _image_token_check(prompts)(processor)
        _check_processor(args.model, processor, checked.config)
        if also is not None:
            also(processor)

    with _hf_bars(args):
        return load_host(args.model, device=checked.device, dtype=checked.dtype, steps=steps, check_processor=check)


def _image_token_check(prompts: Sequence[tuple[str, str]]) -> Callable[[Any], None]:
    """After the processor loads and before the weights do: no prompt holds the processor's own placeholder."""

    def check(processor: Any) -> None:
        token = getattr(processor, "image_token", None)
        tokens = (PLACEHOLDER, token) if isinstance(token, str) else (PLACEHOLDER,)
        for flag, prompt in prompts:
            check_placeholders(flag, prompt, tokens)

    return check


def _processor_files(source: str) -> str:
    """The processor config files of a checkpoint, for messages: their paths, or a description."""
    folder = _checkpoint_folder(source)
    names = ("preprocessor_config.json", "processor_config.json")
    found = [str(folder / name) for name in names if folder is not None and (folder / name).is_file()]
    return " / ".join(found) if found else "its processor config (preprocessor_config.json / processor_config.json)"


def _processor_pixels(source: str, processor: Any, prompt: str, image: Any) -> torch.Tensor:
    """The processor's ``pixel_values`` for one image and prompt, as the host will make them; a failure is the
    processor config's (one line naming its file)."""
    from ..evaluate import Host

    host = Host(source=source, model=None, processor=processor, device=torch.device("cpu"), dtype=torch.float32)
    try:
        pixels = host.inputs([prompt], [image]).get("pixel_values")
    except Exception as error:  # whatever a processor raises on values it cannot use (TypeError, KeyError, ...)
        raise HeroError(
            f"--model {source}: the processor made from {_processor_files(source)} fails on a plain image: "
            f"{type(error).__name__}: {_one_line(error).rstrip('.')}. The processor config is broken; copy the "
            "checkpoint's own."
        ) from error
    # Views (V, 3, H, W) or (1, V, 3, H, W); a native-resolution processor (Qwen-VL) gives one view as rows of
    # flattened patches (P, C * T * p * p).
    if not isinstance(pixels, torch.Tensor) or pixels.ndim not in (2, 4, 5):
        shape = (
            f"a tensor of shape {tuple(pixels.shape)}" if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        )
        raise HeroError(
            f"--model {source}: the processor made from {_processor_files(source)} returns no pixel_values of views "
            f"(got {shape}). The processor config is broken; copy the checkpoint's own."
        )
    return pixels


def _check_processor(source: str, processor: Any, config: Any) -> None:
    """Try the processor once on a small plain image before the weights load: it must run, and make views of the
    size the vision encoder takes (``vision_config.image_size``), else the processor config is broken or belongs
    to another model (later it would show as a pixel_values error of the host)."""
    from ..extras import require

    if config is None:
        from ..evaluate import host_config

        config = host_config(source)
    image = require("PIL.Image").new("RGB", (64, 48), (128, 128, 128))
    pixels = _processor_pixels(source, processor, "describe", image)
    size = getattr(getattr(config, "vision_config", None), "image_size", None)
    expected = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    if pixels.ndim > 2 and all(isinstance(x, int) for x in expected) and tuple(pixels.shape[-2:]) != expected:
        height, width = pixels.shape[-2:]
        raise HeroError(
            f"--model {source}: the processor made from {_processor_files(source)} makes views of {height}x{width} "
            f"pixels, but the vision encoder takes {expected[0]}x{expected[1]} (vision_config.image_size in its "
            "config.json): the processor config is broken or another model's; copy the checkpoint's own."
        )


def _processor_views(pixels: torch.Tensor) -> int:
    """How many views (tiles and thumbnail) the processor made of one image: (V, 3, H, W) or (1, V, 3, H, W); one
    for a native-resolution processor's patch rows (P, C * T * p * p)."""
    if pixels.ndim == 2:
        return 1
    return int(pixels.shape[1] if pixels.ndim == 5 else pixels.shape[0])


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
    also: Callable[[Any], None] | None = None,
) -> _Session:
    """Load ``--clip`` (when given, used or not), then the host; build the preset at the encoder's real depth."""
    from ..adapter import get_adapter, preset_options
    from ..vlm import HeroVLM

    started = time.perf_counter()
    scorer = None
    if args.clip is not None:
        steps.set_description("loading CLIP")
        scorer = _load_clip(args, checked)
        _LOG.debug("loaded --clip %s in %.2f s", args.clip, time.perf_counter() - started)
    steps.update()
    host = _load_host(args, checked, steps, prompts, also)
    _LOG.debug("loaded --model %s in %.2f s on %s, %s", args.model, time.perf_counter() - started, host.device,
               str(host.dtype).removeprefix("torch."))  # fmt: skip
    # The paper's layers are CLIP ViT-L/14's: scaled to this encoder's depth (explicit --set layers are kept).
    encoder = preset_options(get_adapter(host.model, processor=host.processor))
    _check_overrides([args.preset], [args.keep_ratio], overrides, encoder["depth"], "counted in the loaded model")
    pruner = presets.get(args.preset, args.keep_ratio, **encoder, **{o.key: o.value for o in overrides})
    if pruner.uses_relevance and scorer is None:
        _LOG.info("no --clip given: %s budgets come from visual saliency alone", _budget_unit(pruner))
    elif scorer is not None and not reads_query(pruner):
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


def _view_names(encoded: Any) -> list[str]:
    """Each view's name as the picture labels it (``render_plan``): ``thumbnail``, and ``tile 1`` .. ``tile K`` in
    view order over the other views, wherever the host puts its thumbnail (first for LLaVA-NeXT, last for
    InternVL); ``hero show --layers K`` takes the same numbers. A one-view image (Qwen-VL, a small InternVL image)
    has no thumbnail beside tiles: its one view is ``image``."""
    from hero_core.allocators import tile_views

    if int(encoded.num_views) == 1:
        return ["image"]
    names = ["thumbnail"] * int(encoded.num_views)
    for number, view in enumerate(tile_views(encoded), 1):
        names[view] = f"tile {number}"
    return names


def _table(report: Any, session: _Session, inputs: dict[str, Any], image_index: int = 0) -> str:
    """Per view: budget, kept, importance and its parts; totals: tokens, ratio, FLOPs, KV cache, stage times. A view
    without valid positions (all padding: an extreme aspect ratio) shows ``-`` for its scores, which mean nothing
    there, and says so."""
    image = report.images[image_index]
    plan = image.plan
    valid = image.valid_tokens
    kept = plan.keep.sum(-1).tolist()

    def column(tensor: torch.Tensor | None) -> list[str]:
        if tensor is None:
            return ["-"] * len(valid)
        return [f"{x:.3f}" if count else "-" for x, count in zip(tensor.tolist(), valid, strict=True)]

    importance, saliency, relevance = column(plan.importance), column(plan.saliency), column(plan.relevance)
    lines = [
        f"{'view':<10} {'valid':>6} {'budget':>7} {'kept':>6} {'importance':>11} {'saliency':>9} {'relevance':>10}"
    ]
    for view, (name, budget) in enumerate(zip(_view_names(image.encoded), image.budgets, strict=True)):
        note = "" if valid[view] else "  no valid positions (all padding)"
        lines.append(
            f"{name:<10} {valid[view]:>6} {budget:>7} {kept[view]:>6} {importance[view]:>11} {saliency[view]:>9} "
            f"{relevance[view]:>10}{note}"
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


def _budget_unit(pruner: Any) -> str:
    """What a pruner's relevance ranks: regions of one view (hero-native, hosts without tiles) or tiles."""
    return "region" if callable(getattr(pruner, "regions", None)) else "tile"
