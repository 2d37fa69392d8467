"""Tower recipes: how to recompute one query row of an attention module, chosen by the module's class.

A recipe serves one or more attention-module classes (matched with ``isinstance``, in table order, as PEFT
dispatches on layer types) and says how that class is called (where its input tensor and mask arrive), how
to project queries and keys (norms included), its heads / head size / scale, and where the tower's CLS
token sits (``"first"``, ``"last"`` or ``"none"``). Attribute names never choose a recipe; a recipe may
read its own class's attributes because it knows the class.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from hero_core import HeroError

__all__ = [
    "CLS_POSITIONS",
    "FullAttentionReader",
    "PackedRows",
    "TowerRecipe",
    "find_recipe",
    "list_tower_recipes",
    "register_tower_recipe",
    "split_call",
]

CLS_POSITIONS = ("first", "last", "none")

#: (module, query hidden (B, q, D), hidden (B, T, D)) -> queries (B, q, H * d), keys (B, T, H * d)
Projector = Callable[[Any, Tensor, Tensor], tuple[Tensor, Tensor]]
#: (module, args, kwargs) -> (hidden (B, T, D) that feeds q and k, attention mask or None)
CallReader = Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, Any]]
#: module -> (heads, head size, scale)
GeometryReader = Callable[[Any], tuple[int, int, float]]
#: (module, args, kwargs, query) -> (1, H, S) float32 rows of a packed call (the recipe computes them itself)
PackedRows = Callable[[Any, tuple[Any, ...], dict[str, Any], str], Tensor]
#: (tower, its attention modules in layer order) -> the full-attention layers, or None when every layer is
FullAttentionReader = Callable[[nn.Module, list[nn.Module]], tuple[int, ...] | None]


def split_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """``hidden_states`` and ``attention_mask`` of an attention call, by keyword or position."""
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    return hidden, mask


def _separate_projections(module: Any, query: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
    return module.q_proj(query), module.k_proj(hidden)


def _heads_dim_scale(module: Any) -> tuple[int, int, float]:
    return int(module.num_heads), int(module.head_dim), float(module.scale)


@dataclass(frozen=True)
class TowerRecipe:
    """How to recompute query rows for the attention modules of the classes in ``classes``.

    Args:
        name: short name shown in messages (``"clip"``, ``"internvit"``, ...).
        classes: the attention-module classes served: types, or ``"module.path:ClassName"`` strings that
            are resolved only once that module is imported (a recipe never imports a host library).
        cls_position: where the tower's CLS token sits in the sequence: ``"first"``, ``"last"`` or
            ``"none"`` (SigLIP: no CLS; only stand-in queries exist).
        project: ``(module, query_hidden (B, q, D), hidden (B, T, D)) -> (queries (B, q, H d), keys (B, T, H d))``
            exactly as the module computes them before its attention kernel (norms included).
        read_call: ``(args, kwargs) -> (hidden, mask)`` of the module's forward call.
        geometry: ``module -> (heads, head size, scale)``.
        packed_rows: for modules called on a *packed* sequence (several images or windows in one
            ``(S, D)`` call, separated by ``cu_seqlens``, as Qwen2.5-VL's and Qwen3-VL's towers call theirs):
            ``(module, args, kwargs, query) -> (1, H, S)`` float32 rows that the hook records instead of
            running ``read_call`` / ``project`` / ``geometry`` on a ``(B, T, D)`` input. Each token's value
            is its weight within its own attention segment (rows sum to 1 per segment and head); the
            recipe documents the token order. None (the default): the generic ``(B, T, D)`` path.
        full_attention: ``(tower, attention modules in layer order) -> full-attention layers`` for towers
            whose other layers attend only inside windows (Qwen2.5-VL), read by the recipe from the
            tower class it knows; None (the default): every layer attends over the whole image
            (``full_attention_layers(tower)`` returns None).

    Raises:
        HeroError: on an empty name or class list, an unknown CLS position, or a ``packed_rows`` /
            ``full_attention`` that is neither None nor callable.
    """

    name: str
    classes: tuple[type | str, ...]
    cls_position: str
    project: Projector = _separate_projections
    read_call: CallReader = split_call
    geometry: GeometryReader = _heads_dim_scale
    packed_rows: PackedRows | None = None
    full_attention: FullAttentionReader | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise HeroError.field("TowerRecipe.name", self.name, "a non-empty str")
        if not isinstance(self.classes, tuple) or not self.classes:
            raise HeroError.field("TowerRecipe.classes", self.classes, "a non-empty tuple of classes or 'module:Class'")
        for cls in self.classes:
            if not (isinstance(cls, type) or (isinstance(cls, str) and cls.count(":") == 1)):
                raise HeroError.field("TowerRecipe.classes", cls, "a class or a 'module.path:ClassName' string")
        if self.cls_position not in CLS_POSITIONS:
            raise HeroError.field("TowerRecipe.cls_position", self.cls_position, f"one of {CLS_POSITIONS}")
        for name in ("packed_rows", "full_attention"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise HeroError.field(f"TowerRecipe.{name}", value, "None or a callable")

    def resolved(self) -> tuple[type, ...]:
        """The served classes whose modules are imported now (an unimported class has no instances)."""
        found: list[type] = []
        for cls in self.classes:
            if isinstance(cls, type):
                found.append(cls)
                continue
            module_name, class_name = cls.split(":")
            module = sys.modules.get(module_name)
            value = getattr(module, class_name, None) if module is not None else None
            if isinstance(value, type):
                found.append(value)
        return tuple(found)

    def class_names(self) -> list[str]:
        return [c.__name__ if isinstance(c, type) else c.split(":")[1] for c in self.classes]


_RECIPES: list[TowerRecipe] = []
_LOCK = threading.Lock()


def register_tower_recipe(recipe: TowerRecipe, *, first: bool = False) -> TowerRecipe:
    """Add ``recipe`` to the table (at the end, or before all others with ``first=True``).

    Examples:
        >>> register_tower_recipe(TowerRecipe("my-vit", (MyAttention,), "first"))   # doctest: +SKIP

    Raises:
        HeroError: if it is not a ``TowerRecipe`` or a recipe of that name exists.
    """
    if not isinstance(recipe, TowerRecipe):
        raise HeroError.field("recipe", recipe, "a hero_adapters.towers.TowerRecipe")
    with _LOCK:
        if any(r.name == recipe.name for r in _RECIPES):
            raise HeroError.field("TowerRecipe.name", recipe.name, "a name no registered recipe has")
        _RECIPES.insert(0 if first else len(_RECIPES), recipe)
    return recipe


def list_tower_recipes() -> list[TowerRecipe]:
    """The recipe table, in dispatch order."""
    with _LOCK:
        return list(_RECIPES)


def find_recipe(module: nn.Module) -> TowerRecipe | None:
    """The first recipe whose classes ``module`` is an instance of, or None."""
    for recipe in list_tower_recipes():
        classes = recipe.resolved()
        if classes and isinstance(module, classes):
            return recipe
    return None
