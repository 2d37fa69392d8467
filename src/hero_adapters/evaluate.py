"""Pruned against unpruned on a data file: agreement, accuracy, image tokens and the prefill speed-up.

The loop behind ``hero eval``, usable from Python::

    from hero_adapters.evaluate import evaluate, load_host
    from hero_adapters.rows import read_rows

    host = load_host("./llava-v1.6-vicuna-7b-hf")
    result = evaluate(host, read_rows("rows.jsonl"), presets=("hero", "uniform-random"), keep_ratios=(1, 0.4, 0.2))
    print(result.table())

For every batch of rows (left-padded, prompts in the processor's chat template) the unpruned model runs
first (``model.generate``, greedy), then every (preset, keep ratio) through ``HeroVLM.generate`` with the
same options. Prefill time is the time to first token: from the start of a ``generate`` call to the first
call of a ``LogitsProcessor``, which sees the scores of the prefill forward; for the pruned path it includes
HERO's encode, score and plan. Both paths are timed in the same run, on the same rows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
import statistics
import string
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hero_core import HeroError
from hero_core import presets as _presets

from ._paths import exists
from .attach import host_generate
from .rows import Row, open_image

__all__ = [
    "Answer",
    "Evaluation",
    "EvaluationError",
    "Host",
    "SettingResult",
    "device_dtype",
    "evaluate",
    "host_config",
    "load_host",
    "normalize_answer",
    "refused_checkpoint",
    "setting_key",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")


# ------------------------------------------------------------------------------------------------ loading
def device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``device`` ``auto`` | ``cpu`` | ``cuda`` and ``dtype`` ``auto`` | ``float32`` | ``bfloat16`` | ``float16``;
    ``auto`` is CUDA when present, and bfloat16 there, float32 on the CPU."""
    from .bench import pick_device

    chosen = pick_device(device)
    if dtype == "auto":
        return chosen, torch.bfloat16 if chosen.type == "cuda" else torch.float32
    return chosen, getattr(torch, dtype)


#: The pickled weight files ``torch.load`` reads (transformers' ``pytorch_model*.bin``, open_clip's ``.pt``/``.pth``).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def refused_checkpoint(
    flag: str, source: str, error: BaseException, *, files: str | Path | None = None
) -> HeroError | None:
    """The message for a checkpoint that hero refuses on purpose, or None for any other loading error.

    hero never runs code that comes with a checkpoint: every transformers loader it calls gets
    ``trust_remote_code=False`` (there is no option to turn it on), and weights load through safetensors or
    ``torch.load(weights_only=True)``. So a checkpoint that needs classes of its own (``auto_map`` in its
    configs) and pickled weights holding objects other than tensors fail to load; this names the refusal and
    the fix instead of transformers' advice to pass ``trust_remote_code=True`` / ``weights_only=False``.

    Args:
        flag: the flag or argument that named the checkpoint.
        source: its value, as given.
        error: what loading it raised.
        files: where its files are, when ``source`` is not their path (default: ``source``).
    """
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
        # torch's weights_only unpickler met an object that is not a tensor (a corrupt file says otherwise)
        local = Path(source if files is None else files)
        try:
            names = sorted(p.name for p in local.iterdir() if p.suffix in PICKLE_SUFFIXES) if local.is_dir() else []
            if local.is_file():
                names = [local.name]
        except OSError:  # a folder that may be entered but not listed
            names = []
        where = ", ".join(names) if names else "Its pickled weights file"
        return HeroError.field(
            flag,
            source,
            "weights that load without running code (safetensors, or a pickled file holding tensors only)",
            f"{where} holds pickled objects other than tensors, and hero never unpickles those "
            "(torch.load(weights_only=True)). Use the checkpoint's safetensors weights, or convert this file to "
            "safetensors yourself if you trust where it came from.",
        )
    if isinstance(error, ValueError) and _needs_own_code(source, error):
        return HeroError.field(
            flag,
            source,
            "a checkpoint whose classes transformers itself implements",
            "Its configs name code of their own (auto_map) that would have to be imported and run; hero never "
            "runs code shipped with a checkpoint (trust_remote_code is always off). Use a release of the model "
            "in transformers' own classes (the '-hf' checkpoints, e.g. llava-hf/llava-v1.6-vicuna-7b-hf).",
        )
    return None


def _needs_own_code(source: str, error: BaseException) -> bool:
    """transformers refused custom code (its message names trust_remote_code), or the local config.json maps a
    model type transformers lacks to classes of its own."""
    if "trust_remote_code" in str(error).replace(source, ""):  # transformers' advice, not the echoed path
        return True
    try:
        config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    from .extras import require

    known = require("transformers").models.auto.configuration_auto.CONFIG_MAPPING
    return isinstance(config, dict) and "auto_map" in config and config.get("model_type") not in known


