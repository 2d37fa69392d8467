"""Shared helpers for the benchmarks: machine description, timing, JSON + Markdown output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def results_dir() -> Path:
    """``benchmarks/results`` when run from a checkout of the project, else ``./hero-bench-results``."""
    here = Path.cwd() / "benchmarks"
    return here / "results" if here.is_dir() else Path.cwd() / "hero-bench-results"


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    return torch.device(name)


def write_results(name: str, payload: dict[str, Any], table: list[str], out: Path | None = None) -> Path:
    """Write ``<name>.json`` and a Markdown table ``<name>.md`` (with the machine) into the results folder."""
    folder = out or results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    host = payload["machine"]
    lines = [
        f"### {name}",
        "",
        f"{payload['what']}",
        "",
        f"Machine: {host.get('gpu') or host['cpu']} ({host['device']}, {host['torch_threads']} torch threads), "
        f"torch {host['torch']}, transformers {host.get('transformers', '-')}; measured {payload['measured_at']}.",
        "",
        *table,
        "",
    ]
    (folder / f"{name}.md").write_text("\n".join(lines))
    return path


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def progress(items: Sequence[T], desc: str) -> Iterable[T]:
    """A progress bar over ``items`` on a terminal (tqdm when installed), the plain items otherwise."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False, disable=None)
