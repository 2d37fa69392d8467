"""Cost of HERO's encoder-side work on a real-size CLIP ViT-L/14-336 tower (random weights, no download).

Three modes on V views (default 5: a 2 x 2 grid plus the thumbnail, as LLaVA-NeXT sends for a square image):

- ``a_host``:  the tower as LLaVA-NeXT's ``get_image_features`` runs it (SDPA, ``output_hidden_states=-2``).
- ``b_hero``:  the same call under HERO's scoped CLS-attention hooks (the layers ``presets.hero`` reads),
               then ``EncodedTiles`` + ``Pruner.plan`` for the V views (``presets.hero(0.2)``).
- ``c_eager``: the peers' route: eager attention with ``output_attentions=True`` (all layers' maps).

Time: one process runs the three modes round-robin (warm-up first), so load drift hits all alike; the
median of ``--repeats`` is reported. Peak memory: one fresh subprocess per mode (process peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA), because allocator caches make in-process numbers unfair.
Results go to ``benchmarks/results/encode.json`` (``encode-bfloat16.json`` for bfloat16), with a Markdown table.

Usage: ``hero bench encode [--device cpu|cuda|auto] [--dtype float32|bfloat16] [--repeats 3]``
   or: ``python benchmarks/bench_encode.py [...]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._common import VIT_L14_336, machine, now, pick_device, random_model, sync, write_results

MODES = ("a_host", "b_hero", "c_eager")
FEATURE_LAYER = -2  # LLaVA-NeXT's vision_feature_layer
KEEP_RATIO = 0.2


def build_tower(dtype: torch.dtype, device: torch.device, attn: str) -> torch.nn.Module:
    """CLIP ViT-L/14-336 with random weights (seeded, so every process builds the same tower)."""
    from transformers import CLIPVisionConfig

    torch.manual_seed(0)
    return random_model(CLIPVisionConfig(**VIT_L14_336), device, dtype, attn=attn)


def make_pixels(views: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(views, 3, 336, 336, generator=generator).to(device=device, dtype=dtype)


def host_forward(tower: Any, pixels: torch.Tensor) -> torch.Tensor:
    """What ``LlavaNextModel.get_image_features`` asks of the tower: hidden state -2, CLS dropped."""
    out = tower(pixels, output_hidden_states=FEATURE_LAYER)
    features: torch.Tensor = out.hidden_states[FEATURE_LAYER][:, 1:]
    return features


def hero_forward(tower: Any, pixels: torch.Tensor) -> Any:
    """HERO's encode (hooks on the preset's layers) and plan for one image of V views."""
    from hero_adapters import cls_attention_hooks
    from hero_core import EncodedTiles, presets

    pruner = presets.hero(KEEP_RATIO)
    with cls_attention_hooks(tower, pruner.layers) as record:
        out = tower(pixels, output_hidden_states=FEATURE_LAYER)
    features = out.hidden_states[FEATURE_LAYER][:, 1:]
    views, tokens = features.shape[:2]
    side = int(tokens**0.5)
    tiles = EncodedTiles(
        cls_tokens=out.last_hidden_state[:, 0].float(),
        cls_attention=record.stacked()[..., 1:],  # (L, V, H, N)
        attention_layers=record.layers,
        valid_mask=torch.ones(views, tokens, dtype=torch.bool, device=pixels.device),
        thumbnail_index=0,
        grid=(side, side),
        tile_grid=(2, views // 2) if views == 5 else None,
    )
    return features, pruner.plan(tiles)


def eager_forward(tower: Any, pixels: torch.Tensor) -> Any:
    """The peers' route: every layer's full (V, H, N + 1, N + 1) attention map materialised."""
    out = tower(pixels, output_hidden_states=FEATURE_LAYER, output_attentions=True)
    return out.hidden_states[FEATURE_LAYER][:, 1:], out.attentions


def runner(mode: str) -> Callable[[Any, torch.Tensor], Any]:
    return {"a_host": host_forward, "b_hero": hero_forward, "c_eager": eager_forward}[mode]


def rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc (Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark to the current RSS (Linux >= 4.0), so the peak is the run's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_memory(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run inside a fresh subprocess: build, reset the peak, run the mode once, report peaks."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    tower = build_tower(dtype, device, "eager" if mode == "c_eager" else "sdpa")
    pixels = make_pixels(args.views, dtype, device)
    sync(device)
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            result = runner(mode)(tower, pixels)
            sync(device)
            peak = torch.cuda.max_memory_allocated(device)
            del result
            return {"peak_bytes": peak, "baseline_bytes": base, "extra_bytes": peak - base, "kind": "cuda allocated"}
        base = rss_bytes("VmRSS")
        exact = reset_peak_rss()
        result = runner(mode)(tower, pixels)
        peak = rss_bytes("VmHWM") if exact else rss_bytes("ru_maxrss")
        del result
    return {
        "peak_bytes": peak,
        "baseline_bytes": base,
        "extra_bytes": peak - base,
        "kind": "process RSS high-water mark" + ("" if exact else " (since start: clear_refs unavailable)"),
    }


def measure_time(args: argparse.Namespace) -> dict[str, Any]:
    """All three modes in this process, round-robin, one warm-up each; seconds per call."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sdpa = build_tower(dtype, device, "sdpa")
    eager = build_tower(dtype, device, "eager")
    pixels = make_pixels(args.views, dtype, device)
    towers = {"a_host": sdpa, "b_hero": sdpa, "c_eager": eager}
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    layers = _hero_layers()
    with torch.inference_mode():
        # Warm-up, and two checks: HERO's features are the host's, and its CLS rows are the eager maps' rows.
        host_features = host_forward(sdpa, pixels)
        hero_features, plan = hero_forward(sdpa, pixels)
        _, maps = eager_forward(eager, pixels)
        oracle = torch.stack([maps[layer][:, :, 0].float() for layer in layers])  # (L, V, H, N + 1)
        del maps
        from hero_adapters import cls_attention_hooks

        with cls_attention_hooks(sdpa, layers) as record:
            sdpa(pixels)
        checks = {
            "max_abs_diff_hooks_vs_eager": float((record.stacked() - oracle).abs().max()),
            "max_abs_diff_features_b_vs_a": float((host_features - hero_features).abs().max()),
            "kept_tokens_b": int(plan.keep.sum()),
        }
        del host_features, hero_features, plan, oracle, record
        for _ in range(args.repeats):
            for mode in MODES:
                sync(device)
                start = time.perf_counter()
                result = runner(mode)(towers[mode], pixels)
                sync(device)
                seconds[mode].append(time.perf_counter() - start)
                del result
    return {"seconds": seconds, **checks}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hero bench encode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    parser.add_argument("--memory-mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one subprocess
    args = parser.parse_args(argv)
    args.device = pick_device(args.device).type
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.memory_mode:
        print(json.dumps(measure_memory(args.memory_mode, args)))
        return 0
    torch.set_num_threads(args.threads)
    print(f"bench_encode: {args.views} views, {args.dtype} on {args.device}, {args.threads} threads", flush=True)
    timing = measure_time(args)
    memory = {}
    for mode in MODES:
        command = [
            sys.executable,
            "-m",
            "hero_adapters.bench.encode",
            "--memory-mode",
            mode,
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            "--views",
            str(args.views),
            "--threads",
            str(args.threads),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        memory[mode] = json.loads(done.stdout.strip().splitlines()[-1])

    modes = {
        mode: {
            "seconds": [round(s, 4) for s in timing["seconds"][mode]],
            "median_s": statistics.median(timing["seconds"][mode]),
            "min_s": min(timing["seconds"][mode]),
            **memory[mode],
        }
        for mode in MODES
    }

    def ratio(mode: str, key: str) -> float:
        return float(modes[mode][key]) / float(modes["a_host"][key])

    ratios = {
        "b/a_time": ratio("b_hero", "median_s"),
        "b/a_time_min": ratio("b_hero", "min_s"),
        "b/a_peak_memory": ratio("b_hero", "peak_bytes"),
        "b/a_extra_memory": ratio("b_hero", "extra_bytes"),
        "c/a_time": ratio("c_eager", "median_s"),
        "c/a_time_min": ratio("c_eager", "min_s"),
        "c/a_peak_memory": ratio("c_eager", "peak_bytes"),
        "c/a_extra_memory": ratio("c_eager", "extra_bytes"),
    }
    record = {
        "benchmark": "bench_encode",
        "what": f"CLIP ViT-L/14-336 tower (random weights), {args.views} views, {args.dtype}: (a) host forward, "
        "(b) HERO hooks + plan, (c) eager output_attentions=True; medians",
        "machine": {**machine(torch.device(args.device)), "dtype": args.dtype},
        "measured_at": now(),
        "setup": {
            "tower": "CLIP ViT-L/14-336 (random weights from CLIPVisionConfig)",
            "views": args.views,
            "repeats": args.repeats,
            "timing": "one process, modes round-robin after one warm-up each; median and min of the repeats",
            "feature_layer": FEATURE_LAYER,
            "hero_preset": f"presets.hero({KEEP_RATIO})",
            "hooked_layers": list(_hero_layers()),
            "memory": "one subprocess per mode; peak = process high-water mark (CPU) or max allocated (CUDA); "
            "extra = peak minus the footprint after building the tower",
        },
        "modes": modes,
        "ratios": ratios,
        "targets": {"b/a_time": 1.05, "b/a_peak_memory": 1.10},
        "meets_targets": ratios["b/a_time"] <= 1.05 and ratios["b/a_peak_memory"] <= 1.10,
        "checks": {
            key: timing[key] for key in ("max_abs_diff_hooks_vs_eager", "max_abs_diff_features_b_vs_a", "kept_tokens_b")
        },
    }
    gib = 2.0**30
    table = ["| mode | median (s) | peak (GiB) | time / (a) | peak / (a) |", "|---|---|---|---|---|"]
    for mode in MODES:
        m = modes[mode]
        table.append(
            f"| {mode} | {m['median_s']:.2f} | {m['peak_bytes'] / gib:.2f} | {ratio(mode, 'median_s'):.3f} | "
            f"{ratio(mode, 'peak_bytes'):.3f} |"
        )
    name = "encode" if args.dtype == "float32" else f"encode-{args.dtype}"
    path = write_results(name if args.device == "cpu" else f"{name}-{args.device}", record, table, args.out)
    for mode in MODES:
        m = modes[mode]
        print(
            f"  {mode:8s} median {m['median_s']:7.3f} s   peak {m['peak_bytes'] / gib:6.2f} GiB   "
            f"extra {m['extra_bytes'] / gib:6.2f} GiB"
        )
    print(
        f"  (b)/(a): time {ratios['b/a_time']:.3f}  peak memory {ratios['b/a_peak_memory']:.3f}  "
        f"extra memory {ratios['b/a_extra_memory']:.3f}   [targets <= 1.05, <= 1.10]"
    )
    print(
        f"  (c)/(a): time {ratios['c/a_time']:.3f}  peak memory {ratios['c/a_peak_memory']:.3f}  "
        f"extra memory {ratios['c/a_extra_memory']:.3f}"
    )
    print(f"  hooks vs eager max |diff| = {timing['max_abs_diff_hooks_vs_eager']:.2e}; wrote {path}")
    return 0


def _hero_layers() -> tuple[int, ...]:
    from hero_core import presets

    return presets.hero(KEEP_RATIO).layers


if __name__ == "__main__":
    raise SystemExit(main())
