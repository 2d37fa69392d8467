"""HERO on InternVL: answer a question about an image with 20% of the visual tokens.

Either a local checkpoint directory (nothing is downloaded: the Hugging Face hub is put offline):

- ``--model``: a checkpoint in transformers' InternVL format (``InternVLForConditionalGeneration``),
  e.g. a copy of ``OpenGVLab/InternVL3-1B-hf``;
- ``--clip`` (optional): a transformers CLIP checkpoint for HERO's task relevance, e.g. a copy of
  ``openai/clip-vit-large-patch14-336``. InternViT has no text tower, so relevance needs a separate CLIP.
  Without it the tile budgets follow visual saliency alone.

or ``--tiny``: a tiny InternVL built in-process by ``hero_adapters.testing.build_internvl`` (448-px tiles,
a 24-layer InternViT-style tower, 256 LLM tokens per view, but narrow widths and random weights). It needs
no download; its answer is noise, while the token accounting and the plan are real.

Run::

    python examples/quickstart_internvl.py --tiny
    python examples/quickstart_internvl.py --model /models/InternVL3-1B-hf \\
        --clip /models/clip-vit-large-patch14-336 --image photo.jpg --prompt "What is written on the sign?"

The selector layers default to the paper's (tiles 5-8, thumbnail 21). Those were chosen for CLIP ViT-L;
InternViT-300M also has 24 layers, so the same indices exist there, but they were not tuned for it.
``--low-layers`` / ``--high-layers`` change them (a tower of another depth needs layers it has).

It prints the answer, then the report: tokens the unpruned model would send for the image, tokens sent,
per-view budgets (tiles in raster order, the thumbnail last) and the time of each stage. ``--show OUT.png``
also draws the kept tokens. Needs the ``hf`` extra (transformers, pillow).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only: never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from hero_core import HeroError, ModelShape, presets

LAYERED = ("hero", "hero-reference")  # the presets whose selector reads low_layers / high_layers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Answer a question about an image with a HERO-pruned InternVL (local checkpoints only).",
    )
    parser.add_argument("--model", type=Path, metavar="DIR", help="InternVL checkpoint directory (HF format)")
    parser.add_argument("--tiny", action="store_true", help="build a tiny random InternVL in-process instead")
    parser.add_argument("--image", type=Path, metavar="FILE", help="the image file (--tiny: default a test card)")
    parser.add_argument(
        "--prompt", default="Describe the image in detail.", help="the question (default: describe the image)"
    )
    parser.add_argument("--clip", type=Path, metavar="DIR", help="CLIP checkpoint directory, for task relevance")
    parser.add_argument("--keep-ratio", type=float, default=0.2, help="fraction of patch tokens KEPT (default 0.2)")
    parser.add_argument(
        "--preset", default="hero", choices=sorted(presets.PRESETS), help="pruning method (default hero)"
    )
    parser.add_argument(
        "--low-layers", type=int, nargs="+", default=[5, 6, 7, 8], help="tile layers of the hero presets"
    )
    parser.add_argument("--high-layers", type=int, nargs="+", default=[21], help="thumbnail layers of the hero presets")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="default 64")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if any")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="default: bf16 on cuda"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="also write the report as JSON")
    parser.add_argument("--show", type=Path, default=None, metavar="OUT.png", help="also draw the kept tokens")
    args = parser.parse_args(argv)
    if args.tiny == (args.model is not None):
        parser.error(
            "pass either --model DIR (a local InternVL checkpoint directory in transformers' format, e.g. a download "
            "of OpenGVLab/InternVL3-1B-hf) or --tiny (a tiny random model, no download). This example never "
            "downloads anything."
        )
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a checkpoint directory (no config.json there)")
    if args.clip is not None and not (args.clip / "config.json").is_file():
        parser.error(f"--clip {args.clip}: not a checkpoint directory (no config.json there)")
    if args.image is None and not args.tiny:
        parser.error("--image FILE is required with --model")
    if args.image is not None and not args.image.is_file():
        parser.error(f"--image: expected an image file that exists, got {args.image}")
    return args


def device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        return torch.device(device), torch.bfloat16 if device == "cuda" else torch.float32
    return torch.device(device), getattr(torch, dtype)


def build_prompt(processor: Any, question: str) -> str:
    """The checkpoint's chat template with one image, or a plain format with InternVL's image tag."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return str(processor.apply_chat_template(conversation, add_generation_prompt=True))
    # the processor expands its image token (<IMG_CONTEXT>) into <img> + 256 tokens per view + </img>
    return f"user: {processor.image_token} {question} assistant:"


