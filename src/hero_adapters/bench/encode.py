"""Cost of HERO's encoder-side work through the library's own path, on real-size vision towers.

Each tower (``--tower``, default ``all``) sits in a real transformers host built from configs by
``hero_adapters.testing`` (the vision tower at its real size, a tiny LLM, random weights, seeded; nothing
is downloaded):

- ``clip-l14-336``: LLaVA-NeXT with CLIP ViT-L/14-336 (24 layers, width 1024, 16 heads, MLP 4096, 336 px,
  patch 14, quick_gelu). V = 5 views: a 672 x 672 image (a 2 x 2 anyres grid) plus the base view;
  N = 576 tokens per view.
- ``internvit-300m``: InternVL with an InternViT-300M-shaped tower (InternVL 2.5 / 3: 24 layers, width
  1024, 16 heads, MLP 4096, 448 px, patch 14, LayerNorm, no q/k norm). V = 5 views: an 896 x 896 image
  (4 tiles) plus the thumbnail; N = 256 LLM tokens per view after the 2 x 2 pixel shuffle.
- ``siglip-so400m``: LLaVA-OneVision with SigLIP-so400m (27 layers, width 1152, 16 heads, MLP 4304, 384 px,
  patch 14, ``vision_use_head=False``; feature layer -1, strategy ``full``). V = 5 views: a 768 x 768 image
  (a 2 x 2 anyres grid of the builder's pinpoints, multiples of 384 up to 3 x 3) plus the base view; N = 729
  tokens per view. SigLIP has no CLS: HERO records the mean-token stand-in query.
- ``qwen2.5-vl``: Qwen2.5-VL with Qwen2.5-VL-7B's vision tower (32 blocks, width 1280, 16 heads, gated MLP 3420,
  patch 14, window attention in 112-px windows except the full-attention blocks 7, 15, 23, 31). ONE view: a
  1008 x 672 image through the host's image processor (grid 48 x 72 patches, packed, in window order inside the
  tower), 864 LLM tokens after the 2 x 2 merge; ``--views`` does not apply. No CLS: the mean-token stand-in query,
  planned by ``presets.hero_native`` (``hero_adapters.adapter.preset_options``: low layer 7, high layer 31).
  Mode (c) does not exist there: the host's vision attention returns no maps.

Three modes per tower, on the same pixels:

- ``a_host``:  the host's own image-feature call, ``model.model.get_image_features(...)`` (SDPA).
- ``b_hero``:  ``adapter.encode(...)``, which runs that same host call under HERO's scoped CLS-attention
               hooks and describes every image, then ``Pruner.plan`` per image (``presets.hero(0.2)``, the
               paper's layers: low 5-8, high 21; on InternViT these are CLIP-L's defaults applied to a
               24-layer tower; on SigLIP-so400m ``presets.hero(0.2, depth=27)``, the paper's layers scaled
               to 27 layers by ``hero_core.presets.scale_layers``: low 6-9, high 24; on Qwen2.5-VL
               ``presets.hero_native(0.2, depth=32, full_attention=(7, 15, 23, 31))``). A fixed relevance
               vector (per view; per region on Qwen) stands in for the text scorer, which is not timed here
               (``hero bench prefill`` times it).
- ``c_eager``: the peers' route: the host call with eager attention and ``output_attentions=True`` (every
               layer's full map). ``--eager auto`` skips it when the maps would not fit in memory.

Time: one process per run builds the hosts and runs the modes round-robin after a warm-up (which also
checks that (b)'s features are (a)'s and its CLS rows are the eager maps' rows; SigLIP's stand-in rows are
recomputed from the eager run's hidden states), so load drift hits all
modes alike; the median of ``--repeats`` is reported. Peak memory: on CPU one fresh subprocess per mode
(process peak RSS), because allocator caches make in-process RSS unfair; on CUDA in the same process
(``torch.cuda.max_memory_allocated`` counts live tensors, not the cache: the mode's own model and inputs plus
the most allocated above them during its call), and the hosts are built on the device, so a CUDA run takes
well under a minute. Default dtype: bfloat16 on CUDA, float32 on CPU. Planning alone (``Pruner.plan`` on the
encoded views) is timed against (a)'s median.
Targets: (b) / (a) <= 1.05 in time and <= 1.10 in peak memory; planning < 1% of (a).

Results: ``encode.json`` + ``encode.md`` (suffixed ``-bfloat16`` / ``-cuda`` / ``-<tower>`` when those are
chosen). They go to ``./hero-bench-results``, or ``--out DIR``; ``--write-results`` updates the checkout's
tracked ``benchmarks/results`` and ``benchmarks/README.md`` instead.

Usage: ``hero bench encode [--tower all|clip-l14-336|internvit-300m|siglip-so400m|qwen2.5-vl] [--device auto|cpu|cuda]
[--dtype float32|bfloat16 (default: bfloat16 on CUDA)] [--repeats 3] [--write-results | --out DIR]``
   or: ``python benchmarks/bench_encode.py [...]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
from typing import Any

import torch

from hero_core import HeroError

from .._progress import progress
from ._common import HelpFormatter, Parser, add_output_options, machine, now, output_folder, pick_device, write_results

# The towers, the modes and the measurements live in two private modules; their names are re-exported here, where
# the bench's callers and tests read (and patch) them: main() and run_tower() look measure_memory and
# memory_in_subprocess up in this module at call time.
from ._encode_cases import (
    INTERNVIT_300M,
    KEEP_RATIO,
    MODES,
    QWEN2_5_VL_7B_VISION,
    SIGLIP_SO400M,
    TINY_LLM,
    TINY_VISION,
    TOWERS,
    Case,
    Tower,
    build_host,
    eager_call,
    hero_call,
    host_call,
    image_size,
    make_case,
    runner,
)
from ._encode_cases import check_host as _check_host  # noqa: F401  (the tests check a build's fields through these)
from ._encode_cases import check_spec as _check_spec  # noqa: F401
from ._encode_measure import (
    available_bytes,
    eager_maps_bytes,
    measure_memory,
    measure_time,
    reset_peak_rss,
    rss_bytes,
)

__all__ = [
    "GIB",
    "INTERNVIT_300M",
    "KEEP_RATIO",
    "MAX_THREADS",
    "MEMORY_TARGET",
    "MODES",
    "PLAN_TARGET",
    "QWEN2_5_VL_7B_VISION",
    "SIGLIP_SO400M",
    "TIME_TARGET",
    "TINY_LLM",
    "TINY_VISION",
    "TOWERS",
    "Case",
    "Tower",
    "available_bytes",
    "build_host",
    "eager_call",
    "eager_maps_bytes",
    "hero_call",
    "host_call",
    "image_size",
    "main",
    "make_case",
    "measure_memory",
    "measure_time",
    "memory_in_subprocess",
    "parse",
    "reset_peak_rss",
    "rss_bytes",
    "run_tower",
    "runner",
    "table_lines",
]
_LOG = logging.getLogger(__name__)

TIME_TARGET = 1.05  # (b) / (a) median time
MEMORY_TARGET = 1.10  # (b) / (a) peak memory
PLAN_TARGET = 0.01  # planning alone / (a)
GIB = 2.0**30

#: The most CPU threads ``--threads`` takes (torch accepts more and then crashes in its first matmul).
MAX_THREADS = 1024


def _threads(text: str) -> int:
    """``--threads``: an int in [1, MAX_THREADS]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text} is not a thread count in [1, {MAX_THREADS}]")
    return value


