"""Scoped hooks that record the per-head CLS attention row of chosen vision-encoder layers.

The host keeps its own attention kernel (SDPA, flash, ...): a forward pre-hook on each needed attention
module recomputes only the CLS query's row, ``softmax(q_cls . K^T * scale)``, in float32. That costs one
query row and one key projection per hooked layer, O(H N) memory, instead of the (H, N+1, N+1) maps that
``output_attentions=True`` materialises for every layer in eager mode.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hero_core import HeroError

__all__ = ["ClsAttentionRecord", "cls_attention_hooks", "encoder_layers"]

# Where CLIP-style towers keep their blocks, and the attention module inside a block (attribute paths only).
_LAYER_PATHS = ("encoder.layers", "vision_model.encoder.layers", "encoder.layer")
_ATTENTION_NAMES = ("self_attn", "attention", "attn")


@dataclass
class ClsAttentionRecord:
    """What the hooks saw during one scoped call.

    Attributes:
        layers: the hooked 0-based encoder layers, ascending.
        rows: layer -> list of (B, H, N + 1) float32 CLS rows, one entry per forward of the tower (CLS key
            included, in column 0).
    """

    layers: tuple[int, ...]
    rows: dict[int, list[Tensor]] = field(default_factory=dict)

    def stacked(self) -> Tensor:
        """(L, B, H, N + 1) float32: the recorded rows of every hooked layer, batches concatenated.

        Raises:
            HeroError: if a hooked layer never ran (the tower was not called inside the scope).
        """
        missing = [layer for layer in self.layers if not self.rows.get(layer)]
        if missing:
            raise HeroError.field(
                "recorded CLS attention",
                missing,
                "every hooked layer to run once inside the scope",
                "Call the vision tower inside `with cls_attention_hooks(...)`.",
            )
        return torch.stack([torch.cat(self.rows[layer], dim=0) for layer in self.layers])


def encoder_layers(vision_tower: nn.Module) -> Sequence[nn.Module]:
    """The transformer blocks of a CLIP-style vision tower (``encoder.layers`` and known variants).

    Raises:
        HeroError: if none of the known attribute paths leads to a list of blocks.
    """
    for path in _LAYER_PATHS:
        module: Any = vision_tower
        for name in path.split("."):
            module = getattr(module, name, None)
            if module is None:
                break
        if isinstance(module, (nn.ModuleList, list, tuple)) and len(module) > 0:
            return list(module)
    raise HeroError.field(
        "vision_tower",
        type(vision_tower).__name__,
        f"a CLIP-style encoder with its blocks at one of {list(_LAYER_PATHS)}",
        "Register an adapter for this model family that knows where its attention layers are.",
    )


def _attention_module(block: nn.Module) -> nn.Module:
    for name in _ATTENTION_NAMES:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module) and hasattr(module, "q_proj") and hasattr(module, "k_proj"):
            return module
    raise HeroError.field(
        "encoder block",
        type(block).__name__,
        f"an attention module at one of {list(_ATTENTION_NAMES)} with q_proj and k_proj",
    )


def _geometry(attention: nn.Module) -> tuple[int, int, float]:
    """(heads, head size, scale) read from the attention module, never assumed."""
    heads = getattr(attention, "num_heads", None) or getattr(attention, "num_attention_heads", None)
    head_dim = getattr(attention, "head_dim", None)
    if heads is not None and head_dim is None:
        head_dim = getattr(attention, "embed_dim", 0) // heads
    scale = getattr(attention, "scale", None)
    if scale is None:
        scale = getattr(attention, "scaling", None)
    if not heads or not head_dim or scale is None:
        raise HeroError.field(
            "attention module",
            type(attention).__name__,
            "attributes num_heads, head_dim and scale (or scaling)",
            "This attention class is not CLIP-like; the adapter must provide its own CLS-attention hook.",
        )
    return int(heads), int(head_dim), float(scale)


def _make_hook(record: ClsAttentionRecord, layer: int, heads: int, head_dim: int, scale: float) -> Any:
    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)  # (B, N + 1, D), already layer-normed
        if not isinstance(hidden, Tensor) or hidden.dim() != 3:
            raise HeroError.field(
                f"hidden_states of encoder layer {layer}", hidden, "a (B, N + 1, D) tensor passed to the attention"
            )
        batch, tokens, _ = hidden.shape
        with torch.no_grad():
            query = module.q_proj(hidden[:, :1]).view(batch, 1, heads, head_dim).transpose(1, 2).float()  # (B, H, 1, d)
            keys = module.k_proj(hidden).view(batch, tokens, heads, head_dim).transpose(1, 2).float()  # (B, H, N+1, d)
            logits = torch.matmul(query, keys.transpose(-1, -2)).squeeze(-2) * scale  # (B, H, N + 1)
            mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
            if isinstance(mask, Tensor) and mask.dim() == 4 and mask.dtype.is_floating_point:
                logits = logits + mask[:, :, 0, :].float()  # additive mask, CLS query row
            record.rows.setdefault(layer, []).append(torch.softmax(logits, dim=-1))
        return None  # a pre-hook returning None leaves the module's inputs untouched

    return hook


@contextmanager
def cls_attention_hooks(vision_tower: nn.Module, layers: Sequence[int]) -> Iterator[ClsAttentionRecord]:
    """Record the per-head CLS attention row of ``layers`` while the block runs; hooks removed on exit.

    Example:
        >>> with cls_attention_hooks(model.model.vision_tower, (5, 21)) as record:  # doctest: +SKIP
        ...     model.model.vision_tower(pixel_values)
        >>> record.stacked().shape  # (L, B, H, N + 1)                            # doctest: +SKIP

    Args:
        vision_tower: a CLIP-style vision model (blocks at ``encoder.layers``, attention at ``self_attn``
            with ``q_proj``, ``k_proj``, ``num_heads``, ``head_dim`` and ``scale``).
        layers: 0-based encoder layers to record (duplicates are merged).

    Raises:
        HeroError: if a layer is out of range or the tower does not look CLIP-like. Nothing stays
            registered, also when the body raises.
    """
    blocks = encoder_layers(vision_tower)
    wanted = tuple(sorted(set(layers)))
    bad = [x for x in wanted if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < len(blocks)]
    if bad:
        raise HeroError.field(
            "attention layers",
            list(layers),
            f"0-based encoder layers in [0, {len(blocks) - 1}] (this vision encoder has {len(blocks)} layers)",
            "Choose selector layers the encoder has, e.g. presets.hero(r, low_layers=(...), high_layers=(...)).",
        )
    record = ClsAttentionRecord(layers=wanted)
    handles = []
    try:
        for layer in wanted:
            attention = _attention_module(blocks[layer])
            hook = _make_hook(record, layer, *_geometry(attention))
            handles.append(attention.register_forward_pre_hook(hook, with_kwargs=True))
        yield record
    finally:
        for handle in handles:
            handle.remove()
