"""Vision towers: query-row recipes chosen by attention-module class, and the scoped hooks that use them.

``cls_attention_hooks(tower, layers)`` is the public entry point. A tower is served when its attention
modules are instances of a class in the recipe table (``list_tower_recipes()``): transformers' CLIP, SigLIP,
InternViT, Qwen2.5-VL and Qwen3-VL towers, timm's ViT ``Attention``, and ``torch.nn.MultiheadAttention``
(open_clip's ViT) come registered, in that order (the generic torch class last); ``register_tower_recipe``
adds a class of your own. The Qwen recipes (``qwen``) compute the rows of packed, windowed calls themselves
(``TowerRecipe.packed_rows``); see ``full_attention_layers`` and ``unpermute_windows`` for their layers
and token order.
The recipes name their classes as import paths (or, for torch's own class, stand-ins), so importing this
package imports neither transformers nor timm nor open_clip.
"""

from __future__ import annotations

# Import order is the table order: the framework-specific classes first, nn.MultiheadAttention last.
# isort: off
from . import transformers as _transformers_recipes  # noqa: F401  (registers the transformers recipes)
from . import qwen as _qwen_recipes  # noqa: F401  (registers the Qwen2.5-VL / Qwen3-VL recipes)
from . import timm as _timm_recipes  # noqa: F401  (registers the timm recipe)
from . import open_clip as _open_clip_recipes  # noqa: F401  (registers the nn.MultiheadAttention recipes)

# isort: on
from .hooks import (
    QUERIES,
    ClsAttentionRecord,
    attention_modules,
    cls_attention_hooks,
    full_attention_layers,
    tower_recipe,
)
from .qwen import unpermute_windows
from .recipes import CLS_POSITIONS, TowerRecipe, list_tower_recipes, register_tower_recipe, split_call

__all__ = [
    "CLS_POSITIONS",
    "QUERIES",
    "ClsAttentionRecord",
    "TowerRecipe",
    "attention_modules",
    "cls_attention_hooks",
    "full_attention_layers",
    "list_tower_recipes",
    "register_tower_recipe",
    "split_call",
    "tower_recipe",
    "unpermute_windows",
]
