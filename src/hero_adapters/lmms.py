"""The lmms-eval model ``hero``: lmms-eval's own ``llava_hf``, with HERO inside its ``generate``.

::

    pip install -e '.[lmms-eval]'   # in a clone of hero (hero-prune is not on PyPI)
    lmms-eval --model hero --model_args pretrained=DIR,clip=CLIP_DIR,preset=hero,keep_ratio=0.2 --tasks mme ...

``HeroLmms`` builds lmms-eval's built-in LLaVA-style HF model (``llava_hf``, resolved through lmms-eval's model
registry) from the model_args it knows, wraps that model in ``HeroVLM`` and answers every ``generate_until`` call
inside ``HeroVLM.attach()``. Prompts, chat template, image preprocessing, generation options and decoding stay
llava_hf's own; only the visual tokens the language model receives are pruned, and the relevance query is each
prompt's user text (``hero_adapters.attach``).

model_args (``--model_args k=v,k=v``; lmms-eval turns ``true``/``false`` and numbers into bools and numbers):

- ``pretrained`` (required): a LLaVA-NeXT or LLaVA-OneVision checkpoint in transformers' format.
- ``clip``: a CLIP checkpoint (``openai/clip-vit-large-patch14-336`` in the paper) for task relevance; without
  it HERO allocates by visual saliency alone.
- ``preset`` (default ``hero``): a name of ``hero_core.presets.PRESETS``; its layers are scaled to the vision
  encoder's depth, as the ``hero`` command does.
- ``keep_ratio`` (default 0.2): the fraction of patch tokens kept, in (0, 1].
- ``set_<field>=<value>``: a preset field, as ``hero run --set``: ``set_alpha=0.7``, ``set_low_layers=[5,6,7,8]``
  (lmms-eval keeps commas inside brackets), ``set_high_layers=21``.
- ``layout``, ``positions``: ``HeroVLM``'s options.
- ``reports``: a JSONL file that gets one line per answered request (task, doc_id, LLM prompt tokens and the
  ``PruneReport`` as JSON: budgets, kept tokens, query, timings).
- everything else goes to ``llava_hf`` (``device``, ``dtype``, ``attn_implementation``, ``device_map``, ...);
  ``batch_size``, ``max_batch_size`` and ``device`` arrive from lmms-eval's own options.

Every model_arg is checked before any weights load (only configs are read; a CLIP checkpoint that relevance needs
loads before llava_hf's weights), and errors name it as typed (``set_alpah``, ``clip``); a ``clip`` given to a
preset that reads no relevance is checked and ignored with a warning. Once ready, one line on lmms-eval's console
(its loguru logger) says HERO is active, with the preset and keep ratio.

Each answer comes back as a ``GenerationResult`` whose ``TokenCounts.input_tokens`` is the prompt the language
model received after pruning (text tokens plus kept image and newline tokens); lmms-eval writes it per sample
(``token_counts`` in the samples JSONL) and sums it in ``results["efficiency"]``.

``import hero_adapters`` never imports this module; importing it without lmms-eval raises a ``HeroError`` that
names the ``lmms-eval`` extra.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from hero_core import HeroError, presets

from ._lmms_args import (
    SET,
    check_source,
    checked_model_type,
    checked_options,
    checked_pruner,
    clip_config,
    clip_scorer,
    override,
    pretrained_config,
    relevance_presets,
)
from ._scoring import reads_query
from .evaluate import config_depth

try:  # the base class must exist when the class is defined: lmms-eval checks issubclass(HeroLmms, lmms)
    from lmms_eval.api.model import lmms as _LmmsModel  # type: ignore[import-not-found,import-untyped,unused-ignore]
except ImportError as _error:
    raise HeroError.field(
        "optional dependency",
        "lmms_eval",
        f"the package 'lmms_eval' to be importable ({_error})",
        "Install the extra, best in its own virtual environment (about 3 GB): pip install -e '.[lmms-eval]' in a clone "
        "of hero (or pip install 'hero-prune[lmms-eval]' where your package index carries hero-prune).",
    ) from _error

__all__ = ["HERO_ARGS", "HeroLmms"]

_LOG = logging.getLogger(__name__)

#: model_args that HeroLmms reads itself (``set_<field>`` aside); the rest go to llava_hf.
HERO_ARGS = ("pretrained", "clip", "preset", "keep_ratio", "layout", "positions", "reports")
#: What lmms-eval passes besides model_args (``create_from_arg_string``'s additional config).
_LMMS_ARGS = ("batch_size", "max_batch_size", "device")
#: model types lmms-eval's llava_hf loads, if its module does not say (its ``model_map``).


@dataclass
class _Call:
    """One ``model.generate`` call made by llava_hf: the LLM's prompt length after pruning, or the error."""

    llm_tokens: int | None = None
    report: dict[str, Any] | None = None
    error: Exception | None = None


