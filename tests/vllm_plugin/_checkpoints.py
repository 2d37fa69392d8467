"""Tiny random checkpoints, saved to disk in the layout vLLM loads, for the vLLM tests (run in .venv-vllm).

Nothing is downloaded: each checkpoint is built in-process from a small transformers config with random weights, with
a word-level fast tokenizer (``tokenizer.json``) built in memory, and saved with ``save_pretrained``. The configs are
written here directly rather than through ``hero_adapters.testing`` so that this module depends only on what the vLLM
environment has (transformers < 5.20, no torchvision): image processors are the PIL backends.

- ``save_llava_next(path)``: ``LlavaNextForConditionalGeneration`` (CLIP tower, LLaMA text model). transformers 5.x
  saves the tower's keys as ``vision_tower.embeddings...``; vLLM's ``LlavaNextForConditionalGeneration`` holds a
  ``CLIPVisionModel`` and expects the hub layout ``vision_tower.vision_model.embeddings...``, so the saved
  safetensors are rewritten (its loader rejects unknown keys, so a wrong layout fails loudly).
- ``save_internvl(path)``: transformers-format InternVL (``InternVLForConditionalGeneration``, as in
  "OpenGVLab/InternVL3-1B-hf"; vLLM serves it with ``interns1.InternS1ForConditionalGeneration``). Its saved keys
  already match vLLM's mapper. The video processor config is written by hand (its class needs torchvision).

Text heads are 32 wide: vLLM's CPU attention supports head sizes 32, 64, 80, ... only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "INTERNVL_WORDS",
    "LLAVA_NEXT_PINPOINTS",
    "LLAVA_WORDS",
    "hf_processor",
    "save_internvl",
    "save_llava_next",
]

LLAVA_NEXT_PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]

# Word-level vocabularies (ids = positions; no word twice).
LLAVA_WORDS = (
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<image>",
    "USER:",
    "ASSISTANT:",
    "what",
    "is",
    "written",
    "on",
    "the",
    "sign",
    "in",
    "this",
    "picture",
    "describe",
    "image",
    "a",
    "an",
    "and",
    "of",
    "red",
    "blue",
    "green",
    "circle",
    "square",
    "text",
    "word",
    "?",
    ".",
    ",",
)

INTERNVL_WORDS = (
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
    "<image>",
    "user:",
    "assistant:",
    "describe",
    "the",
    "image",
    "what",
    "is",
    "in",
    "this",
    "picture",
    "a",
    "b",
    "c",
    "?",
    ".",
)


def _word_tokenizer(words: Sequence[str], **special: str) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` (ids = positions); ``special`` = extra special tokens."""
    import tokenizers
    import transformers

    vocab = {word: i for i, word in enumerate(words)}
    assert len(vocab) == len(words), "a word appears twice"
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    backend.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces when decoding
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=dict(special),
        padding_side="left",
    )


def _text_config(config_class: Any, vocab: dict[str, int], *, width: int, layers: int, heads: int) -> Any:
    return config_class(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        initializer_range=0.02,
    )


def _rename_safetensors(path: Path, rename: Any) -> None:
    """Rewrite every ``*.safetensors`` under ``path`` with keys mapped by ``rename`` (and its index, if sharded)."""
    from safetensors.torch import load_file, save_file

    for file in sorted(path.glob("*.safetensors")):
        tensors = load_file(file)
        save_file({rename(k): v.contiguous() for k, v in tensors.items()}, file, metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))


def _llava_hub_key(key: str) -> str:
    """transformers 5.x's ``vision_tower.X`` -> the hub layout ``vision_tower.vision_model.X`` (other keys as is)."""
    for prefix in ("vision_tower.", "model.vision_tower."):
        if key.startswith(prefix) and not key.startswith(prefix + "vision_model."):
            return prefix + "vision_model." + key[len(prefix) :]
    return key


def save_llava_next(
    path: str | Path,
    *,
    tile_pixels: int = 56,
    patch_size: int = 14,
    pinpoints: Sequence[Sequence[int]] = LLAVA_NEXT_PINPOINTS,
    vision_layers: int = 4,
    vision_width: int = 32,
    vision_heads: int = 2,
    text_width: int = 64,
    text_layers: int = 2,
    text_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny LLaVA-NeXT checkpoint (weights, config, tokenizer, processor configs) into ``path``."""
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {word: i for i, word in enumerate(LLAVA_WORDS)}
    pins = [list(p) for p in pinpoints]
    tokenizer = _word_tokenizer(LLAVA_WORDS, image_token="<image>")
    image_processor = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": tile_pixels},
        crop_size={"height": tile_pixels, "width": tile_pixels},
        image_grid_pinpoints=pins,
    )
    processor = transformers.LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=tile_pixels,
        patch_size=patch_size,
        hidden_act="quick_gelu",
    )
    text = _text_config(transformers.LlamaConfig, vocab, width=text_width, layers=text_layers, heads=text_heads)
    config = transformers.LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab["<image>"],
        image_grid_pinpoints=pins,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = transformers.LlavaNextForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    _rename_safetensors(path, _llava_hub_key)
    return path


def save_internvl(
    path: str | Path,
    *,
    tile_pixels: int = 56,
    patch_size: int = 14,
    max_patches: int = 6,
    vision_layers: int = 4,
    vision_width: int = 32,
    vision_heads: int = 2,
    text_width: int = 64,
    text_layers: int = 2,
    text_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Save a tiny transformers-format InternVL checkpoint into ``path`` (tokens per tile: ``(tile/patch/2)**2``)."""
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {word: i for i, word in enumerate(INTERNVL_WORDS)}
    tokenizer = _word_tokenizer(
        INTERNVL_WORDS,
        start_image_token="<img>",
        end_image_token="</img>",
        context_image_token="<IMG_CONTEXT>",
        video_token="<video>",
    )
    tokens_per_tile = (tile_pixels // patch_size // 2) ** 2
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    image_processor = transformers.GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        size={"height": tile_pixels, "width": tile_pixels},
        min_patches=1,
        max_patches=max_patches,
        image_mean=mean,
        image_std=std,
    )
    processor = transformers.InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=transformers.InternVLVideoProcessor(
            size={"height": tile_pixels, "width": tile_pixels}, image_mean=mean, image_std=std
        ),
        image_seq_length=tokens_per_tile,
    )
    vision = transformers.InternVLVisionConfig(
        hidden_size=vision_width,
        intermediate_size=4 * vision_width,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=[tile_pixels, tile_pixels],
        patch_size=[patch_size, patch_size],
    )
    text = _text_config(transformers.Qwen2Config, vocab, width=text_width, layers=text_layers, heads=text_heads)
    config = transformers.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab["<IMG_CONTEXT>"],
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
    )
    torch.manual_seed(seed)
    model = transformers.InternVLForConditionalGeneration(config).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def hf_processor(path: str | Path) -> Any:
    """transformers' own processor for a saved checkpoint (the reference for placeholder counts)."""
    import transformers

    return transformers.AutoProcessor.from_pretrained(str(path))
