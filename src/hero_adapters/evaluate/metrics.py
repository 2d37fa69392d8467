"""What ``evaluate`` measures and reports: answer normalisation, agreement, accuracy, flips, first divergence,
mean tokens and prefill, the speed-up, and the ``Evaluation`` with its JSON and table."""

from __future__ import annotations

import re
import statistics
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hero_core import HeroError

from ..rows import Row

if TYPE_CHECKING:
    from .loading import Host

__all__ = [
    "Answer",
    "Evaluation",
    "EvaluationError",
    "SettingResult",
    "Tally",
    "normalize_answer",
    "setting_key",
    "summarise",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """VQA / SQuAD-style normalisation for exact match: lowercase, punctuation removed, the articles a / an /
    the removed, whitespace collapsed. ``"The Stop-sign."`` -> ``"stopsign"``."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def setting_key(preset: str, keep_ratio: float | None, tokens: int | None = None, count_newlines: bool = False) -> str:
    """``"<preset>@<keep ratio>"``, e.g. ``"hero@0.2"``, or with a token budget per image ``"hero@320t"`` (patch
    tokens, newlines not counted) or ``"hero@320t+nl"`` (newlines counted in T): how answers name a setting."""
    if tokens is not None:
        return f"{preset}@{tokens}t{'+nl' if count_newlines else ''}"
    return f"{preset}@{keep_ratio:g}"


@dataclass(frozen=True)
class SettingResult:
    """One (preset, keep ratio) over the rows evaluated.

    Attributes:
        preset: the preset's name.
        keep_ratio: the keep ratio (None with a token budget: each image has its own, ``hero eval --tokens``).
        overrides: the ``--set`` fields this preset received.
        agreement: share of rows whose answer equals the unpruned answer exactly (None with no rows).
        first_divergence: per row (input order): None where the answers agree, else the first new-token
            position where the token ids differ.
        accuracy: share of the rows with an ``answer`` that the normalised answer matches; None without any.
        flips: over the rows with an ``answer``, how many the unpruned model got right and this setting wrong
            (``right_to_wrong``) and the other way round (``wrong_to_right``); None without any answer.
        tokens_in: mean image tokens per row of the unpruned prompt (newlines included).
        tokens_out: mean image tokens per row sent after pruning.
        prefill_seconds: mean time to first token per generate call (one batch).
        generate_seconds: total time of this setting's generate calls.
        speedup: unpruned mean prefill / this mean prefill, measured in the same run.
        tokens: the patch-token budget per image (``--tokens``), or None with a keep ratio.
        agreement_relative: ``agreement`` as a share of the unpruned model's (which agrees with itself: 1).
        accuracy_relative: ``accuracy`` divided by the unpruned model's accuracy (None where either is None or
            the unpruned accuracy is 0).
        count_newlines: with ``tokens``, whether T counts the newline tokens too (``--count-newlines``).
        images_over_budget: with newlines counted, the images whose newlines alone exceed T (they kept no patch
            token and sent more than T); None otherwise.
    """

    preset: str
    keep_ratio: float | None
    overrides: Mapping[str, Any]
    agreement: float | None
    first_divergence: tuple[int | None, ...]
    accuracy: float | None
    flips: Mapping[str, int] | None
    tokens_in: float | None
    tokens_out: float | None
    prefill_seconds: float | None
    generate_seconds: float
    speedup: float | None
    tokens: int | None = None
    agreement_relative: float | None = None
    accuracy_relative: float | None = None
    count_newlines: bool = False
    images_over_budget: int | None = None

    @property
    def key(self) -> str:
        return setting_key(self.preset, self.keep_ratio, self.tokens, self.count_newlines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "keep_ratio": self.keep_ratio,
            "tokens": self.tokens,
            "count_newlines": self.count_newlines if self.tokens is not None else None,
            "images_over_budget": self.images_over_budget,
            "overrides": dict(self.overrides),
            "agreement": self.agreement,
            "accuracy": self.accuracy,
            "agreement_relative": self.agreement_relative,
            "accuracy_relative": self.accuracy_relative,
            "flips": None if self.flips is None else dict(self.flips),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "prefill_seconds": self.prefill_seconds,
            "generate_seconds": self.generate_seconds,
            "speedup": self.speedup,
            "first_divergence": list(self.first_divergence),
        }


@dataclass(frozen=True)
class Answer:
    """One row's answers: the unpruned model's and one per setting (``setting_key``)."""

    id: str | int
    line: int
    reference: str | None
    unpruned: str
    pruned: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "line": self.line,
            "answer": self.reference,
            "unpruned": self.unpruned,
            "pruned": dict(self.pruned),
        }


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` measured; ``to_dict`` is the JSON ``hero eval --json`` writes, ``table`` its table.

    Attributes:
        model: the checkpoint.
        data: the data file, or None.
        rows: rows evaluated (all of them unless ``complete`` is False).
        rows_in_data: rows given.
        settings: the options of the run.
        unpruned: the unpruned model's accuracy, mean prefill, generate time and image tokens.
        results: one entry per (preset, keep ratio), presets outer, keep ratios inner, in the order given.
        answers: one per row evaluated, in input order.
        loop_seconds: wall time of the evaluation loop (the model load excluded).
        generate_seconds: the time of every generate call (warm-up included).
        complete: False when a row failed (``error`` says which); the other fields cover the rows before it.
        error: the failure, or None.
    """

    model: str
    data: str | None
    rows: int
    rows_in_data: int
    settings: Mapping[str, Any]
    unpruned: Mapping[str, Any]
    results: tuple[SettingResult, ...]
    answers: tuple[Answer, ...]
    loop_seconds: float
    generate_seconds: float
    complete: bool = True
    error: str | None = None

    @property
    def overhead(self) -> float | None:
        """Share of the loop's wall time spent outside generate calls (images, processor, decoding, bookkeeping)."""
        if self.loop_seconds <= 0:
            return None
        return max(self.loop_seconds - self.generate_seconds, 0.0) / self.loop_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "rows": self.rows,
            "rows_in_data": self.rows_in_data,
            "complete": self.complete,
            "error": self.error,
            "settings": dict(self.settings),
            "overhead": self.overhead,
            "timing": {"loop_seconds": self.loop_seconds, "generate_seconds": self.generate_seconds},
            "unpruned": dict(self.unpruned),
            "results": [result.to_dict() for result in self.results],
            "answers": [answer.to_dict() for answer in self.answers],
        }

    def table(self) -> str:
        """Markdown: the unpruned model, then one line per preset x keep ratio (or token budget per image); the
        last two columns are agreement and accuracy as a percentage of the unpruned model's (the reference row:
        everything kept, agreement 100% by definition), the way papers place methods."""
        answered = sum(answer.reference is not None for answer in self.answers)
        budget = bool(self.settings.get("tokens"))
        counted = bool(self.settings.get("count_newlines"))
        column = f"tokens per image (newlines {'' if counted else 'not '}counted)" if budget else "keep ratio"
        lines = [
            f"| preset | {column} | agreement | first divergence | accuracy "
            "| right -> wrong / wrong -> right | image tokens in -> out | prefill ms | speed-up "
            "| agreement % of unpruned | accuracy % of unpruned |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        base = self.unpruned
        reference = "100.0%" if self.rows else "-"
        lines.append(
            f"| unpruned | - | - | - | {_share(base['accuracy'], answered)} | - | {_tokens(base['tokens_in'], None)} | "
            f"{_ms(base['prefill_seconds'])} | 1.00x | {reference} | "
            f"{reference if base['accuracy'] else '-'} |"
        )
        for result in self.results:
            diverged = [d for d in result.first_divergence if d is not None]
            median = f"{statistics.median(diverged):g}" if diverged else "-"
            speedup = f"{result.speedup:.2f}x" if result.speedup is not None else "-"
            flips = (
                "-" if result.flips is None else f"{result.flips['right_to_wrong']} / {result.flips['wrong_to_right']}"
            )
            setting = f"{result.tokens}" if result.tokens is not None else f"{result.keep_ratio:g}"
            lines.append(
                f"| {result.preset} | {setting} | {_share(result.agreement, self.rows)} | {median} | "
                f"{_share(result.accuracy, answered)} | {flips} | {_tokens(result.tokens_in, result.tokens_out)} | "
                f"{_ms(result.prefill_seconds)} | {speedup} | {_percent(result.agreement_relative)} | "
                f"{_percent(result.accuracy_relative)} |"
            )
        if budget:
            lines.append("")
            lines.append(str(self.settings.get("tokens_note", "")))
        if budget and counted:
            over = [result for result in self.results if result.images_over_budget]
            lines.extend(
                f"{result.key}: {result.images_over_budget} image(s) have more newlines than {result.tokens}: they "
                f"kept 0 patch tokens and sent their newlines, more than {result.tokens}"
                for result in over
            )
            if not over:
                lines.append("no image has more newlines than its budget T: every image sent at most T image tokens")
        return "\n".join(lines)


def _share(value: float | None, count: int) -> str:
    return "-" if value is None else f"{value:.1%} of {count}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _relative(value: float | None, reference: float | None) -> float | None:
    """``value / reference`` (a share of the unpruned model's), None where either is missing or the reference 0."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def _tokens(tokens_in: float | None, tokens_out: float | None) -> str:
    if tokens_in is None:
        return "-"
    return f"{tokens_in:.1f} -> {(tokens_in if tokens_out is None else tokens_out):.1f}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.1f}"


class EvaluationError(HeroError):
    """A row failed during ``evaluate``; ``partial`` holds the rows done before it (``complete`` False)."""

    def __init__(self, message: str, partial: Evaluation) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class Tally:
    """What one path (unpruned or one setting) produced, per row and per call, over the rows done."""

    texts: list[str] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    tokens_in: list[int] = field(default_factory=list)
    tokens_out: list[int] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    seconds: float = 0.0
    over_budget: int = 0  # images whose newlines alone exceed the token budget T (newlines counted)

    def extend(self, other: Tally) -> None:
        self.texts += other.texts
        self.ids += other.ids
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.prefill += other.prefill
        self.seconds += other.seconds
        self.over_budget += other.over_budget


def _first_divergence(a: Sequence[int], b: Sequence[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _accuracy(texts: Sequence[str], done: Sequence[Row]) -> float | None:
    pairs = zip(texts, done, strict=True)
    graded = [normalize_answer(text) == normalize_answer(row.answer) for text, row in pairs if row.answer is not None]
    return _mean([float(x) for x in graded])


def _flips(base: Sequence[str], texts: Sequence[str], done: Sequence[Row]) -> dict[str, int] | None:
    """Right -> wrong and wrong -> right against the unpruned answers, over the rows with a reference."""
    counts = {"right_to_wrong": 0, "wrong_to_right": 0}
    graded = False
    for before, after, row in zip(base, texts, done, strict=True):
        if row.answer is None:
            continue
        graded = True
        reference = normalize_answer(row.answer)
        was, now = normalize_answer(before) == reference, normalize_answer(after) == reference
        if was and not now:
            counts["right_to_wrong"] += 1
        elif now and not was:
            counts["wrong_to_right"] += 1
    return counts if graded else None


def summarise(
    host: Host,
    data: str | Path | None,
    rows: Sequence[Row],
    done: Sequence[Row],
    names: Sequence[str],
    ratios: Sequence[float | None],
    routed: Mapping[str, Mapping[str, Any]],
    unpruned: Tally,
    tallies: Sequence[Tally],
    *,
    settings: Mapping[str, Any],
    loop_seconds: float,
    generate_seconds: float,
    complete: bool,
    error: str | None,
    budgets: Sequence[int] = (),
    count_newlines: bool = False,
) -> Evaluation:
    """The ``Evaluation`` of the rows done; with ``budgets`` (token budgets per image) the settings are preset x
    budget and ``ratios`` is ignored; ``count_newlines`` says whether the budgets count newlines."""
    base_prefill = _mean(unpruned.prefill)
    base_accuracy = _accuracy(unpruned.texts, done)
    tokens_in = _mean([float(x) for x in tallies[0].tokens_in]) if tallies else None
    grid: list[tuple[str, float | None, int | None]] = (
        [(p, None, t) for p in names for t in budgets] if budgets else [(p, r, None) for p in names for r in ratios]
    )
    results = []
    for (preset, ratio, budget), tally in zip(grid, tallies, strict=True):
        agree = [text == base for text, base in zip(tally.texts, unpruned.texts, strict=True)]
        divergence = tuple(
            None if same else _first_divergence(ids, base_ids)
            for same, ids, base_ids in zip(agree, tally.ids, unpruned.ids, strict=True)
        )
        prefill = _mean(tally.prefill)
        agreement = _mean([float(x) for x in agree])
        accuracy = _accuracy(tally.texts, done)
        results.append(
            SettingResult(
                preset=preset,
                keep_ratio=ratio,
                overrides=dict(routed[preset]),
                agreement=agreement,
                first_divergence=divergence,
                accuracy=accuracy,
                flips=_flips(unpruned.texts, tally.texts, done),
                tokens_in=_mean([float(x) for x in tally.tokens_in]),
                tokens_out=_mean([float(x) for x in tally.tokens_out]),
                prefill_seconds=prefill,
                generate_seconds=tally.seconds,
                speedup=base_prefill / prefill if base_prefill is not None and prefill else None,
                tokens=budget,
                agreement_relative=_relative(agreement, 1.0),
                accuracy_relative=_relative(accuracy, base_accuracy),
                count_newlines=count_newlines and budget is not None,
                images_over_budget=tally.over_budget if count_newlines and budget is not None else None,
            )
        )
    keys = [setting_key(p, r, t, count_newlines) for p, r, t in grid]
    answers = tuple(
        Answer(
            id=row.id,
            line=row.line,
            reference=row.answer,
            unpruned=unpruned.texts[i],
            pruned={key: tally.texts[i] for key, tally in zip(keys, tallies, strict=True)},
        )
        for i, row in enumerate(done)
    )
    return Evaluation(
        model=host.source,
        data=None if data is None else str(data),
        rows=len(done),
        rows_in_data=len(rows),
        settings=settings,
        unpruned={
            "accuracy": base_accuracy,
            "tokens_in": tokens_in,
            "prefill_seconds": base_prefill,
            "generate_seconds": unpruned.seconds,
        },
        results=tuple(results),
        answers=answers,
        loop_seconds=loop_seconds,
        generate_seconds=generate_seconds,
        complete=complete,
        error=error,
    )
