"""Planning cost of hero_core against one CLIP ViT-L/14-336 forward over the same views.

For V in {3, 5, 13} views (N = 576, H = 16, 5 recorded layers) it times, in one run:
  - HERO planning: validating the encoder outputs (EncodedTiles) + budgets + selection;
  - one forward of a real-size CLIP ViT-L/14-336 vision tower (random weights, built from its config)
    over the same V views, the encoder pass the plan rides on.
and records the ratio plan / forward (target: under 1%). Then, at --preset-views V (default 5), the planning of EVERY
preset in hero_core.presets.PRESETS against the same V-view forward: token features (D = 1024) for presets that
need them (Pruner.needs_features), each token's relevance for presets conditioned on it (cdpruner), attention for
the layers each reads, and for hero-native (one view only) one 24 x 24-token view with features. Results: core.json
+ core.md (core-cuda.* on CUDA) in ./hero-bench-results, or --out DIR; --write-results updates the checkout's
tracked benchmarks/results and benchmarks/README.md instead.

Usage: hero bench core [--device auto|cpu|cuda] [--repeats 50] [--dtype float32|bfloat16] [--preset-views 5]
                       [--out DIR | --write-results]
   or: python benchmarks/bench_core.py [...]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from hero_core import EncodedTiles, presets
from hero_core.native import HeroNativePruner
from hero_core.plan import Pruner
from hero_core.testing import with_token_features, with_token_relevance

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


def preset_inputs(
    pruner: Pruner, views: int, device: torch.device, dtype: torch.dtype
) -> tuple[dict[str, object], torch.Tensor]:
    """What ``pruner.plan`` reads for one image: encoder outputs with attention for the layers it reads (HERO's
    when it reads none), the tiles' grid, token features (D) when it needs them; one 24 x 24 view with features for
    a one-view planner (hero-native). And its relevance: (V,) per view, or (R,) per region of a one-view planner."""
    one_view = isinstance(pruner, HeroNativePruner)
    views = 1 if one_view else views
    raw = encoder_outputs(views, device, dtype)
    layers = pruner.layers or LAYERS
    generator = torch.Generator().manual_seed(views)
    attention = torch.softmax(torch.randn(len(layers), views, H, N + 1, generator=generator), dim=-1)[..., 1:]
    raw.update(cls_attention=attention.to(device, dtype), attention_layers=layers, tile_grid=tile_grid(views))
    if pruner.needs_features or one_view:
        raw["token_features"] = with_token_features(EncodedTiles(**raw), width=D, seed=views).token_features  # type: ignore[arg-type]
    if pruner.needs_token_relevance:  # cdpruner: each token's CLIP cosine to the instruction
        raw["token_relevance"] = with_token_relevance(EncodedTiles(**raw), seed=views).token_relevance  # type: ignore[arg-type]
    if isinstance(pruner, HeroNativePruner):
        count = len(pruner.regions(EncodedTiles(**raw)))  # type: ignore[arg-type]
        return raw, torch.linspace(0.1, 0.3, count, device=device)
    return raw, torch.linspace(0.1, 0.3, views, device=device)


def tile_grid(views: int) -> tuple[int, int] | None:
    """The (rows, cols) of the V - 1 local tiles, as square as they divide (2 x 2 for V = 5); None for one view."""
    tiles = views - 1
    if tiles < 1:
        return None
    rows = max(r for r in range(1, int(tiles**0.5) + 1) if tiles % r == 0)
    return rows, tiles // rows


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
    parser.add_argument(
        "--preset-views", type=int, default=5, help="view count V of the every-preset table (hero-native: one view)"
    )
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.forward_repeats < 1 or min(args.views) < 1 or args.preset_views < 1:
        parser.error("--repeats, --forward-repeats, --views and --preset-views must be >= 1")
    folder = output_folder(args.out, args.write_results)  # checked before the tower is built
    device, dtype = pick_device(args.device), getattr(torch, args.dtype)
    pruner = presets.hero(0.2)
    tower = clip_tower(device, dtype)
    rows = []
    forwards: dict[int, float] = {}
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
        forward_s = forwards[views] = median_seconds(forward, device, repeats=args.forward_repeats)
        row = {"views": views, "plan_ms": plan_s * 1e3, "forward_ms": forward_s * 1e3, "ratio": plan_s / forward_s}
        rows.append(row)
        print(
            f"V={views:>2}  plan {row['plan_ms']:8.2f} ms   CLIP ViT-L/14-336 forward {row['forward_ms']:9.1f} ms"
            f"   plan/forward {100 * row['ratio']:.3f}%  (target < 1%)"
        )
    preset_rows = preset_table(args, device, dtype, tower, forwards)
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
        "presets": {
            "what": f"planning of every preset in presets.PRESETS (R = 0.2) vs one CLIP ViT-L/14-336 forward over "
            f"V = {args.preset_views} views of N tokens; token features of D = {D} where the preset needs them; "
            "hero-native plans one view of 24 x 24 tokens (with features), against the same forward",
            "views": args.preset_views,
            "feature_dim": D,
            "results": preset_rows,
            "target": "plan/forward < 0.01",
            "met": all(row["ratio"] < 0.01 for row in preset_rows),
        },
    }
    table = ["| V | plan (ms) | CLIP ViT-L/14-336 forward (ms) | plan / forward |", "|---|---|---|---|"]
    table += [f"| {r['views']} | {r['plan_ms']:.2f} | {r['forward_ms']:.0f} | {100 * r['ratio']:.3f}% |" for r in rows]
    table += [
        "",
        f"Every preset (R = 0.2) against the V = {args.preset_views} forward "
        f"({forwards[args.preset_views] * 1e3:.0f} ms); "
        f"features: D = {D} token features given; hero-native plans one 24 x 24-token view:",
        "",
        "| preset | views x tokens | features | plan (ms) | plan / forward |",
        "|---|---|---|---|---|",
    ]
    table += [
        f"| {r['preset']} | {r['views']} x {N} | {'yes' if r['features'] else 'no'} | {r['plan_ms']:.2f} | "
        f"{100 * r['ratio']:.3f}% |"
        for r in preset_rows
    ]
    print("wrote", write_results("core" if device.type == "cpu" else f"core-{device.type}", payload, table, folder))


def preset_table(
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    tower: torch.nn.Module,
    forwards: dict[int, float],
) -> list[dict[str, Any]]:
    """One row per preset of ``presets.PRESETS``: its planning (median) against the ``--preset-views`` forward (timed
    here unless the view rows already did)."""
    views = args.preset_views
    if views not in forwards:
        pixels = torch.randn(views, 3, 336, 336, device=device, dtype=dtype)

        def forward() -> None:
            with torch.inference_mode():
                tower(pixel_values=pixels, output_hidden_states=-2)

        forwards[views] = median_seconds(forward, device, repeats=args.forward_repeats)
    forward_s = forwards[views]
    out: list[dict[str, Any]] = []
    for name in progress(list(presets.PRESETS), desc="bench core presets"):
        pruner = presets.get(name, 0.2)
        raw, relevance = preset_inputs(pruner, views, device, dtype)

        def plan(pruner: Pruner = pruner, raw: dict[str, object] = raw, relevance: torch.Tensor = relevance) -> None:
            pruner.plan(EncodedTiles(**raw), relevance)  # type: ignore[arg-type]

        plan_s = median_seconds(plan, device, repeats=args.repeats, warmup=3)
        cls_attention = raw["cls_attention"]
        assert isinstance(cls_attention, torch.Tensor)
        row: dict[str, Any] = {
            "preset": name,
            "views": int(cls_attention.shape[1]),
            "features": raw.get("token_features") is not None,
            "plan_ms": plan_s * 1e3,
            "forward_ms": forward_s * 1e3,
            "ratio": plan_s / forward_s,
        }
        out.append(row)
        print(
            f"{name:<20} V={row['views']:>2}  plan {row['plan_ms']:8.2f} ms   plan/forward {100 * row['ratio']:.3f}%"
            "  (target < 1%)"
        )
    return out


if __name__ == "__main__":
    main()
