"""Scoped hooks that record one query row per head of chosen vision-encoder layers.

The host keeps its own attention kernel (SDPA, flash, ...): a forward pre-hook on each needed attention
module recomputes only the query row HERO reads, ``softmax(q . K^T * scale)`` in float32, with the
module's own projections (and q/k norms) as its tower recipe describes. That costs one query row and one
key projection per hooked layer, O(H N) memory, instead of the (H, N+1, N+1) maps that
``output_attentions=True`` materialises for every layer in eager mode.

Calls record only their own tower calls: one shared pre-hook per attention module (reference-counted, so
concurrent calls never see each other's registration or removal) appends to the recordings active in
the *calling context* (a ``contextvars.ContextVar``: each thread, and each asyncio task, has its own).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from hero_core import HeroError

from .recipes import TowerRecipe, list_tower_recipes

__all__ = [
    "QUERIES",
    "ClsAttentionRecord",
    "attention_modules",
    "cls_attention_hooks",
    "full_attention_layers",
    "tower_recipe",
]

#: "cls": the CLS token's own row. "mean": the stand-in for CLS-free towers (HERO_SPEC.md): the mean of the
#: layer's input tokens as the query, keys over every token.
QUERIES = ("cls", "mean")


@dataclass
class ClsAttentionRecord:
    """What the hooks saw during one scoped call.

    Attributes:
        layers: the hooked 0-based encoder layers, ascending.
        recipe: the tower recipe that computed the rows.
        query: ``"cls"`` or ``"mean"`` (see ``QUERIES``).
        rows: layer -> list of (B, H, T) float32 query rows, one entry per forward of the tower, over all T
            tokens of the tower's sequence (the CLS key included where the tower has one). A recipe with
            ``packed_rows`` (Qwen2.5-VL, Qwen3-VL) records (1, H, S) per call: the S tokens of every image
            packed together, each weighted within its own attention segment (see that recipe for the order).
    """

    layers: tuple[int, ...]
    recipe: TowerRecipe | None = None
    query: str = "cls"
    rows: dict[int, list[Tensor]] = field(default_factory=dict)

    def stacked(self) -> Tensor:
        """(L, B, H, T) float32: the recorded rows of every hooked layer, batches concatenated.

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

    def patch_attention(self) -> Tensor:
        """(L, B, H, N) float32: ``stacked()`` without the CLS key's column (N = patch tokens)."""
        rows = self.stacked()
        position = self.recipe.cls_position if self.recipe is not None else "first"
        if position == "first":
            return rows[..., 1:]
        if position == "last":
            return rows[..., :-1]
        return rows


@dataclass(frozen=True)
class _Slot:
    record: ClsAttentionRecord
    layer: int
    recipe: TowerRecipe


_ACTIVE: contextvars.ContextVar[tuple[dict[int, _Slot], ...]] = contextvars.ContextVar("hero_recordings", default=())


class _SharedHooks:
    """One pre-hook per attention module, shared by every concurrent call and removed by the last one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[int, tuple[int, Any]] = {}  # id(module) -> (users, handle)

    def acquire(self, module: nn.Module) -> None:
        with self._lock:
            users, handle = self._users.get(id(module), (0, None))
            if handle is None:
                handle = module.register_forward_pre_hook(_record_hook, with_kwargs=True)
            self._users[id(module)] = (users + 1, handle)

    def release(self, module: nn.Module) -> None:
        with self._lock:
            users, handle = self._users[id(module)]
            if users == 1:
                handle.remove()
                del self._users[id(module)]
            else:
                self._users[id(module)] = (users - 1, handle)


_HOOKS = _SharedHooks()


def _record_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for slots in _ACTIVE.get():  # only the recordings of the context that runs this forward
        slot = slots.get(id(module))
        if slot is not None:
            rows = _query_rows(module, slot, args, kwargs)
            slot.record.rows.setdefault(slot.layer, []).append(rows)
    return None  # a pre-hook returning None leaves the module's inputs untouched


def _query_rows(module: nn.Module, slot: _Slot, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """(B, H, T) float32 softmax row of the recorded query over every key of this call."""
    if slot.recipe.packed_rows is not None:
        with torch.no_grad():
            rows = slot.recipe.packed_rows(module, args, kwargs, slot.record.query)
        if not isinstance(rows, Tensor) or rows.dim() != 3 or rows.shape[0] != 1 or rows.dtype != torch.float32:
            raise HeroError.field(
                f"packed rows of encoder layer {slot.layer} (recipe {slot.recipe.name!r})",
                rows,
                "a (1, H, S) float32 tensor from TowerRecipe.packed_rows",
            )
        return rows
    hidden, mask = slot.recipe.read_call(args, kwargs)
    if not isinstance(hidden, Tensor) or hidden.dim() != 3:
        raise HeroError.field(
            f"hidden_states of encoder layer {slot.layer}", hidden, "a (B, T, D) tensor passed to the attention"
        )
    heads, head_dim, scale = slot.recipe.geometry(module)
    batch, tokens, _ = hidden.shape
    with torch.no_grad():
        keys_ok = _key_mask(mask, slot.record.query, slot.recipe.cls_position, batch, tokens, hidden.device)
        if slot.record.query == "mean":
            weights = keys_ok.to(hidden.dtype)[..., None] if keys_ok is not None else None
            if weights is None:
                source = hidden.mean(dim=1, keepdim=True)
            else:
                source = (hidden * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1)
        else:
            index = 0 if slot.recipe.cls_position == "first" else tokens - 1
            source = hidden[:, index : index + 1]
        query, keys = slot.recipe.project(module, source, hidden)  # (B, 1, H d), (B, T, H d)
        query = rearrange(query.float(), "b q (h d) -> b h q d", h=heads, d=head_dim)  # (B, H, 1, d)
        keys = rearrange(keys.float(), "b t (h d) -> b h t d", h=heads, d=head_dim)  # (B, H, T, d)
        logits = torch.einsum("bhqd,bhtd->bht", query, keys) * scale  # (B, H, T), the one query row
        logits = logits + _additive_row(mask, slot.record.query, slot.recipe.cls_position, tokens)
        if keys_ok is not None:
            logits = logits.masked_fill(~keys_ok[:, None, :], float("-inf"))
        return torch.softmax(logits, dim=-1)


def _additive_row(mask: Any, query: str, position: str, tokens: int) -> Tensor | float:
    """The float mask's row for the recorded query, (B|1, H|1, T), or 0 (no float mask)."""
    if not isinstance(mask, Tensor) or not mask.dtype.is_floating_point:
        return 0.0
    if mask.dim() != 4 or mask.shape[-1] != tokens:
        raise HeroError.field("attention_mask", mask, f"None or a (B, 1 | H, T, {tokens}) float or bool mask")
    if query == "mean":
        return mask.float().amax(dim=-2)  # a key any query may attend to stays
    return mask[:, :, 0 if position == "first" else -1, :].float()


