"""Counting host-device syncs on any machine: ``count_host_syncs`` (exported by ``hero_core.testing``).

A host sync is a point where the CPU waits for the accelerator to hand back a value it computed: ``.item()``,
``.tolist()``, ``bool(tensor)``, ``.cpu()``, and every op whose output shape depends on the data
(``nonzero``, boolean-mask indexing, ``unique`` ...). On CUDA, ``torch.cuda.set_sync_debug_mode`` sees the
real ones; on a CPU-only machine nothing syncs, so this counter follows where each tensor lives instead:

- a tensor made before the block (model weights, the caller's inputs) or by an op on such a tensor lives
  "on the device", as it would on a GPU;
- a tensor made by ``.cpu()``, ``.numpy()``, ``.to("cpu")``, a factory without ``device=`` (``torch.tensor``,
  ``torch.arange`` ...) or an op on host tensors only lives "on the host";
- a read (or a data-dependent-shape op) of a device tensor counts one sync; of a host tensor, none;
- ``torch.cuda.synchronize()`` counts one (``HeroVLM``'s stage timer calls it around each stage on CUDA);
- a copy from the host to the device counts one too (a blocking copy waits for the device's queue):
  ``torch.tensor(data, device=...)``, ``host.to(device)``, indexing a device tensor with a Python list.
  ``host.to(device, non_blocking=True)`` (what ``hero_core.to_device`` does, from pinned memory) does not.

What it cannot see: ``.to(some_tensor.device)`` when the two tensors live apart (on a GPU a real copy; here
both are the CPU). It takes ``.to(device)`` of a host tensor in hero's code for a move to the device, and in
the host model's code (which moves its own helpers next to its data) for a no-op. The ``gpu`` tests check the
same claims with CUDA's own sync detection.
"""

from __future__ import annotations

import traceback
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["HostSyncs", "count_host_syncs"]

_READS = frozenset(
    {
        "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__complex__", "numpy", "cpu",
        "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "equal", "allclose",
        "is_nonzero", "bincount", "__format__", "__repr__",
    }
)  # fmt: skip
_FACTORIES = frozenset(
    {
        "tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "linspace", "logspace", "eye",
        "rand", "randn", "randint", "randperm", "scalar_tensor", "from_numpy",
    }
)  # fmt: skip
_INDEXING = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_"})
_SKIP = ("/torch/", "/_syncs.py", "/contextlib.py", "/functools.py")


@dataclass
class HostSyncs:
    """What ``count_host_syncs`` saw: one ``(op, where, by)`` per sync, ``by`` being ``"hero"`` when the
    innermost caller is hero's own code (``hero_core`` / ``hero_adapters``) and ``"host"`` otherwise
    (the host model's code, e.g. transformers)."""

    calls: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Every sync seen, hero's and the host's."""
        return len(self.calls)

    @property
    def hero(self) -> int:
        """The syncs made by hero's own code."""
        return sum(1 for call in self.calls if call[2] == "hero")

    def table(self) -> str:
        """One line per distinct (op, where, by), most frequent first (for assertion messages)."""
        counted = Counter(self.calls).most_common()
        return "\n".join(f"{n:4d}  {op:<14} {by:<5} {where}" for (op, where, by), n in counted)


class _Counter(TorchFunctionMode):
    def __init__(self, record: HostSyncs) -> None:
        super().__init__()
        self.record = record
        self._host: dict[int, weakref.ref[torch.Tensor]] = {}

    def _on_host(self, tensor: torch.Tensor) -> bool:
        ref = self._host.get(id(tensor))
        return ref is not None and ref() is tensor

    def _mark(self, tensor: torch.Tensor) -> None:
        key = id(tensor)
        self._host[key] = weakref.ref(tensor, lambda _, key=key: self._host.pop(key, None))  # type: ignore[misc]

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_device = [t for t in tensors if not self._on_host(t)]
        target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
        to_cpu = name == "to" and isinstance(target, str) and target == "cpu"
        to_device = name == "to" and isinstance(target, torch.device) and (bool(on_device) or _hero_calls())
        if on_device and self._syncs(name, args, kwargs, to_cpu):
            self._note(name)
        elif self._uploads(name, args, kwargs, tensors, on_device, to_device):
            self._note(f"{name} (to device)")
        out = func(*args, **kwargs)
        if to_device:
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor):
                    self._host.pop(id(tensor), None)  # moved to "the device" (a no-op copy on a CPU machine)
            return out
        if name in ("cpu", "numpy", "from_numpy") or to_cpu:
            host = True
        elif name in _FACTORIES and not tensors:
            host = kwargs.get("device") is None
        else:
            host = bool(tensors) and not on_device
        if host:
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor):
                    self._mark(tensor)
        return out

    def _uploads(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        tensors: list[torch.Tensor],
        on_device: list[torch.Tensor],
        to_device: bool,
    ) -> bool:
        if to_device:  # host -> device, blocking unless asked not to be
            return bool(tensors) and not on_device and not kwargs.get("non_blocking", False)
        if name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            return True
        if name in _INDEXING and len(args) > 1 and on_device and args[0] is on_device[0]:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            return any(isinstance(i, list) for i in index)
        return False

    def _syncs(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], to_cpu: bool) -> bool:
        if name in _READS or to_cpu:
            return True
        if name in _INDEXING and len(args) > 1:
            index = args[1] if isinstance(args[1], (tuple, list)) else (args[1],)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and not self._on_host(i) for i in index)
        if name == "where":
            return len(args) + len(kwargs) == 1
        if name == "repeat_interleave":
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            return isinstance(repeats, torch.Tensor) and "output_size" not in kwargs
        return False

    def _note(self, name: str) -> None:
        frames = _callers()
        inner = frames[-1] if frames else None
        ours = [f for f in frames if _is_hero(f)]
        by = "hero" if inner is not None and ours and inner is ours[-1] else "host"
        at = ours[-1] if ours else inner
        where = "?" if at is None else f"{at.filename.rsplit('/src/', 1)[-1]}:{at.lineno} {at.name}"
        self.record.calls.append((name, where, by))


def _callers() -> list[traceback.FrameSummary]:
    """The calling frames, outermost first, without torch's and this module's own."""
    return [f for f in traceback.extract_stack() if not any(part in f.filename for part in _SKIP)]


def _is_hero(frame: traceback.FrameSummary) -> bool:
    return "/hero_core/" in frame.filename or "/hero_adapters/" in frame.filename


def _hero_calls() -> bool:
    """Whether the innermost caller outside torch is hero's own code."""
    frames = _callers()
    return bool(frames) and _is_hero(frames[-1])


@contextmanager
def count_host_syncs() -> Iterator[HostSyncs]:
    """Count the host-device syncs of the code in the block, on any device (see the module docstring).

    Examples:
        >>> with count_host_syncs() as syncs:        # doctest: +SKIP
        ...     pruner.plan(tiles)
        >>> syncs.count                               # doctest: +SKIP
        1
    """
    record = HostSyncs()
    counter = _Counter(record)
    synchronize = torch.cuda.synchronize

    def counted(*args: Any, **kwargs: Any) -> None:  # an explicit device synchronisation (e.g. a stage timer)
        counter._note("synchronize")
        synchronize(*args, **kwargs)

    torch.cuda.synchronize = counted
    try:
        with counter:
            yield record
    finally:
        torch.cuda.synchronize = synchronize
