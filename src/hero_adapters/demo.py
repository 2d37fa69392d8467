"""``hero demo``: HERO on a LLaVA-NeXT with real geometry and random weights, built in-process (no download).

The model has LLaVA-NeXT-7B's token geometry (336-px tiles, 24 x 24 patches, a 24-layer CLIP-style
tower, the 7B grid pinpoints, the learned newline token) but narrow widths and random weights; a tiny
CLIP scores relevance. The answers are therefore noise; the token accounting, the plans and the timings
are real. ``build_llava_next`` is also what the test-suite builds its tiny hosts with.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hero_core import VICUNA_7B, ModelShape, presets

from ._progress import Bar, progress_bar
from .extras import require
from .testing.builders import BuiltHost, build_llava_next, build_tiny_clip
from .visualize import load_font

__all__ = ["draw_test_card", "run_demo"]

_LOG = logging.getLogger(__name__)


def draw_test_card(width: int = 960, height: int = 640) -> Any:
    """A test card drawn in memory: text blocks and objects in different tiles of a 2 x 2 LLaVA-NeXT grid."""
    image_module = require("PIL.Image")
    draw_module = require("PIL.ImageDraw")
    image = image_module.new("RGB", (width, height), (236, 232, 220))
    draw = draw_module.Draw(image)
    for x in range(0, width, 40):  # faint grid: texture everywhere
        draw.line([(x, 0), (x, height)], fill=(222, 218, 205))
    for y in range(0, height, 40):
        draw.line([(0, y), (width, y)], fill=(222, 218, 205))

    w, h = width, height
    draw.rectangle([0.06 * w, 0.08 * h, 0.44 * w, 0.30 * h], fill=(24, 90, 48))  # top-left: an exit sign
    draw.text((0.09 * w, 0.12 * h), "EXIT 12", fill=(255, 255, 255), font=load_font(int(0.09 * h)))
    draw.ellipse([0.62 * w, 0.10 * h, 0.86 * w, 0.46 * h], fill=(210, 40, 40))  # top-right: a red circle
    draw.polygon([(0.15 * w, 0.90 * h), (0.30 * w, 0.58 * h), (0.45 * w, 0.90 * h)], fill=(40, 80, 200))
    draw.rectangle([0.56 * w, 0.60 * h, 0.94 * w, 0.92 * h], fill=(255, 255, 255), outline=(0, 0, 0), width=4)
    for i, line in enumerate(("OPEN 9-5", "MON-FRI", "ROOM 204")):  # bottom-right: a notice board
        draw.text((0.60 * w, (0.63 + 0.09 * i) * h), line, fill=(0, 0, 0), font=load_font(int(0.06 * h)))
    return image


def _prefill_seconds(model: Any, length: int, repeats: int) -> float:
    """Median time of the demo LLM's forward over ``length`` tokens (its prefill), in seconds."""
    language_model = model.model.language_model
    width = model.config.text_config.hidden_size
    embeds = torch.randn(1, length, width)
    times = []
    with torch.inference_mode():
        language_model(inputs_embeds=embeds[:, :16])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            language_model(inputs_embeds=embeds)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_demo(
    out_dir: str | Path = "demo-out",
    *,
    image: Any = None,
    keep_ratios: Sequence[float] = (0.4, 0.2),
    prompt: str = "what is written on the sign ?",
    max_new_tokens: int = 8,
    repeats: int = 3,
) -> dict[str, Any]:
    """Run vanilla and HERO at each keep ratio on the demo host; write ``report.md``, ``report.json`` and PNGs.

    Progress notes go to the ``hero_adapters.demo`` logger (INFO), a progress bar to stderr on a terminal.

    Args:
        out_dir: the folder to write into (created if missing; its files of these names are replaced).
        image: a PIL image to use instead of the built-in test card.
        keep_ratios: HERO's keep ratios R, each run beside the unpruned model.
        prompt: the question asked about the image.
        max_new_tokens: tokens generated per setting.
        repeats: timed prefill runs per setting (median).

    Returns:
        The JSON-ready results (also written to ``out_dir/report.json``).
    """
    from .visualize import render_plan

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with progress_bar(2 + len(keep_ratios), "hero demo") as bar:
        _LOG.info("building an in-process LLaVA-NeXT with real geometry and RANDOM weights (nothing is downloaded)")
        host = build_llava_next()
        scorer = build_tiny_clip()
        bar.update(1)
        picture, text, shape, rows, reports = _run_settings(
            host, scorer, image, keep_ratios, prompt, max_new_tokens, repeats, out, bar
        )
    smallest = min(keep_ratios)
    render_plan(picture, reports[smallest].images[0], out / "kept_tokens.png")
    picture.save(out / "input.png")
    results = {
        "note": "random weights: answers are noise; token counts, plans and timings are real",
        "prompt": text,
        "image_size": list(picture.size),
        "rows": rows,
        "plan": reports[smallest].to_dict(),
        "seconds_total": time.perf_counter() - started,
    }
    (out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(results, reports[smallest], shape))
    _LOG.info("wrote %s, %s (%.0f s)", out / "report.md", out / "kept_tokens.png", results["seconds_total"])
    return results


