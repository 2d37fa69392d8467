"""Planning cost of hero_core against one CLIP ViT-L/14-336 forward over the same views.

For V in {3, 5, 13} views (N = 576, H = 16, 5 recorded layers) it times, in one run:
  - HERO planning: validating the encoder outputs (EncodedTiles) + budgets + selection;
  - one forward of a real-size CLIP ViT-L/14-336 vision tower (random weights, built from its config)
    over the same V views, the encoder pass the plan rides on.
and records the ratio plan / forward (target: under 1%). Results: core.json + core.md (core-cuda.* on CUDA) in
./hero-bench-results, or --out DIR; --write-results updates the checkout's tracked benchmarks/results and
benchmarks/README.md instead.

Usage: hero bench core [--device auto|cpu|cuda] [--repeats 50] [--dtype float32|bfloat16] [--out DIR | --write-results]
   or: python benchmarks/bench_core.py [...]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hero_core import EncodedTiles, presets

from .._progress import progress
from ._common import (
    VIT_L14_336,
    HelpFormatter,
    Parser,
    add_output_options,
    machine,
    median_seconds,
    now,
    output_folder,
    pick_device,
    random_model,
    write_results,
)

LAYERS = presets.hero(0.2).layers  # what HERO's preset reads: (5, 6, 7, 8, 21)
N, H, D = 576, 16, 1024


def encoder_outputs(views: int, device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    generator = torch.Generator().manual_seed(views)
    attention = torch.softmax(torch.randn(len(LAYERS), views, H, N + 1, generator=generator), dim=-1)[..., 1:]
    valid = torch.ones(views, 24, 24, dtype=torch.bool)
    valid[1:, 20:] = False  # LLaVA-NeXT-style padding rows in the tiles
    return {
        "cls_tokens": torch.randn(views, D, generator=generator).to(device, dtype),
        "cls_attention": attention.to(device, dtype),
        "attention_layers": LAYERS,
        "valid_mask": valid.flatten(1).to(device),
        "thumbnail_index": 0,
        "grid": (24, 24),
    }


def clip_tower(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import CLIPVisionConfig

    return random_model(CLIPVisionConfig(**VIT_L14_336), device, dtype)


def main(argv: Sequence[str] | None = None) -> None:
    parser = Parser(prog="hero bench core", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="tensors and the tower")
    parser.add_argument("--repeats", type=int, default=50, help="planning repeats (median)")
    parser.add_argument("--forward-repeats", type=int, default=2, help="encoder forward repeats (median)")
    parser.add_argument("--views", type=int, nargs="+", default=[3, 5, 13], help="view counts V to time")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.forward_repeats < 1 or min(args.views) < 1:
        parser.error("--repeats, --forward-repeats and --views must be >= 1")
    folder = output_folder(args.out, args.write_results)  # checked before the tower is built
    device, dtype = pick_device(args.device), getattr(torch, args.dtype)
    pruner = presets.hero(0.2)
    tower = clip_tower(device, dtype)
    rows = []
    for views in progress(args.views, desc="bench core"):
        raw = encoder_outputs(views, device, dtype)
        relevance = torch.linspace(0.1, 0.3, views, device=device)

        def plan(raw: dict[str, object] = raw, relevance: torch.Tensor = relevance) -> None:
            pruner.plan(EncodedTiles(**raw), relevance)  # type: ignore[arg-type]

        pixels = torch.randn(views, 3, 336, 336, device=device, dtype=dtype)

        def forward(pixels: torch.Tensor = pixels) -> None:
            with torch.inference_mode():
                tower(pixel_values=pixels, output_hidden_states=-2)

        plan_s = median_seconds(plan, device, repeats=args.repeats, warmup=3)
        forward_s = median_seconds(forward, device, repeats=args.forward_repeats)
        row = {"views": views, "plan_ms": plan_s * 1e3, "forward_ms": forward_s * 1e3, "ratio": plan_s / forward_s}
        rows.append(row)
        print(
            f"V={views:>2}  plan {row['plan_ms']:8.2f} ms   CLIP ViT-L/14-336 forward {row['forward_ms']:9.1f} ms"
            f"   plan/forward {100 * row['ratio']:.3f}%  (target < 1%)"
        )
    payload = {
        "benchmark": "bench_core",
        "what": "HERO planning (EncodedTiles validation + HeroAllocator + FunctionAwareSelector) vs one CLIP "
        "ViT-L/14-336 forward (random weights) over the same views; medians",
        "settings": {"N": N, "H": H, "layers": LAYERS, "keep_ratio": 0.2, "dtype": args.dtype},
        "machine": machine(device),
        "measured_at": now(),
        "results": rows,
        "target": "plan/forward < 0.01",
        "met": all(row["ratio"] < 0.01 for row in rows),
    }
    table = ["| V | plan (ms) | CLIP ViT-L/14-336 forward (ms) | plan / forward |", "|---|---|---|---|"]
    table += [f"| {r['views']} | {r['plan_ms']:.2f} | {r['forward_ms']:.0f} | {100 * r['ratio']:.3f}% |" for r in rows]
    print("wrote", write_results("core" if device.type == "cpu" else f"core-{device.type}", payload, table, folder))


if __name__ == "__main__":
    main()
