"""HERO inside vLLM, offline: one engine, requests with their own question and keep ratio.

Needs vLLM (``pip install 'hero-prune[vllm]'`` on a GPU machine; the CPU test environment: ``make test-vllm``)
and a local LLaVA-NeXT checkpoint plus a local CLIP for the relevance scorer:

    python examples/serve_vllm.py --model ./llava-v1.6-vicuna-7b-hf --clip ./clip-vit-large-patch14-336 \\
        --image photo.jpg --question "What is written on the sign?" --keep-ratio 0.2

It prints, for keep ratio 1 and the one asked for, the prompt's token count, how many of them are image tokens,
and the answer. The same engine options serve over HTTP with ``vllm serve`` (docs/serving.md).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="local LLaVA-NeXT checkpoint directory")
    parser.add_argument("--clip", required=True, help="local CLIPModel checkpoint directory (the relevance scorer)")
    parser.add_argument("--image", required=True, help="an image file")
    parser.add_argument("--question", default="What is written on the sign?")
    parser.add_argument("--keep-ratio", type=float, default=0.2, help="fraction of patch tokens kept (default 0.2)")
    parser.add_argument("--prompt-format", default="USER: <image>\n{question} ASSISTANT:", help="the model's prompt")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="auto", help="vLLM's dtype (auto; float32 on a CPU)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument(
        "--kv-cache-bytes", type=int, default=None, help="KV cache size (default: vLLM's share of the device memory)"
    )
    args = parser.parse_args(argv)

    import vllm
    from PIL import Image

    llm = vllm.LLM(
        model=args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        limit_mm_per_prompt={"image": 1},
        kv_cache_memory_bytes=args.kv_cache_bytes,
        hf_overrides={
            "architectures": ["HeroLlavaNextForConditionalGeneration"],
            # the engine's defaults; every request may name its own question and keep ratio
            "hero": {"preset": "hero", "keep_ratio": args.keep_ratio, "clip": args.clip},
        },
    )
    image_id = llm.get_tokenizer().convert_tokens_to_ids("<image>")
    image = Image.open(args.image).convert("RGB")
    params = vllm.SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    rows = []
    for ratio in (1.0, args.keep_ratio):
        request = {
            "prompt": args.prompt_format.format(question=args.question),
            "multi_modal_data": {"image": image},
            "mm_processor_kwargs": {"hero_query": args.question, "hero_keep_ratio": ratio},
        }
        (output,) = llm.generate(request, params, use_tqdm=False)
        rows.append(
            {
                "keep_ratio": ratio,
                "prompt_tokens": len(output.prompt_token_ids),
                "image_tokens": output.prompt_token_ids.count(image_id),
                "answer": output.outputs[0].text,
            }
        )
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
