"""A tiny CLIP checkpoint for the plugin's relevance scorer: ``CLIPModel`` with random weights and the OpenAI CLIP
tokenizer (its BPE file ships inside the open_clip_torch wheel, installed with --no-deps in the vLLM environment)."""

from __future__ import annotations

from pathlib import Path


def save_clip(path: str | Path, *, image_size: int = 56, patch_size: int = 14, seed: int = 1) -> Path:
    """Save a tiny transformers ``CLIPModel`` (2 + 2 layers, width 32) and its tokenizer into ``path``."""
    import torch
    import transformers

    from hero_adapters.text_scorers import clip_tokenizer_from_open_clip

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    width = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = transformers.CLIPConfig(
        text_config=width,
        vision_config={**width, "image_size": image_size, "patch_size": patch_size},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    transformers.CLIPModel(config).eval().save_pretrained(path)
    clip_tokenizer_from_open_clip().save_pretrained(path)
    return path
