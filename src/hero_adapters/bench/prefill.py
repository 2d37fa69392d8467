"""Prefill speed-up measured against the FLOPs model, and HERO's own cost against the time it saves.

1. Token counts come from the real pipeline: an in-process LLaVA-NeXT with LLaVA-NeXT-7B geometry
   (random weights) plans a 672 x 672 image (a 2 x 2 tile grid) at each keep ratio.
2. A LLaMA at Vicuna-7B width (d = 4096, MLP 11008, 32 heads) with random weights runs the prefill over
   prompt + image tokens for vanilla and each ratio (``--layers``: 2 on CPU, all 32 on CUDA by default); the
   measured speed-up is set beside the one ``prefill_flops`` predicts (target: measured >= 0.85 x predicted).
3. HERO's own cost at the smallest ratio: the CLS-attention hooks on a real-size CLIP ViT-L/14-336 tower
   (forward with hooks minus without), the CLIP text scorer (a real-size ViT-L/14-336 CLIPModel, image
   tower over the K local tiles plus its text tower, as HeroVLM runs it), planning, and the rebuild of the
   prompt. Their sum is reported as a share of the prefill time saved at Vicuna-7B's full depth (32
   layers: measured on CUDA by default, else scaled from the per-layer time); target: at most 10%.
4. On CUDA (by default; ``--no-full-model`` skips it) also a full-depth LLaVA-NeXT-7B-shaped model (random bf16
   weights) through ``HeroVLM.generate`` with a real-size CLIP scorer and a query: time to first token, decode
   tokens/s, peak memory, and HERO's stages (score + plan + assemble, from the report's timings) against the
   TTFT each ratio saves over keep ratio 1, measured in the same run.

Results: prefill.json + prefill.md (prefill-cuda.* on CUDA) in ./hero-bench-results, or --out DIR; --write-results
updates the checkout's tracked benchmarks/results and benchmarks/README.md instead.

Usage: hero bench prefill [--device auto|cpu|cuda] [--layers N (2 CPU, 32 CUDA)] [--repeats 2] [--dtype bfloat16]
                          [--full-model | --no-full-model] [--out DIR | --write-results]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from hero_core import VICUNA_7B, EncodedTiles, presets
from hero_core.testing import make_tiles

from .._progress import Bar, progress, progress_bar
from ._common import (
    CLIP_TEXT_L14,
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
    sync,
    write_results,
)

VICUNA_7B_LAYERS = 32


def _vicuna_7b_config(layers: int, vocab_size: int = 32000) -> Any:
    """A LlamaConfig at Vicuna-7B's width (d 4096, MLP 11008, 32 heads) with ``layers`` layers."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_attention_heads=32,
        num_key_value_heads=32,
        num_hidden_layers=layers,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
    )