def _key_mask(mask: Any, query: str, position: str, batch: int, tokens: int, device: torch.device) -> Tensor | None:
    """(B, T) bool of attendable keys for the recorded query, from a boolean mask (True = attend) or an additive
    one (a key is blocked where the mask holds a large negative value), or None without a mask."""
    if not isinstance(mask, Tensor):
        return None
    if mask.dtype == torch.bool:
        allowed = mask
    elif mask.dtype.is_floating_point:
        allowed = mask > torch.finfo(mask.dtype).min / 2
    else:
        return None
    if allowed.dim() == 2 and allowed.shape[-1] == tokens:  # (B, T) key padding mask
        return allowed.to(device).expand(batch, tokens)
    if allowed.dim() != 4 or allowed.shape[-1] != tokens:
        raise HeroError.field("attention_mask", mask, f"None or a (B, 1 | H, T, {tokens}) float or bool mask")
    rows = allowed.any(dim=-2) if query == "mean" else allowed[:, :, 0 if position == "first" else -1, :]
    return rows.any(dim=1).to(device).expand(batch, tokens)  # over heads


def attention_modules(tower: nn.Module) -> tuple[list[nn.Module], TowerRecipe]:
    """The tower's attention modules in layer order (module order), and the recipe that serves them.

    When the tower's modules match several recipes (a SigLIP tower's ``SiglipAttention`` layers and the
    ``nn.MultiheadAttention`` of its pooling head), the recipe matching the most modules serves the tower
    and the others' modules are not layers; ties go to table order (``list_tower_recipes()``), so a recipe
    registered with ``first=True`` for the same class overrides the built-in one.

    Raises:
        HeroError: if no module of the tower has a recipe (the message lists the tower's attention-like
            classes and how to register a recipe), or the tower declares prefix tokens
            (``num_prefix_tokens``, timm's name) other than the recipe's CLS token, such as register tokens.
    """
    table = [(recipe, recipe.resolved()) for recipe in list_tower_recipes()]
    matched: list[list[nn.Module]] = [[] for _ in table]
    for module in tower.modules():
        for found, (_, classes) in zip(matched, table, strict=True):
            if classes and isinstance(module, classes):
                found.append(module)
    if not any(matched):
        candidates = sorted({type(m).__name__ for m in tower.modules() if "attention" in type(m).__name__.lower()})
        known = {r.name: r.class_names() for r, _ in table}
        raise HeroError.field(
            "vision tower",
            type(tower).__name__,
            f"attention modules of a class with a tower recipe (known: {known})",
            f"Its attention classes {candidates or 'are not recognisable'} have no recipe: register one with "
            "hero_adapters.towers.register_tower_recipe(TowerRecipe(name, (YourAttention,), cls_position=...)) "
            "(docs/adapters.md, 'Tower recipes').",
        )
    best = max(range(len(table)), key=lambda i: (len(matched[i]), -i))  # most modules; ties: table order
    modules, recipe = matched[best], table[best][0]
    expected = 0 if recipe.cls_position == "none" else 1
    for owner in tower.modules():  # a tower (or the ViT inside it) that says how many tokens precede the patches
        prefix = getattr(owner, "num_prefix_tokens", None)
        if not isinstance(prefix, int) or isinstance(prefix, bool) or prefix == expected:
            continue
        if not any(sub is modules[0] for sub in owner.modules()):
            continue
        fix = (
            "HERO's patch_attention() drops only the CLS column, so the extra prefix tokens (register tokens) "
            "would be planned as patches: build the tower without them (timm: reg_tokens=0)."
            if prefix > expected
            else "Its first token is a patch: register a CLS-free variant of the recipe before it, "
            f"register_tower_recipe(dataclasses.replace(<recipe {recipe.name!r}>, name=..., cls_position='none'), "
            "first=True), and record with query='mean'."
        )
        raise HeroError.field(
            f"vision tower {type(owner).__name__}.num_prefix_tokens",
            prefix,
            f"{expected} (recipe {recipe.name!r}: CLS token {recipe.cls_position!r}, then the patches)",
            fix,
        )
    return modules, recipe


