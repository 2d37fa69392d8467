"""Helpers the robustness tests share: the one accepted failure, and the model's state to compare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from hero_adapters.testing import hook_snapshot
from hero_core import HeroError

T = TypeVar("T")


def result_or_hero_error(call: Callable[[], T]) -> T | HeroError:
    """``call()``'s value, or the ``HeroError`` it raised; any other exception propagates (the test fails)."""
    try:
        return call()
    except HeroError as error:
        refused = error
    assert str(refused).strip(), "a HeroError must say what was wrong"
    return refused


def state(model: torch.nn.Module) -> tuple[Any, dict[str, Any]]:
    """Hooks and attribute names of every module, and the top-level attributes by identity."""
    return hook_snapshot(model), {key: id(value) for key, value in vars(model).items()}
