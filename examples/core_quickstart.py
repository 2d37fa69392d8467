"""hero_core on its own: plan HERO and the baselines for one synthetic LLaVA-NeXT-shaped image.

No model is needed: the encoder outputs are synthesised (random CLS tokens and attention maps with
LLaVA-NeXT-7B geometry: a 2 x 2 grid of 336-px tiles plus the thumbnail, 24 x 24 patches, 16 heads).
Run: ``python examples/core_quickstart.py``
"""

from __future__ import annotations

import torch

from hero_core import VICUNA_7B, EncodedTiles, presets


def synthetic_image(seed: int = 0) -> EncodedTiles:
    """Five views (thumbnail first), the bottom 6 patch rows of the lower tiles padded."""
    generator = torch.Generator().manual_seed(seed)
    views, tokens, heads, layers = 5, 576, 16, (5, 6, 7, 8, 21, 22)
    logits = torch.randn(len(layers), views, heads, tokens + 1, generator=generator) * 2
    attention = torch.softmax(logits, dim=-1)[..., 1:]  # drop the CLS key: (L, V, H, N)
    valid = torch.ones(views, 24, 24, dtype=torch.bool)
    valid[3:, 18:] = False  # tiles 3 and 4 hold the bottom padding
    return EncodedTiles(
        cls_tokens=torch.randn(views, 1024, generator=generator),
        cls_attention=attention,
        attention_layers=layers,
        valid_mask=valid.flatten(1),
        thumbnail_index=0,
        grid=(24, 24),
        tile_grid=(2, 2),
        token_features=torch.randn(views, tokens, 1024, generator=generator),  # divprune, dart, cdpruner, visionzip
        token_relevance=0.3 * torch.rand(views, tokens, generator=generator),  # cdpruner: per-token CLIP cosine
    )


def main() -> None:
    tiles = synthetic_image()
    relevance = torch.tensor([0.0, 0.31, 0.22, 0.18, 0.25])  # CLIP cosine per view (thumbnail ignored)
    vanilla = int(tiles.valid_mask.sum())
    print(f"views={tiles.num_views} tokens/view={tiles.num_tokens} valid patch tokens={vanilla}")
    print(f"{'preset':<20} {'R':>4} {'budgets per view':<28} {'kept':>5} {'prefill TFLOPs*':>15}")
    for name in presets.PRESETS:
        if name == "hero-native":
            continue  # for hosts without tiles (Qwen-VL): it plans one view per image, not tiles + thumbnail
        for ratio in (0.4, 0.2):
            plan = presets.get(name, ratio).plan(tiles, relevance)
            tflops = VICUNA_7B.prefill_flops(plan.num_kept) / 1e12
            print(f"{name:<20} {ratio:>4} {plan.budgets.tolist()!s:<28} {plan.num_kept:>5} {tflops:>15.2f}")
    print(
        f"* visual tokens alone through Vicuna-7B; all {vanilla} valid tokens: "
        f"{VICUNA_7B.prefill_flops(vanilla) / 1e12:.2f} TFLOPs"
    )


if __name__ == "__main__":
    main()
