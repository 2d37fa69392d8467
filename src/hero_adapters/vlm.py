"""``HeroVLM``: HERO-pruned ``generate`` / ``forward`` around an unmodified Hugging Face VLM (HOSTS.md, Design B).

One call: the host's vision encoder runs once under scoped CLS-attention hooks; each image is scored
against its prompt's query (optional), planned by the ``Pruner`` and assembled in the host's layout; each
image's placeholder run in ``input_ids`` shrinks to its kept count, the prompts are re-padded on the left
with a rebuilt ``attention_mask``, and the host's own ``generate`` receives the kept features through
``mm_encoder_outputs``. The returned sequences begin with the caller's original ``input_ids``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hero_core import EncodedTiles, HeroError, ImageCounts, TextScorer

from ._features import merge_planned, pruner_inputs
from ._generation import check_not_empty, host_attention_mask, relative_lengths, unleft_rows, vocab_size
from ._scoring import check_token_scorer, score_images
from ._timing import StageTimer
from .adapter import AssembledImage, EncodedImage, HostAdapter, PrunedPrompt, check_host_adapter, get_adapter
from .attach import Attachment, Query, host_call, host_generate
from .report import ImageReport, PruneReport
from .sequence import (
    Rebuilt,
    Span,
    check_prompt,
    check_unpadded,
    padding_side,
    placeholder_runs,
    placeholder_spans,
    queries_per_image,
    rebuild,
    splice,
)

__all__ = ["POSITIONS", "REFUSED", "HeroVLM"]

_LOG = logging.getLogger("hero_adapters")

POSITIONS = ("contiguous", "original")
#: What HeroVLM refuses in every host's generate / forward, and what to do instead (the README lists these).
REFUSED = {
    "inputs_embeds": "Pass input_ids: the placeholder runs are rebuilt from them.",
    "mm_encoder_outputs": "HeroVLM computes the image features itself; pass the processor's pixel inputs.",
    "position_ids": "Choose HeroVLM(..., positions='contiguous' | 'original') instead.",
    "past_key_values": "HeroVLM starts every call from the whole prompt (the images are encoded and pruned each "
    "call); pass the whole conversation again, or continue a cache with model.generate directly.",
    "cache_position": "HeroVLM starts every call from the whole prompt; do not pass cache_position.",
}


@dataclass(frozen=True)
class _Run:
    """Everything one call decided before the host's language model runs."""

    report: PruneReport
    encoded: list[EncodedImage]
    assembled: list[AssembledImage]
    spans: list[Span] | None
    ids: Tensor | None = None  # the caller's input_ids, checked (B, S)
    mask: Tensor | None = None  # its attention mask, checked, inferred or all ones (B, S)
    inputs: Mapping[str, Any] = field(default_factory=dict)  # the adapter's image inputs and encoder options


