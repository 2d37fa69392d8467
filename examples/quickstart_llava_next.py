"""HERO on a real LLaVA-NeXT checkpoint: answer a question about an image with 20% of the visual tokens.

Needs local checkpoint directories (nothing is downloaded: the Hugging Face hub is put offline):

- ``--model``: a transformers LLaVA-NeXT checkpoint, e.g. a copy of ``llava-hf/llava-v1.6-vicuna-7b-hf``;
- ``--clip`` (optional): a transformers CLIP checkpoint for HERO's task relevance, e.g. a copy of
  ``openai/clip-vit-large-patch14-336``. Without it the tile budgets follow visual saliency alone.

or ``--tiny``: the demo's in-process LLaVA-NeXT (``hero_adapters.testing.build_llava_next``: LLaVA-NeXT-7B's
geometry, narrow widths, random weights). It needs no download; its answer is noise, while the token
accounting and the plan are real.

Run::

    python examples/quickstart_llava_next.py --tiny
    python examples/quickstart_llava_next.py --model /models/llava-v1.6-vicuna-7b-hf \\
        --clip /models/clip-vit-large-patch14-336 --image photo.jpg --prompt "What is written on the sign?"

It prints the answer, then the report: tokens the unpruned model would send for the image, tokens sent,
per-view budgets and the time of each stage. Needs the ``hf`` extra (transformers, pillow).
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

from hero_adapters import LlavaNextAdapter
from hero_core import HeroError, ModelShape, presets


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Answer a question about an image with a HERO-pruned LLaVA-NeXT (local checkpoints only).",
    )
    parser.add_argument("--model", type=Path, metavar="DIR", help="LLaVA-NeXT checkpoint directory")
    parser.add_argument("--tiny", action="store_true", help="build a tiny random LLaVA-NeXT in-process instead")
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
        "--layout", default="vanilla", choices=LlavaNextAdapter.layouts, help="sequence layout (default vanilla)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="default 64")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if any")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="default: bf16 on cuda"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT.json", help="also write the report as JSON")
    args = parser.parse_args(argv)
    if args.tiny == (args.model is not None):
        parser.error(
            "pass either --model DIR (a local LLaVA-NeXT checkpoint directory: config.json, weights, processor "
            "files, e.g. a download of llava-hf/llava-v1.6-vicuna-7b-hf) or --tiny (a tiny random model, no "
            "download). This example never downloads anything."
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
    """The checkpoint's chat template with one image, or LLaVA's plain format if it has none."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return str(processor.apply_chat_template(conversation, add_generation_prompt=True))
    return f"USER: <image>\n{question} ASSISTANT:"


def print_report(report: Any, prompt_tokens: int, shape: ModelShape) -> None:
    for image in report.images:
        print(
            f"image {image.index}: {image.views} views, {image.tokens_in} -> {image.tokens_out} tokens to the LLM "
            f"({image.kept_patch_tokens} patch + {image.newline_tokens} newline), "
            f"effective ratio {image.effective_ratio:.3f}"
        )
        print(f"  budgets per view (thumbnail first): {image.budgets}  of valid {image.valid_tokens}")
        if image.plan.importance is not None:
            print(f"  tile importance: {[round(float(x), 3) for x in image.plan.importance]}")
    after = prompt_tokens - report.tokens_in + report.tokens_out
    before_flops, after_flops = shape.prefill_flops(prompt_tokens), shape.prefill_flops(after)
    print(
        f"prompt: {prompt_tokens} -> {after} tokens; prefill {before_flops / 1e12:.2f} -> {after_flops / 1e12:.2f} "
        f"TFLOPs (model estimate for {shape.name})"
    )
    print("time: " + ", ".join(f"{stage} {1e3 * seconds:.0f} ms" for stage, seconds in report.timings.items()))


def load(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """(model, processor): a local checkpoint, or the tiny in-process build."""
    if args.tiny:
        from hero_adapters.testing import build_llava_next

        host = build_llava_next()  # 336-px tiles, 24 x 24 patches, 24 CLIP layers, the 7B pinpoints; random weights
        return host.model.to(device=device, dtype=dtype).eval(), host.processor
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    processor = AutoProcessor.from_pretrained(args.model, local_files_only=True)
    model = LlavaNextForConditionalGeneration.from_pretrained(args.model, dtype=dtype, local_files_only=True)
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

    pruner = presets.get(args.preset, args.keep_ratio)
    vlm = HeroVLM(model, pruner, scorer, layout=args.layout, processor=processor)

    if args.image is not None:
        with Image.open(args.image) as file:
            image = file.convert("RGB")
    else:
        from hero_adapters.demo import draw_test_card

        image = draw_test_card()  # 960 x 640: a 2 x 2 grid of 336-px tiles + the thumbnail
    inputs = processor(images=[image], text=[build_prompt(processor, args.prompt)], return_tensors="pt").to(device)
    prompt_tokens = int(inputs["input_ids"].shape[1])

    # query: the text each view is scored against (HERO's task relevance); HeroVLM does not parse the prompt.
    out = vlm.generate(**inputs, query=args.prompt, max_new_tokens=args.max_new_tokens, do_sample=False)
    answer = processor.decode(out[0, prompt_tokens:], skip_special_tokens=True).strip()
    print(f"answer ({args.preset}, keep ratio {args.keep_ratio:g}, {'with' if scorer else 'without'} relevance):")
    print(answer if not args.tiny else f"{answer!r}  (random weights: noise)")
    print()
    report = vlm.last_report
    print_report(report, prompt_tokens, ModelShape.from_config(model.config.to_dict()))
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HeroError as error:
        sys.exit(f"error: {error}")
