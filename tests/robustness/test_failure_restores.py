"""A call that fails half way leaves the model exactly as before: the same hooks and attributes on every module
(``hook_snapshot``, ``vars(model)``), the same next output of the host (logits equal), and the same next plan."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from adapters.hosts import HOSTS, HostRow, assert_same, generate, host_row
from hero_adapters import HeroVLM
from hero_adapters.towers import hooks

from .common import state


class Boom(RuntimeError):
    pass


def _raise(error: type[BaseException]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise error("raised on purpose, half way through the call")

    return call


def _language_model(row: HostRow) -> torch.nn.Module:
    return row.model.model.language_model


@pytest.fixture(params=sorted(HOSTS))
def row(request: pytest.FixtureRequest) -> HostRow:
    return host_row(request.param)


# (id, what raises, the exception, the call that fails)
FAULTS = [
    ("scorer-raises", "scorer", Boom, "generate"),
    ("scorer-interrupted", "scorer", KeyboardInterrupt, "plan"),
    ("hook-interrupted", "hook", KeyboardInterrupt, "generate"),
    ("hook-interrupted-plan", "hook", KeyboardInterrupt, "plan"),
    ("hook-raises", "hook", Boom, "plan"),
    ("llm-out-of-memory", "llm", torch.cuda.OutOfMemoryError, "generate"),
    ("llm-interrupted", "llm", KeyboardInterrupt, "generate"),
]


@pytest.mark.parametrize(("where", "error", "call"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_a_call_that_fails_half_way_leaves_the_model_as_before(
    row: HostRow, where: str, error: type[BaseException], call: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, images = row.prompts()[0]
    inputs = row.inputs([text], images)
    vlm = HeroVLM(row.model, row.pruner(0.4), lambda views, text: views.mean(dim=(1, 2, 3)), processor=row.processor)
    before, answer = state(row.model), generate(row.model, inputs)
    plan_before = vlm.plan(**inputs, query="what")
    failing = HeroVLM(row.model, row.pruner(0.4), _raise(error), processor=row.processor) if where == "scorer" else vlm
    if where == "hook":
        monkeypatch.setattr(hooks, "_query_rows", _raise(error))
    elif where == "llm":
        monkeypatch.setattr(type(_language_model(row)), "forward", _raise(error))
    method = failing.plan if call == "plan" else lambda **kw: failing.generate(**kw, max_new_tokens=2, do_sample=False)
    with pytest.raises(error, match="on purpose"):
        method(**inputs, query="what")
    monkeypatch.undo()
    assert state(row.model) == before
    assert hooks._ACTIVE.get() == ()  # no recording is left active in this context
    assert_same(answer, generate(row.model, inputs), atol=0.0)
    plan_after = vlm.plan(**inputs, query="what")
    for first, second in zip(plan_before.images, plan_after.images, strict=True):
        assert torch.equal(first.plan.keep, second.plan.keep)


def test_a_failure_inside_attach_leaves_the_model_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    row = host_row("llava_next")
    inputs = row.batch()
    before, answer = state(row.model), generate(row.model, inputs)
    vlm = HeroVLM(row.model, row.pruner(0.4), processor=row.processor)
    monkeypatch.setattr(type(_language_model(row)), "forward", _raise(torch.cuda.OutOfMemoryError))
    with pytest.raises(torch.cuda.OutOfMemoryError), vlm.attach():
        generate(row.model, inputs)
    monkeypatch.undo()
    assert state(row.model) == before
    assert_same(answer, generate(row.model, inputs), atol=0.0)
