"""Putting small host values (indices, budgets) on the device without a host sync."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["to_device"]


def to_device(
    value: Tensor | Sequence[int] | Sequence[float], device: torch.device | str, dtype: torch.dtype
) -> Tensor:
    """``value`` (host data) as a ``dtype`` tensor on ``device``.

    A plain ``torch.tensor(data, device="cuda")`` or ``host.to("cuda")`` is a blocking copy: the host waits
    for the device's whole queue (a host sync). This goes through pinned memory with a non-blocking copy
    instead, which the device runs in order with its queue; on the CPU it is the tensor itself.
    """
    device = torch.device(device)
    if isinstance(value, Tensor) and value.device != torch.device("cpu"):
        return value.to(device, dtype)  # already on a device
    host = value.to(dtype) if isinstance(value, Tensor) else torch.tensor(value, dtype=dtype)
    if device.type == "cpu":
        return host.to(device, non_blocking=True)  # the tensor itself
    if device.type != "cuda":
        return host.to(device)  # other accelerators: a plain (blocking) copy
    if isinstance(value, Tensor) and host.data_ptr() == value.data_ptr() and value.is_pinned():
        host = host.clone()  # the caller's own pinned buffer: copy from a private one
    return host.pin_memory().to(device, non_blocking=True)
