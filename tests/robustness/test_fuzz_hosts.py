"""Fuzzing ``HeroVLM.plan`` / ``generate`` on every host of the shared matrix with malformed inputs.

Every outcome is a correct result (a report whose counts add up; sequences that start with the caller's
``input_ids``) or a ``HeroError``, and the model's hooks are the same afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.hosts import HOSTS, HostRow, host_row
from hero_adapters import HeroVLM, PruneReport
from hero_adapters.sequence import check_prompt
from hero_adapters.testing import hook_snapshot
from hero_core import HeroError

from .common import result_or_hero_error

Change = Callable[[HostRow, dict[str, Any], int], dict[str, Any]]


@cache
def wrapper(name: str) -> HeroVLM:
    row = host_row(name)
    return HeroVLM(row.model, row.pruner(0.5), processor=row.processor)


@cache
def base_inputs(name: str, batched: bool) -> dict[str, Any]:
    row = host_row(name)
    if batched:
        return row.batch()
    text, images = row.prompts()[0]
    return row.inputs([text], images)


def _token(row: HostRow) -> int:
    return int(wrapper(row.name).adapter.image_token_id)


def _text_id(row: HostRow, ids: torch.Tensor) -> int:
    """A text token of the prompt (not padding, not an image placeholder)."""
    return int(ids[ids != _token(row)].max())


def _pixels(change: Callable[[torch.Tensor, int], Any]) -> Change:
    def apply(row: HostRow, inputs: dict[str, Any], seed: int) -> dict[str, Any]:
        return {**inputs, "pixel_values": change(inputs["pixel_values"], seed)}

    return apply


def _poison(value: float) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def apply(pixels: torch.Tensor, seed: int) -> torch.Tensor:
        out = pixels.clone()
        out.view(-1)[seed % out.numel()] = value
        return out

    return apply


def _narrow(pixels: torch.Tensor, seed: int) -> torch.Tensor:
    return pixels.narrow(seed % pixels.dim(), 0, 0)


def _ids(change: Callable[[HostRow, torch.Tensor, torch.Tensor, int], tuple[Any, Any]]) -> Change:
    def apply(row: HostRow, inputs: dict[str, Any], seed: int) -> dict[str, Any]:
        ids, mask = change(row, inputs["input_ids"].clone(), inputs["attention_mask"].clone(), seed)
        return {**inputs, "input_ids": ids, "attention_mask": mask}

    return apply


def _extra_placeholder(row: HostRow, ids: torch.Tensor, mask: torch.Tensor, seed: int) -> tuple[Any, Any]:
    at = seed % (ids.shape[1] + 1)
    column = torch.full((ids.shape[0], 1), _token(row), dtype=ids.dtype)
    ones = torch.ones((ids.shape[0], 1), dtype=mask.dtype)
    return torch.cat([ids[:, :at], column, ids[:, at:]], 1), torch.cat([mask[:, :at], ones, mask[:, at:]], 1)


def _missing_placeholder(row: HostRow, ids: torch.Tensor, mask: torch.Tensor, seed: int) -> tuple[Any, Any]:
    where = (ids == _token(row)).nonzero()
    if len(where):
        r, c = where[seed % len(where)].tolist()
        ids[r, c] = _text_id(row, ids)
    return ids, mask


def _no_placeholders(row: HostRow, ids: torch.Tensor, mask: torch.Tensor, seed: int) -> tuple[Any, Any]:
    ids[ids == _token(row)] = _text_id(row, ids)
    return ids, mask


def _set_text(value: Callable[[HostRow], int]) -> Callable[..., tuple[Any, Any]]:
    def apply(row: HostRow, ids: torch.Tensor, mask: torch.Tensor, seed: int) -> tuple[Any, Any]:
        where = ((ids != _token(row)) & (mask == 1)).nonzero()
        r, c = where[seed % len(where)].tolist()
        ids[r, c] = value(row)
        return ids, mask

    return apply


def _vocab(row: HostRow) -> int:
    return int(row.model.get_input_embeddings().num_embeddings)


def _mask(change: Callable[[torch.Tensor, int], Any]) -> Callable[..., tuple[Any, Any]]:
    return lambda row, ids, mask, seed: (ids, change(mask, seed))


def _right_padding(mask: torch.Tensor, seed: int) -> torch.Tensor:
    out = torch.ones_like(mask)
    out[:, -1 - seed % 3 :] = 0
    return out


def _drop(*keys: str) -> Change:
    return lambda row, inputs, seed: {k: v for k, v in inputs.items() if k not in keys}


def _sizes(change: Callable[[torch.Tensor, int], Any]) -> Change:
    def apply(row: HostRow, inputs: dict[str, Any], seed: int) -> dict[str, Any]:
        if "image_sizes" not in inputs:
            return inputs
        return {**inputs, "image_sizes": change(inputs["image_sizes"], seed)}

    return apply


CHANGES: dict[str, Change] = {
    "pixels-rank-up": _pixels(lambda p, s: p.unsqueeze(0)),
    "pixels-rank-down": _pixels(lambda p, s: p[0]),
    "pixels-flat": _pixels(lambda p, s: p.flatten()),
    "pixels-zero-size": _pixels(_narrow),
    "pixels-nan": _pixels(_poison(float("nan"))),
    "pixels-inf": _pixels(_poison(float("-inf"))),
    "pixels-huge": _pixels(lambda p, s: p * 1e30),
    "pixels-int": _pixels(lambda p, s: p.long()),
    "pixels-bool": _pixels(lambda p, s: p > 0),
    "pixels-double": _pixels(lambda p, s: p.double()),
    "pixels-half": _pixels(lambda p, s: p.half()),
    "pixels-list": _pixels(lambda p, s: p.tolist()[:1]),
    "pixels-extra-image": _pixels(lambda p, s: torch.cat([p, p[:1]])),
    "pixels-one-less": _pixels(lambda p, s: p[:-1]),
    # (Qwen's pixels are flat patches (S, C t p p): one channel's share of each row)
    "pixels-channels": _pixels(lambda p, s: p[..., :1, :, :] if p.dim() > 2 else p[:, : p.shape[1] // 3]),
    "pixels-small": _pixels(lambda p, s: p[..., : 1 + s % 8, : 1 + s % 8]),
    "no-pixels": _drop("pixel_values"),
    "no-sizes": _drop("image_sizes"),
    "no-ids": _drop("input_ids"),
    "no-mask": _drop("attention_mask"),
    "sizes-zero": _sizes(lambda z, s: torch.zeros_like(z)),
    "sizes-negative": _sizes(lambda z, s: -z),
    "sizes-float": _sizes(lambda z, s: z.float() + 0.5),
    "sizes-huge": _sizes(lambda z, s: z * 1000),
    "sizes-rank": _sizes(lambda z, s: z.flatten()),
    "ids-rank-1": _ids(lambda r, i, m, s: (i[0], m[0])),
    "ids-rank-3": _ids(lambda r, i, m, s: (i[None], m[None])),
    "ids-empty": _ids(lambda r, i, m, s: (i[:, :0], m[:, :0])),
    "ids-no-rows": _ids(lambda r, i, m, s: (i[:0], m[:0])),
    "ids-float": _ids(lambda r, i, m, s: (i.float(), m)),
    "ids-bool": _ids(lambda r, i, m, s: (i > 0, m)),
    "ids-extra-placeholder": _ids(_extra_placeholder),
    "ids-missing-placeholder": _ids(_missing_placeholder),
    "ids-no-placeholders": _ids(_no_placeholders),
    "ids-negative": _ids(_set_text(lambda r: -1)),
    "ids-out-of-vocab": _ids(_set_text(lambda r: _vocab(r) + 3)),
    "mask-short": _ids(_mask(lambda m, s: m[:, 1:])),
    "mask-two": _ids(_mask(lambda m, s: m * 2)),
    "mask-float": _ids(_mask(lambda m, s: m.float())),
    "mask-bool": _ids(_mask(lambda m, s: m.bool())),
    "mask-zeros": _ids(_mask(lambda m, s: torch.zeros_like(m))),
    "mask-right": _ids(_mask(_right_padding)),
    "mask-hole": _ids(_mask(lambda m, s: m.index_fill(1, torch.tensor([m.shape[1] // 2]), 0))),
}


def _check_report(report: PruneReport) -> None:
    for image in report.images:
        assert 0 <= image.kept_patch_tokens <= image.tokens_out <= image.tokens_in
        assert torch.equal(image.plan.keep.sum(-1), image.plan.budgets)


def _check_generated(inputs: dict[str, Any], output: torch.Tensor, report: PruneReport) -> None:
    ids = inputs["input_ids"]
    assert output.shape[0] == ids.shape[0] and output.shape[1] > ids.shape[1]
    assert torch.equal(output[:, : ids.shape[1]], ids)  # the caller's prompt, never a shortened one
    _check_report(report)


def _fuzz(name: str, change: str, seed: int, batched: bool, call: str) -> None:
    row, vlm = host_row(name), wrapper(name)
    before = hook_snapshot(row.model)
    inputs = CHANGES[change](row, dict(base_inputs(name, batched)), seed)
    if call == "plan":
        report = result_or_hero_error(lambda: vlm.plan(**inputs))
        if not isinstance(report, HeroError):
            _check_report(report)
    else:
        output = result_or_hero_error(lambda: vlm.generate(**inputs, max_new_tokens=2, do_sample=False))
        if not isinstance(output, HeroError):
            assert vlm.last_report is not None
            _check_generated(inputs, output, vlm.last_report)
    assert hook_snapshot(row.model) == before


@pytest.mark.parametrize("name", sorted(HOSTS))
@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(CHANGES)), st.integers(0, 10_000), st.booleans(), st.sampled_from(["plan", "generate"]))
def test_malformed_inputs_give_a_result_or_a_hero_error(
    name: str, change: str, seed: int, batched: bool, call: str
) -> None:
    _fuzz(name, change, seed, batched, call)


@pytest.mark.parametrize("name", sorted(HOSTS))
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_change_once_through_generate(name: str, change: str) -> None:
    """The whole table on every host, once (the fuzzing above only samples it)."""
    _fuzz(name, change, 1, False, "generate")


def test_ids_outside_the_vocabulary_are_refused_but_the_placeholder_is_exempt() -> None:
    """LLaVA's original code marks images with -200 and replaces them before embedding: only text ids count."""
    ids = torch.tensor([[1, -200, -200, 5]])
    check_prompt(ids, None, vocab_size=10, image_token_id=-200)
    for bad in (-1, 10):
        with pytest.raises(HeroError, match=r"token ids in \[0, 9\]"):
            check_prompt(ids.masked_fill(ids == 5, bad), None, vocab_size=10, image_token_id=-200)