def print_report(report: Any, prompt_tokens: int, shape: ModelShape) -> None:
    for image in report.images:
        grid = image.encoded.tile_grid
        views = f"{grid[0]} x {grid[1]} tiles + thumbnail" if grid else "one view" if image.views == 1 else "no grid"
        print(
            f"image {image.index}: {image.views} views ({views}), {image.tokens_in} -> {image.tokens_out} tokens "
            f"to the LLM, effective ratio {image.effective_ratio:.3f}"
        )
        print(f"  budgets per view (tiles in raster order, thumbnail last): {image.budgets}  of {image.valid_tokens}")
        if image.plan.importance is not None:
            print(f"  tile importance: {[round(float(x), 3) for x in image.plan.importance]}")
    after = prompt_tokens - report.tokens_in + report.tokens_out
    before_flops, after_flops = shape.prefill_flops(prompt_tokens), shape.prefill_flops(after)
    print(
        f"prompt: {prompt_tokens} -> {after} tokens; prefill {before_flops / 1e12:.3f} -> {after_flops / 1e12:.3f} "
        f"TFLOPs (model estimate for {shape.name})"
    )
    print("time: " + ", ".join(f"{stage} {1e3 * seconds:.0f} ms" for stage, seconds in report.timings.items()))


def load(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, processor): a local checkpoint, or the tiny in-process build."""
    if args.tiny:
        from hero_adapters.testing import build_internvl

        host = build_internvl()  # 448-px tiles, 14-px patches, 24 vision layers; random weights
        return host.model.to(device=device, dtype=dtype).eval(), host.processor
    from transformers import AutoProcessor, InternVLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(args.model, local_files_only=True)
    model = InternVLForConditionalGeneration.from_pretrained(args.model, dtype=dtype, local_files_only=True)
    return model.to(device).eval(), processor


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from PIL import Image

    from hero_adapters import HeroVLM, HFClipTextScorer

    device, dtype = device_and_dtype(args.device, args.dtype)
    model, processor = load(args, device, dtype)
    scorer = None
    if args.clip is not None:
        scorer = HFClipTextScorer.from_pretrained(args.clip, device=device, dtype=dtype)

    layers = {"low_layers": tuple(args.low_layers), "high_layers": tuple(args.high_layers)}
    pruner = presets.get(args.preset, args.keep_ratio, **(layers if args.preset in LAYERED else {}))
    vlm = HeroVLM(model, pruner, scorer, processor=processor)  # InternVL has one layout: "vanilla"

    if args.image is not None:
        with Image.open(args.image) as file:
            image = file.convert("RGB")
    else:
        from hero_adapters.demo import draw_test_card

        image = draw_test_card(896, 896)  # a 2 x 2 grid of 448-px tiles + the thumbnail
    inputs = processor(images=[image], text=[build_prompt(processor, args.prompt)], return_tensors="pt").to(device)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    # The InternVL processor returns no image sizes; the adapter makes them from the PIL image, so the report
    # knows the tile grid and where each view lies (for --show).
    sizes = vlm.adapter.image_inputs([image])

    # query: the text each view is scored against (HERO's task relevance); HeroVLM does not parse the prompt.
    out = vlm.generate(**inputs, **sizes, query=args.prompt, max_new_tokens=args.max_new_tokens, do_sample=False)
    answer = processor.decode(out[0, prompt_tokens:], skip_special_tokens=True).strip()
    print(f"answer ({args.preset}, keep ratio {args.keep_ratio:g}, {'with' if scorer else 'without'} relevance):")
    print(answer if not args.tiny else f"{answer!r}  (random weights: noise)")
    print()
    report = vlm.last_report
    print_report(report, prompt_tokens, ModelShape.from_config(model.config.to_dict()))
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"report written to {args.json}")
    if args.show is not None:
        from hero_adapters.visualize import render_plan

        render_plan(image, report.images[0], args.show)
        print(f"kept tokens drawn to {args.show}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HeroError as error:
        sys.exit(f"error: {error}")
