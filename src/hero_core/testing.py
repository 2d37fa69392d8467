"""Property-testing kit for users and for the library's own tests.

Hypothesis strategies that generate valid ``EncodedTiles`` and checkers that hold any
``BudgetAllocator`` / ``TokenSelector`` to the library's invariants. Five lines test a custom allocator:

    from hypothesis import given
    from hero_core.testing import check_allocator, encoded_tiles, keep_ratios

    @given(encoded_tiles(), keep_ratios())
    def test_my_allocator(tiles, ratio):
        check_allocator(MyAllocator(), tiles, None, ratio, exact_total=True)

The strategies (``encoded_tiles``, ``keep_ratios``, ``relevances``) need the ``test`` extra
(hypothesis) and are imported on first use; ``make_tiles`` and the checkers need only torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ._arith import floor_ratio
from ._errors import HeroError
from ._make_tiles import DEFAULT_LAYERS, make_tiles
from ._syncs import HostSyncs, count_host_syncs
from .protocols import BudgetAllocator, TokenSelector
from .tiles import EncodedTiles

if TYPE_CHECKING:
    from ._strategies import encoded_tiles, keep_ratios, relevances

__all__ = [
    "DEFAULT_LAYERS",
    "HostSyncs",
    "check_allocator",
    "check_selector",
    "count_host_syncs",
    "encoded_tiles",
    "expected_total",
    "keep_ratios",
    "make_tiles",
    "relevances",
    "with_token_features",
    "with_token_relevance",
]

_STRATEGIES = ("encoded_tiles", "keep_ratios", "relevances")


def __getattr__(name: str) -> Any:
    """The hypothesis strategies load on first use, so the rest of this module works without hypothesis."""
    if name not in _STRATEGIES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module("._strategies", __package__)
    except ImportError as error:
        raise HeroError(
            f"hero_core.testing.{name} needs hypothesis: install it with `pip install 'hero-prune[test]'`."
        ) from error
    return getattr(module, name)


def expected_total(tiles: EncodedTiles, keep_ratio: float) -> int:
    """The exact total of the paper preset: ``min(floor(R * V * N), total valid)``."""
    return min(floor_ratio(keep_ratio, tiles.num_views * tiles.num_tokens), int(tiles.valid_mask.sum()))


def check_allocator(
    allocator: BudgetAllocator,
    tiles: EncodedTiles,
    relevance: Tensor | None,
    keep_ratio: float,
    *,
    exact_total: bool = False,
) -> Tensor:
    """Assert the invariants every ``BudgetAllocator`` must hold; return its budgets.

    Always: (V,) int64 on the tiles' device, ``0 <= b_v <= n_v``, the same result on a second call.
    With ``exact_total``: ``sum == min(floor(R V N), valid)``, so ``R = 1`` keeps every valid token.

    Raises:
        AssertionError: naming the invariant that broke, with the inputs that broke it.
    """
    budgets = allocator(tiles, relevance, keep_ratio)
    context = f"{type(allocator).__name__} at keep_ratio={keep_ratio!r}, V={tiles.num_views}, N={tiles.num_tokens}"
    _require(isinstance(budgets, Tensor), f"{context}: returned {type(budgets).__name__}, not a Tensor")
    _require(budgets.shape == (tiles.num_views,), f"{context}: shape {tuple(budgets.shape)} != ({tiles.num_views},)")
    _require(budgets.dtype == torch.int64, f"{context}: dtype {budgets.dtype} != torch.int64")
    _require(budgets.device == tiles.device, f"{context}: device {budgets.device} != {tiles.device}")
    capacity = tiles.valid_mask.sum(-1)
    _require(bool((budgets >= 0).all()), f"{context}: negative budget in {budgets.tolist()}")
    _require(
        bool((budgets <= capacity).all()),
        f"{context}: budgets {budgets.tolist()} exceed valid counts {capacity.tolist()}",
    )
    again = allocator(tiles, relevance, keep_ratio)
    _require(torch.equal(budgets, again), f"{context}: second call gave {again.tolist()} != {budgets.tolist()}")
    if exact_total:
        want = expected_total(tiles, keep_ratio)
        _require(int(budgets.sum()) == want, f"{context}: sum {int(budgets.sum())} != min(floor(R V N), valid) {want}")
    return budgets


def check_selector(selector: TokenSelector, tiles: EncodedTiles, budgets: Tensor, *, dtypes: bool = False) -> Tensor:
    """Assert the invariants every ``TokenSelector`` must hold; return its keep mask.

    Always: (V, N) bool on the tiles' device, only valid positions, the same result on a second call, and
    exactly ``budgets[v]`` kept in view v; for a selector that chooses across views (``scope = "image"``)
    exactly ``budgets.sum()`` over the whole image, spread as it likes. With ``dtypes`` (use it on tiles made
    with ``separated=True``): the same keep set when the attention, the CLS tokens and any ``token_features``
    are cast to bfloat16 and float16.

    Raises:
        AssertionError: naming the invariant that broke.
    """
    keep = selector(tiles, budgets)
    context = f"{type(selector).__name__} with budgets {budgets.tolist()}"
    shape = (tiles.num_views, tiles.num_tokens)
    _require(isinstance(keep, Tensor), f"{context}: returned {type(keep).__name__}, not a Tensor")
    _require(keep.shape == shape, f"{context}: shape {tuple(keep.shape)} != {shape}")
    _require(keep.dtype == torch.bool, f"{context}: dtype {keep.dtype} != torch.bool")
    _require(keep.device == tiles.device, f"{context}: device {keep.device} != {tiles.device}")
    counts = keep.sum(-1)
    if getattr(selector, "scope", "view") == "image":
        total = int(budgets.sum())
        _require(int(counts.sum()) == total, f"{context}: kept {int(counts.sum())} over the image, not {total}")
    else:
        _require(torch.equal(counts.cpu(), budgets.cpu()), f"{context}: kept {counts.tolist()} per view")
    _require(not bool((keep & ~tiles.valid_mask).any()), f"{context}: kept a padding position")
    _require(torch.equal(keep, selector(tiles, budgets)), f"{context}: a second call chose other tokens")
    if dtypes:
        for dtype in (torch.bfloat16, torch.float16):
            features = None if tiles.token_features is None else tiles.token_features.to(dtype)
            relevance = None if tiles.token_relevance is None else tiles.token_relevance.to(dtype)
            cast = tiles.replace(
                cls_attention=tiles.cls_attention.to(dtype),
                cls_tokens=tiles.cls_tokens.to(dtype),
                token_features=features,
                token_relevance=relevance,
            )
            _require(torch.equal(keep, selector(cast, budgets)), f"{context}: {dtype} inputs chose other tokens")
    return keep


def with_token_features(tiles: EncodedTiles, *, width: int = 8, seed: int = 0) -> EncodedTiles:
    """``tiles`` with ``token_features`` (V, N, width) drawn from a seeded normal distribution on the CPU, in the
    dtype of ``cls_tokens`` and on the tiles' device (the other tensors unchanged): the input of presets that
    compare tokens by their features (``Pruner.needs_features``: ``divprune``, ``dart``)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(tiles.num_views, tiles.num_tokens, width, generator=generator)
    return tiles.replace(token_features=features.to(dtype=tiles.cls_tokens.dtype, device=tiles.device))


def with_token_relevance(tiles: EncodedTiles, *, seed: int = 0) -> EncodedTiles:
    """``tiles`` with ``token_relevance`` (V, N) drawn uniformly from [-0.3, 0.3] (the range of CLIP cosines) by a
    seeded CPU generator, in the dtype of ``cls_tokens`` and on the tiles' device: the instruction-conditioning
    of presets that read it (``Pruner.needs_token_relevance``: ``cdpruner``)."""
    generator = torch.Generator().manual_seed(seed)
    relevance = (torch.rand(tiles.num_views, tiles.num_tokens, generator=generator) - 0.5) * 0.6
    return tiles.replace(token_relevance=relevance.to(dtype=tiles.cls_tokens.dtype, device=tiles.device))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)
