"""Exact integer arithmetic for budgets: ratio floors and capped largest-remainder apportionment.

Budgets are small integer vectors (one entry per view), so this runs on Python integers and
``fractions.Fraction``: exact, deterministic and identical on every device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

__all__ = ["apportion", "floor_ratio"]


def floor_ratio(keep_ratio: float, count: int) -> int:
    """``floor(keep_ratio * count)``, reading ``keep_ratio`` as the decimal it prints as.

    Float products drift (``0.29 * 100 == 28.999999999999996``); taking the shortest decimal
    representation of the float (``repr``) gives the answer a person expects (29) exactly.
    """
    return math.floor(Fraction(repr(float(keep_ratio))) * count)


def apportion(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """Split ``total`` integer units in proportion to ``weights``, each share capped at ``caps[i]``.

    Largest-remainder (Hamilton) method on exact rationals:

    1. Entries whose proportional quota reaches their cap are fixed at the cap; the remainder is
       re-apportioned over the others, in proportion to their weights (repeat until none saturates).
    2. The rest get the floor of their quota; the leftover units go one each to the largest
       fractional remainders, ties to the lower index.

    Entries with cap 0 take nothing. If the weights of the entries still open sum to zero, the units
    are split evenly among them. Requires ``0 <= total <= sum(caps)`` and non-negative weights.

    Monotone: an entry with a strictly larger weight and a cap at least as large never gets less.
    """
    if total < 0 or total > sum(caps):
        raise ValueError(f"total={total} must lie in [0, sum(caps)={sum(caps)}]")
    shares = [0] * len(caps)
    open_ = [i for i, cap in enumerate(caps) if cap > 0]
    exact = [Fraction(w) for w in weights]
    remaining = total
    while open_ and remaining > 0:
        mass = sum(exact[i] for i in open_)
        weight = {i: exact[i] for i in open_} if mass > 0 else {i: Fraction(1) for i in open_}
        mass = mass if mass > 0 else Fraction(len(open_))
        quota = {i: remaining * weight[i] / mass for i in open_}
        saturated = [i for i in open_ if quota[i] >= caps[i]]
        if saturated:
            for i in saturated:
                shares[i] = caps[i]
                remaining -= caps[i]
            open_ = [i for i in open_ if i not in saturated]
            continue
        floors = {i: math.floor(quota[i]) for i in open_}
        for i in open_:
            shares[i] = floors[i]
        leftover = remaining - sum(floors.values())
        # Largest remainder first; Python's sort is stable, so ties keep the lower index first.
        by_remainder = sorted(open_, key=lambda i: quota[i] - floors[i], reverse=True)
        for i in by_remainder[:leftover]:
            shares[i] += 1
        remaining = 0
    return shares
