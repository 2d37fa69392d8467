"""``HeroVLM``: HERO-pruned ``generate`` / ``forward`` around an unmodified Hugging Face VLM (HOSTS.md, Design B).

One call: the host's vision encoder runs once under scoped CLS-attention hooks; each image is scored
against its prompt's query (optional), planned by the ``Pruner`` and assembled in the host's layout; each
image's placeholder run in ``input_ids`` shrinks to its kept count, the prompts are re-padded on the left
with a rebuilt ``attention_mask``, and the host's own ``generate`` receives the kept features through
``mm_encoder_outputs``. The returned sequences begin with the caller's original ``input_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hero_core import HeroError, TextScorer
from hero_core.allocators import tile_views

from ._optional import require
from ._registry import get_adapter
from ._sequence import Rebuilt, Span, check_prompt, placeholder_spans, queries_per_image, rebuild, splice
from ._timing import StageTimer
from ._types import AssembledImage, EncodedImage
from .report import ImageReport, PruneReport

__all__ = ["POSITIONS", "HeroVLM"]

POSITIONS = ("contiguous", "original")
_ENCODER_KEYS = ("vision_feature_layer", "vision_feature_select_strategy")
_REFUSED = {
    "inputs_embeds": "Pass input_ids: the placeholder runs are rebuilt from them.",
    "mm_encoder_outputs": "HeroVLM computes the image features itself; pass pixel_values and image_sizes.",
    "position_ids": "Choose HeroVLM(..., positions='contiguous' | 'original') instead.",
}


@dataclass(frozen=True)
class _Run:
    """Everything one call decided before the host's language model runs."""

    report: PruneReport
    encoded: list[EncodedImage]
    assembled: list[AssembledImage]
    spans: list[Span] | None
    ids: Tensor | None = None  # the caller's input_ids, checked (B, S)
    mask: Tensor | None = None  # its attention mask, checked or all ones (B, S)


