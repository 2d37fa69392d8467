"""``hero eval``: pruned against unpruned answers on a data file, for every preset x keep ratio (the work is
``hero_adapters.evaluate``'s; this is its command line)."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from hero_core import HeroError, presets

from ._args import _budget, _device_arguments, _model_flag, _Once, _one_line, _pruning_arguments, _ratio, _verbosity
from ._checks import _check_outputs, _check_overrides, _precheck
from ._console import _steps
from ._load import _budget_unit, _load_clip, _load_host
from ._output import _write_text

_LOG = logging.getLogger("hero_adapters.cli")

NAME = "eval"
HELP = "pruned against unpruned answers on a data file: agreement, accuracy, image tokens, prefill speed-up"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _model_flag(parser)
    parser.add_argument(
        "--data",
        action=_Once,
        required=True,
        type=Path,
        metavar="ROWS.jsonl",
        help='JSON Lines, one row per line: {"id": ..., "image": PATH, "prompt": ..., "answer": ... (optional)}; '
        "relative image paths are read from the file's folder",
    )
    budgets = parser.add_mutually_exclusive_group()
    budgets.add_argument(
        "--keep-ratios",
        action=_Once,
        type=_ratio,
        nargs="+",
        default=None,
        metavar="R",
        help="fractions of patch tokens kept (default: 1 0.4 0.2)",
    )
    budgets.add_argument(
        "--tokens",
        action=_Once,
        type=_budget,
        nargs="+",
        default=None,
        metavar="T",
        help="instead of --keep-ratios: patch tokens kept per image, e.g. 640 320 160 (matched-count "
        "evaluation; each image keeps min(T, its valid tokens), its keep ratio chosen from its own geometry; "
        "newlines are not counted unless --count-newlines) (default: none)",
    )
    parser.add_argument(
        "--count-newlines",
        action="store_true",
        help="with --tokens: T counts every image token sent to the LLM, the LLaVA-NeXT / OneVision row newlines "
        "included, so each image keeps min(T - its newlines, its valid tokens) patch tokens (0 where its newlines "
        "exceed T, said under the table); no effect on hosts without newlines",
    )
    methods = parser.add_mutually_exclusive_group()
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
    _pruning_arguments(parser)
    parser.add_argument("--batch-size", action=_Once, type=int, default=1, help="rows per generate call")
    parser.add_argument("--max-new-tokens", action=_Once, type=int, default=32, help="greedy decoding limit")
    _device_arguments(parser)
    parser.add_argument(
        "--json", action=_Once, type=Path, default=None, metavar="OUT.json", help="write the results (default: none)"
    )
    _verbosity(parser, top=False)


def execute(args: argparse.Namespace) -> None:
    """``_evaluate``; ^C before the evaluation starts (while loading) says that nothing was written."""
    try:
        _evaluate(args)
    except KeyboardInterrupt as interrupt:
        if not getattr(interrupt, "hero_reported", False):
            _LOG.warning(_interrupted(args.json, None))
        raise


def _evaluate(args: argparse.Namespace) -> None:
    """The options, the data file, its images' existence, the output path, the ``--set`` fields (layers against the
    config's depth) and ``--clip``'s config are checked before the model loads; the JSON is written once, at the
    end (or, when a row fails, with the rows before it and ``"complete": false``)."""
    from ..adapter import get_adapter
    from ..evaluate import Evaluation, EvaluationError, check_options, check_tokens, evaluate
    from ..rows import read_rows

    named = args.presets or [args.preset or "hero"]
    budgets = check_tokens(args.tokens, flags=True, presets=named) if args.tokens is not None else ()
    if args.count_newlines and not budgets:
        raise HeroError(
            "--count-newlines needs --tokens: it says whether a token budget T per image counts the newlines. Add "
            "--tokens T..., e.g. --tokens 640 320 160, or drop --count-newlines (keep ratios never count newlines)."
        )
    keep_ratios = args.keep_ratios if args.keep_ratios is not None else [1.0, 0.4, 0.2]
    names, ratios = check_options(
        named,
        [1.0] if budgets else keep_ratios,  # with --tokens: the --set fields are checked at ratio 1
        args.batch_size,
        args.max_new_tokens,
        flags=True,
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
    reading = [presets.get(name, 1.0) for name in names if presets.get(name, 1.0).uses_relevance]
    if scorer is None and reading:
        units = " and ".join(sorted({_budget_unit(pruner) for pruner in reading}, reverse=True))
        _LOG.info("no --clip given: %s budgets come from visual saliency alone", units)

    def write(result: Evaluation) -> None:
        if args.json is not None:
            payload = result.to_dict()
            payload["settings"]["clip"] = args.clip
            _write_text("--json", args.json, json.dumps(payload, indent=2) + "\n")

    failed: list[Evaluation] = []

    def on_failure(partial: Evaluation) -> None:
        failed.append(partial)
        write(partial)

    calls = math.ceil(len(rows) / args.batch_size) * (1 + len(names) * len(budgets or ratios))
    bar = _steps(args, calls, "evaluating")
    try:
        result = evaluate(
            host,
            rows,
            presets=names,
            keep_ratios=None if budgets else ratios,
            tokens=budgets or None,
            count_newlines=args.count_newlines,
            overrides={item.key: item.value for item in overrides},
            scorer=scorer,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            layout=args.layout,
            data=args.data,
            progress=bar,
            on_failure=on_failure,
        )
    except EvaluationError as error:
        where = f" The {error.partial.rows} row(s) before it are in {args.json} (complete: false)." if args.json else ""
        raise HeroError(f"{_one_line(error)}{where}") from error
    except (
        KeyboardInterrupt
    ) as interrupt:  # ^C: say where the partial results are (main then says "interrupted", exit 130)
        bar.close()
        _LOG.warning(_interrupted(args.json, failed[-1] if failed else None))
        interrupt.hero_reported = True  # type: ignore[attr-defined]
        raise
    finally:
        bar.close()
    print(result.table())
    print()
    overhead = result.overhead
    print(f"overhead beyond generate: {'-' if overhead is None else f'{overhead:.1%}'} of the run")
    if args.json is not None:
        write(result)
        print(f"wrote {args.json}")


def _interrupted(json_path: Path | None, partial: Any) -> str:
    """Where an interrupted evaluation left its results: the partial file (``complete: false``), or none."""
    if partial is None:
        where = f"nothing was written to {json_path}" if json_path is not None else "no --json given"
        return f"interrupted before any row was evaluated: {where}"
    error = str(partial.error or "interrupted")
    done = error[error.index("interrupted at ") :] if "interrupted at " in error else error
    if json_path is None:
        return f"{done}; no --json given: the {partial.rows} row(s) before it are not kept"
    return f"{done}; the {partial.rows} row(s) before it are in {json_path} (complete: false)"
