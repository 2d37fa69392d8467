"""Recipes for Qwen2.5-VL's and Qwen3-VL's vision towers (transformers 5.23): packed, rotary, CLS-free.

Classes are named as import paths, so this file imports nothing from transformers: a recipe matches only
once the host's own modelling module has been imported.

What the recipes reproduce. ``Qwen2_5_VLVisionAttention``, ``Qwen3VLVisionAttention`` and
``Qwen3VLMoeVisionAttention`` share one forward, ``forward(hidden_states (S, D), cu_seqlens,
position_embeddings=(cos, sin), max_seqlen=None, **kwargs)``, on the tokens of every image packed into one
sequence: one fused ``qkv`` Linear laid out ``(3, H, d)``; a 2-D rotary embedding on q and k
(``apply_rotary_pos_emb_vision``: rotated in float32, cast back to the projection's dtype); ``scaling =
head_dim ** -0.5``; attention separately inside each segment ``cu_seqlens[i] : cu_seqlens[i + 1]``, whatever
the kernel (eager and SDPA split the segments, flash attention takes ``cu_seqlens``).

The recorded row (``query="mean"`` only: there is no CLS token, ``cls_position="none"``). Per segment, the
stand-in query is the mean of the segment's rotated queries (without rotary this is the projection of the
segment's mean hidden state, the SigLIP stand-in), and the row is ``softmax(q_bar . k^T * scaling)`` over
the segment's rotated keys, per head, in float32. A call records ``(1, H, S)``: each token gets its weight
within its own segment, so every segment sums to 1 per head. Cost per hooked layer: one call of the module's
``qkv`` on the S tokens (as the module's own), then O(S D); no S x S map is built, and all segments are
handled at once (segment ids, ``index_add_``, a per-segment max), however many windows there are.

Which layers see a whole image:

* **Qwen2.5-VL**: the blocks in ``fullatt_block_indexes`` (default 7, 15, 23, 31 of 32) are full attention,
  one segment per image (per frame of a video); every other block attends inside windows of
  ``window_size`` px (112: 8 x 8 patches), one segment per window, so its row covers one window at a time
  (each window sums to 1). ``full_attention_layers(tower)`` returns the full blocks.
* **Qwen3-VL** (and Qwen3-VL-MoE): full attention in every block; ``full_attention_layers(tower)`` is None.
  Its DeepStack mergers (``deepstack_merger_list``) hold no attention module, so only the blocks'
  attention modules are layers.

Token order: rows come in the order the module receives the tokens.

* **Qwen3-VL**: the order of ``pixel_values`` (image after image; 2 x 2 merge groups contiguous).
* **Qwen2.5-VL**: WINDOW order. The tower permutes the merge groups (``spatial_merge_size ** 2`` consecutive
  tokens) with ``window_index`` before its first block and un-permutes only its merged output, so its
  blocks, full-attention ones included, see window order. ``unpermute_windows(rows, window_index,
  merge_unit)`` brings recorded rows back to ``pixel_values`` order (``window_index`` from
  ``transformers.vision_utils.get_vision_window_index(grid_thw, spatial_merge_size, window_size,
  patch_size)[0]``, as the tower computes it).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor, nn

from hero_core import HeroError

from .recipes import TowerRecipe, register_tower_recipe

__all__ = ["QWEN2_5_VL", "QWEN3_VL", "qwen_packed_rows", "unpermute_windows"]

_QWEN2_5_MODULE = "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl"


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotated(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``apply_rotary_pos_emb_vision`` for one of q / k: rotated in float32, rounded to x's dtype, as float32."""
    x32 = x.float()
    return (x32 * cos + _rotate_half(x32) * sin).to(x.dtype).float()