def memory_in_subprocess(tower: Tower, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "hero_adapters.bench.encode",
        "--memory-mode",
        mode,
        "--tower",
        tower.name,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--views",
        str(args.views),
        "--threads",
        str(args.threads),
        *(["--tiny"] if args.tiny else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise HeroError.field(
            f"memory subprocess ({tower.name}, {mode})", done.returncode, "exit code 0", done.stderr[-2000:]
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------------------------ main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog="hero bench encode", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--tower", default="all", choices=[*TOWERS, "all"], help="vision tower(s) to time")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], help="weights and pixels (default: bfloat16 on CUDA, else float32)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the three modes (median)")
    parser.add_argument("--plan-repeats", type=int, default=50, help="repeats of planning alone (median)")
    parser.add_argument("--views", type=int, default=5, choices=[3, 4, 5], help="views of the one image")
    parser.add_argument(
        "--threads", type=_threads, default=torch.get_num_threads(), help=f"torch CPU threads (1 to {MAX_THREADS})"
    )
    parser.add_argument(
        "--eager",
        default="auto",
        choices=["auto", "on", "off"],
        help="mode (c): auto = only if its attention maps fit in the free memory",
    )
    add_output_options(parser)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-size towers (CI)
    parser.add_argument("--memory-mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one subprocess
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.plan_repeats < 1:
        parser.error("--repeats and --plan-repeats must be >= 1")
    if args.memory_mode and args.tower == "all":
        parser.error("--memory-mode needs one --tower")
    args.device = pick_device(args.device).type
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


def _eager_decision(tower: Tower, args: argparse.Namespace) -> tuple[bool, str]:
    if tower.no_eager:
        return False, tower.no_eager
    maps = eager_maps_bytes(tower, args)
    if args.eager != "auto":
        return args.eager == "on", f"--eager {args.eager}"
    free = available_bytes(torch.device(args.device))
    layers = tower.layers
    # the kept maps, plus a few layers' worth of scratch (logits before the softmax), plus the two hosts
    need = maps * (layers + 3) // layers + (0 if args.tiny else 4 * int(GIB))
    fits = need < free
    verdict = "measured" if fits else "skipped"
    return fits, f"{verdict}: maps {maps / GIB:.1f} GiB, needs ~{need / GIB:.1f} GiB, {free / GIB:.1f} GiB free"


def run_tower(tower: Tower, args: argparse.Namespace) -> dict[str, Any]:
    eager, eager_note = _eager_decision(tower, args)
    modes = MODES if eager else MODES[:2]
    _LOG.info("%s in %s: modes %s (eager %s)", tower.title, tower.host, ", ".join(modes), eager_note)
    timing = measure_time(tower, args, modes)
    # CUDA: max_memory_allocated counts live tensors only (no allocator cache), so it is measured in this process
    # (timing["memory"]); on CPU the process RSS needs a fresh subprocess per mode.
    memory = timing.get("memory") or {
        mode: memory_in_subprocess(tower, mode, args)
        for mode in progress(modes, desc=f"bench encode: {tower.name} memory")
    }
    results = {
        mode: {
            "seconds": [round(s, 4) for s in timing["seconds"][mode]],
            "median_s": statistics.median(timing["seconds"][mode]),
            "min_s": min(timing["seconds"][mode]),
            **memory[mode],
        }
        for mode in modes
    }

    def ratio(mode: str, key: str) -> float | None:
        """``mode`` over (a); None where (a)'s value is 0 (an extra-memory of 0 bytes, seen in-process)."""
        base = float(results["a_host"][key])
        return float(results[mode][key]) / base if base > 0 else None

    ratios = {
        f"{mode[0]}/a_{name}": ratio(mode, key)
        for mode in modes[1:]
        for name, key in (
            ("time", "median_s"),
            ("time_min", "min_s"),
            ("peak_memory", "peak_bytes"),
            ("extra_memory", "extra_bytes"),
        )
    }
    host_ms = results["a_host"]["median_s"] * 1e3
    plan = {
        "plan_ms": timing["plan_s"] * 1e3,
        "a_host_ms": host_ms,
        "plan/a_host": timing["plan_s"] * 1e3 / host_ms,
        "what": "Pruner.plan on the encoded views (EncodedTiles validation + budgets + selection), median of "
        f"{args.plan_repeats}, against the median of (a) over the same views",
    }
    time_ratio, peak_ratio = ratios["b/a_time"], ratios["b/a_peak_memory"]  # (a)'s time and peak are > 0
    met = {
        "b/a_time": time_ratio is not None and time_ratio <= TIME_TARGET,
        "b/a_peak_memory": peak_ratio is not None and peak_ratio <= MEMORY_TARGET,
        "plan/a_host": plan["plan/a_host"] < PLAN_TARGET,
    }
    geometry = timing["geometry"]
    return {
        "tower": tower.title,
        "host": tower.host,
        "vision_config": "tiny test tower" if args.tiny else tower.spec,
        "image_size": list(tower.image_of(args.views, args.tiny)),
        **geometry,
        "layers_note": tower.layers_note,
        "eager": eager_note,
        "modes": results,
        "ratios": ratios,
        "plan": plan,
        "met": met,
        "meets_targets": all(met.values()),
        "checks": timing["checks"],
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _yes(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table_lines(towers: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for record in towers.values():
        modes = record["modes"]
        layers = ", ".join(str(x) for x in record["hooked_layers"])
        lines += [
            f"#### {record['tower']} in {record['host']}: {record['views']} views x {record['tokens_per_view']} tokens",
            "",
            f"Hooked layers {layers} ({record['layers_note']}); eager (c): {record['eager']}.",
            "",
            "| mode | median (s) | min (s) | peak (GiB) | time / (a) | peak / (a) |",
            "|---|---|---|---|---|---|",
        ]
        for mode, m in modes.items():
            time_ratio = m["median_s"] / modes["a_host"]["median_s"]
            peak_ratio = m["peak_bytes"] / modes["a_host"]["peak_bytes"]
            lines.append(
                f"| {mode} | {m['median_s']:.2f} | {m['min_s']:.2f} | {m['peak_bytes'] / GIB:.2f} | "
                f"{time_ratio:.3f} | {peak_ratio:.3f} |"
            )
        ratios, met = record["ratios"], record["met"]
        lines += [
            "",
            f"(b) / (a): time {ratios['b/a_time']:.3f} (target <= {TIME_TARGET}: {_yes(met['b/a_time'])}), "
            f"peak memory {ratios['b/a_peak_memory']:.3f} (target <= {MEMORY_TARGET}: "
            f"{_yes(met['b/a_peak_memory'])}).",
            "",
        ]
    lines += [
        "#### Planning alone against the host's image-feature call (a)",
        "",
        "| tower | V x N | plan (ms) | (a) (ms) | plan / (a) | target < 1% |",
        "|---|---|---|---|---|---|",
    ]
    for record in towers.values():
        plan = record["plan"]
        lines.append(
            f"| {record['tower']} | {record['views']} x {record['tokens_per_view']} | {plan['plan_ms']:.2f} | "
            f"{plan['a_host_ms']:.0f} | {100 * plan['plan/a_host']:.3f}% | {_yes(record['met']['plan/a_host'])} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.memory_mode:
        print(json.dumps(measure_memory(TOWERS[args.tower], args.memory_mode, args)))
        return 0
    folder = output_folder(args.out, args.write_results)  # checked before any host is built
    torch.set_num_threads(args.threads)
    chosen = list(TOWERS.values()) if args.tower == "all" else [TOWERS[args.tower]]
    size = "tiny test towers" if args.tiny else "real-size towers, random weights"
    tiled = [tower for tower in chosen if not tower.native]
    # --views applies to the tiled hosts; a native-resolution host encodes its one image as one view
    views = f"{args.views} views" if tiled else "one view"
    views += " (Qwen2.5-VL: one view)" if tiled and len(tiled) < len(chosen) else ""
    _LOG.info(
        "bench encode: %s (%s), %s, %s on %s, %d threads, %d repeats",
        ", ".join(t.name for t in chosen),
        size,
        views,
        args.dtype,
        args.device,
        args.threads,
        args.repeats,
    )
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    towers = {tower.name: run_tower(tower, args) for tower in progress(chosen, desc="bench encode")}
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    names = " and ".join(f"{r['tower']} ({r['host']})" for r in towers.values())
    record = {
        "benchmark": "bench_encode",
        "what": f"{names} ({size}), {views}, {args.dtype}: (a) host get_image_features, "
        "(b) adapter.encode + Pruner.plan, (c) eager output_attentions=True (where the host has maps); medians",
        "machine": {
            **machine(torch.device(args.device)),
            "dtype": args.dtype,
            "load_average_1_5_15_min": {"before": load_before, "after": load_after},
        },
        "measured_at": now(),
        "setup": {
            "towers": [tower.name for tower in chosen],
            "views": args.views,
            "repeats": args.repeats,
            "plan_repeats": args.plan_repeats,
            "hosts": "built by hero_adapters.testing (build_llava_next / build_internvl / build_llava_onevision / "
            "build_qwen2_5_vl): real-size vision "
            f"tower, tiny LLM {TINY_LLM}, random weights, seed 0",
            "timing": "one process per run, modes round-robin after one warm-up each; median and min of the repeats",
            "hero_preset": f"presets.hero({KEEP_RATIO}, depth=<the tower's layers>) (24 layers: the paper's "
            "layers; 27: scaled by hero_core.presets.scale_layers); Qwen2.5-VL (one view per image): "
            f"presets.hero_native({KEEP_RATIO}, **preset_options(adapter)) (depth 32, snapped to the full-attention "
            "blocks); relevance: a fixed vector standing in for the text scorer (one value per view, or per region)",
            "memory": "CPU: one subprocess per mode, peak = process high-water mark; CUDA: in this process, peak = "
            "the mode's model and inputs plus the max allocated above the start of its call; "
            "extra = peak minus the footprint after building the host",
        },
        "towers": towers,
        "targets": {"b/a_time": TIME_TARGET, "b/a_peak_memory": MEMORY_TARGET, "plan/a_host": PLAN_TARGET},
        "meets_targets": all(r["meets_targets"] for r in towers.values()),
    }
    name = "encode" if args.dtype == "float32" else f"encode-{args.dtype}"
    name = name if args.device == "cpu" else f"{name}-{args.device}"
    name = name if args.tower == "all" else f"{name}-{args.tower}"
    name = f"{name}-tiny" if args.tiny else name
    path = write_results(name, record, table_lines(towers), folder)
    for result in towers.values():
        print(f"  {result['tower']} in {result['host']} ({result['views']} x {result['tokens_per_view']} tokens):")
        for mode, m in result["modes"].items():
            print(
                f"    {mode:8s} median {m['median_s']:7.3f} s   peak {m['peak_bytes'] / GIB:6.2f} GiB   "
                f"extra {m['extra_bytes'] / GIB:6.2f} GiB"
            )
        ratios, met, plan = result["ratios"], result["met"], result["plan"]
        print(
            f"    (b)/(a): time {ratios['b/a_time']:.3f} ({_yes(met['b/a_time'])}, <= {TIME_TARGET})  "
            f"peak memory {ratios['b/a_peak_memory']:.3f} ({_yes(met['b/a_peak_memory'])}, <= {MEMORY_TARGET})  "
            f"extra memory {_fmt(ratios['b/a_extra_memory'])}"
        )
        if "c/a_time" in ratios:
            print(
                f"    (c)/(a): time {ratios['c/a_time']:.3f}  peak memory {ratios['c/a_peak_memory']:.3f}  "
                f"extra memory {_fmt(ratios['c/a_extra_memory'])}"
            )
        print(
            f"    plan alone {plan['plan_ms']:.2f} ms = {100 * plan['plan/a_host']:.3f}% of (a) "
            f"({_yes(met['plan/a_host'])}, < 1%); checks {result['checks']}"
        )
    print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