@dataclass(frozen=True)
class Host:
    """A loaded host model and its processor (``load_host``), or your own: ``Host(source, model, processor, ...)``.

    Attributes:
        source: the checkpoint directory or hub id (for reports).
        model: the ``...ForConditionalGeneration`` model, in eval mode on ``device``.
        processor: its processor; batches are padded on the left.
        device: where the model and its inputs live.
        dtype: the model's dtype.
    """

    source: str
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype

    def text(self, prompt: str) -> str:
        """One user turn with one image and ``prompt``, in the processor's chat template (if it has one)."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
            if text is not None:
                return str(text)
        tag = getattr(self.processor, "image_token", None) or "<image>"
        return f"USER: {tag}\n{prompt} ASSISTANT:"

    def inputs(self, prompts: Sequence[str], images: Sequence[Any]) -> dict[str, Any]:
        """The processor's tensors for one image per prompt, padded on the left, on ``device``."""
        texts = [self.text(prompt) for prompt in prompts]
        inputs = self.processor(images=list(images), text=texts, return_tensors="pt", padding=True)
        return {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in inputs.items()}


def host_config(source: str | Path) -> Any:
    """The checkpoint's ``transformers`` config, checked (a ``config.json``, a model type with an adapter); cheap:
    only the config is read, so the command line calls it before anything loads.

    Raises:
        HeroError: on a path without ``config.json``, an unreadable config, a config that needs code of its own
            (``auto_map``; never run) or a model type without an adapter (each names ``--model``).
    """
    from . import hosts  # noqa: F401  (registers the host adapters)
    from .adapter import list_adapters
    from .extras import require

    transformers = require("transformers")
    text = str(source)
    local = Path(text)
    if exists(local) and not (local / "config.json").is_file():
        raise HeroError.field("--model", text, "a checkpoint directory with a config.json")
    try:
        config = transformers.AutoConfig.from_pretrained(text, trust_remote_code=False)
    except (OSError, ValueError) as error:
        refused = refused_checkpoint("--model", text, error)
        raise refused or HeroError.field(
            "--model", text, "a checkpoint directory or a cached hub id", str(error)
        ) from error
    if config.model_type not in list_adapters():
        raise HeroError.field(
            "--model model_type",
            config.model_type,
            f"a model type with an adapter, one of {list_adapters()}",
            f"{text} is not a supported checkpoint.",
        )
    return config