def _packed_call(
    args: tuple[Any, ...], kwargs: dict[str, Any], heads: int, dim: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(hidden (S, D), cu_seqlens (G + 1,) long, cos (S, 1, d), sin (S, 1, d))`` of a call, validated."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    bounds = kwargs.get("cu_seqlens", args[1] if len(args) > 1 else None)
    embeddings = kwargs.get("position_embeddings", args[2] if len(args) > 2 else None)
    if not isinstance(hidden, Tensor) or hidden.dim() != 2 or hidden.shape[-1] != heads * dim:
        raise HeroError.field(
            "hidden_states of a Qwen vision attention call", hidden, f"a packed (S, {heads * dim}) tensor"
        )
    tokens = hidden.shape[0]
    expected = f"cumulative segment lengths: a 1-D integer tensor from 0 to {tokens}, non-decreasing"
    if not isinstance(bounds, Tensor) or bounds.dim() != 1 or bounds.numel() < 2 or bounds.dtype.is_floating_point:
        raise HeroError.field("cu_seqlens", bounds, expected)
    # Not read back: the values are the host's own (its tower made them for its kernel), and a read per hooked
    # layer would be a host-device sync per layer.
    bounds = bounds.to(device=hidden.device, dtype=torch.long)
    if not (
        isinstance(embeddings, (tuple, list))
        and len(embeddings) == 2
        and all(isinstance(e, Tensor) and tuple(e.shape) == (tokens, dim) for e in embeddings)
    ):
        raise HeroError.field("position_embeddings", embeddings, f"(cos, sin), each ({tokens}, {dim})")
    cos, sin = (e.to(hidden.device).unsqueeze(-2).float() for e in embeddings)
    return hidden, bounds, cos, sin


def qwen_packed_rows(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], query: str) -> Tensor:
    """(1, H, S) float32 stand-in rows of one packed Qwen vision attention call (see the module docstring).

    Each token's value is its weight within its own ``cu_seqlens`` segment (a window on Qwen2.5-VL's window
    blocks, an image elsewhere), in the order the module received the tokens.

    Raises:
        HeroError: for a query other than ``"mean"`` or a call that is not ``(hidden (S, D), cu_seqlens,
            position_embeddings=(cos, sin))``.
    """
    if query != "mean":
        raise HeroError.field("query", query, "'mean' (Qwen vision towers have no CLS token)")
    heads, dim = int(module.num_heads), int(module.head_dim)
    hidden, bounds, cos, sin = _packed_call(args, kwargs, heads, dim)
    tokens, count = hidden.shape[0], bounds.numel() - 1
    # The module's own qkv call (v included): q and k are bit for bit the module's, also where qkv is wrapped
    # (PEFT LoRA) or quantised, which slicing its weight would miss.
    qkv = module.qkv(hidden).reshape(tokens, 3, heads, dim)  # laid out (3, H, d): q, k, v
    q, k = (_rotated(qkv[:, i], cos, sin) for i in (0, 1))  # (S, H, d) each, float32
    segment = torch.searchsorted(bounds[1:], torch.arange(tokens, device=hidden.device), right=True)  # (S,)
    sizes = (bounds[1:] - bounds[:-1]).clamp_min(1).float()  # (G,)
    q_bar = q.new_zeros(count, heads, dim).index_add_(0, segment, q) / sizes[:, None, None]  # (G, H, d)
    logits = torch.einsum("shd,shd->sh", q_bar[segment], k) * float(module.scaling)  # (S, H)
    peak = logits.new_full((count, heads), float("-inf"))
    peak = peak.scatter_reduce(0, segment[:, None].expand(tokens, heads), logits, reduce="amax")
    weights = torch.exp(logits - peak[segment])
    totals = logits.new_zeros(count, heads).index_add_(0, segment, weights)  # (G, H)
    return (weights / totals[segment]).T.unsqueeze(0).contiguous()


def unpermute_windows(rows: Tensor, window_index: Tensor, merge_unit: int) -> Tensor:
    """Qwen2.5-VL rows recorded in window order (last dim S), back in ``pixel_values`` order.

    The tower runs its blocks on ``hidden.reshape(S // merge_unit, merge_unit, D)[window_index]``; this
    applies the inverse (``argsort(window_index)``, as the tower un-permutes its merged output) to the merge
    groups of the last dimension.

    Args:
        rows: (..., S) rows in window order, e.g. ``record.stacked()`` (L, B, H, S).
        window_index: (S // merge_unit,) the tower's window order of merge groups:
            ``transformers.vision_utils.get_vision_window_index(grid_thw, spatial_merge_size, window_size,
            patch_size)[0]``.
        merge_unit: ``spatial_merge_size ** 2`` (4).

    Raises:
        HeroError: if S is not ``len(window_index) * merge_unit``.
    """
    groups = window_index.numel()
    if merge_unit < 1 or rows.shape[-1] != groups * merge_unit:
        raise HeroError.field(
            "rows", tuple(rows.shape), f"(..., {groups} * {merge_unit}): the window order of {groups} merge groups"
        )
    grouped = rows.reshape(*rows.shape[:-1], groups, merge_unit)
    inverse = torch.argsort(window_index.to(device=rows.device, dtype=torch.long))
    return grouped.index_select(-2, inverse).reshape(rows.shape)


def _qwen_geometry(module: Any) -> tuple[int, int, float]:
    return int(module.num_heads), int(module.head_dim), float(module.scaling)


def _qwen2_5_full_attention(tower: nn.Module, modules: list[nn.Module]) -> tuple[int, ...]:
    """``fullatt_block_indexes`` of the ``Qwen2_5_VisionTransformerPretrainedModel`` running the layers (what
    its forward reads), else of the attention modules' vision config; within the tower's layers."""
    owner_class = getattr(sys.modules.get(_QWEN2_5_MODULE), "Qwen2_5_VisionTransformerPretrainedModel", None)
    first: Any = modules[0]
    indexes: Any = None
    if isinstance(owner_class, type):
        for owner in tower.modules():
            if isinstance(owner, owner_class) and any(sub is first for sub in owner.modules()):
                indexes = owner.fullatt_block_indexes
                break
    if indexes is None:
        indexes = first.config.fullatt_block_indexes  # Qwen2_5_VLVisionAttention keeps its vision config
    return tuple(sorted({int(i) for i in indexes if 0 <= int(i) < len(modules)}))


QWEN2_5_VL = register_tower_recipe(
    TowerRecipe(
        name="qwen2.5-vl",
        classes=(f"{_QWEN2_5_MODULE}:Qwen2_5_VLVisionAttention",),
        cls_position="none",
        geometry=_qwen_geometry,
        packed_rows=qwen_packed_rows,
        full_attention=_qwen2_5_full_attention,
    )
)
QWEN3_VL = register_tower_recipe(
    TowerRecipe(
        name="qwen3-vl",
        classes=(
            "transformers.models.qwen3_vl.modeling_qwen3_vl:Qwen3VLVisionAttention",
            "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe:Qwen3VLMoeVisionAttention",
        ),
        cls_position="none",
        geometry=_qwen_geometry,
        packed_rows=qwen_packed_rows,
    )
)
