"""Time per stage: wall-clock on the CPU, CUDA events on a GPU (no device synchronise per stage)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["StageTimer", "Timings"]


class Timings(dict[str, float]):
    """Seconds per stage. On CUDA the stages' events are read when the timings are first read (waiting for the
    last of them then), never while the call runs; every reading method sees resolved values."""

    def __init__(self, timer: StageTimer | Any = None) -> None:
        super().__init__()
        if isinstance(timer, StageTimer) or timer is None:
            self._timer = timer
        else:  # an iterable of pairs (dataclasses.asdict rebuilds a dict subclass from its items)
            self._timer = None
            dict.update(self, timer)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled and deep-copied as the plain dict of resolved seconds (the timer holds a lock and events)."""
        return (dict, (dict(self.items()),))

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, float]:
        return dict(self.items())

    def _ready(self) -> None:
        if self._timer is not None:
            self._timer.resolve()

    def _store(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to stage ``name`` (the timer's writes, which must not wait for the events)."""
        dict.__setitem__(self, name, dict.get(self, name, 0.0) + seconds)

    def __getitem__(self, key: str) -> float:
        self._ready()
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[str]:
        self._ready()
        return super().__iter__()

    def __len__(self) -> int:
        self._ready()
        return super().__len__()

    def __contains__(self, key: object) -> bool:
        self._ready()
        return super().__contains__(key)

    def __repr__(self) -> str:
        self._ready()
        return super().__repr__()

    def __eq__(self, other: object) -> bool:
        self._ready()
        return super().__eq__(other)

    __hash__ = None

    def get(self, key: str, default: Any = None) -> Any:
        self._ready()
        return super().get(key, default)

    def keys(self) -> Any:
        self._ready()
        return super().keys()

    def values(self) -> Any:
        self._ready()
        return super().values()

    def items(self) -> Any:
        self._ready()
        return super().items()

    def copy(self) -> dict[str, float]:
        self._ready()
        return dict(super().items())


class StageTimer:
    """Accumulates seconds per named stage into ``seconds`` (a ``Timings`` dict).

    On the CPU each stage is ``time.perf_counter`` around it. On CUDA a stage is the time between two CUDA
    events recorded on the device's current stream when the stage starts and ends, so asynchronous kernels are
    counted in the stage that launched them without a device synchronise per stage: the events are read (one
    wait, for the last event) only when ``seconds`` is first read after the call.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self._device = torch.device(device) if device is not None else None
        self._cuda = self._device is not None and self._device.type == "cuda"
        self._pending: list[tuple[str, Any, Any]] = []
        self._lock = threading.Lock()
        self.seconds = Timings(self)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if not self._cuda:
            start = time.perf_counter()
            try:
                yield
            finally:
                with self._lock:
                    self._add(name, time.perf_counter() - start)
            return
        begin = self._event()
        try:
            yield
        finally:
            end = self._event()
            with self._lock:
                self._pending.append((name, begin, end))

    def resolve(self) -> None:
        """Read the recorded CUDA events into ``seconds`` (waits for the last one; nothing to do on the CPU)."""
        with self._lock:  # held throughout: a second reader returns only once every value is stored
            pending, self._pending = self._pending, []
            for name, begin, end in pending:
                end.synchronize()
                self._add(name, begin.elapsed_time(end) / 1e3)

    def _add(self, name: str, seconds: float) -> None:
        self.seconds._store(name, seconds)

    def _event(self) -> Any:
        with torch.cuda.device(self._device):
            event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            event.record(torch.cuda.current_stream(self._device))
        return event
