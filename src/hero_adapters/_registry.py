"""Adapters register explicitly for the ``config.model_type`` values they serve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hero_core import HeroError

__all__ = ["get_adapter", "list_adapters", "register_adapter"]

_ADAPTERS: dict[str, type[Any]] = {}
T = TypeVar("T", bound=type[Any])


def register_adapter(*model_types: str) -> Callable[[T], T]:
    """Class decorator: serve the models whose ``config.model_type`` is one of ``model_types``.

    Example:
        >>> @register_adapter("llava_next")                 # doctest: +SKIP
        ... class LlavaNextAdapter: ...

    Raises:
        HeroError: on no model type, a non-string one, or one that already has an adapter.
    """
    if not model_types or not all(isinstance(name, str) and name for name in model_types):
        raise HeroError.field("model_types", model_types, "one or more non-empty config.model_type strings")

    def decorate(cls: T) -> T:
        taken = {name: _ADAPTERS[name].__name__ for name in model_types if name in _ADAPTERS}
        if taken:
            raise HeroError.field(
                "model_types", model_types, "model types without an adapter yet", f"Already registered: {taken}."
            )
        for name in model_types:
            _ADAPTERS[name] = cls
        return cls

    return decorate


def list_adapters() -> list[str]:
    """The ``config.model_type`` values that have an adapter, sorted."""
    return sorted(_ADAPTERS)


def get_adapter(model: Any, **options: Any) -> Any:
    """The adapter for ``model``, chosen by ``model.config.model_type`` and built as ``Adapter(model, **options)``.

    Raises:
        HeroError: if the model has no config or its type has no adapter (the message lists the supported ones).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    cls = _ADAPTERS.get(model_type) if isinstance(model_type, str) else None
    if cls is None:
        raise HeroError.field(
            "model.config.model_type",
            model_type,
            f"one of the supported model types {list_adapters()}",
            "Use a supported model, or write an adapter and decorate it with @register_adapter(<model_type>).",
        )
    return cls(model, **options)
