"""Recipes for transformers' vision towers: CLIP (CLS first), SigLIP (no CLS) and InternViT (CLS first, qk-norm).

Classes are named as import paths, so this file imports nothing from transformers: a recipe matches only
once the host's own modelling module has been imported (HOSTS.md, section 2 and "Round 2").
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .recipes import TowerRecipe, register_tower_recipe

__all__ = ["CLIP", "INTERNVIT", "SIGLIP"]


def _internvit_projections(module: Any, query: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
    # InternVLVisionAttention normalises q and k over the full width before splitting heads
    # (RMSNorm with use_qk_norm=True, Identity otherwise).
    return module.q_norm(module.q_proj(query)), module.k_norm(module.k_proj(hidden))


CLIP = register_tower_recipe(
    TowerRecipe(
        name="clip",
        classes=("transformers.models.clip.modeling_clip:CLIPAttention",),
        cls_position="first",
    )
)
SIGLIP = register_tower_recipe(
    TowerRecipe(
        name="siglip",
        classes=("transformers.models.siglip.modeling_siglip:SiglipAttention",),
        cls_position="none",
    )
)
INTERNVIT = register_tower_recipe(
    TowerRecipe(
        name="internvit",
        classes=("transformers.models.internvl.modeling_internvl:InternVLVisionAttention",),
        cls_position="first",
        project=_internvit_projections,
    )
)