def _run_settings(
    host: BuiltHost,
    scorer: Any,
    image: Any,
    keep_ratios: Sequence[float],
    prompt: str,
    max_new_tokens: int,
    repeats: int,
    out: Path,
    bar: Bar,
) -> tuple[Any, str, ModelShape, list[dict[str, Any]], dict[float, Any]]:
    """The unpruned model, then HERO at each keep ratio (one bar step each); (picture, prompt, shape, rows, reports)."""
    from .visualize import render_plan
    from .vlm import HeroVLM

    picture = image if image is not None else draw_test_card()
    text = f"USER: <image> {prompt} ASSISTANT:"
    inputs = dict(host.processor(images=[picture], text=[text], return_tensors="pt"))
    shape = ModelShape.from_config(host.model.config.to_dict(), name="demo LLM")
    prompt_tokens = int(inputs["input_ids"].shape[1])
    rows: list[dict[str, Any]] = []

    with torch.inference_mode():
        vanilla = host.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answer = host.processor.tokenizer.decode(vanilla[0, prompt_tokens:], skip_special_tokens=True)
    image_tokens = int((inputs["input_ids"] == host.model.config.image_token_id).sum())
    rows.append(_row("vanilla", 1.0, image_tokens, image_tokens, prompt_tokens, answer, host, shape, repeats))
    _LOG.info("vanilla: %d image tokens; answer (noise): %r", image_tokens, answer)
    bar.update(1)
    reports = {}
    for ratio in keep_ratios:
        vlm = HeroVLM(host.model, presets.hero(ratio), scorer, processor=host.processor)
        sequences = vlm.generate(**inputs, query=prompt, max_new_tokens=max_new_tokens, do_sample=False)
        report = vlm.last_report
        assert report is not None  # set by generate
        reports[ratio] = report
        answer = host.processor.tokenizer.decode(sequences[0, prompt_tokens:], skip_special_tokens=True)
        sent = prompt_tokens - report.tokens_in + report.tokens_out
        rows.append(
            _row(
                f"HERO {ratio:.0%}",
                ratio,
                report.tokens_in,
                report.tokens_out,
                sent,
                answer,
                host,
                shape,
                repeats,
                report,
            )
        )
        _LOG.info(
            "HERO %.0f%%: %d of %d image tokens; answer (noise): %r",
            100 * ratio,
            report.tokens_out,
            report.tokens_in,
            answer,
        )
        render_plan(picture, report.images[0], out / f"kept_tokens_{round(100 * ratio)}.png")
        bar.update(1)
    return picture, text, shape, rows, reports


