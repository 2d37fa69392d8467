"""``hero bench serve``: HERO inside vLLM, offline throughput at keep ratio 1 / 0.4 / 0.2 on the same requests.

Needs vLLM (its own environment: ``make test-vllm`` builds ``.venv-vllm`` with vLLM's CPU build; on a GPU machine
``pip install -e ".[vllm]"``). A LLaVA-NeXT and a CLIP scorer are built from configs with random weights (the
sizes of ``hero bench e2e``: ``narrow`` on the CPU, ``7b`` on CUDA), saved in the layout vLLM loads, and served
by ONE engine with the plugin's architecture (prefix caching off; every request's image distinct, the question
distinct per keep ratio, so nothing is served from a cache); each keep ratio is a per-request option, so every row
runs the same requests on the same engine (keep ratio 1 is the unpruned model: the plugin then equals stock vLLM, which
``tests/vllm_plugin`` checks on tokens and log-probabilities).

Per keep ratio: requests/s and prompt tokens/s over the batch (``LLM.generate`` of all requests, after a warm-up),
the mean prompt tokens of a request, the KV-cache blocks one request needs (``ceil((prompt + new tokens) /
block_size)``) and how many such requests fit at once in the engine's KV cache (its blocks divided by that).

Results: ``serve-cpu.json`` / ``serve-cpu.md`` (``-cuda`` on CUDA), as the other benchmarks.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hero_core import HeroError

from ..extras import require
from ._common import HelpFormatter, Parser, add_output_options, machine, now, output_folder, pick_device, write_results
from ._e2e_setup import PROMPT, QUERY, SHAPES_336, SIZES, build

__all__ = ["main", "save_for_vllm"]

KEEP_RATIOS = (1.0, 0.4, 0.2)


def parse(argv: Sequence[str] | None) -> Any:
    parser = Parser(
        prog="hero bench serve", description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="model size (default: 7b on CUDA, narrow)")
    parser.add_argument("--requests", type=int, default=16, help="requests per keep ratio (the image shapes in turn)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per request")
    parser.add_argument("--kv-cache-mib", type=int, default=None, help="KV cache size (default: 512 on the CPU)")
    parser.add_argument("--keep-ratios", type=float, nargs="+", default=list(KEEP_RATIOS))
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.new_tokens < 1:
        parser.error("--requests and --new-tokens must be at least 1")
    if any(not 0.0 < ratio <= 1.0 for ratio in args.keep_ratios):
        parser.error(f"--keep-ratios must lie in (0, 1], got {args.keep_ratios}")
    return args


def save_for_vllm(model: Any, processor: Any, path: Path) -> Path:
    """Save a transformers LLaVA-NeXT with its processor where vLLM can load it: transformers 5.x writes the vision
    tower's keys as ``vision_tower.X``, vLLM's loader expects the hub layout ``vision_tower.vision_model.X``."""
    safetensors = require("safetensors.torch")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    for file in sorted(path.glob("*.safetensors")):
        tensors = safetensors.load_file(str(file))
        renamed = {_hub_key(key): value for key, value in tensors.items()}
        safetensors.save_file(renamed, str(file), metadata={"format": "pt"})
    return path


def _hub_key(key: str) -> str:
    for prefix in ("vision_tower.", "model.vision_tower."):
        if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
            return prefix + "vision_model." + key[len(prefix) :]
    return key


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    folder = output_folder(args.out, args.write_results)
    try:
        vllm = require("vllm")
    except HeroError:
        raise HeroError.field(
            "hero bench serve",
            "vLLM not installed",
            "an environment with vLLM",
            "Build it with `make test-vllm` (.venv-vllm, vLLM's CPU build) or `pip install -e '.[vllm]'` on a GPU "
            "machine, and run `hero bench serve` there.",
        ) from None
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    size = SIZES[args.size or ("7b" if cuda else "narrow")]
    dtype_name = "bfloat16" if cuda else "float32"
    setup = build(size, torch.device("cpu"), getattr(torch, dtype_name), [])
    with tempfile.TemporaryDirectory(prefix="hero-bench-serve-") as tmp:
        root = Path(tmp)
        model_dir = save_for_vllm(setup.model, setup.processor, root / "llava")
        clip_dir = root / "clip"
        setup.scorer.model.save_pretrained(clip_dir)
        setup.scorer.tokenizer.save_pretrained(clip_dir)
        del setup.model
        kv_bytes = None if args.kv_cache_mib is None and cuda else (args.kv_cache_mib or 512) << 20
        llm = vllm.LLM(
            model=str(model_dir),
            dtype=dtype_name,
            max_model_len=8192,
            max_num_seqs=8,
            enforce_eager=not cuda,
            enable_prefix_caching=False,  # distinct images anyway; no row may reuse another's prefill
            kv_cache_memory_bytes=kv_bytes,
            limit_mm_per_prompt={"image": 1},
            seed=0,
            hf_overrides={
                "architectures": ["HeroLlavaNextForConditionalGeneration"],
                "hero": {"preset": "hero", "keep_ratio": 1.0, "clip": str(clip_dir), "clip_dtype": dtype_name},
            },
        )
        try:
            rows = [_measure(vllm, llm, setup, size, ratio, args) for ratio in args.keep_ratios]
            cache = llm.llm_engine.vllm_config.cache_config
            block_size, blocks = int(cache.block_size), cache.num_gpu_blocks
        finally:
            llm.llm_engine.engine_core.shutdown()
    for row in rows:
        row["kv_blocks_per_request"] = math.ceil((row["prompt_tokens_mean"] + args.new_tokens) / block_size)
        row["requests_in_kv_cache"] = None if not blocks else int(blocks) // row["kv_blocks_per_request"]
    base = rows[0]
    for row in rows:
        row["speed_up"] = row["requests_per_s"] / base["requests_per_s"]
    record: dict[str, Any] = {
        "benchmark": "bench_serve",
        "what": f"HERO in vLLM {vllm.__version__}, offline: {size.title}; random {dtype_name} weights; "
        f"{args.requests} requests per keep ratio ({len(SHAPES_336)} image shapes in turn), {args.new_tokens} new "
        "tokens each, one engine, the keep ratio per request",
        "machine": {**machine(device), "vllm": vllm.__version__},
        "measured_at": now(),
        "settings": {
            "size": size.name,
            "requests": args.requests,
            "new_tokens": args.new_tokens,
            "block_size": block_size,
            "kv_cache_blocks": blocks,
        },
        "rows": rows,
    }
    table = _table(record)
    name = f"serve-{device.type}" + ("" if size.name == ("7b" if cuda else "narrow") else f"-{size.name}")
    path = write_results(name, record, table, folder)
    print("\n".join(table))
    print("wrote", path)
    return 0


def _measure(vllm: Any, llm: Any, setup: Any, size: Any, ratio: float, args: Any) -> dict[str, Any]:
    shapes = [(w * size.tile // 336, h * size.tile // 336) for w, h in SHAPES_336]
    images = [_image(*shapes[i % len(shapes)], seed=i) for i in range(args.requests)]  # every request distinct
    params = vllm.SamplingParams(max_tokens=args.new_tokens, min_tokens=args.new_tokens, temperature=0.0)
    # the query differs per keep ratio so that no row reuses another's cached encoder output
    kwargs = {"hero_query": f"{QUERY} ({ratio})", "hero_keep_ratio": ratio}
    requests = [
        {"prompt": PROMPT, "multi_modal_data": {"image": image}, "mm_processor_kwargs": kwargs} for image in images
    ]
    llm.generate(requests[:1], params, use_tqdm=False)  # warm-up (and its encoder cache entry is one of the batch)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    prompt_tokens = [len(output.prompt_token_ids) for output in outputs]
    image_id = int(setup.processor.tokenizer.convert_tokens_to_ids("<image>"))
    return {
        "keep_ratio": ratio,
        "requests": len(outputs),
        "seconds": seconds,
        "requests_per_s": len(outputs) / seconds,
        "prompt_tokens_per_s": sum(prompt_tokens) / seconds,
        "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens),
        "image_tokens_mean": sum(o.prompt_token_ids.count(image_id) for o in outputs) / len(outputs),
    }


def _image(width: int, height: int, seed: int) -> Any:
    """A random RGB image (seeded): the same requests for every keep ratio, no two requests alike."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def _table(record: dict[str, Any]) -> list[str]:
    settings = record["settings"]
    lines = [
        "| keep ratio | image tokens / request | prompt tokens / request | requests/s | speed-up | prompt tokens/s | "
        f"KV blocks / request (block {settings['block_size']}) | requests in the KV cache "
        f"({settings['kv_cache_blocks']} blocks) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        fit = "n/m" if row["requests_in_kv_cache"] is None else str(row["requests_in_kv_cache"])
        lines.append(
            f"| {row['keep_ratio']:g} | {row['image_tokens_mean']:.0f} | {row['prompt_tokens_mean']:.0f} | "
            f"{row['requests_per_s']:.2f} | {row['speed_up']:.2f}x | {row['prompt_tokens_per_s']:.0f} | "
            f"{row['kv_blocks_per_request']} | {fit} |"
        )
    lines += [
        "",
        "Keep ratio 1 is the unpruned model (the plugin then sends what stock vLLM sends). Ratios are measured side "
        "by side in one run on one engine.",
    ]
    return lines


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
