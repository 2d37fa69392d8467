"""Shared helpers for the benchmarks: machine description, timing, where results go, JSON + Markdown output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from hero_core import HeroError

from .._paths import check_folder

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


#: Where a benchmark writes unless told otherwise: a folder of the current directory that no checkout tracks.
DEFAULT_OUT = "hero-bench-results"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2, as everywhere in the ``hero`` command."""

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"\s*[\r\n]+\s*", " ", message).strip()  # an echoed argument may hold line breaks
        self.exit(2, f"hero: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default in its help (flags and None excepted)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in text or "(default:" in text:
            return text
        return f"{text} (default: %(default)s)"


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--out DIR`` (default ``./hero-bench-results``) or, for maintainers, ``--write-results``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"folder for the JSON and Markdown results (default: ./{DEFAULT_OUT})",
    )
    where.add_argument(
        "--write-results",
        action="store_true",
        help="maintainers: update the checkout's tracked records instead (benchmarks/results/ and "
        "benchmarks/README.md; run from the checkout's root)",
    )


def output_folder(out: Path | None, write_results: bool) -> Path:
    """Where a benchmark writes: the checkout's tracked ``benchmarks/results`` when asked with ``write_results``,
    else ``out``, else ``./hero-bench-results``; never a tracked folder unless asked.

    Raises:
        HeroError: ``write_results`` outside a checkout's root, or ``out`` an existing file (checked before any
            benchmark work starts).
    """
    if write_results:
        folder = Path.cwd() / "benchmarks" / "results"
        if not _is_tracked_results(folder):
            raise HeroError.field(
                "--write-results",
                str(Path.cwd()),
                "the root of a hero checkout (pyproject.toml, benchmarks/results/)",
                "Run it from the checkout's root, or pass --out DIR.",
            )
        return folder
    folder = Path(DEFAULT_OUT) if out is None else out
    check_folder("--out", folder)
    return folder if folder.is_absolute() else Path.cwd() / folder


def _is_tracked_results(folder: Path) -> bool:
    """``folder`` is a checkout's ``benchmarks/results`` (whose README the benchmarks keep up to date)."""
    checkout = folder.parent.parent
    return (
        folder.name == "results"
        and folder.parent.name == "benchmarks"
        and folder.is_dir()
        and (checkout / "pyproject.toml").is_file()
    )


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


def write_results(name: str, payload: dict[str, Any], table: list[str], folder: Path) -> Path:
    """Write ``<name>.json`` and a Markdown table ``<name>.md`` (with the machine) into ``folder``; in a checkout's
    ``benchmarks/results`` (``--write-results``, or ``--out`` naming it) also rewrite ``benchmarks/README.md``."""
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
    if _is_tracked_results(folder):
        _write_readme(folder)
    return path


_README_HEAD = """# Benchmarks

Each benchmark lives in `hero_adapters.bench` and runs with `hero bench <name>` or
`python benchmarks/bench_<name>.py`; models are built from configs with random weights (nothing is
downloaded). Every record in `results/` names the machine it was measured on. A run writes into
`./hero-bench-results` (or `--out DIR`); `--write-results`, run from the checkout's root, updates
`results/` and rewrites this page from those records, so it always shows the latest table of each.

The benchmarks: `core` (planning against one encoder forward), `encode` (HERO's hooks against the plain
encoder and eager attention), `prefill` (prefill time against the FLOPs model, HERO's cost against the time
saved), `threads` (two threads sharing one model) and `e2e` (the host's own `model.generate` against
`HeroVLM.generate` end to end: TTFT, tokens/s, peak memory, HERO's stages, the identity at keep ratio 1 and
four threads sharing the model; a CPU run uses a narrow model, a CUDA run (`e2e-cuda`) the LLaVA-NeXT-7B
shape) and, in vLLM's environment, `serve` (the vLLM plugin's offline throughput and KV blocks per request at keep
ratio 1 / 0.4 / 0.2 on one engine). Documentation: `docs/benchmarks.md`.
"""


def readme_text(results: Path) -> str:
    """What ``benchmarks/README.md`` holds: the fixed introduction, then every ``results/*.md`` table."""
    tables = [table.read_text() for table in sorted(results.glob("*.md"))]
    return "\n".join([_README_HEAD, *tables])


def _write_readme(results: Path) -> None:
    (results.parent / "README.md").write_text(readme_text(results))


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
