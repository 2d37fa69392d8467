"""Vision towers: query-row recipes chosen by attention-module class, and the scoped hooks that use them.

``cls_attention_hooks(tower, layers)`` is the public entry point. A tower is served when its attention
modules are instances of a class in the recipe table (``list_tower_recipes()``): transformers' CLIP, SigLIP
and InternViT come registered; ``register_tower_recipe`` adds a class of your own.
"""

from __future__ import annotations

from . import transformers as _transformers_recipes  # noqa: F401  (registers the transformers recipes)
from .hooks import QUERIES, ClsAttentionRecord, attention_modules, cls_attention_hooks, tower_recipe
from .recipes import CLS_POSITIONS, TowerRecipe, list_tower_recipes, register_tower_recipe, split_call

__all__ = [
    "CLS_POSITIONS",
    "QUERIES",
    "ClsAttentionRecord",
    "TowerRecipe",
    "attention_modules",
    "cls_attention_hooks",
    "list_tower_recipes",
    "register_tower_recipe",
    "split_call",
    "tower_recipe",
]
