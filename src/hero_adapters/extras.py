"""Lazy imports of optional host libraries, with a HeroError that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from hero_core import HeroError

__all__ = ["require"]

_EXTRAS = {"transformers": "hf", "tokenizers": "hf", "PIL": "hf", "open_clip": "openclip", "timm": "timm"}


def require(module: str) -> ModuleType:
    """Import ``module`` (e.g. ``"transformers.modeling_outputs"``) or raise a HeroError naming the extra.

    Raises:
        HeroError: if the top-level package is not installed.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = _EXTRAS.get(top, "all")
        raise HeroError.field(
            "optional dependency",
            top,
            f"the package {top!r} to be importable ({error})",
            f"Install the extra: pip install 'hero-prune[{extra}]'.",
        ) from error
