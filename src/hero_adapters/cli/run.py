"""``hero run``: answer one image and prompt with pruning (``--compare``: beside the unpruned model, timed), or
every row of a ``--data`` file."""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hero_core import HeroError

from ..rows import Row, open_image
from ._args import _model_arguments, _Once, _one_line
from ._checks import _check_outputs, _positive, _precheck
from ._console import _stdout_closed, _Steps, _steps
from ._load import _decode, _Session, _single, _start, _table, _timed
from ._output import _JsonLines, _write_file, _write_text

_LOG = logging.getLogger("hero_adapters.cli")

NAME, HELP = "run", "answer a prompt with pruning (one image, or every row of --data)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser, batch=True)
    parser.add_argument("--max-new-tokens", action=_Once, type=int, default=64, help="greedy decoding limit")
    parser.add_argument(
        "--batch-size", action=_Once, type=int, default=None, help="with --data: rows per generate call (default: 1)"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run the unpruned model: both warmed up, then timed alternately (--repeats), medians printed",
    )
    parser.add_argument(
        "--repeats",
        action=_Once,
        type=int,
        default=None,
        help="with --compare: timed runs of each path (default: 3)",
    )
    parser.add_argument(
        "--show",
        action=_Once,
        type=Path,
        default=None,
        metavar="OUT.png",
        help="also draw the kept tokens (.png, .jpg, .webp, ...; default: no picture)",
    )
    parser.add_argument(
        "--json",
        action=_Once,
        type=Path,
        default=None,
        metavar="OUT.json",
        help="write the report as JSON; with --data, JSON Lines: one result per row, in input order, written "
        "as rows finish (default: none)",
    )


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


def execute(args: argparse.Namespace) -> None:
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
    unpruned = None if timing is None else _decode(session, plain, length)
    # the files asked for first, each whole or not at all: a closed stdout (`| head -1`) cannot cost them
    if args.show is not None:
        from ..visualize import render_plan

        _write_file("--show", args.show, lambda path: render_plan(image, report.images[0], path))
    if args.json is not None:
        payload: dict[str, Any] = {"answer": answer, "preset": args.preset, "report": report.to_dict()}
        if timing is not None:
            payload["unpruned"] = {"answer": unpruned, "seconds": timing["unpruned_median"]}
            payload["timing"] = timing
        _write_text("--json", args.json, json.dumps(payload, indent=2) + "\n")
    print(f"answer ({args.preset}, keep ratio {args.keep_ratio:g}): {answer}")
    if timing is not None:
        print(f"answer (unpruned): {unpruned}")
        speedup = timing["unpruned_median"] / timing["pruned_median"] if timing["pruned_median"] > 0 else math.nan
        print(
            f"time: pruned {timing['pruned_median']:.3f} s, unpruned {timing['unpruned_median']:.3f} s "
            f"({speedup:.2f}x; generate, median of {repeats} alternating runs after one warm-up of each; "
            f"{timing['pruned_new_tokens']} and {timing['unpruned_new_tokens']} new tokens)"
        )
        print(
            f"spread (min-max of the {repeats} timed runs): pruned {min(timing['pruned_seconds']):.3f}-"
            f"{max(timing['pruned_seconds']):.3f} s, unpruned {min(timing['unpruned_seconds']):.3f}-"
            f"{max(timing['unpruned_seconds']):.3f} s"
        )
        if timing["pruned_new_tokens"] != timing["unpruned_new_tokens"]:
            _LOG.warning(
                "the answers have different lengths, so the times include different numbers of decoding steps; "
                "hero eval measures the prefill (time to first token) alone"
            )
    print()
    print(_table(report, session, inputs))
    for path in (args.show, args.json):
        if path is not None:
            print(f"wrote {path}")


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
    from ..attach import host_generate

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
    from ..rows import read_rows

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
    printing = True

    def say(line: str) -> None:
        """A result line on stdout; when its reader is gone, the rest of the rows still go to --json, if asked."""
        nonlocal printing
        if not printing:
            return
        try:
            bar.write(line)
        except BrokenPipeError:
            printing = False
            _stdout_closed()
            if args.json is None:  # nothing else was asked for: stop here
                raise

    # opened with the first answered batch: a run that fails at once leaves an existing file as it was
    out: _JsonLines | None = None
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
            printed = []
            for i, row in enumerate(batch):
                images_of_row = [image for image in report.images if image.prompt == i]
                result = _row_result(row, _decode(session, sequences, length, i), images_of_row, args.preset,
                                     args.keep_ratio)  # fmt: skip
                result["batch_seconds"] = seconds
                done.append(result)
                printed.append(
                    f"{row.id}: {result['answer']}  [{result['tokens_in']} -> {result['tokens_out']} image tokens]"
                )
            if args.json is not None:  # the batch's lines on disk before they go to stdout
                if out is None:
                    out = _JsonLines(args.json)
                out.add(done[-len(batch) :], len(done))
            for line in printed:
                say(line)
            bar.update(len(batch))
    finally:
        bar.close()
        if out is not None:
            out.close()
    tokens_in = sum(r["tokens_in"] for r in done)
    tokens_out = sum(r["tokens_out"] for r in done)
    say(
        f"{len(done)} rows ({args.preset}, keep ratio {args.keep_ratio:g}): image tokens {tokens_in} -> {tokens_out} "
        f"(effective ratio {tokens_out / tokens_in if tokens_in else 1.0:.3f})"
    )
    if args.json is not None:
        say(f"wrote {args.json}")
    if not printing:  # every row answered and written; the exit code still says that stdout was cut short
        raise BrokenPipeError("stdout closed")
