"""The ``hero`` command: answer with pruning, evaluate it on a data file, draw the plan, profile the encoder's
layers, run the demo, the FLOPs model and benchmarks.

Every bad argument or input ends with one line on stderr (``hero: error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from hero_core import VICUNA_7B, VICUNA_13B, HeroError, ModelShape, presets

from .bench import BENCHMARKS

__all__ = ["main"]

EXAMPLES = """\
examples:
  hero demo                                   # no download: real geometry, random weights
  hero run --model ./llava-v1.6-vicuna-7b-hf --clip ./clip-vit-large-patch14-336 \\
           --image photo.jpg --prompt "What is written on the sign?" --keep-ratio 0.2 --show kept.png
  hero run --model ./llava-v1.6-vicuna-7b-hf --image photo.jpg --prompt "Describe it." --compare
  hero show --model ./llava-v1.6-vicuna-7b-hf --image photo.jpg --prompt "Describe it." --out kept.png --layers
  hero show --model ./InternVL3-1B-hf --image photo.jpg --prompt "Describe it." --out kept.png
  hero layers --model ./InternVL3-1B-hf --images photos/ extra.jpg --json layers.json
  hero eval --model ./llava-v1.6-vicuna-7b-hf --clip ./clip-vit-large-patch14-336 --data rows.jsonl \\
            --keep-ratios 1 0.4 0.2 --presets hero uniform-random --json eval.json
  hero flops --shape vicuna-7b --tokens 2673 1105 583
  hero bench core
