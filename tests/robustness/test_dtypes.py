"""The dtype matrix on one host (LLaVA-NeXT): float32, bfloat16 and float16 (skipped where the CPU lacks the
ops) hosts and inputs through ``HeroVLM.plan`` / ``generate``; tau down to 0.01 without NaN; keep masks stable
across repeated calls."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import pytest
import torch

from adapters.hosts import host_row
from hero_adapters import HeroVLM, PruneReport
from hero_core.testing import expected_total

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@cache
def _host(dtype: torch.dtype) -> Any:
    row = host_row("llava_next")
    return row.model if dtype == torch.float32 else copy.deepcopy(row.model).to(dtype)


def _inputs(dtype: torch.dtype) -> dict[str, Any]:
    inputs = host_row("llava_next").batch()
    return {**inputs, "pixel_values": inputs["pixel_values"].to(dtype)}


def _scorer(views: torch.Tensor, text: str) -> torch.Tensor:
    """Deterministic stand-in cosines in [-1, 1], close together (a low tau then matters)."""
    return torch.tanh(views.float().mean(dim=(1, 2, 3)) * 3)


def _vlm(dtype: torch.dtype, tau: float = 0.05) -> HeroVLM:
    row = host_row("llava_next")
    model = _host(dtype)
    if dtype == torch.float16:
        try:
            with torch.no_grad():
                model.generate(**_inputs(dtype), max_new_tokens=1)
        except RuntimeError as error:  # e.g. "... not implemented for 'Half'" on this CPU
            pytest.skip(f"float16 is not supported by this CPU build: {error}"[:200])
    return HeroVLM(model, row.pruner(0.3, tau_v=tau, tau_t=tau), _scorer, processor=row.processor)


def _check_finite(report: PruneReport) -> None:
    for image in report.images:
        plan = image.plan
        for part in (plan.importance, plan.saliency, plan.relevance):
            assert part is None or bool(torch.isfinite(part).all()), image.index
        assert plan.num_kept == expected_total(image.encoded, 0.3)


@pytest.mark.parametrize(
    ("dtype", "tau"),
    [(torch.float32, 0.05), (torch.float32, 0.01), (torch.bfloat16, 0.01), (torch.float16, 0.01)],
    ids=str,
)
def test_plan_and_generate_in_every_dtype(dtype: torch.dtype, tau: float) -> None:
    vlm, inputs = _vlm(dtype, tau), _inputs(dtype)
    reports = [vlm.plan(**inputs, query="what is in the picture") for _ in range(2)]
    for report in reports:
        _check_finite(report)
        for first, again in zip(reports[0].images, report.images, strict=True):
            assert torch.equal(first.plan.keep, again.plan.keep)  # stable across repeated calls
    sent: list[torch.Tensor] = []
    assemble = type(vlm.adapter).assemble

    def recording(adapter, image, keep):  # what the LLM receives: the model's dtype and device, not float32
        out = assemble(adapter, image, keep)
        sent.append(out.features)
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(vlm.adapter), "assemble", recording)
        first = vlm.generate(**inputs, query="what is in the picture", max_new_tokens=2, do_sample=False)
    assert sent and all(f.dtype == dtype and f.device == _host(dtype).device for f in sent), [f.dtype for f in sent]
    again = vlm.generate(**inputs, query="what is in the picture", max_new_tokens=2, do_sample=False)
    assert torch.equal(first, again)
    assert torch.equal(first[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert vlm.last_report is not None
    for image, planned in zip(vlm.last_report.images, reports[0].images, strict=True):
        assert torch.equal(image.plan.keep, planned.plan.keep)
        assert image.encoded.cls_attention.device == _host(dtype).device


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
def test_half_precision_plans_keep_the_float32_counts(dtype: torch.dtype) -> None:
    low, full = _vlm(dtype), _vlm(torch.float32)
    for a, b in zip(low.plan(**_inputs(dtype)).images, full.plan(**_inputs(torch.float32)).images, strict=True):
        assert a.tokens_in == b.tokens_in and a.tokens_out == b.tokens_out
        assert torch.equal(a.plan.budgets.sum(), b.plan.budgets.sum())
