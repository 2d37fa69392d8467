"""``check_adapter``: what someone writing an adapter for a new HR-LVLM runs on a tiny build of their model.

Every check compares against the host itself (its own ``generate`` is the oracle) and compares **logits**,
not only tokens: on a tiny random model the tokens rarely move when the features do.

1. keep ratio 1 is the host: sequences equal and logits within ``atol``, greedy and with beams;
2. below 1, kept counts are exact: each plan keeps exactly its budgets, only valid tokens, and the
   assembled sequence holds exactly the report's counts;
3. the LLM receives exactly the report's token count (placeholders of the host's first forward call);
4. a batch equals its prompts run one by one, greedy and with beams (new tokens equal, logits close);
5. the adapter's ``thumbnail_index`` is the view the host treats as global, and each view's attention rows and
   features are its own: one corner of an image is painted, then the opposite one; the view whose CLS token
   changes both times is the host's global view, and every view whose CLS token changed must show it in its
   own attention rows and feature positions (PIL images are compared in RGB; skipped when no image has two
   tiles and is a PIL image or an (H, W, C) array);
6. hooks are gone (and no attribute added) after normal calls, a call whose text scorer raises (when the
   pruner reads relevance; otherwise reported as skipped), and a call that raises inside the vision tower
   after HERO's hooks on earlier layers have recorded.

What it cannot prove: that the adapter's CLS rows are the right layers' rows (compare them with the tower's
own eager ``output_attentions=True`` as tests/adapters/test_cls_hooks.py does), that its ``view_boxes`` are
where the views lie, that a layout other than the host's (``"reference"``) is right, or anything about images
unlike the prompts given (sizes, counts, aspect ratios the prompts do not contain).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..adapter import EncodedImage
from ..sequence import placeholder_runs
from ..towers import attention_modules
from ..vlm import HeroVLM

__all__ = ["AdapterCheckError", "AdapterCheckReport", "check_adapter", "check_scorer", "hook_snapshot"]

Prompt = tuple[str, Sequence[Any]]


class AdapterCheckError(AssertionError):
    """An adapter failed ``check_adapter``; the message lists every failed check with its measurements."""


@dataclass
class AdapterCheckReport:
    """What ``check_adapter`` measured: per check, passed or not and a detail line (max logit differences ...)."""

    results: dict[str, tuple[bool, str]] = field(default_factory=dict)

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.results[name] = (passed, detail)

    @property
    def failures(self) -> dict[str, str]:
        return {name: detail for name, (ok, detail) in self.results.items() if not ok}

    def __str__(self) -> str:
        return "\n".join(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}" for name, (ok, detail) in self.results.items())


def hook_snapshot(model: nn.Module) -> dict[str, tuple[int, int, tuple[str, ...]]]:
    """Per module: forward pre-hooks, forward hooks, and its attribute names (to see anything added or left)."""
    return {
        name: (len(module._forward_pre_hooks), len(module._forward_hooks), tuple(sorted(vars(module))))
        for name, module in model.named_modules()
    }


def check_adapter(
    model: nn.Module,
    make_inputs: Callable[[Sequence[str], Sequence[Any]], Mapping[str, Any]],
    prompts: Sequence[Prompt],
    pruner: Callable[[float], Any],
    *,
    adapter: Any = None,
    keep_ratio: float = 0.5,
    max_new_tokens: int = 4,
    atol: float = 1e-5,
    batch_atol: float = 1e-4,
    vlm_options: Mapping[str, Any] | None = None,
    raise_on_failure: bool = True,
) -> AdapterCheckReport:
    """Run the adapter checks on ``model`` (normally a tiny in-process build of the host).

    Examples:
        >>> host = build_internvl(tile_pixels=56, vision_layers=4)                           # doctest: +SKIP
        >>> make = lambda texts, images: host.processor(images=list(images) or None, text=list(texts),
        ...                                             return_tensors="pt", padding=True)    # doctest: +SKIP
        >>> check_adapter(host.model, make, [("user: <IMG_CONTEXT> describe", [img])],
        ...               lambda r: presets.hero(r, low_layers=(1,), high_layers=(3,)))      # doctest: +SKIP

    Args:
        model: the host model (with ``generate``).
        make_inputs: ``(texts, images) -> processor outputs`` (left padding, ``return_tensors="pt"``).
        prompts: at least two ``(text, images)`` pairs; they are batched together and also run one by one.
        pruner: ``keep_ratio -> Pruner`` whose layers the tower has (e.g. ``presets.hero(r, low_layers=...)``).
        adapter: an adapter instance (for a model without a registered ``model_type``), or None.
        keep_ratio: the ratio below 1 that the count and batch checks use.
        max_new_tokens: tokens generated per check.
        atol: allowed logit difference at keep ratio 1 (the same computation: normally 0).
        batch_atol: allowed logit difference between a batch row and its prompt alone (padding changes the
            floating-point order of sums).
        vlm_options: more ``HeroVLM`` keywords (``processor=...``, ``layout=...``).
        raise_on_failure: raise ``AdapterCheckError`` listing the failures (default), or only return the report.

    Returns:
        The report of every check.
    """
    options = dict(vlm_options or {})
    if adapter is not None:
        options["adapter"] = adapter
    texts = [text for text, _ in prompts]
    images = [image for _, group in prompts for image in group]
    batch = dict(make_inputs(texts, images))
    report = AdapterCheckReport()
    greedy: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
    beams: dict[str, Any] = {**greedy, "num_beams": 2, "num_return_sequences": 2}
    with torch.no_grad():  # warm-up: hosts install their own output-capturing hooks lazily, on a first call
        model.generate(**batch, max_new_tokens=1, do_sample=False)  # type: ignore[operator]
    before = hook_snapshot(model)

    full = HeroVLM(model, pruner(1.0), **options)
    for name, settings in (("greedy", greedy), ("beams", beams)):
        with torch.no_grad():
            host = model.generate(**batch, **settings, output_logits=True, return_dict_in_generate=True)  # type: ignore[operator]
        hero = full.generate(**batch, **settings, output_logits=True, return_dict_in_generate=True)
        same = torch.equal(host.sequences, hero.sequences)
        diff = _logit_diff(host.logits, hero.logits)
        report.add(
            f"keep ratio 1 = host ({name})",
            same and diff <= atol,
            f"sequences {'equal' if same else 'DIFFER'}, max |logit diff| {diff:.2e} (atol {atol:g})",
        )

    pruned = HeroVLM(model, pruner(keep_ratio), **options)
    plan = pruned.plan(**batch)
    problems = []
    for image in plan.images:
        kept = int(image.plan.keep.sum())
        budget = int(image.plan.budgets.sum())
        outside = bool((image.plan.keep & ~image.encoded.valid_mask).any())
        per_view = image.plan.keep.sum(-1).tolist() != image.plan.budgets.tolist()
        if kept != budget or kept != image.kept_patch_tokens or outside or per_view:
            problems.append(f"image {image.index}: kept {kept}, budgets {budget}, sent {image.kept_patch_tokens}")
        if image.tokens_out != image.kept_patch_tokens + image.newline_tokens:
            problems.append(f"image {image.index}: tokens_out {image.tokens_out} != patches + newlines")
    report.add(
        f"exact kept counts at keep ratio {keep_ratio:g}",
        not problems and plan.tokens_out < plan.tokens_in,
        "; ".join(problems) or f"{plan.tokens_out} of {plan.tokens_in} image tokens, every view at its budget",
    )

    image_token = int(pruned.adapter.image_token_id)
    with _first_call_ids(model) as seen:
        pruned.generate(**batch, **greedy)
    last = pruned.last_report
    expected = [0] * len(texts)
    for image in last.images if last is not None else []:
        if image.prompt is not None:
            expected[image.prompt] += image.tokens_out
    received = (seen[0] == image_token).sum(-1).tolist() if seen else None
    report.add(
        "the LLM receives the report's token count",
        received == expected,
        f"placeholders per prompt at the host's prefill {received}, report {expected}",
    )

    for name, settings in (("greedy", greedy), ("beams", beams)):
        per_prompt = int(settings.get("num_return_sequences", 1))
        beam_rows = int(settings.get("num_beams", 1))
        together = pruned.generate(**batch, **settings, output_logits=True, return_dict_in_generate=True)
        width = int(batch["input_ids"].shape[1])
        worst, differ = 0.0, []
        for row, (text, group) in enumerate(prompts):
            alone_inputs = dict(make_inputs([text], list(group)))
            alone = pruned.generate(**alone_inputs, **settings, output_logits=True, return_dict_in_generate=True)
            start = int(alone_inputs["input_ids"].shape[1])
            new_alone = alone.sequences[:, start:]  # (n, new)
            rows = slice(row * per_prompt, (row + 1) * per_prompt)
            new_batch = together.sequences[rows, width : width + new_alone.shape[1]]
            if not torch.equal(new_alone, new_batch):
                differ.append(row)
            steps = min(len(alone.logits), len(together.logits))
            for step in range(steps):  # logits rows: one per beam, prompts in order
                mine = together.logits[step][row * beam_rows : (row + 1) * beam_rows].float()
                delta = (alone.logits[step].float() - mine).abs().max()
                worst = max(worst, float(delta))
        report.add(
            f"batch = prompts one by one at keep ratio {keep_ratio:g} ({name})",
            not differ and worst <= batch_atol,
            f"new tokens differ in rows {differ}, max |logit diff| {worst:.2e} (atol {batch_atol:g})",
        )

    passed, detail = _global_view(make_inputs, prompts, pruned)
    report.add(
        "the thumbnail is the host's global view; each view's attention and features are its own", passed, detail
    )

    after_normal = hook_snapshot(model)

    def failing_scorer(views: Tensor, text: str, /) -> Tensor:
        raise RuntimeError("hero check_adapter: a scorer that fails on purpose")

    scoring = HeroVLM(model, pruner(keep_ratio), failing_scorer, **options)
    if bool(getattr(scoring.pruner, "uses_relevance", False)):
        raised_scorer = _raises(lambda: scoring.generate(**batch, query="what is in the picture", **greedy))
        after_scorer = hook_snapshot(model)
        report.add(
            "hooks gone after a failing text scorer",
            raised_scorer and after_scorer == before,
            "raised, model as before" if raised_scorer and after_scorer == before else "NOT CLEAN or did not raise",
        )
    else:
        report.add("hooks gone after a failing text scorer (skipped: the pruner reads no relevance)", True, "not run")
    # A failure inside the tower, after HERO's hooks on the earlier layers have recorded: a pre-hook that
    # raises on the attention module of the last layer the pruner reads.
    modules, _ = attention_modules(pruned.adapter.vision_tower)
    handle = modules[max(pruned.pruner.layers)].register_forward_pre_hook(_fail)
    try:
        raised_tower = _raises(lambda: pruned.generate(**batch, **greedy))
    finally:
        handle.remove()
    after_tower = hook_snapshot(model)
    report.add(
        "hooks gone after normal calls and a call failing inside the tower",
        after_normal == before and raised_tower and after_tower == before,
        f"normal {'clean' if after_normal == before else 'LEFT HOOKS'}, failing tower "
        f"{'raised, clean' if raised_tower and after_tower == before else 'NOT CLEAN or did not raise'}",
    )
    if raise_on_failure and report.failures:
        raise AdapterCheckError(f"adapter {type(pruned.adapter).__name__} failed check_adapter:\n{report}")
    return report


def check_scorer(scorer: Any, views: Sequence[Tensor], texts: Sequence[str], *, atol: float = 1e-5) -> float:
    """A scorer's batched answers (``score_batch``: every image's views in one call) against its single ones
    (``scorer(views[i], texts[i])``, image by image): same shapes, finite, within ``atol``.

    Args:
        scorer: a text scorer with ``score_batch`` (the library's CLIP scorers; a plain function has none).
        views: per image, (K_i, 3, h, w) float RGB in [0, 1]; give images of different sizes.
        texts: per image, its query; give repeated and distinct queries.
        atol: the largest allowed difference (1e-5 for float32: the tower sees a larger batch).

    Returns:
        The largest absolute difference found.

    Raises:
        AdapterCheckError: naming the image whose batched answer differs, or a scorer without ``score_batch``.
    """
    batch = getattr(scorer, "score_batch", None)
    if not callable(batch):
        raise AdapterCheckError(f"{type(scorer).__name__} has no score_batch method: it is scored image by image")
    together = batch(list(views), list(texts))
    if len(together) != len(views):
        raise AdapterCheckError(f"score_batch gave {len(together)} answers for {len(views)} images")
    worst = 0.0
    for i, (item, text) in enumerate(zip(views, texts, strict=True)):
        alone = scorer(item, text)
        if together[i].shape != alone.shape or not bool(torch.isfinite(together[i]).all()):
            raise AdapterCheckError(f"image {i}: batched shape {tuple(together[i].shape)}, alone {tuple(alone.shape)}")
        delta = float((together[i].float() - alone.float()).abs().max()) if alone.numel() else 0.0
        if delta > atol:
            raise AdapterCheckError(f"image {i}: batched and single scores differ by {delta:.2e} (atol {atol:g})")
        worst = max(worst, delta)
    return worst


def _global_view(
    make_inputs: Callable[[Sequence[str], Sequence[Any]], Mapping[str, Any]], prompts: Sequence[Prompt], vlm: HeroVLM
) -> tuple[bool, str]:
    """Which views the host's own processor and tower change when one corner of the image changes.

    Painting the top-left corner changes the tiles over it and the thumbnail (the whole image); painting the
    bottom-right corner changes other tiles and the thumbnail again. So the one view whose CLS token changes
    both times is the host's global view: it must be the adapter's ``thumbnail_index``. Each time, every view
    whose CLS token changed must also show the change in its own recorded CLS attention rows and at its own
    positions of the unpruned features (by ``source``): rows filed under another view fail it. (More views may
    change there than in the CLS tokens: a host that resamples the packed grid, like OneVision's
    ``anyres_max`` downsampling, mixes neighbouring tiles.)
    """
    for text, group in prompts:
        for position, image in enumerate(group):
            probes = _probes(image)
            if probes is None:
                continue  # an image kind this check cannot paint
            base_image, corners = probes
            base_group = [base_image if i == position else item for i, item in enumerate(group)]
            base = _encoded(vlm, make_inputs([text], base_group))[position]
            if base.tiles.num_views < 3:
                continue  # fewer than two tiles: the corners do not tell the thumbnail from a tile
            changed: list[set[int]] = []
            for corner, name in ((0, "top-left"), (1, "bottom-right")):
                painted = [corners[corner] if i == position else item for i, item in enumerate(group)]
                other = _encoded(vlm, make_inputs([text], painted))[position]
                views = _changed(base.tiles.cls_tokens, other.tiles.cls_tokens)
                attention = _changed(
                    base.tiles.cls_attention.transpose(0, 1), other.tiles.cls_attention.transpose(0, 1)
                )
                tokens = int(base.tiles.cls_attention.shape[-1])
                moved = sorted(_changed(base.features, other.features))
                features = {int(base.source[i]) // tokens for i in moved if int(base.source[i]) >= 0}
                if not views <= attention or not views <= features:
                    return False, (
                        f"image {position} of prompt {text!r}, {name} corner painted: views whose CLS token changed "
                        f"{sorted(views)}, whose recorded CLS attention changed {sorted(attention)}, whose features "
                        f"(by the adapter's source map) changed {sorted(features)}; a view whose pixels changed must "
                        "show it in its own attention rows and features"
                    )
                changed.append(views)
            both = changed[0] & changed[1]
            thumbnail = int(base.tiles.thumbnail_index)
            return both == {thumbnail}, (
                f"image {position} of prompt {text!r} ({base.tiles.num_views} views): painting either corner changes "
                f"views {sorted(both)}, the adapter's thumbnail_index is {thumbnail}"
            )
    return True, "skipped: no image of the prompts has two tiles or more and is a PIL image or an (H, W, C) array"


def _encoded(vlm: HeroVLM, inputs: Mapping[str, Any]) -> list[EncodedImage]:
    """The adapter's ``encode`` of one prompt's processor outputs, its images mapped to the prompt's runs."""
    image_inputs, _ = vlm._split(dict(inputs))
    with torch.inference_mode():
        ids, mask = vlm._check_prompt(inputs["input_ids"], inputs.get("attention_mask"))
        runs = placeholder_runs(ids, mask, vlm.adapter.image_token_id)
        return list(vlm.adapter.encode(image_inputs, vlm.pruner.layers, runs=runs))


def _probes(image: Any) -> tuple[Any, tuple[Any, Any]] | None:
    """``(base, (top-left painted, bottom-right painted))`` for one image, or None for a kind this cannot paint.

    A PIL image is compared in RGB (the base too): converting a painted copy back to its own mode (a palette, an
    alpha channel, 16-bit) would change pixels far from the painted corner. An array must be (H, W, C) with C in
    1, 3 or 4, channels last."""
    from PIL import Image  # the hf extra brings pillow (the processors need it)

    if isinstance(image, Image.Image):
        rgb = np.asarray(image.convert("RGB"))
        return Image.fromarray(rgb), (Image.fromarray(_painted(rgb, 0)), Image.fromarray(_painted(rgb, 1)))
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (1, 3, 4) and image.shape[0] > 4:
        return image, (_painted(image, 0), _painted(image, 1))
    return None


def _painted(image: np.ndarray, corner: int) -> np.ndarray:
    """A copy of an (H, W, C) array with its top-left (0) or bottom-right (1) quarter-by-quarter box inverted."""
    out = image.copy()
    height, width = out.shape[:2]
    rows = slice(0, max(height // 4, 1)) if corner == 0 else slice(height - max(height // 4, 1), height)
    cols = slice(0, max(width // 4, 1)) if corner == 0 else slice(width - max(width // 4, 1), width)
    top = 255 if out.dtype == np.uint8 else 1.0
    out[rows, cols] = top - out[rows, cols]
    return out


def _changed(first: Tensor, second: Tensor) -> set[int]:
    """Indices along dim 0 where the two tensors differ beyond float noise."""
    scale = float(first.float().abs().max()) or 1.0
    delta = (first.float() - second.float()).abs().flatten(1).amax(1)
    return {int(i) for i in (delta > 1e-5 * scale).nonzero().flatten().tolist()}


def _logit_diff(first: Sequence[Tensor] | None, second: Sequence[Tensor] | None) -> float:
    if first is None or second is None or len(first) != len(second):
        return float("inf")
    if not first:
        return 0.0
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(first, second, strict=True))


@contextmanager
def _first_call_ids(model: nn.Module) -> Iterator[list[Tensor]]:
    """The ``input_ids`` of the model's first forward call inside the block (the host's prefill)."""
    seen: list[Tensor] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not seen and isinstance(ids, Tensor):
            seen.append(ids.detach().cpu())

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def _fail(module: nn.Module, args: tuple[Any, ...]) -> None:
    raise RuntimeError("hero check_adapter: a vision tower that fails on purpose")


def _raises(call: Callable[[], Any]) -> bool:
    try:
        call()
    except RuntimeError:
        return True
    return False
