"""Recipes for ``torch.nn.MultiheadAttention`` self-attention, as open_clip's ``VisionTransformer`` uses it.

open_clip 3.x (``open_clip.transformer.ResidualAttentionBlock``) calls ``self.attn(x, x, x,
need_weights=False, attn_mask=attn_mask)`` on batch-first ``(B, T, D)`` tokens, the class embedding first;
older open_clip (and other code) runs the same module with ``batch_first=False`` on ``(T, B, D)``. The
recipes reproduce what the module computes before its kernel: the q and k slices of the fused
``in_proj_weight`` / ``in_proj_bias`` (stacked q, k, v; or the separate ``q_proj_weight`` / ``k_proj_weight``
when key / value widths differ), ``num_heads``, ``head_dim`` and ``scale = head_dim ** -0.5``. Masks follow
the module's own convention and are converted: a boolean ``attn_mask`` / ``key_padding_mask`` is True where a
key is *not* attended, a float one is added; ``attn_mask`` is ``(T, T)`` or ``(B * H, T, T)``.

``nn.MultiheadAttention`` is a generic torch class, so these recipes sit last in the table: a tower whose
layers have a class of their own (transformers' SigLIP with its attention-pooling head, for example) is
served by that class's recipe, as ``attention_modules`` lets the recipe serving the most modules win.

A recipe reads the call, not the module, so the two layouts are told apart by class: the two classes
below are ``isinstance`` stand-ins that match an ``nn.MultiheadAttention`` by its ``batch_first``.

Not served (a ``HeroError`` when such a layer is hooked): cross-attention calls (``key`` not the ``query``
tensor, e.g. open_clip's CoCa ``AttentionalPooler``; note that its pooler, being the same class, still
counts as the tower's last layer), and modules with ``add_bias_kv`` / ``add_zero_attn``, which add keys.
open_clip's own ``Attention`` class (``CustomResidualAttentionBlock``: ``qk_norm``, scaled cosine
attention) has no recipe.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hero_core import HeroError

from .recipes import TowerRecipe, register_tower_recipe

__all__ = [
    "OPEN_CLIP",
    "OPEN_CLIP_SEQ_FIRST",
    "BatchFirstMultiheadAttention",
    "SequenceFirstMultiheadAttention",
    "mha_geometry",
    "mha_projections",
]

_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")


class _MultiheadAttentionLayout(type):
    """Metaclass of the stand-ins: ``isinstance(m, Stand_in)`` = an ``nn.MultiheadAttention`` of that layout."""

    batch_first: bool

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, nn.MultiheadAttention) and bool(instance.batch_first) is cls.batch_first


class BatchFirstMultiheadAttention(metaclass=_MultiheadAttentionLayout):
    """``isinstance`` stand-in: an ``nn.MultiheadAttention`` with ``batch_first=True`` (never instantiated)."""

    batch_first = True


class SequenceFirstMultiheadAttention(metaclass=_MultiheadAttentionLayout):
    """``isinstance`` stand-in: an ``nn.MultiheadAttention`` with ``batch_first=False`` (never instantiated)."""

    batch_first = False


def mha_projections(module: Any, query: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
    """Queries (B, q, H d) and keys (B, T, H d): the q and k slices of the module's input projection."""
    width = int(module.embed_dim)
    if module._qkv_same_embed_dim:
        w_q, w_k = module.in_proj_weight[:width], module.in_proj_weight[width : 2 * width]
    else:
        w_q, w_k = module.q_proj_weight, module.k_proj_weight
    bias = module.in_proj_bias
    b_q, b_k = (None, None) if bias is None else (bias[:width], bias[width : 2 * width])
    return F.linear(query, w_q, b_q), F.linear(hidden, w_k, b_k)


def mha_geometry(module: Any) -> tuple[int, int, float]:
    """(heads, head size, head size ** -0.5); HeroError for a module that adds keys of its own."""
    if module.bias_k is not None or module.add_zero_attn:
        raise HeroError.field(
            "nn.MultiheadAttention",
            "add_bias_kv=True" if module.bias_k is not None else "add_zero_attn=True",
            "self-attention over the layer's own tokens only",
            "Its extra key shifts every column; register a recipe of your own for it (register_tower_recipe).",
        )
    return int(module.num_heads), int(module.head_dim), float(module.head_dim) ** -0.5


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Any:
    index = _ARGS.index(name)
    return kwargs.get(name, args[index] if len(args) > index else None)


def _additive(mask: Any, dtype: Any) -> Tensor | None:
    """The module's mask as an additive float tensor (boolean True = not attended)."""
    if not isinstance(mask, Tensor):
        return None
    if mask.dtype == torch.bool:
        return mask.new_zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _read(args: tuple[Any, ...], kwargs: dict[str, Any], *, batch_first: bool) -> tuple[Any, Any]:
    query, key = _arg(args, kwargs, "query"), _arg(args, kwargs, "key")
    if key is not None and key is not query:
        raise HeroError.field(
            "nn.MultiheadAttention call",
            "key is not the query tensor (cross-attention, e.g. an attention-pooling head)",
            "self-attention: attn(x, x, x, ...)",
            "Choose encoder layers, not the pooling head (its module counts as the tower's last layer).",
        )
    if not isinstance(query, Tensor) or query.dim() not in (2, 3):
        return query, None  # the hook names the bad input
    unbatched = query.dim() == 2
    hidden = query[None] if unbatched else query if batch_first else query.transpose(0, 1)  # (B, T, D)
    batch, tokens = hidden.shape[:2]
    mask = _additive(_arg(args, kwargs, "attn_mask"), hidden.dtype)  # (T, T) or (B * H, T, T)
    if mask is not None:
        mask = mask.reshape(1, 1, tokens, tokens) if mask.dim() == 2 else mask.reshape(batch, -1, tokens, tokens)
    padding = _additive(_arg(args, kwargs, "key_padding_mask"), hidden.dtype)  # (B, T) or (T,)
    if padding is not None:
        padding = padding.reshape(batch, 1, 1, tokens)
        mask = padding if mask is None else mask + padding
    return hidden, mask


def _read_batch_first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``(query (B, T, D), 4-D additive mask or None)`` of ``forward(query, key, value, ...)``, batch first."""
    return _read(args, kwargs, batch_first=True)


def _read_sequence_first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """As ``_read_batch_first`` for ``(T, B, D)`` inputs: the query comes back transposed to (B, T, D)."""
    return _read(args, kwargs, batch_first=False)


OPEN_CLIP = register_tower_recipe(
    TowerRecipe(
        name="open_clip",
        classes=(BatchFirstMultiheadAttention,),
        cls_position="first",
        project=mha_projections,
        read_call=_read_batch_first,
        geometry=mha_geometry,
    )
)
OPEN_CLIP_SEQ_FIRST = register_tower_recipe(
    TowerRecipe(
        name="open_clip-seq-first",
        classes=(SequenceFirstMultiheadAttention,),
        cls_position="first",
        project=mha_projections,
        read_call=_read_sequence_first,
        geometry=mha_geometry,
    )
)
