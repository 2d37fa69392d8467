"""The loop behind ``hero eval``: every batch of rows unpruned, then with every (preset, keep ratio), timed to the
first token; the options checked and the ``--set`` overrides routed to the presets that have those fields."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hero_core import HeroError
from hero_core import presets as _presets

from ..attach import host_generate
from ..rows import Row, open_image
from .budget import TokenBudget, check_exact
from .loading import Host
from .metrics import Evaluation, EvaluationError, Tally, setting_key, summarise

__all__ = ["TOKENS_NOTE", "TOKENS_NOTE_COUNTED", "check_options", "check_tokens", "evaluate", "route_overrides"]

TOKENS_NOTE = (
    "tokens per image: patch tokens kept, newlines not counted (LLaVA-NeXT / OneVision row newlines are sent on top "
    "and shown in 'image tokens in -> out'); an image with fewer valid tokens keeps them all"
)
TOKENS_NOTE_COUNTED = (
    "tokens per image: every image token sent to the LLM, newlines counted in T (an image keeps min(T - its "
    "newlines, its valid tokens) patch tokens; LLaVA-NeXT / OneVision row newlines are never pruned, so an image "
    "with more newlines than T keeps 0 patch tokens and sends its newlines, more than T; hosts without newlines "
    "keep min(T, valid) as when they are not counted)"
)


def check_tokens(tokens: Sequence[int], *, flags: bool = False, presets: Sequence[str] = ()) -> tuple[int, ...]:
    """Token budgets per image, checked: ints >= 1, at least one, each once; and ``presets`` (known names) each
    able to keep exactly T (``Pruner.count_known``: not ``hero-reference``). ``flags`` names ``--tokens``."""
    name = "--tokens" if flags else "tokens"
    for preset in presets:
        if preset in _presets.PRESETS:  # unknown names: check_options refuses them
            check_exact(preset, "--presets" if flags else "presets")
    budgets = tuple(tokens)
    if not budgets:
        raise HeroError.field(name, [], "at least one token budget per image, e.g. 640 320 160")
    for budget in budgets:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise HeroError.field(name, budget, "patch tokens kept per image: ints >= 1, e.g. 640 320 160")
    twice = [budget for i, budget in enumerate(budgets) if budget in budgets[:i]]
    if twice:
        raise HeroError.field(name, list(budgets), "each value once", f"{twice[0]!r} is given twice.")
    return budgets


def check_options(
    preset_names: Sequence[str],
    keep_ratios: Sequence[float],
    batch_size: int,
    max_new_tokens: int,
    *,
    flags: bool = False,
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The presets and keep ratios, checked (known, no duplicates, ratios in (0, 1]), and the batch size and
    token limit (ints >= 1). ``flags`` names them as the command line does (``--batch-size``)."""

    def name(text: str) -> str:
        return "--" + text.replace("_", "-") if flags else text

    names = tuple(preset_names)
    if not names:
        raise HeroError.field(name("presets"), [], f"at least one of {sorted(_presets.PRESETS)}")
    for preset in names:
        if preset not in _presets.PRESETS:
            raise HeroError.field(name("presets"), preset, f"one of {sorted(_presets.PRESETS)}")
    ratios = tuple(float(ratio) for ratio in keep_ratios)
    for ratio in ratios:
        if not math.isfinite(ratio) or not 0.0 < ratio <= 1.0:
            raise HeroError.field(
                name("keep_ratios"), ratio, "fractions of patch tokens KEPT in (0, 1], e.g. 1 0.4 0.2"
            )
    if not ratios:
        raise HeroError.field(name("keep_ratios"), [], "at least one keep ratio in (0, 1], e.g. 1 0.4 0.2")
    keys = tuple(setting_key(names[0], ratio) for ratio in ratios)  # the answers' keys: 0.2 and 0.2000001 collide
    for label, values, shown in (("presets", names, names), ("keep_ratios", keys, ratios)):
        twice = [shown[i] for i, value in enumerate(values) if value in values[:i]]
        if twice:
            raise HeroError.field(
                name(label),
                list(shown),
                "each value once (keep ratios distinct at 6 significant digits)",
                f"{twice[0]!r} is given twice.",
            )
    for label, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HeroError.field(name(label), value, "an int >= 1")
    return names, ratios