class HeroVLM:
    """A pruning wrapper around a host VLM; the model itself is never modified.

    Examples:
        >>> vlm = HeroVLM(model, presets.hero(0.2), OpenClipTextScorer(...), processor=processor)  # doctest: +SKIP
        >>> inputs = processor(images=image, text=prompt, return_tensors="pt")    # doctest: +SKIP
        >>> out = vlm.generate(**inputs, query="What is written on the sign?", max_new_tokens=32)  # doctest: +SKIP
        >>> processor.decode(out[0, inputs.input_ids.shape[1]:])                  # doctest: +SKIP
        >>> vlm.last_report.to_dict()                                             # doctest: +SKIP

    Args:
        model: a host model with a registered adapter (``list_adapters()``), or any model when ``adapter`` is given.
        pruner: a ``hero_core.Pruner`` (``presets.hero(r)``, ``presets.hero_reference(r)``, ...).
        text_scorer: optional ``TextScorer``: ``(views (K, 3, h, w) RGB in [0, 1], text) -> (K,)`` raw
            CLIP cosines. Used only when the pruner's allocator reads relevance and a query is given.
        adapter: a ``HostAdapter`` instance for ``model`` (then ``layout`` / ``processor`` / mean / std configure
            the adapter itself and must not be passed here).
        layout: the adapter's layout (default ``"vanilla"``: the host's own sequence at R = 1; LLaVA-NeXT also
            has ``"reference"``, the authors' code).
        positions: ``"contiguous"`` (the default for most hosts; positions re-derived over the shortened prompt) or
            ``"original"`` (every kept token keeps the position it had in the unpruned layout). Adapters that set
            the positions themselves (``owns_positions``: the Qwen-VL hosts, whose M-RoPE positions come from the
            image grid) always keep the original ones; leave it unset or pass ``"original"`` there.
        processor: optional host processor; adapters read its normalisation (and InternVL its tiling).
        image_mean: per-channel mean override (default: the processor's, else the host family's).
        image_std: per-channel std override (default: the processor's, else the host family's).

    Raises:
        HeroError: on an unsupported model, an adapter that does not satisfy ``HostAdapter``, a pruner or
            scorer of the wrong kind, selector layers the encoder does not have, or unknown options.
    """

    def __init__(
        self,
        model: nn.Module,
        pruner: Any,
        text_scorer: TextScorer | None = None,
        *,
        adapter: HostAdapter | None = None,
        layout: str | None = None,
        positions: str | None = None,
        processor: Any = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        if not callable(getattr(pruner, "plan", None)) or not isinstance(getattr(pruner, "layers", None), tuple):
            raise HeroError.field(
                "pruner", pruner, "a hero_core.Pruner (with .plan and .layers)", "Build one with presets.hero(0.2)."
            )
        if text_scorer is not None and not callable(text_scorer):
            raise HeroError.field("text_scorer", text_scorer, "None or a callable (views, text) -> (K,) cosines")
        if positions is not None and positions not in POSITIONS:
            raise HeroError.field("positions", positions, f"one of {POSITIONS}")
        check_token_scorer(pruner, text_scorer)  # cdpruner: a scorer with score_tokens, refused before any call
        options = {"layout": layout, "processor": processor, "image_mean": image_mean, "image_std": image_std}
        given = {key: value for key, value in options.items() if value is not None}
        if adapter is None:
            adapter = get_adapter(model, **given)
        elif given:
            raise HeroError.field(
                next(iter(given)),
                next(iter(given.values())),
                "not passed to HeroVLM together with adapter=",
                "Configure the adapter instance itself (e.g. MyAdapter(model, layout=...)).",
            )
        self.adapter: HostAdapter = check_host_adapter(adapter)
        owns = bool(getattr(self.adapter, "owns_positions", False))
        if owns and positions == "contiguous":
            raise HeroError.field(
                "positions",
                positions,
                f"'original' or unset for {type(self.adapter).__name__}",
                "This host derives its (M-RoPE) positions from the image grid: kept tokens must keep them. Leave "
                "positions unset.",
            )
        positions = positions or ("original" if owns else "contiguous")
        if getattr(self.adapter, "model", None) is not model:
            raise HeroError.field("adapter.model", type(self.adapter.model).__name__, "the model passed to HeroVLM")
        depth = int(self.adapter.num_layers)
        bad = [layer for layer in pruner.layers if not 0 <= layer < depth]
        if bad:
            raise HeroError.field(
                "pruner layers",
                list(pruner.layers),
                f"0-based encoder layers in [0, {depth - 1}] (this vision encoder has {depth} layers)",
                "Choose selector layers the encoder has, e.g. presets.hero(r, low_layers=(...), high_layers=(...)).",
            )
        full = getattr(getattr(self.adapter, "encoder", None), "full_attention", None)
        window = sorted(set(pruner.layers) - set(full)) if full else []
        if window:  # a stand-in row there covers one window, not the image: allowed, but said
            _LOG.warning(
                "hero: pruner layers %s are window-attention layers of this tower (full attention: %s); their rows "
                "rank tokens inside each window only. presets.get(name, r, **hero_adapters.preset_options(adapter)) "
                "snaps the default layers to full-attention ones.",
                window,
                list(full or ()),
            )
        self.model = model
        self.pruner = pruner
        self.text_scorer = text_scorer
        self.positions = positions
        self.last_report: PruneReport | None = None
        self._notes: set[str] = set()  # the ratio notes this wrapper has logged (each distinct one once)

    @property
    def layout(self) -> str:
        """The adapter's layout (``"vanilla"``, ``"reference"``, ...)."""
        return str(self.adapter.layout)

    def __repr__(self) -> str:
        return (
            f"HeroVLM(model={type(self.model).__name__}, adapter={type(self.adapter).__name__}, "
            f"pruner={self.pruner!r}, text_scorer={self.text_scorer!r}, layout={self.layout!r}, "
            f"positions={self.positions!r})"
        )

    # ------------------------------------------------------------------------------------------ entry points
    def plan(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        query: str | Sequence[str | None] | None = None,
        **inputs: Any,
    ) -> PruneReport:
        """Encode, score and plan only (no language model). ``input_ids`` is optional; without it a
        per-prompt ``query`` list cannot be mapped to images (and InternVL takes all tiles as one image).

        Args:
            input_ids: (B, S) prompt ids, or None.
            attention_mask: (B, S) 0/1, or None (all ones).
            query: None, one text for every image, or one text per prompt row.
            inputs: the adapter's image inputs (``adapter.input_keys``, e.g. ``pixel_values``, ``image_sizes``)
                and encoder options (``adapter.encoder_keys``).

        Returns:
            The ``PruneReport`` (also stored in ``last_report``).

        Raises:
            HeroError: on any bad input; the model is left as it was.
        """
        self._refuse(inputs)
        image_inputs, rest = self._split(inputs)
        if rest:
            key = next(iter(rest))
            allowed = [*self.adapter.input_keys, *self.adapter.encoder_keys]
            raise HeroError.field(key, rest[key], "not passed to HeroVLM.plan", f"plan() accepts only {allowed}.")
        timer = StageTimer(_device(self.model))
        with torch.inference_mode():
            ids = mask = None
            if input_ids is not None:
                ids, mask = self._check_prompt(input_ids, attention_mask)
            run = self._run(ids, mask, image_inputs, query, timer)
        self.last_report = run.report
        return run.report

    def generate(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        query: str | Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """The host's ``generate`` on the pruned prompt; sequences start with the caller's ``input_ids``.

        Every ``generate`` keyword works (greedy, sampling, beams, ``num_return_sequences``, streamers,
        ``return_dict_in_generate``, ``generation_config`` ...) except those in ``REFUSED`` and the adapter's
        ``refused_keys``. Lengths keep their meaning relative to the caller's prompt: a ``max_length`` /
        ``min_length`` (keyword, ``generation_config`` or the model's default) becomes ``max_new_tokens`` /
        ``min_new_tokens``. Without ``attention_mask`` the mask is inferred exactly as the host's ``generate``
        infers it (from ``pad_token_id``). Prompts must be padded on the left, as the host's generate needs;
        a right-padded batch is refused. A streamer receives the shortened prompt first (``skip_prompt=True``
        hides it); custom ``stopping_criteria`` see the shortened sequences. HERO's stages run under
        ``inference_mode``, the host's ``generate`` under ``no_grad`` as usual.

        Returns:
            What the host returns, with ``sequences`` spliced: (B * n, S + new) where S is the caller's
            prompt length, so ``out[:, S:]`` are the new tokens.

        Raises:
            HeroError: on bad input (placeholders, images, padding side, query, scorer output ...); the model is
                left exactly as it was.
        """
        output, _ = self._generate(input_ids, attention_mask, query, kwargs)
        return output

    def _generate(
        self, input_ids: Tensor | None, attention_mask: Tensor | None, query: object, kwargs: dict[str, Any]
    ) -> tuple[Any, PruneReport]:
        """``generate``, returning its report too (``last_report`` may already be another thread's call's)."""
        self._refuse(kwargs)
        if not callable(getattr(self.model, "generate", None)):
            raise HeroError.field(
                "model",
                type(self.model).__name__,
                "a model with generate(), e.g. LlavaNextForConditionalGeneration",
                "Wrap the ...ForConditionalGeneration model, not its base model (plan() works on either).",
            )
        image_inputs, generate_kwargs = self._split(kwargs)
        if input_ids is None:
            raise HeroError.field("input_ids", None, "the prompt's token ids", "Pass the processor's output: **inputs.")
        timer = StageTimer(_device(self.model))
        with torch.inference_mode():
            ids, mask = self._check_prompt(input_ids, attention_mask)
            check_not_empty(ids)
            if attention_mask is None:
                mask = host_attention_mask(self.model, ids, generate_kwargs)
            if padding_side(mask) != "left":
                raise HeroError.field(
                    "attention_mask",
                    f"padding on the right or inside prompts (rows {unleft_rows(mask)})",
                    "left padding, as generation with a decoder-only LLM needs",
                    "Pad on the left: processor.tokenizer.padding_side = 'left' (the host would generate after the "
                    "padding); pass attention_mask if pad_token_id also occurs inside a prompt.",
                )
            run = self._run(ids, mask, image_inputs, query, timer, generate=True)
            rebuilt = self._rebuild(run, ids, mask, side="left", device=input_ids.device)
            generate_kwargs = relative_lengths(self.model, generate_kwargs, ids.shape[1])
            host_inputs, prompt = self._host_inputs(run, rebuilt, "left", True)
        self.last_report = run.report
        # The host's generate runs as it always does (under no_grad), so what it returns are normal tensors.
        with torch.no_grad(), timer.stage("generate"), host_call():
            output = host_generate(self.model)(**host_inputs, **generate_kwargs)
        self._after_host_call(prompt)
        if isinstance(output, Tensor):
            return splice(ids, output, rebuilt.input_ids.shape[1]), run.report
        output.sequences = splice(ids, output.sequences, rebuilt.input_ids.shape[1])
        return output, run.report

    def attach(self, *, query: Query = None, processor: Any = None, keep_reports: bool = True) -> Attachment:
        """A ``with`` block in which the model's own ``generate`` is this wrapper's (``hero_adapters.attach``).

        Code that calls ``model.generate`` (scripts, transformers pipelines, lmms-eval's HF wrappers) runs
        unchanged and pruned inside the block; on exit, also by an exception or KeyboardInterrupt, the model
        is exactly as before. The block's value is the ``Attachment``; its ``reports`` list holds one
        ``PruneReport`` per call (``last_report`` the latest).

        Examples:
            >>> vlm = HeroVLM(model, presets.hero(0.2), scorer, processor=processor)      # doctest: +SKIP
            >>> with vlm.attach() as attached:                                            # doctest: +SKIP
            ...     out = model.generate(**inputs, max_new_tokens=32)                     # doctest: +SKIP
            >>> attached.reports[0].tokens_out                                            # doctest: +SKIP

        Args:
            query: None (default: each prompt's last user turn, recovered from ``input_ids`` without the chat
                template's fixed text and without special and image tokens; none for a prompt without user
                text), one text for every call, or a callable ``(recovered text) -> query``. Read only when the
                scorer and pruner use relevance.
            processor: decodes the prompts and names the template's fixed words (default: the processor
                passed to ``HeroVLM``).
            keep_reports: collect every call's report in the attachment's ``reports`` (default); pass False
                for long runs (a report holds tensors) and read ``last_report`` after each call.

        Raises:
            HeroError: when the model already has an attachment (this wrapper's or another's), on a bad
                ``query``, or when a query must be recovered and no processor is known.
        """
        return Attachment(self, query, processor, keep_reports)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        labels: Tensor | None = None,
        query: str | Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One scoring pass of the host on the pruned prompt (under ``no_grad``; HERO's stages under inference mode).

        ``labels`` (B, S) aligned with ``input_ids`` shrink the same way (each image run takes its single
        label value, normally -100); new padding is labelled -100. Prompts keep their padding side (left or
        right) and the batch keeps the caller's shared padding columns, so at keep ratio 1 the logits are the
        host's own.

        Returns:
            The host's output (``logits`` (B, S', vocab) over the rebuilt prompt, and ``loss`` when labels are given).

        Raises:
            HeroError: on bad input; the model is left as it was.
        """
        self._refuse(kwargs)
        image_inputs, forward_kwargs = self._split(kwargs)
        if input_ids is None:
            raise HeroError.field("input_ids", None, "the prompt's token ids", "Pass the processor's output: **inputs.")
        if labels is not None and (not isinstance(labels, Tensor) or labels.shape != input_ids.shape):
            raise HeroError.field(
                "labels", labels, f"None or a tensor of the shape of input_ids {tuple(input_ids.shape)}"
            )
        timer = StageTimer(_device(self.model))
        with torch.inference_mode():
            ids, mask = self._check_prompt(input_ids, attention_mask)
            check_not_empty(ids)
            side = padding_side(mask)
            if side is None:
                raise HeroError.field(
                    "attention_mask",
                    f"padding inside prompts (rows {unleft_rows(mask)})",
                    "padding on one side of every prompt (left or right)",
                )
            run = self._run(ids, mask, image_inputs, query, timer)
            rebuilt = self._rebuild(run, ids, mask, labels=labels, side=side, device=input_ids.device)
            inputs, prompt = self._host_inputs(run, rebuilt, side, False)
        self.last_report = run.report
        if rebuilt.labels is not None:
            inputs["labels"] = rebuilt.labels
        if attention_mask is None and bool(rebuilt.attention_mask.all()):
            inputs.pop("attention_mask")  # as the caller called the host: no mask
        with torch.no_grad(), timer.stage("forward"):
            output = self.model(**inputs, **forward_kwargs)
        self._after_host_call(prompt)
        return output

    __call__ = forward

    # -------------------------------------------------------------------------------------------- internals
    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the adapter's image inputs and encoder options that were given, everything else)."""
        mine = (*self.adapter.input_keys, *self.adapter.encoder_keys)
        picked = {key: kwargs[key] for key in mine if key in kwargs and kwargs[key] is not None}
        rest = {key: value for key, value in kwargs.items() if key not in mine}
        return picked, rest

    def _check_prompt(self, input_ids: object, attention_mask: object) -> tuple[Tensor, Tensor]:
        """``check_prompt`` with the host's vocabulary: ids the embedding has (the image placeholder exempt).
        Returns host copies (one transfer): the bookkeeping never reads the device again."""
        return check_prompt(
            input_ids, attention_mask, vocab_size=vocab_size(self.model), image_token_id=self.adapter.image_token_id
        )

    def _refuse(self, kwargs: Mapping[str, Any]) -> None:
        refused = {**REFUSED, **self.adapter.refused_keys}
        for key, value in kwargs.items():
            if key in refused and value is not None:
                raise HeroError.field(key, value, "not passed to HeroVLM", refused[key])

    def _run(
        self,
        ids: Tensor | None,
        mask: Tensor | None,
        image_inputs: dict[str, Any],
        query: object,
        timer: StageTimer,
        *,
        generate: bool = False,
    ) -> _Run:
        token = self.adapter.image_token_id
        if ids is not None and mask is not None:
            check_unpadded(ids, mask, token)
            check_call = getattr(self.adapter, "check_call", None)  # an adapter's own checks of the prompt, first
            if callable(check_call) and image_inputs.get(self.adapter.input_keys[0]) is not None:
                image_inputs = dict(check_call(ids, mask, image_inputs, generate=generate))
        pixels_key = self.adapter.input_keys[0]
        if image_inputs.get(pixels_key) is None:
            extra = [key for key in image_inputs if key in self.adapter.input_keys]
            if extra:
                raise HeroError.field(extra[0], image_inputs[extra[0]], f"None when {pixels_key} is None")
            if ids is not None:
                placeholders = int((ids == token).sum())
                if placeholders:
                    raise HeroError.field(
                        pixels_key,
                        None,
                        f"the images for the {placeholders} image placeholder tokens in input_ids",
                        f"Pass {list(self.adapter.input_keys)} from the processor, or prompts without images.",
                    )
                queries_per_image(query, [], ids.shape[0])  # still check a query list's length
            report = PruneReport(images=[], timings=timer.seconds, positions=self.positions)
            spans: list[Span] | None = [] if ids is not None else None
            return _Run(report=report, encoded=[], assembled=[], spans=spans, ids=ids, mask=mask)

        runs = placeholder_runs(ids, mask, token) if ids is not None and mask is not None else None
        # Nothing to do when the pruner keeps every valid token (R = 1 with an exact-total allocator): no
        # attention is hooked, no scorer runs and nothing is planned (the plan is the valid mask).
        keeps_all = callable(getattr(self.pruner, "keeps_all", None)) and bool(self.pruner.keeps_all())
        with timer.stage("encode"):
            encoded = self.adapter.encode(image_inputs, () if keeps_all else self.pruner.layers, runs=runs)
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
        if not keeps_all:  # what the pruner reads beyond attention: token features, each token's relevance
            encoded = pruner_inputs(self.pruner, self.text_scorer, encoded, queries, timer)
        relevance: list[Tensor | None] = [None] * len(encoded)
        if self.text_scorer is not None and bool(getattr(self.pruner, "uses_relevance", False)) and not keeps_all:
            with timer.stage("score"):
                relevance = self._score(encoded, queries)
        with timer.stage("plan"):  # every image together: one host sync for the batch with the shipped parts
            plan_batch = getattr(self.pruner, "plan_batch", None)
            if callable(getattr(self.pruner, "plan_encoded", None)):  # TokenBudget: reads the adapter's layout too
                plans = self.pruner.plan_encoded(self.adapter, encoded, relevance)
            elif callable(plan_batch):
                plans = plan_batch([image.tiles for image in encoded], relevance)
            else:
                plans = [self.pruner.plan(image.tiles, rel) for image, rel in zip(encoded, relevance, strict=True)]
        with timer.stage("assemble"):  # one host read for every image when the adapter has assemble_batch
            encoded = merge_planned(encoded, plans)  # VisionZip: merged tokens' rows join their targets' rows
            assemble_batch = getattr(self.adapter, "assemble_batch", None)
            if callable(assemble_batch):
                assembled = assemble_batch(encoded, [plan.keep for plan in plans])
            else:
                assembled = [
                    self.adapter.assemble(image, plan.keep) for image, plan in zip(encoded, plans, strict=True)
                ]
        for i, out in enumerate(assembled):
            if int(out.features.shape[0]) != out.tokens_out or int(out.offsets.shape[0]) != out.tokens_out:
                raise HeroError.field(
                    f"{type(self.adapter).__name__}.assemble output for image {i}",
                    f"{int(out.features.shape[0])} features, {int(out.offsets.shape[0])} offsets",
                    f"{out.tokens_out} of each (kept_patch_tokens + newline_tokens): what the placeholder run is "
                    "shrunk to",
                    "Fix the adapter's assemble: one feature row and one offset per token it reports.",
                )
            self._check_count(i, encoded[i].tiles, out.kept_patch_tokens, keeps_all)

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
                view_boxes=image.view_boxes,
            )
            for i, (image, plan, out) in enumerate(zip(encoded, plans, assembled, strict=True))
        ]
        report = PruneReport(images=images, timings=timer.seconds, positions=self.positions)
        report.warn_ratio(self._notes)  # a note when an image sends over 1.1 x the keep ratio, with the reason
        return _Run(
            report=report, encoded=encoded, assembled=assembled, spans=spans, ids=ids, mask=mask, inputs=image_inputs
        )

    def _check_count(self, index: int, tiles: EncodedTiles, kept: int, keeps_all: bool) -> None:
        """The count contract (``hero_core.counts``): what was kept equals ``Pruner.kept_count`` of the image's
        geometry when the pruner's count is known in advance, as a serving engine would have fixed it. No host
        read: the valid counts are on the host after planning (and at keep-everything they are what was kept)."""
        check = getattr(self.pruner, "check_kept", None)
        if not callable(check):
            return  # a duck-typed pruner: nothing promised
        known = tiles.known_capacity
        valid = sum(known) if known is not None else kept if keeps_all else sum(tiles.capacity)
        counts = ImageCounts(views=tiles.num_views, tokens_per_view=tiles.num_tokens, valid=valid)
        check(counts, kept, where=f"{type(self.adapter).__name__} for image {index}")

    def _score(self, encoded: Sequence[EncodedImage], queries: Sequence[str | None]) -> list[Tensor | None]:
        """Relevance per image with a query (``_scoring.score_images``: one scorer call for the whole call)."""
        return score_images(self.text_scorer, self.pruner, encoded, queries)

    def _rebuild(
        self, run: _Run, ids: Tensor, mask: Tensor, *, side: str, device: torch.device, labels: Tensor | None = None
    ) -> Rebuilt:
        """``rebuild`` on the host copies ``ids`` / ``mask``; the new prompt goes to ``device`` (the caller's)."""
        padding = ids[mask == 0]
        pad_id = int(padding[0]) if padding.numel() else self.adapter.pad_token_id
        original = self.positions == "original" and not getattr(self.adapter, "owns_positions", False)
        return rebuild(
            ids,
            mask,
            run.spans or [],
            [out.tokens_out for out in run.assembled],
            token_id=self.adapter.image_token_id,
            pad_id=pad_id,
            side=side,
            labels=labels,
            offsets=[out.offsets for out in run.assembled] if original else None,
            layout_lengths=[out.layout_length for out in run.assembled] if original else None,
            device=device,
        )

    def _host_inputs(
        self, run: _Run, rebuilt: Rebuilt, side: str, generate: bool
    ) -> tuple[dict[str, Any], PrunedPrompt | None]:
        """The host's inputs for the pruned prompt; an adapter's ``prompt_inputs`` adds what it sets itself (the
        Qwen-VL hosts: M-RoPE ``position_ids``). Built before ``last_report`` changes, so a refusal changes nothing;
        the prompt is returned for ``_after_host_call``."""
        inputs: dict[str, Any] = {"input_ids": rebuilt.input_ids, "attention_mask": rebuilt.attention_mask}
        prompt = None
        if rebuilt.position_ids is not None:
            inputs["position_ids"] = rebuilt.position_ids
        if run.assembled:
            inputs.update(self.adapter.feature_inputs(run.assembled))
            prompt_inputs = getattr(self.adapter, "prompt_inputs", None)
            if callable(prompt_inputs) and run.ids is not None and run.mask is not None:
                prompt = PrunedPrompt(
                    input_ids=run.ids,
                    attention_mask=run.mask,
                    spans=run.spans or [],
                    encoded=run.encoded,
                    assembled=run.assembled,
                    rebuilt=rebuilt,
                    inputs=run.inputs,
                    side=side,
                    generate=generate,
                )
                inputs.update(prompt_inputs(prompt))
        return inputs, prompt

    def _after_host_call(self, prompt: PrunedPrompt | None) -> None:
        """An adapter's ``after_host_call(prompt)`` once the host's call succeeded (the Qwen hosts set the model's
        ``rope_deltas`` there, as the host's own call would have; a failed call leaves them as they were)."""
        after = getattr(self.adapter, "after_host_call", None)
        if prompt is not None and callable(after):
            after(prompt)


def _device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device