def tower_recipe(tower: nn.Module) -> TowerRecipe:
    """The recipe that serves ``tower`` (HeroError as in ``attention_modules``)."""
    return attention_modules(tower)[1]


def full_attention_layers(tower: nn.Module) -> tuple[int, ...] | None:
    """The 0-based layers of ``tower`` whose attention spans each whole image, or None when every layer does.

    Windowed towers (Qwen2.5-VL: every block not in its ``fullatt_block_indexes``, default 7, 15, 23, 31 of
    32) attend only inside windows elsewhere, so a stand-in row there covers one window at a time. The
    recipe serving the tower reads this from the tower class it knows (``TowerRecipe.full_attention``);
    towers without windows (CLIP, SigLIP, InternViT, timm, open_clip, Qwen3-VL) give None.

    Examples:
        >>> full_attention_layers(qwen2_5_vl.model.visual)   # doctest: +SKIP
        (7, 15, 23, 31)

    Raises:
        HeroError: as ``attention_modules`` for a tower no recipe serves.
    """
    modules, recipe = attention_modules(tower)
    if recipe.full_attention is None:
        return None
    return recipe.full_attention(tower, modules)


@contextmanager
def cls_attention_hooks(
    vision_tower: nn.Module, layers: Sequence[int], *, query: str = "cls"
) -> Iterator[ClsAttentionRecord]:
    """Record the per-head CLS (or stand-in) attention row of ``layers`` while the block runs.

    Examples:
        >>> with cls_attention_hooks(model.model.vision_tower, (5, 21)) as record:  # doctest: +SKIP
        ...     model.model.vision_tower(pixel_values)
        >>> record.patch_attention().shape  # (L, B, H, N)                      # doctest: +SKIP

    Args:
        vision_tower: a vision model whose attention modules have a tower recipe (``list_tower_recipes()``).
        layers: 0-based encoder layers to record (duplicates are merged).
        query: ``"cls"`` (the CLS token's row) or ``"mean"`` (the mean-token stand-in; the only choice for
            towers without a CLS token, such as SigLIP).

    Raises:
        HeroError: on a layer out of range, an unknown query, a CLS row asked of a CLS-free tower, or a
            tower no recipe serves. Only this call's own tower calls are recorded; nothing stays
            registered, also when the body raises.
    """
    if query not in QUERIES:
        raise HeroError.field("query", query, f"one of {QUERIES}")
    modules, recipe = attention_modules(vision_tower)
    if query == "cls" and recipe.cls_position == "none":
        raise HeroError.field(
            "query",
            query,
            f"a CLS row, which this tower ({recipe.name}: {recipe.class_names()}) does not have",
            f"Use a stand-in query: one of {[q for q in QUERIES if q != 'cls']} (cls_attention_hooks(..., "
            "query='mean'); adapters set it for CLS-free towers).",
        )
    given: list[Any] = list(layers) if isinstance(layers, (list, tuple, range)) else [layers]
    bad = [x for x in given if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < len(modules)]
    if bad:
        raise HeroError.field(
            "attention layers",
            list(layers),
            f"0-based encoder layers in [0, {len(modules) - 1}] (this vision encoder has {len(modules)} layers)",
            "Choose selector layers the encoder has: presets.hero(r, depth=<encoder layers>) scales the paper's, "
            "or pass low_layers=(...), high_layers=(...).",
        )
    wanted = tuple(sorted({int(x) for x in given}))
    record = ClsAttentionRecord(layers=wanted, recipe=recipe, query=query)
    slots = {id(modules[layer]): _Slot(record, layer, recipe) for layer in wanted}
    acquired: list[nn.Module] = []
    token = _ACTIVE.set((*_ACTIVE.get(), slots))
    try:
        for layer in wanted:
            _HOOKS.acquire(modules[layer])
            acquired.append(modules[layer])
        yield record
    finally:
        for module in acquired:
            _HOOKS.release(module)
        _ACTIVE.reset(token)