class HeroLmms(_LmmsModel):  # type: ignore[misc,unused-ignore]
    """lmms-eval's ``llava_hf`` with HERO pruning inside its ``generate`` (the model id ``hero``).

    Args:
        pretrained: a LLaVA-NeXT / LLaVA-OneVision checkpoint (directory or cached hub id) in transformers' format.
        clip: optional CLIP checkpoint for the task relevance (``HFClipTextScorer.from_pretrained``).
        preset: a ``hero_core.presets`` name (default ``"hero"``).
        keep_ratio: the fraction of patch tokens kept, in (0, 1] (default 0.2).
        layout: ``HeroVLM``'s layout (default: the adapter's ``"vanilla"``).
        positions: ``HeroVLM``'s positions (``"contiguous"`` or ``"original"``).
        reports: optional JSONL path for one ``PruneReport`` per answered request.
        batch_size: passed to llava_hf (which answers one request at a time).
        max_batch_size: accepted from lmms-eval and not used (llava_hf has no automatic batch size).
        device: passed to llava_hf (its default is ``"cuda"``).
        model_args: ``set_<field>`` preset overrides, and llava_hf's own arguments.

    Raises:
        HeroError: before any weights load, naming the model_arg as typed: a missing ``pretrained``, a
            ``pretrained`` or ``clip`` that is not a folder (or a hub id found), a ``clip`` that is not a CLIP
            checkpoint, a keep ratio outside (0, 1], an unknown preset, a ``set_<field>`` the preset lacks or a
            value it refuses, an unknown model_arg, a model llava_hf cannot load or HERO has no adapter for, or
            lmms-eval's llava_hf missing.
    """

    is_simple = False  # a chat model: the manifest registers the class as chat_class_path

    def __init__(
        self,
        pretrained: str | None = None,
        clip: str | None = None,
        preset: str = "hero",
        keep_ratio: float = 0.2,
        layout: str | None = None,
        positions: str = "contiguous",
        reports: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        device: str | None = None,
        **model_args: Any,
    ) -> None:
        super().__init__()
        # Every argument is checked before any weights load (the configs are read, nothing more): the checkpoint
        # and the CLIP paths, the preset, its keep ratio and set_<field> overrides (layers against the encoder depth
        # in the config), layout, positions, the reports path, the batch size and the names of llava_hf's arguments.
        # Errors name the argument as typed.
        if not isinstance(pretrained, str) or not pretrained:
            raise HeroError.field(
                "pretrained",
                pretrained,
                "a checkpoint directory or hub id",
                "Pass --model_args pretrained=DIR,clip=CLIP_DIR,keep_ratio=0.2.",
            )
        if str(batch_size).strip() != "1":
            raise HeroError.field(
                "--batch_size",
                batch_size,
                "1 (llava_hf, which the hero model wraps, answers one request at a time and asserts on more)",
                "Drop --batch_size or pass --batch_size 1; run several processes with accelerate launch instead.",
            )
        typed = {key[len(SET) :]: key for key in model_args if key.startswith(SET)}
        overrides = {name: override(key, model_args[key]) for name, key in typed.items()}
        inner_args = {key: value for key, value in model_args.items() if not key.startswith(SET)}
        checked_pruner(preset, keep_ratio, overrides, typed, None)  # names, values (no depth yet)
        if clip is not None and (not isinstance(clip, str) or not clip):
            raise HeroError.field("clip", clip, "a CLIP checkpoint directory or hub id, or no clip= at all")
        llava_hf = _llava_hf_class()
        known = _init_parameters(llava_hf)
        unknown = sorted(set(inner_args) - set(known))
        if unknown:
            raise HeroError.field(
                "model_args",
                unknown,
                f"keys among hero's {list(HERO_ARGS)}, set_<preset field>, or llava_hf's {known}",
                "Check the spelling; preset fields take the set_ prefix (set_alpha=0.7).",
            )
        config = pretrained_config(pretrained, llava_hf)
        model_type = str(config.model_type)
        checked_options(model_type, layout, positions, reports)
        checked = checked_pruner(preset, keep_ratio, overrides, typed, config_depth(config))
        self.preset, self.keep_ratio = preset, keep_ratio
        scorer = None
        if clip is not None:
            check_source("clip", clip)
            if reads_query(checked):  # loaded now (CPU), so a bad CLIP checkpoint fails before LLaVA's weights
                scorer = clip_scorer(clip)
            else:
                clip_config(clip)
                _console().warning(
                    f"hero: clip={clip} is ignored: preset {preset} reads no relevance "
                    f"({type(checked.allocator).__name__}.uses_relevance is False"
                    f"{', alpha=1' if getattr(checked.allocator, 'alpha', None) == 1 else ''}); drop clip= or use a "
                    f"preset that reads it ({', '.join(relevance_presets())})"
                )
        elif checked.needs_token_relevance:  # refused before LLaVA's weights load
            raise HeroError.field(
                "clip",
                None,
                f"a CLIP checkpoint: preset {preset} weighs each token by its CLIP cosine to the instruction",
                "Pass clip=openai/clip-vit-large-patch14-336 (or its directory), or a preset that needs no text "
                "(divprune, dart).",
            )
        elif checked.uses_relevance:
            _console().warning(
                f"hero: no clip= checkpoint given, so {preset} allocates by visual saliency alone (the paper also "
                "uses CLIP relevance: clip=openai/clip-vit-large-patch14-336 or its directory)"
            )
        inner_args["pretrained"] = pretrained
        inner_args["batch_size"] = batch_size
        if device is not None:
            inner_args["device"] = device
        if not inner_args.get("device_map") and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            # llava_hf's default device_map="" (one process) is refused by transformers 5's from_pretrained.
            inner_args["device_map"] = str(device or "cuda")
        self._inner: Any = llava_hf(**inner_args)
        self.reports = Path(reports) if reports else None
        self._reports_opened = False  # the first write of this run truncates the file: one line per request

        from .adapter import get_adapter, preset_options

        model = self._inner.model
        processor = getattr(self._inner, "processor", None) or getattr(self._inner, "_image_processor", None)
        options = {"processor": processor} if layout is None else {"processor": processor, "layout": layout}
        adapter = get_adapter(model, **options)
        # The paper's layers are CLIP ViT-L/14's: scaled to this encoder's depth (explicit set_*layers are kept).
        self.pruner = presets.get(preset, keep_ratio, **preset_options(adapter), **overrides)
        if scorer is not None:
            scorer.model.to(device=self._inner.device, dtype=next(model.parameters()).dtype)  # in place
        from .vlm import HeroVLM

        self.vlm = HeroVLM(model, self.pruner, scorer, adapter=adapter, positions=positions)
        notes = [f"relevance from clip={clip}" if scorer is not None else "no text relevance"]
        if self.pruner.layers:
            notes.append(f"encoder layers {list(self.pruner.layers)}")
        set_text = "".join(f", {typed[name]}={value}" for name, value in overrides.items())
        _console().info(
            f"hero: HERO active: preset {preset}, keep ratio {float(keep_ratio):g}{set_text} ({'; '.join(notes)}) "
            f"on {pretrained} ({model_type})"
        )

    # --------------------------------------------------------------------------- what lmms-eval reads of a model
    @property
    def inner(self) -> Any:
        """The wrapped lmms-eval ``llava_hf`` model."""
        return self._inner

    @property
    def model(self) -> Any:
        return self._inner.model

    @property
    def tokenizer(self) -> Any:
        return self._inner.tokenizer

    @property
    def config(self) -> Any:
        return self._inner.config

    @property
    def accelerator(self) -> Any:
        return self._inner.accelerator

    @property
    def device(self) -> Any:
        return self._inner.device

    @property
    def batch_size(self) -> Any:
        return self._inner.batch_size

    @property
    def chat_template(self) -> Any:
        return getattr(self._inner, "chat_template", None)

    # ---------------------------------------------------------------------------------------------- the calls
    def generate_until(self, requests: list[Any]) -> list[Any]:
        """llava_hf's ``generate_until`` with HERO in its ``generate``; one ``GenerationResult`` per request, in
        the order given, with ``input_tokens`` = the LLM's prompt after pruning.

        Raises:
            HeroError: when HERO refused a request (llava_hf would have scored it as an empty answer).
        """
        inner = self._inner
        inner.task_dict = self.task_dict  # the evaluator fills this model's dict; llava_hf reads its own
        inner.cache_hook = self.cache_hook
        inner._rank, inner._world_size = self._rank, self._world_size
        marks: list[tuple[int, int]] = []  # (request, calls made before llava_hf built its messages)
        calls: list[_Call] = []
        shadows = [_marked(request, index, marks, calls) for index, request in enumerate(requests)]
        model = self.vlm.model
        with self.vlm.attach(keep_reports=False):
            pruned_generate = model.generate

            def recorded(*args: Any, **kwargs: Any) -> Any:
                ids = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
                try:
                    output = pruned_generate(*args, **kwargs)
                except Exception as error:
                    calls.append(_Call(error=error))
                    raise
                # keep_reports=False: a PruneReport holds tensors (CLS attention (L, V, H, N) per image); over a
                # benchmark of thousands of requests a list of them would grow by as many. Only numbers and JSON stay.
                report = self.vlm.last_report
                saved = report.to_dict() if report is not None and self.reports is not None else None
                calls.append(_Call(llm_tokens=_llm_tokens(ids, kwargs.get("attention_mask"), report), report=saved))
                return output

            model.generate = recorded
            try:
                outputs = list(inner.generate_until(shadows))
            finally:
                model.generate = pruned_generate
        per_request = _assign(len(requests), marks, calls)
        self._raise_refusals(requests, per_request, calls)
        if self.reports is not None:
            self._write_reports(requests, per_request)
        return [_with_input_tokens(output, per_request[i]) for i, output in enumerate(outputs)]

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError(
            "hero prunes generate() only: llava_hf's loglikelihood runs the model's forward, which would score "
            "unpruned. Use generate_until tasks (most lmms-eval image benchmarks, Table 3's among them)."
        )

    def generate_until_multi_round(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError(
            "hero wraps lmms-eval's llava_hf, which has no multi-round generation; use single-round tasks."
        )

    def clean(self) -> None:
        self._inner.clean()
        super().clean()

    # ------------------------------------------------------------------------------------------------ helpers
    def _raise_refusals(self, requests: Sequence[Any], per_request: list[_Call | None], calls: list[_Call]) -> None:
        """HeroErrors end the run (llava_hf turns every generate error into an empty answer); others are logged."""
        failed = [call for call in calls if call.error is not None]
        if not failed:
            return
        refused = [call for call in failed if isinstance(call.error, HeroError)]
        first = (refused or failed)[0]
        where = next((i for i, call in enumerate(per_request) if call is first), None)
        place = f" (doc_id {_doc(requests[where])})" if where is not None else ""
        if refused:
            raise HeroError(
                f"HERO refused {len(refused)} of {len(requests)} requests, which lmms-eval's llava_hf would score as "
                f"empty answers; the first{place}: {first.error}"
            ) from first.error
        _LOG.warning(
            "hero: %d of %d generate calls failed and llava_hf scored them as empty answers; the first%s: %s",
            len(failed),
            len(requests),
            place,
            first.error,
        )

    def _write_reports(self, requests: Sequence[Any], per_request: list[_Call | None]) -> None:
        assert self.reports is not None
        path = self.reports
        if self._world_size > 1:  # one file per rank: accelerate launch runs one process per GPU
            path = path.with_name(f"{path.stem}.rank{self._rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if self._reports_opened else "w"
        self._reports_opened = True
        with path.open(mode, encoding="utf-8") as handle:
            for request, call in zip(requests, per_request, strict=True):
                if call is None or call.report is None:
                    continue
                line = {
                    "task": _arg(request, 4),
                    "doc_id": _doc(request),
                    "input_tokens": call.llm_tokens,
                    "report": call.report,
                }
                handle.write(json.dumps(line) + "\n")


# ------------------------------------------------------------------------------------------------------ parts
def _llava_hf_class() -> Any:
    """lmms-eval's ``llava_hf`` (its chat variant) through the model registry; its import path moved in 0.4."""
    try:
        models = importlib.import_module("lmms_eval.models")
        cls = models.get_model("llava_hf")
    except ImportError as error:
        fix = (
            "lmms-eval's llava_hf imports decord, which lmms-eval does not install: pip install decord "
            "(hero-prune[lmms-eval] does on x86-64)."
            if getattr(error, "name", None) == "decord"
            else "Install the extra: pip install -e '.[lmms-eval]' in a clone of hero."
        )
        raise HeroError.field("lmms-eval model", "llava_hf", f"importable ({error})", fix) from error
    if getattr(cls, "is_simple", True):
        raise HeroError.field(
            "lmms-eval model llava_hf",
            cls.__name__,
            "its chat implementation (is_simple = False), as in lmms-eval 0.7.3",
            "Install the lmms-eval release the extra pins (lmms-eval==0.7.3): pip install -e '.[lmms-eval]' in a clone "
            "of hero.",
        )
    return cls


def _init_parameters(cls: Any) -> list[str]:
    """The named parameters of ``cls.__init__`` (llava_hf's model_args)."""
    skip = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in skip]


def _console() -> Any:
    """The logger whose lines reach lmms-eval's console: lmms-eval's own, loguru's ``logger`` (stdout, at
    ``--verbosity``, INFO by default). The standard ``logging`` has no handler there, so its INFO lines never show;
    without loguru (only where lmms-eval is not installed) this module's logger, whose lines are WARNINGs."""
    try:
        from loguru import logger  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return _Warnings()
    return logger


class _Warnings:
    """The module's standard logger with ``info`` raised to WARNING (Python's last-resort handler shows those)."""

    def info(self, message: str) -> None:
        _LOG.warning(message)

    def warning(self, message: str) -> None:
        _LOG.warning(message)


def _marked(request: Any, index: int, marks: list[tuple[int, int]], calls: list[_Call]) -> Any:
    """A copy of ``request`` whose ``doc_to_messages`` first records (index, calls so far): llava_hf builds one
    request's messages right before its ``generate``, so each call is matched to its request."""
    args = getattr(request, "args", None)
    if not isinstance(args, tuple) or len(args) != 6 or not callable(args[1]):
        return request
    build: Callable[..., Any] = args[1]

    def doc_to_messages(*a: Any, **k: Any) -> Any:
        marks.append((index, len(calls)))
        return build(*a, **k)

    shadow = copy.copy(request)
    shadow.arguments = (args[0], doc_to_messages, *args[2:])
    return shadow


def _assign(count: int, marks: list[tuple[int, int]], calls: list[_Call]) -> list[_Call | None]:
    """Per request, its one generate call (None where it made none, several, or was never marked)."""
    found: list[list[_Call]] = [[] for _ in range(count)]
    for k, (index, start) in enumerate(marks):
        end = marks[k + 1][1] if k + 1 < len(marks) else len(calls)
        found[index] += calls[start:end]
    return [made[0] if len(made) == 1 else None for made in found]


def _llm_tokens(ids: Any, mask: Any, report: Any) -> int | None:
    """Tokens the LLM received for a one-prompt call: the caller's prompt, its image runs shrunk to the kept tokens."""
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.shape[0] != 1 or report is None:
        return None
    prompt = int(mask[0].sum()) if isinstance(mask, Tensor) else int(ids.shape[1])
    return prompt - int(report.tokens_in) + int(report.tokens_out)


def _with_input_tokens(output: Any, call: _Call | None) -> Any:
    """llava_hf's result with ``TokenCounts.input_tokens`` set from the call (unchanged when unknown)."""
    if call is None or call.llm_tokens is None:
        return output
    instance = importlib.import_module("lmms_eval.api.instance")
    if isinstance(output, instance.GenerationResult):
        text, counts = output.text, output.token_counts
    elif isinstance(output, str):
        text, counts = output, None
    else:
        return output
    tokens = instance.TokenCounts(
        input_tokens=call.llm_tokens,
        output_tokens=getattr(counts, "output_tokens", None),
        reasoning_tokens=getattr(counts, "reasoning_tokens", None),
    )
    return instance.GenerationResult(text=text, token_counts=tokens)


def _arg(request: Any, position: int) -> Any:
    args = getattr(request, "args", ())
    return args[position] if isinstance(args, tuple) and len(args) > position else None


def _doc(request: Any) -> Any:
    return _arg(request, 3)


#: The plugin's config read, under the name tests/adapters/test_safety.py imports.
_checked_model_type = checked_model_type
