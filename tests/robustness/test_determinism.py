"""Determinism: the same inputs give the same plans and sequences across calls and across batch positions (a
prompt's plan never depends on its neighbours: planned alone and inside batches in different orders)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from adapters.hosts import HOSTS, HostRow, host_row
from hero_adapters import HeroVLM
from hero_core import presets

ORDERS = [(0, 1, 2), (2, 0, 1), (1, 2, 0)]  # every prompt in every position
QUERIES = ["what is in the picture", "compare the two", None]


def _scorer(views: torch.Tensor, text: str) -> torch.Tensor:
    return torch.tanh(views.float().mean(dim=(1, 2, 3)) * 3 + len(text) / 40)


def _vlm(row: HostRow, preset: str) -> HeroVLM:
    pruner = row.pruner(0.3) if preset == "hero" else presets.get(preset, 0.3)
    return HeroVLM(row.model, pruner, _scorer, processor=row.processor)


def _inputs(row: HostRow, order: tuple[int, ...]) -> tuple[dict[str, Any], list[str | None]]:
    prompts = row.prompts()
    chosen = [prompts[i] for i in order]
    return row.inputs([t for t, _ in chosen], [i for _, group in chosen for i in group]), [QUERIES[i] for i in order]


def _keeps_by_prompt(vlm: HeroVLM, row: HostRow, order: tuple[int, ...]) -> dict[int, list[torch.Tensor]]:
    inputs, queries = _inputs(row, order)
    report = vlm.plan(**inputs, query=queries)
    out: dict[int, list[torch.Tensor]] = {}
    for image in report.images:
        assert image.prompt is not None
        out.setdefault(order[image.prompt], []).append(image.plan.keep)
    return out


@pytest.mark.parametrize("preset", ["hero", "uniform-random"])
@pytest.mark.parametrize("name", sorted(HOSTS))
def test_a_prompts_plan_never_depends_on_its_neighbours(name: str, preset: str) -> None:
    row = host_row(name)
    vlm = _vlm(row, preset)
    alone: dict[int, list[torch.Tensor]] = {}
    for i in range(3):
        alone.update(_keeps_by_prompt(vlm, row, (i,)))
    for order in ORDERS:
        batched = _keeps_by_prompt(vlm, row, order)
        assert batched.keys() == alone.keys()
        for prompt, keeps in batched.items():
            for a, b in zip(keeps, alone[prompt], strict=True):
                assert torch.equal(a, b), (order, prompt)


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_the_same_call_gives_the_same_plan_and_sequences(name: str) -> None:
    row = host_row(name)
    vlm = _vlm(row, "hero")
    inputs, queries = _inputs(row, (0, 1, 2))
    settings = {"max_new_tokens": 3, "do_sample": False, "query": queries}
    first, first_report = vlm.generate(**inputs, **settings), vlm.last_report
    second, second_report = vlm.generate(**inputs, **settings), vlm.last_report
    assert torch.equal(first, second)
    assert first_report is not None and second_report is not None
    for a, b in zip(first_report.images, second_report.images, strict=True):
        assert torch.equal(a.plan.keep, b.plan.keep) and torch.equal(a.plan.budgets, b.plan.budgets)


def test_a_prompts_sequence_does_not_depend_on_its_batch_position() -> None:
    row = host_row("llava_next")
    vlm = _vlm(row, "hero")
    settings = {"max_new_tokens": 3, "do_sample": False}
    alone = {}
    for i in range(3):
        inputs, queries = _inputs(row, (i,))
        alone[i] = vlm.generate(**inputs, **settings, query=queries)[0, inputs["input_ids"].shape[1] :]
    for order in ORDERS:
        inputs, queries = _inputs(row, order)
        out = vlm.generate(**inputs, **settings, query=queries)[:, inputs["input_ids"].shape[1] :]
        for position, prompt in enumerate(order):
            assert torch.equal(out[position], alone[prompt]), (order, prompt)