"""

SHAPES = {"vicuna-7b": VICUNA_7B, "vicuna-13b": VICUNA_13B}
#: What ``hero layers --images FOLDER`` takes from a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one readable line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"hero: error: {message} (see `{self.prog} --help`)\n")


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


def _override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: ints, floats, comma-separated int tuples (``low_layers=4,5,6``) or strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE, e.g. --set alpha=0.7")
    if "," in raw or key.endswith("layers"):
        try:
            return key, tuple(int(x) for x in raw.split(",") if x)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--set {text!r}: layers are comma-separated ints") from None
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(raw.lower(), raw)


def _layouts() -> list[str]:
    """Every layout some host adapter offers (the adapters are the one source)."""
    from . import hosts  # noqa: F401  (registers the host adapters)
    from .adapter import all_layouts

    return list(all_layouts())


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint directory or cached hub id of a supported host (LLaVA-NeXT, InternVL)",
    )
    parser.add_argument("--clip", default=None, help="CLIP checkpoint directory or hub id, for task relevance")
    parser.add_argument("--image", required=True, type=Path, help="the image file")
    parser.add_argument("--prompt", required=True, help="the question / instruction")
    parser.add_argument("--keep-ratio", type=_ratio, default=0.2, help="fraction of patch tokens kept (default 0.2)")
    parser.add_argument("--preset", default="hero", choices=sorted(presets.PRESETS), help="pruning method")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field, e.g. --set alpha=0.7 --set low_layers=4,5,6",
    )
    parser.add_argument(
        "--layout", default=None, choices=_layouts(), help="token layout (default: the host's own, 'vanilla')"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hero",
        description="HERO visual-token pruning for high-resolution VLMs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="answer a prompt with pruning",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_arguments(run)
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--compare", action="store_true", help="also run the unpruned model; print both")
    run.add_argument("--show", type=Path, default=None, metavar="OUT.png", help="also draw the kept tokens")
    run.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write the report as JSON")

    show = commands.add_parser(
        "show",
        help="draw which tokens are kept (no generation)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _model_arguments(show)
    show.add_argument("--out", type=Path, default=Path("kept_tokens.png"), metavar="OUT.png")
    show.add_argument(
        "--layers",
        nargs="?",
        const="thumbnail",
        default=None,
        metavar="VIEW",
        help="also draw one view's CLS attention per layer (VIEW: 'thumbnail' or a tile number, default thumbnail)",
    )
    show.add_argument("--json", type=Path, default=None, metavar="OUT.json")

    layers = commands.add_parser(
        "layers",
        help="profile every encoder layer's CLS attention and suggest HERO's low / high layers",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    layers.add_argument(
        "--model",
        required=True,
        help="checkpoint directory or cached hub id of a supported host (LLaVA-NeXT, InternVL, LLaVA-OneVision)",
    )
    layers.add_argument(
        "--images",
        required=True,
        nargs="+",
        type=Path,
        metavar="IMG",
        help=f"image files and/or folders (every image directly inside: {', '.join(IMAGE_SUFFIXES)})",
    )
    layers.add_argument(
        "--prompt",
        default="Describe the image.",
        help="text the processor formats with each image (the vision encoder does not read it)",
    )
    layers.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write the profile as JSON")
    layers.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    layers.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])

    evaluation = commands.add_parser(
        "eval",
        help="pruned against unpruned answers on a data file: agreement, accuracy, image tokens, prefill speed-up",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluation.add_argument(
        "--model",
        required=True,
        help="checkpoint directory or cached hub id of a supported host (LLaVA-NeXT, InternVL, LLaVA-OneVision)",
    )
    evaluation.add_argument("--clip", default=None, help="CLIP checkpoint directory or hub id, for task relevance")
    evaluation.add_argument(
        "--data",
        required=True,
        type=Path,
        metavar="ROWS.jsonl",
        help='JSON Lines, one row per line: {"id": ..., "image": PATH, "prompt": ..., "answer": ... (optional)}; '
        "relative image paths are read from the file's folder",
    )
    evaluation.add_argument(
        "--keep-ratios",
        type=_ratio,
        nargs="+",
        default=[1.0, 0.4, 0.2],
        metavar="R",
        help="fractions of patch tokens kept (default 1 0.4 0.2)",
    )
    methods = evaluation.add_mutually_exclusive_group()
    methods.add_argument(
        "--preset",
        default=None,
        choices=sorted(presets.PRESETS),
        metavar="PRESET",
        help="pruning method (default hero)",
    )
    methods.add_argument(
        "--presets",
        nargs="+",
        default=None,
        choices=sorted(presets.PRESETS),
        metavar="PRESET",
        help=f"several methods, each at every keep ratio (of {', '.join(sorted(presets.PRESETS))})",
    )
    evaluation.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field (with --presets: for the presets that have it), e.g. --set alpha=0.7",
    )
    evaluation.add_argument(
        "--layout", default=None, choices=_layouts(), help="token layout (default: the host's own, 'vanilla')"
    )
    evaluation.add_argument("--batch-size", type=int, default=1, help="rows per generate call (default 1)")
    evaluation.add_argument("--max-new-tokens", type=int, default=32, help="greedy decoding limit (default 32)")
    evaluation.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluation.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    evaluation.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="write the results as JSON")

    demo = commands.add_parser("demo", help="the embedded demo (no download; random weights)")
    demo.add_argument("--image", type=Path, default=None, help="use this image instead of the drawn test card")
    demo.add_argument("--out", type=Path, default=Path("demo-out"))
    demo.add_argument("--keep-ratios", type=_ratio, nargs="+", default=[0.4, 0.2])

    flops = commands.add_parser("flops", help="prefill FLOPs and KV cache of a LLaMA-style LLM")
    flops.add_argument("--shape", default="vicuna-7b", help="vicuna-7b, vicuna-13b or a config.json path")
    flops.add_argument("--tokens", type=int, nargs="+", required=True, help="sequence lengths (first = baseline)")
    flops.add_argument("--bytes", type=int, default=2, help="bytes per cached value (2 for fp16/bf16)")

    bench = commands.add_parser("bench", help="run the benchmarks (JSON + Markdown table)")
    bench.add_argument("which", nargs="?", default="core", choices=[*BENCHMARKS, "all"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark (see its --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hero`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], None]] = {
        "run": _run,
        "show": _show,
        "layers": _layers,
        "eval": _eval,
        "demo": _demo,
        "flops": _flops,
        "bench": _bench,
    }
    try:
        handlers[args.command](args)
    except HeroError as error:
        print(f"hero: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hero: interrupted", file=sys.stderr)
        return 130
    return 0


# ------------------------------------------------------------------------------------------------ flops
def _shape(name: str) -> ModelShape:
    if name in SHAPES:
        return SHAPES[name]
    path = Path(name)
    if not path.is_file():
        raise HeroError.field("--shape", name, f"one of {sorted(SHAPES)} or a config.json file that exists")
    return ModelShape.from_config(path, name=path.name)


def _flops(args: argparse.Namespace) -> None:
    shape = _shape(args.shape)
    if any(n <= 0 for n in args.tokens):
        raise HeroError.field("--tokens", args.tokens, "positive sequence lengths")
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
def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    image = _open_image(args.image) if args.image is not None else None
    run_demo(args.out, image=image, keep_ratios=args.keep_ratios)
    print("The weights are RANDOM: the answers are noise; token counts, plans and timings are real.")
    print(
        "With real checkpoints:\n  hero run --model /path/to/llava-v1.6-vicuna-7b-hf "
        "--clip /path/to/clip-vit-large-patch14-336 --image photo.jpg --prompt '...' --keep-ratio 0.2 "
        "--show kept.png"
    )


# -------------------------------------------------------------------------------------------- run/show
def _open_image(path: Path) -> Any:
    from .extras import require

    image_module = require("PIL.Image")
    if not path.is_file():
        raise HeroError.field("--image", str(path), "an image file that exists", "Check the path.")
    try:
        with image_module.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, image_module.DecompressionBombError) as error:
        raise HeroError.field("--image", str(path), "a readable image (PNG, JPEG, ...)", str(error)) from error


class _Loaded:
    """The host model, its processor, the scorer and the pruner of one ``run`` / ``show`` call."""

    def __init__(self, args: argparse.Namespace, steps: Any) -> None:
        from .adapter import get_adapter
        from .evaluate import device_dtype, load_host

        self.device, self.dtype = device_dtype(args.device, args.dtype)
        self.image = _open_image(args.image)
        self.host = load_host(args.model, device=self.device, dtype=self.dtype, steps=steps)
        self.processor, self.model = self.host.processor, self.host.model
        # The paper's layers are CLIP ViT-L/14's: scaled to this encoder's depth (explicit --set layers are kept).
        depth = int(get_adapter(self.model, processor=self.processor).num_layers)
        self.pruner = presets.get(args.preset, args.keep_ratio, depth=depth, **dict(args.overrides))
        self.scorer = None
        if args.clip is not None and self.pruner.uses_relevance:
            steps.set_description("loading CLIP")
            from .text_scorers import HFClipTextScorer

            self.scorer = HFClipTextScorer.from_pretrained(args.clip, device=self.device, dtype=self.dtype)
        steps.update()
        self.prompt = args.prompt
        self.layout: str | None = args.layout
        self.inputs = self._inputs(args.prompt)
        self.extra: dict[str, Any] = {}  # inputs the processor does not return (the adapter's image_inputs)
        self.shape = ModelShape.from_config(self.model.config.to_dict())

    def _inputs(self, prompt: str) -> dict[str, Any]:
        return self.host.inputs([prompt], [self.image])

    def vlm(self) -> Any:
        from .vlm import HeroVLM

        vlm = HeroVLM(self.model, self.pruner, self.scorer, layout=self.layout, processor=self.processor)
        self.extra = vlm.adapter.image_inputs([self.image])
        return vlm


def _steps(total: int, desc: str) -> Any:
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, disable=None, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm comes with transformers

        class _Quiet:
            def update(self, n: int = 1) -> None: ...
            def set_description(self, text: str) -> None: ...
            def close(self) -> None: ...

        return _Quiet()


def _check_outputs(args: argparse.Namespace, *names: str) -> None:
    """Refuse an output path whose folder does not exist or is not writable, before any model runs."""
    for name in names:
        path = getattr(args, name, None)
        if path is None:
            continue
        folder = path.resolve().parent
        if path.is_dir():
            raise HeroError.field(f"--{name}", str(path), "a file path, not a directory", "Name a file inside it.")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise HeroError.field(f"--{name}", str(path), "a file in an existing, writable folder")


def _load(args: argparse.Namespace, extra_steps: int) -> tuple[_Loaded, Any]:
    _check_outputs(args, "show", "json", "out")
    steps = _steps(3 + extra_steps, "loading")
    return _Loaded(args, steps), steps


def _decode(loaded: _Loaded, sequences: torch.Tensor) -> str:
    prompt_length = loaded.inputs["input_ids"].shape[1]
    return str(loaded.processor.decode(sequences[0, prompt_length:], skip_special_tokens=True)).strip()


def _table(report: Any, loaded: _Loaded) -> str:
    """Per view: budget, kept, importance and its parts; totals: tokens, ratio, FLOPs, KV cache, stage times."""
    image = report.images[0]
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
    prompt_tokens = int(loaded.inputs["input_ids"].shape[1])
    before, after = prompt_tokens, prompt_tokens - report.tokens_in + report.tokens_out
    flops_before, flops_after = loaded.shape.prefill_flops(before), loaded.shape.prefill_flops(after)
    kv_bytes = 2 if loaded.dtype != torch.float32 else 4
    kv_saved = loaded.shape.kv_cache_bytes(before - after, kv_bytes)
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


def _run(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise HeroError.field("--max-new-tokens", args.max_new_tokens, "an int >= 1")
    loaded, steps = _load(args, extra_steps=2 if args.compare else 1)
    vlm = loaded.vlm()
    steps.set_description("generating (pruned)")
    sequences = vlm.generate(
        **loaded.inputs, **loaded.extra, query=loaded.prompt, max_new_tokens=args.max_new_tokens, do_sample=False
    )
    report = vlm.last_report
    steps.update()
    baseline = None
    if args.compare:
        steps.set_description("generating (unpruned)")
        start = time.perf_counter()
        with torch.inference_mode():
            plain = loaded.model.generate(**loaded.inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)
        baseline = (_decode(loaded, plain), time.perf_counter() - start)
        steps.update()
    steps.close()
    pruned_seconds = sum(report.timings.values())
    print(f"answer ({args.preset}, keep ratio {args.keep_ratio:g}): {_decode(loaded, sequences)}")
    if baseline is not None:
        print(f"answer (unpruned): {baseline[0]}")
        print(f"time: pruned {pruned_seconds:.2f} s (all stages), unpruned {baseline[1]:.2f} s")
    print()
    print(_table(report, loaded))
    if args.show is not None:
        from .visualize import render_plan

        render_plan(loaded.image, report.images[0], args.show)
        print(f"wrote {args.show}")
    if args.json is not None:
        payload = {"answer": _decode(loaded, sequences), "preset": args.preset, "report": report.to_dict()}
        if baseline is not None:
            payload["unpruned"] = {"answer": baseline[0], "seconds": baseline[1]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")


def _show(args: argparse.Namespace) -> None:
    from .visualize import render_layer_strip, render_plan

    loaded, steps = _load(args, extra_steps=1)
    vlm = loaded.vlm()
    steps.set_description("encoding + planning")
    report = vlm.plan(**loaded.inputs, **loaded.extra, query=loaded.prompt)
    steps.update()
    steps.close()
    print(_table(report, loaded))
    render_plan(loaded.image, report.images[0], args.out)
    print(f"wrote {args.out}")
    if args.layers is not None:
        encoded = report.images[0].encoded
        view = encoded.thumbnail_index if args.layers == "thumbnail" else _tile_view(args.layers, encoded)
        layers = tuple(range(int(vlm.adapter.num_layers)))
        images = vlm.adapter.encode({**loaded.inputs, **loaded.extra}, layers)
        strip_path = args.out.with_name(args.out.stem + "_layers.png")
        name = "thumbnail" if view == encoded.thumbnail_index else f"tile {view}"
        render_layer_strip(images[0].tiles.cls_attention[:, view], layers, encoded.grid, strip_path, view_name=name)
        print(f"wrote {strip_path}")
    if args.json is not None:
        args.json.write_text(json.dumps({"preset": args.preset, "report": report.to_dict()}, indent=2) + "\n")
        print(f"wrote {args.json}")


# ------------------------------------------------------------------------------------------------- eval
def _eval(args: argparse.Namespace) -> None:
    """The options, the data file, its images' existence and the output path are checked before the model
    loads (``--set`` values and ``--clip`` once it has: they need the encoder's depth and CLIP's files); the
    JSON is written once, at the end (or, when a row fails, with the rows before it and ``"complete": false``)."""
    from .evaluate import Evaluation, EvaluationError, check_options, device_dtype, evaluate, load_host
    from .rows import read_rows

    names, ratios = check_options(
        args.presets or [args.preset or "hero"], args.keep_ratios, args.batch_size, args.max_new_tokens, flags=True
    )
    _check_outputs(args, "json")
    if args.json is not None and args.json.resolve() == args.data.resolve():
        raise HeroError.field("--json", str(args.json), "a file other than --data", "It would overwrite the rows.")
    rows = read_rows(args.data)
    device, dtype = device_dtype(args.device, args.dtype)
    steps = _steps(3, "loading")
    host = load_host(args.model, device=device, dtype=dtype, steps=steps)
    scorer = None
    if args.clip is not None:
        steps.set_description("loading CLIP")
        from .text_scorers import HFClipTextScorer

        scorer = HFClipTextScorer.from_pretrained(args.clip, device=device, dtype=dtype)
    steps.update()
    steps.close()
    if scorer is None and any(presets.get(name, 1.0).uses_relevance for name in names):
        print("hero: note: no --clip given: tile budgets come from visual saliency alone", file=sys.stderr)

    def write(result: Evaluation) -> None:
        if args.json is not None:
            payload = result.to_dict()
            payload["settings"]["clip"] = args.clip
            args.json.write_text(json.dumps(payload, indent=2) + "\n")

    calls = math.ceil(len(rows) / args.batch_size) * (1 + len(names) * len(ratios))
    bar = _steps(calls, "evaluating")
    try:
        result = evaluate(
            host,
            rows,
            presets=names,
            keep_ratios=ratios,
            overrides=dict(args.overrides),
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
        raise HeroError(f"{error}{where}") from error
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
    from .extras import require

    image_module = require("PIL.Image")
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise HeroError.field(
                    "--images", str(path), f"image files or a folder with images in it ({', '.join(IMAGE_SUFFIXES)})"
                )
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise HeroError.field("--images", str(path), "image files or folders that exist", "Check the path.")
    for path in found:
        try:
            with image_module.open(path) as image:
                image.verify()
        except (OSError, ValueError, SyntaxError) as error:
            raise HeroError.field("--images", str(path), "readable images (PNG, JPEG, ...)", str(error)) from error
    return found


def _layers(args: argparse.Namespace) -> None:
    from .adapter import get_adapter
    from .layers import layer_profile

    _check_outputs(args, "json")
    paths = _image_paths(args.images)  # every image checked before the model loads
    steps = _steps(3 + len(paths), "loading")
    options: dict[str, Any] = {
        "image": paths[0],
        "clip": None,
        "preset": "hero",
        "keep_ratio": 1.0,
        "overrides": [],
        "layout": None,
    }
    loaded = _Loaded(argparse.Namespace(**{**vars(args), **options}), steps)
    adapter = get_adapter(loaded.model, processor=loaded.processor)

    def batches() -> Any:
        for path in paths:
            steps.set_description(f"encoding {path.name}")
            loaded.image = _open_image(path)
            yield {**loaded._inputs(args.prompt), **adapter.image_inputs([loaded.image])}
            steps.update()

    profile = layer_profile(adapter, batches())
    steps.close()
    low, high = profile.suggest()
    print(
        f"{args.model}: {loaded.model.config.model_type}, vision encoder of {profile.depth} layers, query "
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
