"""Captured CUDA graphs of a CLIP scorer's image tower (issue 17, item 3).

At batch size 1 the scorer's image tower is launch-bound on a GPU: CLIP ViT-L/14-336 on 4 tiles takes 14.5 ms
eager and 4.6 ms replayed from a captured CUDA graph on an H200 (``torch.compile``: 5.7 ms after 28 s of
compiling; docs/design GPU.md). :class:`ImageGraphs` keeps, per scorer, one graph per input (shape, dtype,
device) that actually occurs:

- **capture** (first call of a shape): the tower runs ``WARMUP_RUNS`` times on a side stream (lazy cuBLAS and
  allocator set-up stays out of the graph, as the PyTorch docs do), then once under ``torch.cuda.graph`` on a
  static input buffer; the graph keeps the static output;
- **replay** (every call of that shape, the first one included): the pixels are copied into the static input,
  the graph replays, the static output is cloned out;
- at most ``GRAPH_LIMIT`` graphs: a shape first seen when the table is full runs eagerly (no eviction, so a
  stream of new shapes never pays a capture per call);
- the graphs are dropped when the model's state (dtype, device, first weight's storage) changes;
- one lock per scorer guards capture and replay (the static buffers are shared; a replay is not reentrant);
  an event makes the next replay wait until the previous one's output was cloned, whatever streams the
  calling threads use;
- anything raised while warming up, capturing or replaying logs ONE warning naming the scorer and the reason,
  and the tower runs eagerly from then on for that scorer (same answers).

Graphs apply only where they cannot change the meaning of the call (:func:`graphs_apply`): CUDA pixels, the
model in eval mode, autograd off, and no capture of the caller's own under way. Everything else is eager.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GRAPH_LIMIT", "WARMUP_RUNS", "CapturedTower", "ImageGraphs", "capture", "graphs_apply"]

_LOG = logging.getLogger(__name__)

#: Captured graphs each scorer keeps (one per input shape, dtype and device); later shapes run eagerly.
GRAPH_LIMIT = 8
#: Eager runs on a side stream before a capture (the PyTorch docs' warm-up).
WARMUP_RUNS = 3

Tower = Callable[[Tensor], Tensor]


def graphs_apply(model: nn.Module, pixels: Tensor) -> bool:
    """Whether ``model``'s image tower may run on ``pixels`` under a captured graph.

    Only on CUDA, with the model in eval mode (no dropout: a graph replays fixed random numbers), autograd off
    (``torch.is_grad_enabled()`` false and the pixels not requiring grad: a graph records no backward), autocast
    off (a capture under autocast would read its cached weight casts, freed when the caller's block exits), and no
    stream capture under way on the current stream (the caller is capturing a graph of its own: the eager
    kernels then go into it).
    """
    return (
        pixels.is_cuda
        and not model.training
        and not torch.is_grad_enabled()
        and not pixels.requires_grad
        and not torch.is_autocast_enabled("cuda")
        and not torch.cuda.is_current_stream_capturing()
    )


class CapturedTower:
    """One graph of the tower for one input (shape, dtype, device): static input, static output, replay.

    Args:
        tower: (V, 3, S_h, S_w) pixels -> (V, E) embeddings, eager.
        pixels: an example input on a CUDA device; its values are copied into the static input.
    """

    def __init__(self, tower: Tower, pixels: Tensor) -> None:
        self.static_input = pixels.detach().clone()  # (V, 3, S_h, S_w)
        current = torch.cuda.current_stream(pixels.device)
        side = torch.cuda.Stream(device=pixels.device)  # type: ignore[no-untyped-call]
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                tower(self.static_input)
        current.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # Captured on our own side stream (torch.cuda.graph's default stream is one per process, made on the first
        # device it meets); thread_local: only this thread's unsafe calls (syncs) invalidate the capture, other
        # threads (bench threads, the host model) keep running.
        with torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
            self.static_output = tower(self.static_input)  # (V, E), kept: the graph writes it on every replay
        self._done: torch.cuda.Event | None = None

    def __call__(self, pixels: Tensor) -> Tensor:
        """Copy ``pixels`` in, replay, and return a clone of the output (made in the caller's mode). Under the lock."""
        with torch.cuda.device(pixels.device):
            stream = torch.cuda.current_stream()
            if self._done is not None:
                stream.wait_event(self._done)  # the previous replay's output was cloned (maybe on another stream)
            with torch.inference_mode():  # the static buffers are inference tensors (captured under inference mode)
                self.static_input.copy_(pixels)
                self.graph.replay()
            out = self.static_output.clone()  # (V, E); outside the block: a normal tensor unless the caller is in
            # inference mode, as the eager tower's output would be
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record(stream)
            self._done = done
        return out

    def wait(self) -> None:
        """Block until the last replay (and its clone) finished, before the graph and its memory are dropped."""
        if self._done is not None:
            self._done.synchronize()


def capture(tower: Tower, pixels: Tensor) -> CapturedTower:
    """Warm up and capture ``tower`` for ``pixels``'s shape, dtype and device (tests replace this function)."""
    with torch.inference_mode(), torch.cuda.device(pixels.device):
        return CapturedTower(tower, pixels)


class ImageGraphs:
    """A scorer's captured image-tower graphs: a bounded table keyed by input (shape, dtype, device).

    Args:
        owner: the scorer's name, for the warning.
        limit: how many graphs to keep (``GRAPH_LIMIT``).

    Attributes:
        captures: how many graphs were captured so far (a replay of a known shape does not count).
        failed: true once a warm-up, capture or replay raised; the tower then runs eagerly.
    """

    def __init__(self, owner: str, limit: int = GRAPH_LIMIT) -> None:
        self.owner = owner
        self.limit = limit
        self.captures = 0
        self.failed = False
        self._graphs: dict[tuple[Any, ...], CapturedTower] = {}
        self._state: Hashable = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        """A copy (``copy.deepcopy`` of the scorer, pickling) starts with no graphs and a lock of its own."""
        return (ImageGraphs, (self.owner, self.limit))

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, tower: Tower, pixels: Tensor, state: Hashable) -> Tensor:
        """``tower(pixels)``, replayed from the graph of this input's shape (captured on first sight).

        Args:
            tower: the eager image tower, (V, 3, S_h, S_w) -> (V, E).
            pixels: (V, 3, S_h, S_w) on a CUDA device, in the model's dtype; :func:`graphs_apply` holds.
            state: the model's state (dtype, device, ...); the graphs are dropped when it changes.

        Returns:
            (V, E), equal to ``tower(pixels)`` within the dtype's rounding (the same kernels, replayed).
        """
        if not self.failed:
            key = (tuple(pixels.shape), pixels.dtype, pixels.device)
            try:
                with self._lock:
                    if not self.failed:
                        if state != self._state:
                            self._drop()
                            self._state = state
                        graph = self._graphs.get(key)
                        if graph is None and len(self._graphs) < self.limit:
                            graph = capture(tower, pixels)
                            self._graphs[key] = graph
                            self.captures += 1
                        if graph is not None:
                            return graph(pixels)
            except Exception as exc:  # never fail a call: eager from now on
                self._disable(exc)
        return tower(pixels)

    def _drop(self) -> None:
        """Forget every graph (after its last replay finished). Under the lock."""
        for graph in self._graphs.values():
            graph.wait()
        self._graphs.clear()

    def _disable(self, exc: BaseException) -> None:
        with self._lock:
            if self.failed:
                return
            self.failed = True
            try:
                self._drop()
            except Exception:  # the device may be in an error state; the graphs go anyway
                self._graphs.clear()
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
        _LOG.warning("%s: CUDA graphs of the image tower turned off, running eagerly (%s)", self.owner, reason)
