"""The one exception type for bad input, and the helpers that word its messages."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["HeroError", "check_keep_ratio", "check_positive", "check_relevance", "check_unit_interval", "describe"]


class HeroError(ValueError):
    """Bad input to the HERO library.

    Every message says which field was wrong, the value it had, the valid range, and what to do.
    It subclasses ``ValueError`` so that callers who already catch that keep working.
    """

    @classmethod
    def field(cls, name: str, value: Any, expected: str, fix: str = "") -> HeroError:
        """Build the standard message: ``<name>=<value> is invalid: expected <expected>. <fix>``."""
        message = f"{name}={describe(value)} is invalid: expected {expected}."
        if fix:
            message += f" {fix}"
        return cls(message)


def describe(value: Any) -> str:
    """A short, readable rendering of a value for an error message (tensors by shape and dtype)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None and len(shape) > 0:
        return f"<tensor shape={tuple(shape)} dtype={dtype}>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_keep_ratio(keep_ratio: Any, name: str = "keep_ratio") -> float:
    """Return ``keep_ratio`` as a float after checking it is finite and in (0, 1]."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real):
        raise HeroError.field(
            name, keep_ratio, "a float in (0, 1]", "Pass the fraction of patch tokens to keep, e.g. 0.2."
        )
    value = float(keep_ratio)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise HeroError.field(
            name,
            keep_ratio,
            "a finite float in (0, 1]",
            "It is the fraction of patch tokens KEPT (0.2 keeps 20%), not the fraction dropped.",
        )
    return value


RELEVANCE_FINITE = ("finite floating-point scores", "Check the text scorer's output for NaN/inf.")


def check_relevance(relevance: Any, num_views: int, *, finite: bool = True) -> None:
    """Relevance must be None or a finite (V,) float tensor (one CLIP score per view).

    ``finite=False`` checks only what needs no host sync (type, shape, dtype); the planner then has the
    values checked in its one host-device transfer (``EncodedTiles.check_later``)."""
    if relevance is None:
        return
    import torch  # local: keeps this module importable for messages alone

    if not isinstance(relevance, torch.Tensor) or relevance.shape != (num_views,):
        raise HeroError.field(
            "relevance",
            relevance,
            f"None or a tensor of shape ({num_views},), one score per view (thumbnail included)",
            "A TextScorer must return one cosine per view it was given.",
        )
    if not relevance.dtype.is_floating_point or (finite and not bool(torch.isfinite(relevance).all())):
        raise HeroError.field("relevance", relevance, *RELEVANCE_FINITE)


def check_unit_interval(name: str, value: Any) -> float:
    """A finite float in [0, 1] (``alpha``, ``density_weight``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise HeroError.field(name, value, "a float in [0, 1]")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """A finite float > 0 (temperatures)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise HeroError.field(
            name, value, "a finite float > 0", "Temperatures in the paper's sweep lie in [0.01, 0.09]."
        )
    return float(value)