def _row(
    name: str,
    ratio: float,
    tokens_in: int,
    tokens_out: int,
    sequence: int,
    answer: str,
    host: BuiltHost,
    shape: ModelShape,
    repeats: int,
    report: Any = None,
) -> dict[str, Any]:
    return {
        "setting": name,
        "keep_ratio": ratio,
        "image_tokens_in": tokens_in,
        "image_tokens_out": tokens_out,
        "kept_patch_tokens": None if report is None else report.kept_patch_tokens,
        "newline_tokens": None if report is None else report.newline_tokens,
        "sequence_tokens": sequence,
        "prefill_seconds_measured": _prefill_seconds(host.model, sequence, repeats),
        "prefill_flops_demo_llm": shape.prefill_flops(sequence),
        "prefill_tflops_vicuna_7b": VICUNA_7B.prefill_flops(sequence) / 1e12,
        "kv_cache_mib_vicuna_7b_fp16": VICUNA_7B.kv_cache_bytes(sequence) / 2**20,
        "timings": None if report is None else dict(report.timings),
        "answer": answer,
    }


def _markdown(results: dict[str, Any], report: Any, shape: ModelShape) -> str:
    rows = results["rows"]
    base = rows[0]
    lines = [
        "# hero demo",
        "",
        "**The weights are random**: the answers below are noise. The token accounting, the plans and the",
        "timings are real. The host is a transformers LLaVA-NeXT with LLaVA-NeXT-7B's geometry (336-px tiles,",
        "24 x 24 patches, 24-layer CLIP-style tower, 7B grid pinpoints, newline token) and a narrow LLM "
        f"({shape.num_layers} layers, width {shape.hidden_size}); relevance comes from a tiny random CLIP.",
        "",
        f"Prompt: `{results['prompt']}`; image {results['image_size'][0]} x {results['image_size'][1]} px.",
        "",
        "| setting | image tokens | sequence | prefill measured (demo LLM) | speed-up measured | speed-up "
        "predicted (FLOPs, demo LLM) | Vicuna-7B prefill TFLOPs | Vicuna-7B KV cache fp16 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        measured = base["prefill_seconds_measured"] / row["prefill_seconds_measured"]
        predicted = base["prefill_flops_demo_llm"] / row["prefill_flops_demo_llm"]
        lines.append(
            f"| {row['setting']} | {row['image_tokens_out']} / {row['image_tokens_in']} | {row['sequence_tokens']} | "
            f"{1e3 * row['prefill_seconds_measured']:.0f} ms | {measured:.2f}x | {predicted:.2f}x | "
            f"{row['prefill_tflops_vicuna_7b']:.1f} | {row['kv_cache_mib_vicuna_7b_fp16']:.1f} MiB |"
        )
    image = report.images[0]
    plan = image.plan
    lines += [
        "",
        f"## The plan at keep ratio {plan.keep_ratio:g}",
        "",
        f"{image.kept_patch_tokens} patch tokens + {image.newline_tokens} newline tokens = {image.tokens_out} of "
        f"{image.tokens_in} ({100 * image.effective_ratio:.1f}%). Newlines are never pruned and not counted in R.",
        "",
        "| view | valid | budget | importance | saliency part | relevance part |",
        "|---|---|---|---|---|---|",
    ]
    valid = image.valid_tokens
    imp = plan.importance.tolist() if plan.importance is not None else [0.0] * len(valid)
    sal = plan.saliency.tolist() if plan.saliency is not None else [0.0] * len(valid)
    rel = plan.relevance.tolist() if plan.relevance is not None else [0.0] * len(valid)
    for view, budget in enumerate(image.budgets):
        name = "thumbnail" if view == image.encoded.thumbnail_index else f"tile {view}"
        lines.append(f"| {name} | {valid[view]} | {budget} | {imp[view]:.3f} | {sal[view]:.3f} | {rel[view]:.3f} |")
    timings = ", ".join(f"{k} {1e3 * v:.0f} ms" for k, v in report.timings.items())
    lines += [
        "",
        f"Stage times of that call: {timings}.",
        "",
        "![kept tokens](kept_tokens.png)",
        "",
        "Measured prefill = the demo LLM's forward over the whole sequence (median of several runs) on this machine.",
        "With real checkpoints:",
        "",
        "```bash",
        "hero run --model /path/to/llava-v1.6-vicuna-7b-hf --clip /path/to/clip-vit-large-patch14-336 \\",
        "         --image photo.jpg --prompt 'What is written on the sign?' --keep-ratio 0.2 --show kept.png",
        "```",
        "",
    ]
    return "\n".join(lines)