def load_host(
    source: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    steps: Any = None,
    check_processor: Callable[[Any], None] | None = None,
) -> Host:
    """Load a supported checkpoint and its processor (checked: config, model type, processor files, weights).

    Args:
        source: checkpoint directory or cached hub id.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        dtype: ``"auto"``, a dtype name or a ``torch.dtype``.
        steps: optional progress object (``set_description`` / ``update``), advanced once for the processor
            and once for the model.
        check_processor: optional check of the loaded processor, called before the weights load (the command
            line refuses prompts with the processor's own image placeholder there).

    Raises:
        HeroError: on a path without ``config.json``, a model type without an adapter, missing processor
            files, weights that do not load, a checkpoint that needs code of its own or pickled weights holding
            more than tensors (both refused: nothing from the checkpoint runs; each names ``--model``), or from
            ``check_processor``.
    """
    from .extras import require

    transformers = require("transformers")
    if not isinstance(device, torch.device):
        device = device_dtype(device, "auto")[0]
    if not isinstance(dtype, torch.dtype):
        dtype = device_dtype(device.type, dtype)[1]
    text = str(source)
    host_config(text)
    if steps is not None:
        steps.set_description("loading processor")
    try:
        processor = transformers.AutoProcessor.from_pretrained(text, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as error:
        raise refused_checkpoint("--model", text, error) or HeroError.field(
            "--model", text, "a checkpoint with its processor files (preprocessor/tokenizer configs)", str(error)
        ) from error
    if check_processor is not None:
        check_processor(processor)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # batches for generate: decoder-only LLMs generate after the prompt
    if steps is not None:
        steps.update()
        steps.set_description("loading model")
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            text, dtype=dtype, trust_remote_code=False, weights_only=True
        )
    except (OSError, ValueError, pickle.UnpicklingError) as error:
        refused = refused_checkpoint("--model", text, error)
        raise refused or HeroError.field("--model", text, "loadable weights", str(error)) from error
    if steps is not None:
        steps.update()
    return Host(source=text, model=model.to(device).eval(), processor=processor, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------ results
def normalize_answer(text: str) -> str:
    """VQA / SQuAD-style normalisation for exact match: lowercase, punctuation removed, the articles a / an /
    the removed, whitespace collapsed. ``"The Stop-sign."`` -> ``"stopsign"``."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def setting_key(preset: str, keep_ratio: float) -> str:
    """``"<preset>@<keep ratio>"``, e.g. ``"hero@0.2"``: how answers name a setting."""
    return f"{preset}@{keep_ratio:g}"


@dataclass(frozen=True)
class SettingResult:
    """One (preset, keep ratio) over the rows evaluated.

    Attributes:
        preset: the preset's name.
        keep_ratio: the keep ratio.
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
    """

    preset: str
    keep_ratio: float
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

    @property
    def key(self) -> str:
        return setting_key(self.preset, self.keep_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "keep_ratio": self.keep_ratio,
            "overrides": dict(self.overrides),
            "agreement": self.agreement,
            "accuracy": self.accuracy,
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
        """Markdown: the unpruned model, then one line per preset x keep ratio."""
        answered = sum(answer.reference is not None for answer in self.answers)
        lines = [
            "| preset | keep ratio | agreement | first divergence | accuracy | right -> wrong / wrong -> right "
            "| image tokens in -> out | prefill ms | speed-up |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        base = self.unpruned
        lines.append(
            f"| unpruned | - | - | - | {_share(base['accuracy'], answered)} | - | {_tokens(base['tokens_in'], None)} | "
            f"{_ms(base['prefill_seconds'])} | 1.00x |"
        )
        for result in self.results:
            diverged = [d for d in result.first_divergence if d is not None]
            median = f"{statistics.median(diverged):g}" if diverged else "-"
            speedup = f"{result.speedup:.2f}x" if result.speedup is not None else "-"
            flips = (
                "-" if result.flips is None else f"{result.flips['right_to_wrong']} / {result.flips['wrong_to_right']}"
            )
            lines.append(
                f"| {result.preset} | {result.keep_ratio:g} | {_share(result.agreement, self.rows)} | {median} | "
                f"{_share(result.accuracy, answered)} | {flips} | {_tokens(result.tokens_in, result.tokens_out)} | "
                f"{_ms(result.prefill_seconds)} | {speedup} |"
            )
        return "\n".join(lines)


def _share(value: float | None, count: int) -> str:
    return "-" if value is None else f"{value:.1%} of {count}"


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


# ------------------------------------------------------------------------------------------------ the loop
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
    from .extras import require

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


@dataclass
class _Tally:
    """What one path (unpruned or one setting) produced, per row and per call, over the rows done."""

    texts: list[str] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    tokens_in: list[int] = field(default_factory=list)
    tokens_out: list[int] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def extend(self, other: _Tally) -> None:
        self.texts += other.texts
        self.ids += other.ids
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.prefill += other.prefill
        self.seconds += other.seconds


def evaluate(
    host: Host,
    rows: Sequence[Row],
    *,
    presets: Sequence[str] = ("hero",),
    keep_ratios: Sequence[float] = (1.0, 0.4, 0.2),
    overrides: Mapping[str, Any] | None = None,
    scorer: Any = None,
    batch_size: int = 1,
    max_new_tokens: int = 32,
    layout: str | None = None,
    warmup: bool = True,
    data: str | Path | None = None,
    progress: Any = None,
    on_failure: Callable[[Evaluation], None] | None = None,
) -> Evaluation:
    """Run every row unpruned and with every (preset, keep ratio); measure agreement, accuracy, tokens, prefill.

    Args:
        host: the loaded model and processor (``load_host``).
        rows: the rows (``hero_adapters.rows.read_rows``), evaluated in order.
        presets: preset names (``hero_core.presets.PRESETS``); each runs at every keep ratio, so presets that
            keep equal counts at equal ratios are compared on equal budgets.
        keep_ratios: keep ratios in (0, 1]; at 1 the agreement is measured like any other.
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

    Returns:
        The ``Evaluation``.

    Raises:
        HeroError: on bad options (before any row runs).
        EvaluationError: when a row fails (an image that does not decode, a HeroError of the host call, CUDA
            out of memory); the message names the data file's line(s), ``partial`` holds the rows done.
    """
    from .adapter import get_adapter
    from .vlm import HeroVLM

    start = time.perf_counter()
    names, ratios = check_options(presets, keep_ratios, batch_size, max_new_tokens)
    model = host.model
    # The paper's layers are CLIP ViT-L/14's: scaled to this encoder's depth (explicit layer overrides are kept).
    depth = int(get_adapter(model, processor=host.processor).num_layers)
    routed = route_overrides(names, depth, dict(overrides or {}))
    settings = [(preset, ratio) for preset in names for ratio in ratios]
    vlms = [
        HeroVLM(
            model,
            _presets.get(preset, ratio, depth=depth, **routed[preset]),
            scorer,
            layout=layout,
            processor=host.processor,
        )
        for preset, ratio in settings
    ]
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

    unpruned = _Tally()
    tallies = [_Tally() for _ in settings]
    done: list[Row] = []
    generate_seconds = 0.0

    def result(complete: bool, error: str | None) -> Evaluation:
        return _summarise(
            host,
            data,
            rows,
            done,
            names,
            ratios,
            routed,
            unpruned,
            tallies,
            settings={
                "presets": list(names),
                "keep_ratios": list(ratios),
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
            step = _Tally()
            if progress is not None:
                progress.set_description(f"{span}: unpruned")
            with torch.no_grad():
                sequences, first, total = timed(plain, **inputs, **options)
            generate_seconds += total
            _record(step, sequences, length, eos, host.processor, first, total)
            if progress is not None:
                progress.update()
            batch_steps: list[_Tally] = []
            for (preset, ratio), vlm in zip(settings, vlms, strict=True):
                if progress is not None:
                    progress.set_description(f"{span}: {setting_key(preset, ratio)}")
                sequences, first, total = timed(vlm.generate, **inputs, **extra, query=prompts, **options)
                generate_seconds += total
                pruned = _Tally()
                _record(pruned, sequences, length, eos, host.processor, first, total)
                per_row_in, per_row_out = [0] * len(batch), [0] * len(batch)
                for image in vlm.last_report.images if vlm.last_report is not None else []:
                    if image.prompt is not None:
                        per_row_in[image.prompt] += image.tokens_in
                        per_row_out[image.prompt] += image.tokens_out
                pruned.tokens_in, pruned.tokens_out = per_row_in, per_row_out
                batch_steps.append(pruned)
                if progress is not None:
                    progress.update()
        except BaseException as error:
            message = (
                f"interrupted at {located}" if isinstance(error, KeyboardInterrupt) else " ".join(str(error).split())
            )
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
    from .extras import require

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
    tally: _Tally, sequences: Tensor, length: int, eos: set[int], processor: Any, first: float, total: float
) -> None:
    for row in sequences[:, length:]:
        ids = _new_tokens(row, eos)
        tally.ids.append(ids)
        tally.texts.append(str(processor.decode(ids, skip_special_tokens=True)).strip())
    tally.prefill.append(first)
    tally.seconds += total


def _open_image(row: Row, where: str) -> Any:
    return open_image(row.image, f"{where}, line {row.line}: image")


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


def _summarise(
    host: Host,
    data: str | Path | None,
    rows: Sequence[Row],
    done: Sequence[Row],
    names: Sequence[str],
    ratios: Sequence[float],
    routed: Mapping[str, Mapping[str, Any]],
    unpruned: _Tally,
    tallies: Sequence[_Tally],
    *,
    settings: Mapping[str, Any],
    loop_seconds: float,
    generate_seconds: float,
    complete: bool,
    error: str | None,
) -> Evaluation:
    base_prefill = _mean(unpruned.prefill)
    tokens_in = _mean([float(x) for x in tallies[0].tokens_in]) if tallies else None
    results = []
    for (preset, ratio), tally in zip([(p, r) for p in names for r in ratios], tallies, strict=True):
        agree = [text == base for text, base in zip(tally.texts, unpruned.texts, strict=True)]
        divergence = tuple(
            None if same else _first_divergence(ids, base_ids)
            for same, ids, base_ids in zip(agree, tally.ids, unpruned.ids, strict=True)
        )
        prefill = _mean(tally.prefill)
        results.append(
            SettingResult(
                preset=preset,
                keep_ratio=ratio,
                overrides=dict(routed[preset]),
                agreement=_mean([float(x) for x in agree]),
                first_divergence=divergence,
                accuracy=_accuracy(tally.texts, done),
                flips=_flips(unpruned.texts, tally.texts, done),
                tokens_in=_mean([float(x) for x in tally.tokens_in]),
                tokens_out=_mean([float(x) for x in tally.tokens_out]),
                prefill_seconds=prefill,
                generate_seconds=tally.seconds,
                speedup=base_prefill / prefill if base_prefill is not None and prefill else None,
            )
        )
    keys = [setting_key(p, r) for p in names for r in ratios]
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
            "accuracy": _accuracy(unpruned.texts, done),
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
