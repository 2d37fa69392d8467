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

from hero_core import HeroError

T = TypeVar("T")


#: CLIP ViT-L/14-336's vision tower (LLaVA-NeXT's encoder and HERO's relevance model), as config fields.
VIT_L14_336: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
}
#: ... and its text tower.
CLIP_TEXT_L14: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
}


def random_model(
    config: Any, device: torch.device, dtype: torch.dtype, *, auto: str = "AutoModel", attn: str | None = None
) -> torch.nn.Module:
    """A transformers model built from ``config`` with random weights (created in ``dtype``), in eval mode."""
    import transformers

    factory = getattr(transformers, auto)
    options: dict[str, Any] = {"dtype": dtype}
    if attn is not None:
        options["attn_implementation"] = attn
    with torch.device(device):
        model: torch.nn.Module = factory.from_config(config, **options)
    return model.eval()


def results_dir() -> Path:
    """``benchmarks/results`` when run from a checkout of the project, else ``./hero-bench-results``."""
    here = Path.cwd() / "benchmarks"
    return here / "results" if here.is_dir() else Path.cwd() / "hero-bench-results"


def output_folder(out: Path | None, write_results: bool) -> Path:
    """Where a benchmark writes: ``out`` when given; else, asked with ``write_results``, ``results_dir()``
    (a checkout's tracked ``benchmarks/results``, whose README is then rewritten); else a folder no checkout
    tracks: ``build/bench-results`` inside a checkout (``build/`` is git-ignored), ``./hero-bench-results``
    elsewhere."""
    if out is not None:
        return out
    folder = results_dir()
    if write_results or folder.name != "results":
        return folder
    return Path.cwd() / "build" / "bench-results"


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
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; HeroError for a device this machine lacks."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HeroError.field("--device", "cuda", "a device this machine has", "No CUDA device is visible; use cpu.")
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
    if folder.name == "results" and folder.parent.name == "benchmarks":
        _write_readme(folder)
    return path


_README_HEAD = """# Benchmarks

Each benchmark lives in `hero_adapters.bench` and runs with `hero bench <name>` or
`python benchmarks/bench_<name>.py`; models are built from configs with random weights (nothing is
downloaded). Every record in `results/` names the machine it was measured on; this page is rewritten
from those records after each run, so it always shows the latest table of each.
"""


def _write_readme(results: Path) -> None:
    """benchmarks/README.md: the fixed introduction, then every results/*.md table."""
    tables = [table.read_text() for table in sorted(results.glob("*.md"))]
    (results.parent / "README.md").write_text("\n".join([_README_HEAD, *tables]))


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def progress(items: Sequence[T], desc: str) -> Iterable[T]:
    """A progress bar over ``items`` on a terminal (tqdm when installed), the plain items otherwise."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    bar: Iterable[T] = tqdm(items, desc=desc, leave=False, disable=None)
    return bar