def route_overrides(preset_names: Sequence[str], depth: int, overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Which preset gets which override: a field goes to every preset whose allocator or selector has a field of
    that name; a name no preset has goes to all of them (and the preset says the name is unknown). With one
    preset every override goes to it."""
    if len(preset_names) == 1:
        return {preset_names[0]: dict(overrides)}
    fields: dict[str, set[str]] = {}
    for preset in preset_names:
        pruner = _presets.get(preset, 1.0, depth=depth)
        parts: tuple[Any, ...] = (pruner.allocator, pruner.selector)
        fields[preset] = {f.name for part in parts if dataclasses.is_dataclass(part) for f in dataclasses.fields(part)}
    routed: dict[str, dict[str, Any]] = {preset: {} for preset in preset_names}
    for key, value in overrides.items():
        owners = [preset for preset in preset_names if key in fields[preset]] or list(preset_names)
        for preset in owners:
            routed[preset][key] = value
    return routed


@cache
def _probe_class() -> type:
    """A ``transformers.LogitsProcessor`` that notes when it is first called (after the prefill forward)."""
    from ..extras import require

    base: Any = require("transformers").LogitsProcessor

    class FirstTokenProbe(base):  # type: ignore[misc]
        def __init__(self, cuda: torch.device | None) -> None:
            self.cuda = cuda
            self.at: float | None = None

        def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
            if self.at is None:
                if self.cuda is not None:
                    torch.cuda.synchronize(self.cuda)
                self.at = time.perf_counter()
            return scores

    return FirstTokenProbe


def evaluate(
    host: Host,
    rows: Sequence[Row],
    *,
    presets: Sequence[str] = ("hero",),
    keep_ratios: Sequence[float] | None = None,
    overrides: Mapping[str, Any] | None = None,
    scorer: Any = None,
    batch_size: int = 1,
    max_new_tokens: int = 32,
    layout: str | None = None,
    warmup: bool = True,
    data: str | Path | None = None,
    progress: Any = None,
    on_failure: Callable[[Evaluation], None] | None = None,
    tokens: Sequence[int] | None = None,
    count_newlines: bool = False,
) -> Evaluation:
    """Run every row unpruned and with every (preset, keep ratio); measure agreement, accuracy, tokens, prefill.

    Args:
        host: the loaded model and processor (``load_host``).
        rows: the rows (``hero_adapters.rows.read_rows``), evaluated in order.
        presets: preset names (``hero_core.presets.PRESETS``); each runs at every keep ratio, so presets that
            keep equal counts at equal ratios are compared on equal budgets.
        keep_ratios: keep ratios in (0, 1]; at 1 the agreement is measured like any other (default: 1, 0.4, 0.2;
            not with ``tokens``).
        overrides: preset fields (``presets.get(name, r, **overrides)``), routed by ``route_overrides``.
        scorer: optional ``TextScorer`` for relevance (else budgets come from saliency alone).
        batch_size: rows per generate call (left padding; in float32 the answers equal batch size 1's,
            in reduced precision padding may change the numerics).
        max_new_tokens: greedy decoding limit for every call.
        layout: the adapter's layout (default: the host's own).
        warmup: before the first timed call, run the first batch once unpruned and once pruned (1 new token,
            not in the prefill means), so one-time costs do not land on the unpruned side.
        data: the data file, for messages and the report.
        progress: optional progress object (``update`` / ``set_description``), advanced once per generate call.
        on_failure: called with the partial ``Evaluation`` (``complete`` False) before a failure is raised,
            also on KeyboardInterrupt.
        tokens: instead of keep ratios, patch-token budgets per image (matched-count evaluation): each image
            keeps ``min(T, valid)`` patch tokens, its keep ratio chosen from its own geometry (``TokenBudget``);
            newlines are not counted in T unless ``count_newlines``.
        count_newlines: with ``tokens``, T counts every image token sent to the LLM, newlines included: each
            image keeps ``min(T - newlines, valid)`` patch tokens (0 where its newlines exceed T: it then sends
            more than T, counted in ``images_over_budget`` and said under the table).

    Returns:
        The ``Evaluation``.

    Raises:
        HeroError: on bad options (before any row runs).
        EvaluationError: when a row fails (an image that does not decode, a HeroError of the host call, CUDA
            out of memory); the message names the data file's line(s), ``partial`` holds the rows done.
    """
    from ..adapter import get_adapter, preset_options
    from ..vlm import HeroVLM

    start = time.perf_counter()
    if tokens is not None and keep_ratios is not None:
        raise HeroError.field("tokens", list(tokens), "not given together with keep_ratios (one or the other)")
    budgets = check_tokens(tokens, presets=presets) if tokens is not None else ()
    if not isinstance(count_newlines, bool):
        raise HeroError.field("count_newlines", count_newlines, "True or False")
    if count_newlines and not budgets:
        raise HeroError(
            "count_newlines=True needs tokens: it says whether a token budget T per image counts the newlines. Pass "
            "tokens=(640, 320, 160) too, or drop count_newlines (keep ratios never count newlines)."
        )
    names, ratios = check_options(
        presets, (1.0,) if budgets else (1.0, 0.4, 0.2) if keep_ratios is None else keep_ratios, batch_size,
        max_new_tokens,
    )  # fmt: skip
    model = host.model
    # The paper's layers are CLIP ViT-L/14's: scaled to this encoder's depth (explicit layer overrides are kept).
    encoder = preset_options(get_adapter(model, processor=host.processor))
    routed = route_overrides(names, encoder["depth"], dict(overrides or {}))
    # (preset, keep ratio, token budget): a budget's ratio is chosen per image, when the image is planned.
    settings: list[tuple[str, float | None, int | None]] = (
        [(preset, None, budget) for preset in names for budget in budgets]
        if budgets
        else [(preset, ratio, None) for preset in names for ratio in ratios]
    )

    def pruner(preset: str, ratio: float | None, budget: int | None) -> Any:
        if budget is not None:  # HeroVLM's pruner is one object per call; TokenBudget picks each image's preset
            return TokenBudget(preset, budget, {**encoder, **routed[preset]}, count_newlines=count_newlines)
        assert ratio is not None
        return _presets.get(preset, ratio, **encoder, **routed[preset])

    vlms = [HeroVLM(model, pruner(*setting), scorer, layout=layout, processor=host.processor) for setting in settings]
    adapter = vlms[0].adapter
    cuda = host.device if host.device.type == "cuda" else None
    probe_class = _probe_class()
    logits_list = _require_logits_list()
    eos = _eos_ids(model)
    options = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    where = f"--data {data}" if data is not None else "rows"

    def sync() -> None:
        if cuda is not None:
            torch.cuda.synchronize(cuda)

    def timed(call: Callable[..., Any], **kwargs: Any) -> tuple[Tensor, float, float]:
        """(sequences, time to first token, total seconds) of one generate call."""
        probe = probe_class(cuda)
        sync()
        begin = time.perf_counter()
        out = call(**kwargs, logits_processor=logits_list([probe]))
        sync()
        end = time.perf_counter()
        first = probe.at if probe.at is not None else end
        sequences = out if isinstance(out, Tensor) else out.sequences
        return sequences, first - begin, end - begin

    unpruned = Tally()
    tallies = [Tally() for _ in settings]
    done: list[Row] = []
    generate_seconds = 0.0

    def result(complete: bool, error: str | None) -> Evaluation:
        return summarise(
            host,
            data,
            rows,
            done,
            names,
            ratios,
            routed,
            unpruned,
            tallies,
            budgets=budgets,
            count_newlines=count_newlines,
            settings={
                "presets": list(names),
                "keep_ratios": None if budgets else list(ratios),
                "tokens": list(budgets) if budgets else None,
                "count_newlines": count_newlines if budgets else None,
                "tokens_convention": (f"newlines {'' if count_newlines else 'not '}counted in T") if budgets else None,
                "tokens_note": (TOKENS_NOTE_COUNTED if count_newlines else TOKENS_NOTE) if budgets else None,
                "overrides": routed,
                "batch_size": batch_size,
                "max_new_tokens": max_new_tokens,
                "decoding": "greedy",
                "device": str(host.device),
                "dtype": str(host.dtype).removeprefix("torch."),
                "layout": vlms[0].layout,
                "text_scorer": None if scorer is None else type(scorer).__name__,
                "warmup": warmup,
                "prefill": "time to first token per generate call (one batch of rows)",
            },
            loop_seconds=time.perf_counter() - start,
            generate_seconds=generate_seconds,
            complete=complete,
            error=error,
        )

    plain = host_generate(model)  # the host's own generate, also inside someone's attach() block
    batches = [list(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]
    for number, batch in enumerate(batches):
        lines = ", ".join(str(row.line) for row in batch)
        located = f"{where}, line{'s' if len(batch) > 1 else ''} {lines}"
        span = f"rows {len(done) + 1}-{len(done) + len(batch)} of {len(rows)}"
        try:
            images = [_open_image(row, where) for row in batch]
            prompts = [row.prompt for row in batch]
            inputs = host.inputs(prompts, images)
            extra = adapter.image_inputs(images)
            length = int(inputs["input_ids"].shape[1])
            if warmup and number == 0:
                warm = {**options, "max_new_tokens": 1}
                for call, kwargs in (
                    (plain, inputs),
                    (vlms[0].generate, {**inputs, **extra, "query": prompts}),
                ):
                    with torch.no_grad():
                        generate_seconds += timed(call, **kwargs, **warm)[2]
            step = Tally()
            if progress is not None:
                progress.set_description(f"{span}: unpruned")
            with torch.no_grad():
                sequences, first, total = timed(plain, **inputs, **options)
            generate_seconds += total
            _record(step, sequences, length, eos, host.processor, first, total)
            if progress is not None:
                progress.update()
            batch_steps: list[Tally] = []
            for (preset, ratio, budget), vlm in zip(settings, vlms, strict=True):
                if progress is not None:
                    progress.set_description(f"{span}: {setting_key(preset, ratio, budget, count_newlines)}")
                sequences, first, total = timed(vlm.generate, **inputs, **extra, query=prompts, **options)
                generate_seconds += total
                pruned = Tally()
                _record(pruned, sequences, length, eos, host.processor, first, total)
                per_row_in, per_row_out = [0] * len(batch), [0] * len(batch)
                for image in vlm.last_report.images if vlm.last_report is not None else []:
                    if image.prompt is not None:
                        per_row_in[image.prompt] += image.tokens_in
                        per_row_out[image.prompt] += image.tokens_out
                    if count_newlines and budget is not None and image.newline_tokens > budget:
                        pruned.over_budget += 1  # 0 patch tokens kept, its newlines sent: more than T
                pruned.tokens_in, pruned.tokens_out = per_row_in, per_row_out
                batch_steps.append(pruned)
                if progress is not None:
                    progress.update()
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                message = f"interrupted at {located}"  # the location once
            else:
                message = " ".join(str(error).split())
                if not message.startswith(f"{where}, line"):
                    message = f"{located}: {message}"
            partial = result(False, message)
            if on_failure is not None:
                on_failure(partial)
            if isinstance(error, (HeroError, torch.cuda.OutOfMemoryError)):
                fix = " Use a smaller --batch-size or --max-new-tokens." if _is_oom(error) else ""
                raise EvaluationError(message + fix, partial) from error
            raise
        unpruned.extend(step)
        for tally, pruned in zip(tallies, batch_steps, strict=True):
            tally.extend(pruned)
        done.extend(batch)
    return result(True, None)


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError)


def _require_logits_list() -> Any:
    from ..extras import require

    return require("transformers").LogitsProcessorList


def _eos_ids(model: Any) -> set[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(x) for x in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _new_tokens(row: Tensor, eos: set[int]) -> list[int]:
    """The generated ids of one row up to and including the first end-of-sequence token (batch padding after
    a finished row is dropped, so a row's tokens do not depend on the batch)."""
    ids = [int(x) for x in row.tolist()]
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids


def _record(
    tally: Tally, sequences: Tensor, length: int, eos: set[int], processor: Any, first: float, total: float
) -> None:
    for row in sequences[:, length:]:
        ids = _new_tokens(row, eos)
        tally.ids.append(ids)
        tally.texts.append(str(processor.decode(ids, skip_special_tokens=True)).strip())
    tally.prefill.append(first)
    tally.seconds += total


def _open_image(row: Row, where: str) -> Any:
    return open_image(row.image, f"{where}, line {row.line}: image")
