"""Wall-clock time per stage, with the device synchronised so GPU work is not missed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["StageTimer"]


class StageTimer:
    """Accumulates ``time.perf_counter`` seconds per named stage into ``seconds``.

    On CUDA the device is synchronised before and after each stage, so asynchronous kernels are counted
    in the stage that launched them.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self._cuda = torch.device(device).type == "cuda" if device is not None else False

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize()
