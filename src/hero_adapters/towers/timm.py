"""Recipe for timm's ViT attention: ``timm.layers.attention.Attention`` (the class ``VisionTransformer`` builds).

The class is named as an import path, so this file imports nothing from timm: the recipe matches only once
timm's ``timm.layers.attention`` has been imported (importing ``timm`` does it).

What the recipe reproduces (timm 1.0.x, ``Attention.forward(x, attn_mask=None, is_causal=False)``): one fused
``qkv`` Linear whose output is laid out ``(3, heads, head_dim)``; ``q_norm`` / ``k_norm`` applied per head
after the reshape (``Identity`` without ``qk_norm``); ``scale = head_dim ** -0.5``; an SDPA-style mask (bool
True = attend, or additive float, broadcast against ``(B, H, N, N)``) or ``is_causal``. The recorded rows are
the same with ``fused_attn`` on (SDPA) or off (the explicit softmax), since the kernel is never touched.

CLS position: ``"first"``, as ``VisionTransformer(class_token=True)`` prepends its class token.

Limitations (``attention_modules`` raises a ``HeroError`` for both, from the tower's ``num_prefix_tokens``):

* **Register tokens** (``reg_tokens > 0``) sit between the class token and the patches; a recipe declares
  only where the CLS token is, and ``ClsAttentionRecord.patch_attention()`` drops only the CLS column, so the
  registers would be planned as patches. Build the tower with ``reg_tokens=0``.
* **No class token** (``class_token=False``): the first token is a patch, not a CLS token. Register a
  CLS-free variant before this one and record with the mean-token stand-in:

      register_tower_recipe(dataclasses.replace(TIMM, name="timm-no-cls", cls_position="none"), first=True)
      with cls_attention_hooks(tower, layers, query="mean") as record: ...

Other timm attention classes (``AttentionRope``, ``DiffAttention``, EVA's, the ``attn_pool`` head's
``AttentionPoolLatent``) are not this class and are not served. A block with several ``Attention`` modules
(``ParallelThingsBlock``) counts each of them as a layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .recipes import TowerRecipe, register_tower_recipe

__all__ = ["TIMM", "timm_projections", "timm_read_call"]


def timm_projections(module: Any, query: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
    """Queries (B, q, H d) and keys (B, T, H d) as timm's ``Attention`` computes them, norms included.

    Only the q and k slices of the fused ``qkv`` weight are applied (its rows are laid out ``(3, H, d)``),
    so the values are never computed; ``q_norm`` / ``k_norm`` act on each head's ``d`` features.
    """
    heads, dim = int(module.num_heads), int(module.head_dim)
    width = heads * dim
    weight, bias = module.qkv.weight, module.qkv.bias
    q = F.linear(query, weight[:width], None if bias is None else bias[:width])
    k = F.linear(hidden, weight[width : 2 * width], None if bias is None else bias[width : 2 * width])
    q = module.q_norm(q.reshape(*q.shape[:-1], heads, dim)).flatten(-2)
    k = module.k_norm(k.reshape(*k.shape[:-1], heads, dim)).flatten(-2)
    return q, k


def timm_read_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``(x, mask)`` of ``Attention.forward(x, attn_mask=None, is_causal=False)``.

    The SDPA-style mask comes back 4-D (a 2-D ``(N, N)`` or 3-D ``(H, N, N)`` mask broadcasts as SDPA
    broadcasts it); ``is_causal=True`` becomes the boolean lower-triangular mask it stands for.
    """
    x = kwargs.get("x", args[0] if args else None)
    mask = kwargs.get("attn_mask", args[1] if len(args) > 1 else None)
    causal = kwargs.get("is_causal", args[2] if len(args) > 2 else False)
    if isinstance(x, Tensor) and x.dim() == 3 and causal:
        tokens = x.shape[1]
        return x, torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).tril()[None, None]
    if isinstance(mask, Tensor) and mask.dim() in (2, 3):
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    return x, mask


TIMM = register_tower_recipe(
    TowerRecipe(
        name="timm",
        classes=("timm.layers.attention:Attention",),
        cls_position="first",
        project=timm_projections,
        read_call=timm_read_call,
    )
)