def _llama(layers: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    return random_model(_vicuna_7b_config(layers), device, dtype)


def _token_counts(keep_ratios: Sequence[float]) -> tuple[dict[float, Any], Any]:
    """(ratio -> PruneReport, the demo host) for a 672 x 672 image through the real pipeline."""
    from ..demo import draw_test_card
    from ..testing import build_llava_next
    from ..vlm import HeroVLM

    host = build_llava_next(text_width=64, text_layers=1, text_heads=2)
    inputs = dict(
        host.processor(
            images=[draw_test_card(672, 672)], text=["USER: <image> describe ASSISTANT:"], return_tensors="pt"
        )
    )
    reports = {ratio: HeroVLM(host.model, presets.hero(ratio)).plan(**inputs) for ratio in keep_ratios}
    return reports, (host, inputs)


def _clip_config() -> Any:
    from transformers import CLIPConfig

    return CLIPConfig(text_config=CLIP_TEXT_L14, vision_config=VIT_L14_336, projection_dim=768)


def _overhead(
    device: torch.device, dtype: torch.dtype, views: int, repeats: int, host_inputs: Any, prompt: str
) -> dict[str, float]:
    """Seconds of HERO's own work for one image of ``views`` views at real size."""
    with progress_bar(repeats + 4, "bench prefill: HERO's cost") as bar:
        return _overhead_steps(device, dtype, views, repeats, host_inputs, prompt, bar)


def _overhead_steps(
    device: torch.device, dtype: torch.dtype, views: int, repeats: int, host_inputs: Any, prompt: str, bar: Bar
) -> dict[str, float]:
    from ..sequence import placeholder_spans, rebuild
    from ..text_scorers import HFClipTextScorer, clip_tokenizer_from_open_clip
    from ..towers import cls_attention_hooks

    pruner = presets.hero(0.2)
    config = _clip_config()
    tower = random_model(config.vision_config, device, dtype)
    bar.update(1)
    pixels = torch.rand(views, 3, 336, 336, device=device, dtype=dtype)

    def plain() -> None:
        with torch.inference_mode():
            tower(pixel_values=pixels, output_hidden_states=-2)

    def hooked() -> None:
        with torch.inference_mode(), cls_attention_hooks(tower, pruner.layers):
            tower(pixel_values=pixels, output_hidden_states=-2)

    # alternate the two so that drifting machine load hits both alike
    plain_s, hooked_s = [], []
    for _ in range(repeats):
        plain_s.append(median_seconds(plain, device, repeats=1, warmup=0))
        hooked_s.append(median_seconds(hooked, device, repeats=1, warmup=0))
        bar.update(1)
    clip = random_model(config, device, dtype)
    scorer = HFClipTextScorer(clip, clip_tokenizer_from_open_clip())
    bar.update(1)
    tile_views = torch.rand(views - 1, 3, 336, 336, device=device)  # HeroVLM scores the K local tiles only
    scorer_s = median_seconds(lambda: scorer(tile_views, prompt), device, repeats=repeats)
    bar.update(1)
    tiles = make_tiles(
        num_views=views, grid=(24, 24), num_heads=16, layers=pruner.layers, width=1024, padding="rows", device=device
    )
    raw = {name: getattr(tiles, name) for name in tiles.__dataclass_fields__}
    relevance = torch.linspace(0.1, 0.3, views, device=device)
    plan_s = median_seconds(lambda: pruner.plan(EncodedTiles(**raw), relevance), device, repeats=20, warmup=3)
    host, inputs = host_inputs
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    token_id = host.model.config.image_token_id
    count = int((ids == token_id).sum())
    kept = count // 4

    def rebuild_prompt() -> None:
        spans = placeholder_spans(ids, mask, token_id, [count])
        rebuild(ids, mask, spans, [kept], token_id=token_id, pad_id=0)

    rebuild_s = median_seconds(rebuild_prompt, device, repeats=20, warmup=3)
    bar.update(1)
    hooks_s = statistics.median(hooked_s) - statistics.median(plain_s)
    return {
        "encoder_plain_s": statistics.median(plain_s),
        "encoder_hooked_s": statistics.median(hooked_s),
        "hooks_s": max(0.0, hooks_s),
        "hooks_raw_difference_s": hooks_s,
        "text_scorer_s": scorer_s,
        "plan_s": plan_s,
        "rebuild_s": rebuild_s,
    }


def _full_model(
    device: torch.device, reports: dict[float, Any], host_inputs: Any, new_tokens: int, repeats: int
) -> list[Any]:
    """CUDA only: a full-depth LLaVA-NeXT-7B-shaped model (random bf16 weights) through ``HeroVLM.generate`` with a
    real-size CLIP scorer and a query; TTFT, decode speed, memory, and HERO's stages from the report's timings."""
    import transformers

    from ..testing import LLAVA_NEXT_7B_PINPOINTS
    from ..text_scorers import HFClipTextScorer, clip_tokenizer_from_open_clip
    from ..vlm import HeroVLM

    host, inputs = host_inputs
    config = transformers.LlavaNextConfig(
        vision_config=_clip_config().vision_config,
        text_config=_vicuna_7b_config(VICUNA_7B_LAYERS, vocab_size=32064),
        image_grid_pinpoints=LLAVA_NEXT_7B_PINPOINTS,
        image_token_index=32000,
    )
    model = random_model(config, device, torch.bfloat16, auto="AutoModelForImageTextToText")
    scorer = HFClipTextScorer(random_model(_clip_config(), device, torch.bfloat16), clip_tokenizer_from_open_clip())
    ids = inputs["input_ids"].clone()
    ids[ids == host.model.config.image_token_id] = 32000  # the demo tokenizer's image id -> this model's
    feed = {
        "input_ids": ids.to(device),
        "attention_mask": inputs["attention_mask"].to(device),
        "pixel_values": inputs["pixel_values"].to(device, torch.bfloat16),
        "image_sizes": inputs["image_sizes"],
    }
    rows: list[dict[str, Any]] = []
    for ratio in progress([1.0, *reports], desc="bench prefill: full model"):
        vlm = HeroVLM(model, presets.hero(ratio), scorer)
        stages: dict[str, list[float]] = {}

        def generate(n: int, vlm: Any = vlm, stages: dict[str, list[float]] = stages) -> None:
            vlm.generate(
                **feed, query="what is written on the sign?", max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
            report = vlm.last_report
            for stage, seconds in report.timings.items() if report is not None else ():
                stages.setdefault(stage, []).append(float(seconds))

        torch.cuda.reset_peak_memory_stats(device)
        generate(1)  # warm-up (kernels, the scorer's CUDA graphs), left out of the stage timings
        stages.clear()
        ttft = median_seconds(lambda: generate(1), device, repeats=repeats, warmup=0)
        timings = {stage: statistics.median(values) for stage, values in stages.items()}
        total = median_seconds(lambda: generate(new_tokens + 1), device, repeats=repeats)
        rows.append(
            {
                "keep_ratio": ratio,
                "ttft_s": ttft,
                "decode_tokens_per_s": new_tokens / max(total - ttft, 1e-9),
                "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "image_tokens": vlm.last_report.tokens_out if vlm.last_report else None,
                "stages_s": {
                    stage: timings[stage] for stage in ("encode", "score", "plan", "assemble") if stage in timings
                },
                "hero_s": sum(timings.get(stage, 0.0) for stage in ("score", "plan", "assemble")),
            }
        )
    base = rows[0]["ttft_s"]
    for row in rows:
        row["ttft_saved_s"] = base - row["ttft_s"]
        row["hero_share_of_saved"] = row["hero_s"] / row["ttft_saved_s"] if row["ttft_saved_s"] > 0 else None
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = Parser(prog="hero bench prefill", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="weights")
    parser.add_argument("--layers", type=int, help="LLaMA layers actually run (default: 2 on CPU, 32 on CUDA)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each measurement (median)")
    parser.add_argument("--prompt-tokens", type=int, default=40, help="text tokens beside the image")
    parser.add_argument("--keep-ratios", type=float, nargs="+", default=[0.4, 0.2], help="keep ratios R to time")
    parser.add_argument("--skip-overhead", action="store_true", help="do not time HERO's own cost")
    parser.add_argument(
        "--full-model",
        action=argparse.BooleanOptionalAction,
        help="CUDA: also a full-depth 7B-shaped LLaVA-NeXT through HeroVLM (default: on with CUDA)",
    )
    add_output_options(parser)
    args = parser.parse_args(argv)
    if (args.layers is not None and args.layers < 1) or args.repeats < 1 or args.prompt_tokens < 0:
        parser.error("--layers and --repeats must be >= 1, --prompt-tokens >= 0")
    if not all(0 < ratio <= 1 for ratio in args.keep_ratios):
        parser.error(f"--keep-ratios must lie in (0, 1], not {args.keep_ratios}")
    folder = output_folder(args.out, args.write_results)  # checked before any model is built
    device, dtype = pick_device(args.device), getattr(torch, args.dtype)
    cuda = device.type == "cuda"
    args.layers = args.layers or (VICUNA_7B_LAYERS if cuda else 2)
    full_model = cuda and args.full_model is not False
    reports, host_inputs = _token_counts(args.keep_ratios)
    vanilla_image = next(iter(reports.values())).tokens_in
    counts = {1.0: vanilla_image + args.prompt_tokens}
    counts.update({ratio: report.tokens_out + args.prompt_tokens for ratio, report in reports.items()})
    llm = _llama(args.layers, device, dtype)
    seconds = {}
    for ratio in progress(list(counts), desc="bench prefill"):
        embeds = torch.randn(1, counts[ratio], 4096, device=device, dtype=dtype)

        def prefill(embeds: torch.Tensor = embeds) -> None:
            with torch.inference_mode():
                llm(inputs_embeds=embeds)

        seconds[ratio] = median_seconds(prefill, device, repeats=args.repeats)
    rows = []
    for ratio, n in counts.items():
        predicted = VICUNA_7B.prefill_flops(counts[1.0]) / VICUNA_7B.prefill_flops(n)
        measured = seconds[1.0] / seconds[ratio]
        rows.append(
            {
                "keep_ratio": ratio,
                "sequence_tokens": n,
                "prefill_s": seconds[ratio],
                "prefill_s_per_layer": seconds[ratio] / args.layers,
                "speedup_measured": measured,
                "speedup_predicted": predicted,
                "measured_over_predicted": measured / predicted,
                "vicuna_7b_tflops": VICUNA_7B.prefill_flops(n) / 1e12,
            }
        )
        print(
            f"R={ratio:<4} tokens {n:>5}  prefill {seconds[ratio]:8.3f} s ({args.layers} layers)  "
            f"speed-up measured {measured:5.2f}x  predicted {predicted:5.2f}x  ratio {measured / predicted:.2f}"
        )
    payload: dict[str, Any] = {
        "benchmark": "bench_prefill",
        "what": f"prefill of a Vicuna-7B-width LLaMA ({args.layers} of 32 layers, random {args.dtype} weights) over "
        f"prompt ({args.prompt_tokens}) + image tokens of a 672x672 (2x2-tile) LLaVA-NeXT image; medians",
        "machine": machine(device),
        "measured_at": now(),
        "settings": {"layers": args.layers, "dtype": args.dtype, "prompt_tokens": args.prompt_tokens},
        "results": rows,
        "target": "speedup_measured >= 0.85 * speedup_predicted",
        "met": all(row["measured_over_predicted"] >= 0.85 for row in rows),
    }
    table = [
        "| keep ratio | tokens | prefill (s) | speed-up measured | predicted (FLOPs) | measured / predicted |",
        "|---|---|---|---|---|---|",
    ]
    table += [
        f"| {r['keep_ratio']} | {r['sequence_tokens']} | {r['prefill_s']:.3f} | {r['speedup_measured']:.2f}x | "
        f"{r['speedup_predicted']:.2f}x | {r['measured_over_predicted']:.2f} |"
        for r in rows
    ]
    if not args.skip_overhead:
        smallest = min(args.keep_ratios)
        views = next(iter(reports.values())).images[0].views
        cost = _overhead(device, dtype, views, args.repeats, host_inputs, "what is written on the sign?")
        per_layer_saved = (seconds[1.0] - seconds[smallest]) / args.layers
        saved = per_layer_saved * VICUNA_7B_LAYERS  # measured when all 32 layers ran
        total = cost["hooks_s"] + cost["text_scorer_s"] + cost["plan_s"] + cost["rebuild_s"]
        share = total / saved if saved > 0 else float("inf")
        payload["overhead"] = {
            "keep_ratio": smallest,
            **cost,
            "total_s": total,
            "prefill_saved_full_depth_s": saved,
            "share_of_saved": share,
            "target": "share_of_saved <= 0.10",
            "met": share <= 0.10,
        }
        biggest = max(("hooks_s", "text_scorer_s", "plan_s", "rebuild_s"), key=lambda k: cost[k])
        print(
            f"HERO cost at R={smallest}: hooks {cost['hooks_s']:.3f} s, text scorer {cost['text_scorer_s']:.3f} s, "
            f"plan {1e3 * cost['plan_s']:.2f} ms, rebuild {1e3 * cost['rebuild_s']:.2f} ms = {total:.3f} s; "
            f"prefill saved at 32 layers {saved:.2f} s -> {100 * share:.1f}% (target <= 10%)"
        )
        table += [
            "",
            f"HERO's own cost at keep ratio {smallest} (one image, {views} views), against the prefill time "
            f"saved at Vicuna-7B's 32 layers ({saved:.3f} s, "
            + ("measured" if args.layers == VICUNA_7B_LAYERS else f"scaled from {args.layers} layers")
            + "):",
            "",
            "| hooks | CLIP text scorer | plan | rebuild | total | share of saved |",
            "|---|---|---|---|---|---|",
            f"| {cost['hooks_s']:.3f} s | {cost['text_scorer_s']:.3f} s | {1e3 * cost['plan_s']:.2f} ms | "
            f"{1e3 * cost['rebuild_s']:.2f} ms | {total:.3f} s | {100 * share:.1f}% |",
        ]
        if biggest == "text_scorer_s":
            options = ["a smaller CLIP checkpoint (ViT-B/16)", "scoring the tiles of a whole batch in one call",
                       "alpha=1 (no relevance, no scorer)"]  # fmt: skip
            if args.dtype == "float32":
                options.insert(1, "bf16 weights")
            advice = f"The CLIP scorer dominates HERO's cost. Cheaper options: {', '.join(options)}."
            payload["overhead"]["advice"] = advice
            table += ["", advice]
    if full_model:
        del llm
        torch.cuda.empty_cache()
        payload["full_model"] = _full_model(device, reports, host_inputs, new_tokens=32, repeats=max(3, args.repeats))
        table += [
            "",
            "Full LLaVA-NeXT-7B shape (32 layers, bf16) through HeroVLM.generate with a real-size CLIP scorer; HERO's "
            "stages (score + plan + assemble, from the report) against the TTFT saved over keep ratio 1 in this run:",
            "",
            "| keep ratio | image tokens | TTFT (s) | decode tok/s | peak GiB | encode ms | HERO's stages ms | "
            "TTFT saved ms | HERO / saved |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        table += [
            f"| {r['keep_ratio']} | {r['image_tokens']} | {r['ttft_s']:.3f} | {r['decode_tokens_per_s']:.1f} | "
            f"{r['peak_memory_gib']:.1f} | {1e3 * r['stages_s'].get('encode', 0.0):.1f} | {1e3 * r['hero_s']:.1f} | "
            f"{1e3 * r['ttft_saved_s']:.1f} | "
            + ("–" if r["hero_share_of_saved"] is None else f"{100 * r['hero_share_of_saved']:.1f}%")
            + " |"
            for r in payload["full_model"]
        ]
    sync(device)
    print(
        "wrote",
        write_results("prefill" if device.type == "cpu" else f"prefill-{device.type}", payload, table, folder),
    )


if __name__ == "__main__":
    main()