class HeroVLM:
    """A pruning wrapper around a host VLM; the model itself is never modified.

    Example:
        >>> vlm = HeroVLM(model, presets.hero(0.2), OpenClipTextScorer(...))      # doctest: +SKIP
        >>> inputs = processor(images=image, text=prompt, return_tensors="pt")    # doctest: +SKIP
        >>> out = vlm.generate(**inputs, query="What is written on the sign?", max_new_tokens=32)  # doctest: +SKIP
        >>> processor.decode(out[0, inputs.input_ids.shape[1]:])                  # doctest: +SKIP
        >>> vlm.last_report.to_dict()                                             # doctest: +SKIP

    Args:
        model: a host model with a registered adapter (``list_adapters()``), e.g. LLaVA-NeXT.
        pruner: a ``hero_core.Pruner`` (``presets.hero(r)``, ``presets.hero_reference(r)``, ...).
        text_scorer: optional ``TextScorer``: ``(views (V, 3, h, w) RGB in [0, 1], text) -> (V,)`` raw
            CLIP cosines. Used only when the pruner's allocator reads relevance and a query is given.
        layout: ``"vanilla"`` (default; the host's own sequence at R = 1) or ``"reference"`` (authors' code).
        positions: ``"contiguous"`` (default; positions re-derived over the shortened prompt) or
            ``"original"`` (every kept token keeps the position it had in the unpruned layout).
        processor: optional host processor; its ``image_processor.image_mean`` / ``image_std`` undo the
            pixel normalisation for the text scorer.
        image_mean: per-channel mean override (default: the processor's, else OpenAI CLIP's).
        image_std: per-channel std override (default: the processor's, else OpenAI CLIP's).

    Raises:
        HeroError: on an unsupported model, a pruner or scorer of the wrong kind, or unknown options.
    """

    def __init__(
        self,
        model: nn.Module,
        pruner: Any,
        text_scorer: TextScorer | None = None,
        *,
        layout: str = "vanilla",
        positions: str = "contiguous",
        processor: Any = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        if not callable(getattr(pruner, "plan", None)) or not isinstance(getattr(pruner, "layers", None), tuple):
            raise HeroError.field(
                "pruner", pruner, "a hero_core.Pruner (with .plan and .layers)", "Build one with presets.hero(0.2)."
            )
        if text_scorer is not None and not callable(text_scorer):
            raise HeroError.field("text_scorer", text_scorer, "None or a callable (views, text) -> (V,) cosines")
        if positions not in POSITIONS:
            raise HeroError.field("positions", positions, f"one of {POSITIONS}")
        image_processor = getattr(processor, "image_processor", processor)
        mean = image_mean if image_mean is not None else getattr(image_processor, "image_mean", None)
        std = image_std if image_std is not None else getattr(image_processor, "image_std", None)
        self.model = model
        self.pruner = pruner
        self.text_scorer = text_scorer
        self.positions = positions
        self.adapter = get_adapter(model, layout=layout, image_mean=mean, image_std=std)
        self.last_report: PruneReport | None = None

    @property
    def layout(self) -> str:
        """``"vanilla"`` or ``"reference"``."""
        return str(self.adapter.layout)

    def __repr__(self) -> str:
        return (
            f"HeroVLM(model={type(self.model).__name__}, pruner={self.pruner!r}, text_scorer={self.text_scorer!r}, "
            f"layout={self.layout!r}, positions={self.positions!r})"
        )

    # ------------------------------------------------------------------------------------------ entry points
    def plan(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        query: str | Sequence[str | None] | None = None,
        **encoder_kwargs: Any,
    ) -> PruneReport:
        """Encode, score and plan only (no language model). ``input_ids`` is optional; without it a
        per-prompt ``query`` list cannot be mapped to images.

        Returns:
            The ``PruneReport`` (also stored in ``last_report``).

        Raises:
            HeroError: on any bad input; the model is left as it was.
        """
        self._refuse(encoder_kwargs, allowed=_ENCODER_KEYS)
        timer = StageTimer(_device(self.model))
        with torch.inference_mode():
            run = self._run(input_ids, attention_mask, pixel_values, image_sizes, query, encoder_kwargs, timer)
        self.last_report = run.report
        return run.report

    def generate(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        query: str | Sequence[str | None] | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        """The host's ``generate`` on the pruned prompt; sequences start with the caller's ``input_ids``.

        Every ``generate`` keyword works (greedy, sampling, beams, ``num_return_sequences``, streamers,
        ``return_dict_in_generate`` ...). ``max_length`` / ``min_length`` keywords keep their meaning relative to
        the caller's prompt (they become ``max_new_tokens`` / ``min_new_tokens``; values inside a passed
        ``generation_config`` are not translated). A streamer receives the shortened prompt first
        (``skip_prompt=True`` hides it). HERO's stages run under ``inference_mode``, the host's ``generate``
        under ``no_grad`` as usual.

        Returns:
            What the host returns, with ``sequences`` spliced: (B * n, S + new) where S is the caller's
            prompt length, so ``out[:, S:]`` are the new tokens.

        Raises:
            HeroError: on bad input (placeholders, images, sizes, query, scorer output ...); the model is
                left exactly as it was.
        """
        self._refuse(generate_kwargs)
        if not callable(getattr(self.model, "generate", None)):
            raise HeroError.field(
                "model",
                type(self.model).__name__,
                "a model with generate(), e.g. LlavaNextForConditionalGeneration",
                "Wrap the ...ForConditionalGeneration model, not its base model (plan() works on either).",
            )
        encoder_kwargs = {key: generate_kwargs.pop(key) for key in _ENCODER_KEYS if key in generate_kwargs}
        if input_ids is None:
            raise HeroError.field("input_ids", None, "the prompt's token ids", "Pass the processor's output: **inputs.")
        timer = StageTimer(_device(self.model))
        with torch.inference_mode():
            run = self._run(input_ids, attention_mask, pixel_values, image_sizes, query, encoder_kwargs, timer)
            ids, mask = _prompt(run)
            rebuilt = self._rebuild(run, ids, mask)
            kwargs = _relative_lengths(generate_kwargs, ids.shape[1])
        self.last_report = run.report
        # The host's generate runs as it always does (under no_grad), so what it returns are normal tensors.
        with torch.no_grad(), timer.stage("generate"):
            output = self.model.generate(**self._host_inputs(run, rebuilt), **kwargs)  # type: ignore[operator]
        if isinstance(output, Tensor):
            return splice(ids, output, rebuilt.input_ids.shape[1])
        output.sequences = splice(ids, output.sequences, rebuilt.input_ids.shape[1])
        return output

    def forward(
        self,
        input_ids: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_sizes: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        query: str | Sequence[str | None] | None = None,
        **forward_kwargs: Any,
    ) -> Any:
        """One scoring pass of the host on the pruned prompt (under ``no_grad``; HERO's stages under inference mode).

        ``labels`` (B, S) aligned with ``input_ids`` shrink the same way (each image run takes its single
        label value, normally -100); new padding is labelled -100.

        Returns:
            The host's output (``logits`` (B, S', vocab) over the rebuilt, left-padded prompt, and ``loss``
            when labels are given).

        Raises:
            HeroError: on bad input; the model is left as it was.
        """
        self._refuse(forward_kwargs)
        encoder_kwargs = {key: forward_kwargs.pop(key) for key in _ENCODER_KEYS if key in forward_kwargs}
        if input_ids is None:
            raise HeroError.field("input_ids", None, "the prompt's token ids", "Pass the processor's output: **inputs.")
        if labels is not None and (not isinstance(labels, Tensor) or labels.shape != input_ids.shape):
            raise HeroError.field(
                "labels", labels, f"None or a tensor of the shape of input_ids {tuple(input_ids.shape)}"
            )
        timer = StageTimer(_device(self.model))
        with torch.inference_mode():
            run = self._run(input_ids, attention_mask, pixel_values, image_sizes, query, encoder_kwargs, timer)
            ids, mask = _prompt(run)
            rebuilt = self._rebuild(run, ids, mask, labels=labels)
        self.last_report = run.report
        inputs = self._host_inputs(run, rebuilt)
        if rebuilt.labels is not None:
            inputs["labels"] = rebuilt.labels
        with torch.no_grad(), timer.stage("forward"):
            return self.model(**inputs, **forward_kwargs)

    __call__ = forward

    # -------------------------------------------------------------------------------------------- internals
    def _run(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor | None,
        pixel_values: Tensor | None,
        image_sizes: Tensor | None,
        query: object,
        encoder_kwargs: dict[str, Any],
        timer: StageTimer,
    ) -> _Run:
        token = self.adapter.image_token_id
        ids = mask = None
        if input_ids is not None:
            ids, mask = check_prompt(input_ids, attention_mask)
        if pixel_values is None:
            if image_sizes is not None:
                raise HeroError.field("image_sizes", image_sizes, "None when pixel_values is None")
            if ids is not None:
                placeholders = int((ids == token).sum())
                if placeholders:
                    raise HeroError.field(
                        "pixel_values",
                        None,
                        f"the images for the {placeholders} image placeholder tokens in input_ids",
                        "Pass pixel_values and image_sizes from the processor, or prompts without <image>.",
                    )
                queries_per_image(query, [], ids.shape[0])  # still check a query list's length
            report = PruneReport(images=[], timings=timer.seconds, positions=self.positions)
            spans: list[Span] | None = [] if ids is not None else None
            return _Run(report=report, encoded=[], assembled=[], spans=spans, ids=ids, mask=mask)
        if image_sizes is None:
            raise HeroError.field(
                "image_sizes",
                None,
                "an (I, 2) tensor of each image's original (height, width) whenever pixel_values is given",
                "Pass the processor's image_sizes along with pixel_values (**inputs).",
            )

        with timer.stage("encode"):
            encoded = self.adapter.encode(pixel_values, image_sizes, self.pruner.layers, **encoder_kwargs)
        spans = None
        if ids is not None and mask is not None:
            spans = placeholder_spans(ids, mask, token, [image.tokens_in for image in encoded])
            queries = queries_per_image(query, spans, ids.shape[0])
        elif query is None or isinstance(query, str):
            queries = [query] * len(encoded)
        else:
            raise HeroError.field(
                "query", query, "None or one str when input_ids is not given", "Pass input_ids to map queries."
            )

        relevance: list[Tensor | None] = [None] * len(encoded)
        if self.text_scorer is not None and bool(getattr(self.pruner, "uses_relevance", False)):
            with timer.stage("score"):
                for i, (image, text) in enumerate(zip(encoded, queries, strict=True)):
                    if text is not None:
                        relevance[i] = self._score(image, text, i)
        with timer.stage("plan"):
            plans = [self.pruner.plan(image.tiles, rel) for image, rel in zip(encoded, relevance, strict=True)]
        with timer.stage("assemble"):
            assembled = [self.adapter.assemble(image, plan.keep) for image, plan in zip(encoded, plans, strict=True)]

        images = [
            ImageReport(
                index=i,
                prompt=spans[i].row if spans is not None else None,
                plan=plan,
                encoded=image.tiles,
                tokens_in=image.tokens_in,
                tokens_out=out.tokens_out,
                kept_patch_tokens=out.kept_patch_tokens,
                newline_tokens=out.newline_tokens,
                layout=self.layout,
                query=queries[i],
                relevance=relevance[i],
            )
            for i, (image, plan, out) in enumerate(zip(encoded, plans, assembled, strict=True))
        ]
        report = PruneReport(images=images, timings=timer.seconds, positions=self.positions)
        return _Run(report=report, encoded=encoded, assembled=assembled, spans=spans, ids=ids, mask=mask)

    def _score(self, image: EncodedImage, text: str, index: int) -> Tensor:
        """(V,) relevance for one image: the scorer's raw CLIP cosine of every LOCAL TILE, checked.

        Only the tiles are scored: HERO's Eq. 2 ranks tiles, and no allocator reads the thumbnail's score,
        so the CLIP image tower runs over K views, not V. The thumbnail's entry is 0.
        """
        scorer = self.text_scorer
        name = getattr(scorer, "__name__", type(scorer).__name__)
        tiles = image.tiles
        others = torch.tensor(tile_views(tiles), dtype=torch.long)
        relevance = torch.zeros(tiles.num_views, dtype=torch.float32, device=tiles.device)
        if others.numel() == 0:
            return relevance
        scores = scorer(image.views[others.to(image.views.device)], text)  # type: ignore[misc]
        count = int(others.numel())
        if (
            not isinstance(scores, Tensor)
            or scores.shape != (count,)
            or not scores.dtype.is_floating_point
            or not bool(torch.isfinite(scores).all())
        ):
            raise HeroError.field(
                f"text_scorer {name} output for image {index}",
                scores,
                f"a finite float tensor of shape ({count},): one raw CLIP cosine per view it was given",
                "Fix the scorer; it receives views (K, 3, h, w) RGB in [0, 1] (the local tiles) and the query text.",
            )
        return relevance.index_copy(0, others.to(tiles.device), scores.detach().to(tiles.device, torch.float32))

    def _rebuild(self, run: _Run, ids: Tensor, mask: Tensor, labels: Tensor | None = None) -> Rebuilt:
        padding = ids[mask == 0]
        pad_id = int(padding[0]) if padding.numel() else self.adapter.pad_token_id
        original = self.positions == "original"
        return rebuild(
            ids,
            mask,
            run.spans or [],
            [out.tokens_out for out in run.assembled],
            token_id=self.adapter.image_token_id,
            pad_id=pad_id,
            labels=labels,
            offsets=[out.offsets for out in run.assembled] if original else None,
            layout_lengths=[out.layout_length for out in run.assembled] if original else None,
        )

    def _host_inputs(self, run: _Run, rebuilt: Rebuilt) -> dict[str, Any]:
        inputs: dict[str, Any] = {"input_ids": rebuilt.input_ids, "attention_mask": rebuilt.attention_mask}
        if rebuilt.position_ids is not None:
            inputs["position_ids"] = rebuilt.position_ids
        if run.assembled:
            outputs = require("transformers.modeling_outputs")
            kept = [out.features for out in run.assembled]
            inputs["mm_encoder_outputs"] = {"image": outputs.BaseModelOutputWithPooling(pooler_output=kept)}
        return inputs

    @staticmethod
    def _refuse(kwargs: dict[str, Any], allowed: Sequence[str] | None = None) -> None:
        for key in kwargs:
            if key in _REFUSED or (allowed is not None and key not in allowed):
                fix = _REFUSED.get(key, f"plan() accepts only {list(allowed or ())} besides the processor outputs.")
                raise HeroError.field(key, kwargs[key], "not passed to HeroVLM", fix)


def _prompt(run: _Run) -> tuple[Tensor, Tensor]:
    """The checked prompt of a run that was given input_ids (generate / forward require them)."""
    if run.ids is None or run.mask is None:  # pragma: no cover - generate/forward refuse input_ids=None first
        raise HeroError.field("input_ids", None, "the prompt's token ids")
    return run.ids, run.mask


def _device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def _relative_lengths(kwargs: dict[str, Any], prompt_length: int) -> dict[str, Any]:
    """``max_length`` / ``min_length`` count the caller's prompt; turn them into ``*_new_tokens``."""
    kwargs = dict(kwargs)
    if kwargs.get("max_length") is not None and kwargs.get("max_new_tokens") is None:
        new = int(kwargs.pop("max_length")) - prompt_length
        if new <= 0:
            raise HeroError.field(
                "max_length",
                new + prompt_length,
                f"more than the prompt length {prompt_length}",
                "Prefer max_new_tokens.",
            )
        kwargs["max_new_tokens"] = new
    if kwargs.get("min_length") is not None and kwargs.get("min_new_tokens") is None:
        kwargs["min_new_tokens"] = max(int(kwargs.pop("min_length")) - prompt_length, 0)
    return kwargs
