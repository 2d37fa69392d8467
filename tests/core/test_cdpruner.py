"""CDPruner (issue 20): the conditional DPP over the image's tokens, held to a brute-force determinant search.

The oracle below maximises ``det(L_S)`` by trying every candidate at every step (float64 determinants of the
kernel built from the same inputs): what greedy MAP inference means, without the incremental Cholesky factor the
selector uses. Inputs are drawn full-rank (feature width above the count) and kept only when every step is
decided by a clear margin, so rounding cannot reorder a pick.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from hero_core import CDPrunerSelector, HeroError, presets
from hero_core.selectors.cdpruner import conditional_relevance
from hero_core.testing import count_host_syncs, expected_total, make_tiles, with_token_relevance

# ------------------------------------------------------------------------------------------- the oracle


def kernel_of(features: torch.Tensor, raw: torch.Tensor, theta: float = 1.0, negate: bool = True) -> torch.Tensor:
    """L = diag(r) X X^T diag(r) in float64, written out from the paper (unit rows, min-max relevance)."""
    x = features.double()
    x = x / x.norm(dim=-1, keepdim=True)
    r = -raw.double() if negate else raw.double()
    r = (r - r.min() + 1e-6) / (r.max() - r.min())
    if theta < 1:
        r = torch.exp(theta / (2 * (1 - theta)) * r)
    return r[:, None] * (x @ x.T) * r[None, :]


def brute_force_map(kernel: torch.Tensor, count: int) -> tuple[list[int], float]:
    """Greedy MAP by trying every candidate's determinant; the smallest relative gap any step was decided by."""
    n = kernel.shape[0]
    chosen: list[int] = []
    margin = float("inf")
    base = 1.0
    while len(chosen) < count:
        dets = {}
        for j in range(n):
            if j in chosen:
                continue
            index = torch.tensor([*chosen, j])
            dets[j] = float(torch.linalg.det(kernel[index][:, index]))
        ranked = sorted(dets.values(), reverse=True)
        if len(ranked) > 1:
            margin = min(margin, (ranked[0] - ranked[1]) / base)
        best = max(dets, key=lambda j: (dets[j], -j))
        base = dets[best]
        chosen.append(best)
    return chosen, margin


def _flat_keep(keep: torch.Tensor) -> set[int]:
    return set(keep.reshape(-1).nonzero().flatten().tolist())


# ------------------------------------------------------------------------------------------- against the oracle


@given(
    views=st.integers(1, 3),
    side=st.integers(2, 3),
    count=st.integers(1, 6),
    theta=st.sampled_from([1.0, 0.5, 0.8]),
    negate=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    matrix=st.booleans(),
)
def test_cdpruner_equals_the_brute_force_determinant_search(
    views: int, side: int, count: int, theta: float, negate: bool, seed: int, matrix: bool
) -> None:
    tiles = make_tiles(num_views=views, grid=(side, side), token_features=True, width=12, seed=seed)
    tiles = with_token_relevance(tiles, seed=seed + 1)
    n = views * side * side
    assume(count < n)
    features = tiles.token_features.reshape(n, -1)
    raw = tiles.token_relevance.reshape(n)
    chosen, margin = brute_force_map(kernel_of(features, raw, theta, negate), count)
    assume(margin > 1e-3)
    selector = CDPrunerSelector(theta=theta, negate=negate, max_matrix_tokens=n if matrix else 0)
    keep = selector(tiles, torch.tensor([count]))
    assert _flat_keep(keep) == set(chosen)


def test_cdpruner_pinned_on_four_tokens() -> None:
    """Four tokens: two identical directions (0 and 1), two orthogonal ones. Relevance (negated, min-max) makes
    token 1 the most relevant; the DPP then refuses its duplicate 0 and takes the next most relevant of 2, 3."""
    features = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    raw = torch.tensor([-0.2, -0.3, 0.1, -0.1])  # negated: 0.2, 0.3, -0.1, 0.1 -> weights (r - min + 1e-6) / 0.4
    tiles = make_tiles(num_views=1, grid=(2, 2)).replace(token_features=features[None], token_relevance=raw[None])
    keep = CDPrunerSelector()(tiles, torch.tensor([2]))
    assert keep.reshape(-1).tolist() == [False, True, False, True]
    # without the negation the weights are 0.25, ~0, 1, 0.5: token 2, then 3 (0 is orthogonal too but weighs less)
    keep = CDPrunerSelector(negate=False)(tiles, torch.tensor([2]))
    assert keep.reshape(-1).tolist() == [False, False, True, True]
    # three: after 1 and 3 both gains left are below the rank floor (0 duplicates 1; 2 weighs ~2.5e-6, a gain of
    # ~6e-12): the third goes by weight, token 0 (0.75) before token 2
    keep = CDPrunerSelector()(tiles, torch.tensor([3]))
    assert keep.reshape(-1).tolist() == [True, True, False, True]
    # weights exactly as the authors' code computes them
    weights = conditional_relevance(raw)
    assert torch.allclose(weights, torch.tensor([0.3 + 1e-6, 0.4 + 1e-6, 1e-6, 0.2 + 1e-6]) / 0.4, atol=1e-6)
    half = conditional_relevance(raw, theta=0.5)  # exp(0.5 r): alpha = theta / (2 (1 - theta))
    assert torch.allclose(half, torch.exp(0.5 * weights), atol=1e-6)
    assert torch.equal(conditional_relevance(torch.full((5,), 0.3)), torch.ones(5))


def test_the_instruction_changes_the_choice() -> None:
    """The same features with the relevance of two different instructions keep different tokens (a DivPrune-like
    method that ignored the relevance would keep the same ones)."""
    tiles = make_tiles(num_views=3, grid=(4, 4), token_features=True, width=32, seed=3)
    first = with_token_relevance(tiles, seed=1)
    second = first.replace(token_relevance=-first.token_relevance)
    pruner = presets.cdpruner(0.2)
    a, b = pruner.plan(first).keep, pruner.plan(second).keep
    assert int(a.sum()) == int(b.sum()) == expected_total(tiles, 0.2)
    assert not torch.equal(a, b)


def test_once_the_rank_is_spent_the_rest_follow_the_relevance_weight() -> None:
    """Features of width 2: after two picks every determinant is 0. The remaining picks are the largest weights,
    so the count stays exact and the choice is deterministic (the released code would divide by zero)."""
    angles = torch.arange(8, dtype=torch.float32) * 0.4
    features = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # (8, 2)
    raw = -torch.tensor([0.05, 0.3, 0.1, 0.2, 0.0, 0.25, 0.15, 0.12])  # negated: weights follow these values
    tiles = make_tiles(num_views=1, grid=(2, 4)).replace(token_features=features[None], token_relevance=raw[None])
    keep = CDPrunerSelector()(tiles, torch.tensor([5])).reshape(-1)
    chosen, _ = brute_force_map(kernel_of(features, raw), 2)
    weights = conditional_relevance(raw)
    rest = [int(i) for i in torch.argsort(weights, descending=True, stable=True) if int(i) not in chosen][:3]
    assert set(keep.nonzero().flatten().tolist()) == set(chosen) | set(rest)


def test_the_row_path_equals_the_matrix_path_on_a_real_size_image() -> None:
    # 1728 tokens: the matrix is built in three strips of 768 rows
    tiles = with_token_relevance(make_tiles(num_views=3, grid=(24, 24), token_features=True, width=64, seed=9))
    budgets = torch.tensor([144])
    assert torch.equal(CDPrunerSelector()(tiles, budgets), CDPrunerSelector(max_matrix_tokens=0)(tiles, budgets))


# ------------------------------------------------------------------------------------------- refusals


def test_planning_without_token_relevance_is_refused_naming_the_preset() -> None:
    tiles = make_tiles(num_views=3, grid=(4, 4), token_features=True)
    with pytest.raises(HeroError, match=r"^tiles\.token_relevance=None.*preset 'cdpruner'.*score_tokens"):
        presets.cdpruner(0.3).plan(tiles)
    with pytest.raises(HeroError, match=r"preset 'cdpruner'"):
        presets.cdpruner(0.3).selector(tiles, torch.tensor([3]))
    assert torch.equal(presets.cdpruner(1.0).plan(tiles).keep, tiles.valid_mask)  # R = 1: nothing to choose


def test_non_finite_relevance_is_refused_inside_the_one_sync() -> None:
    tiles = with_token_relevance(make_tiles(num_views=3, grid=(4, 4), token_features=True))
    relevance = tiles.token_relevance.clone()
    relevance[2, 5] = float("inf")
    with count_host_syncs() as syncs, pytest.raises(HeroError, match=r"^token_relevance=.*finite.*score_tokens"):
        presets.cdpruner(0.3).plan(tiles.replace(token_relevance=relevance))
    assert syncs.count == 1


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: presets.cdpruner(0.2, theta=0.0), "theta"),
        (lambda: presets.cdpruner(0.2, theta=1.5), "theta"),
        (lambda: presets.cdpruner(0.2, theta=True), "theta"),
        (lambda: presets.cdpruner(0.2, negate="yes"), "negate"),
        (lambda: presets.cdpruner(0.2, max_matrix_tokens=-1), "max_matrix_tokens"),
    ],
)
def test_bad_fields_name_the_field(make: Any, field: str) -> None:
    with pytest.raises(HeroError, match=rf"^{field}="):
        make()


def test_token_relevance_of_the_wrong_shape_or_dtype_is_refused() -> None:
    tiles = make_tiles(num_views=2, grid=(2, 3))
    with pytest.raises(HeroError, match=r"^token_relevance=.*\(2, 6\)"):
        tiles.replace(token_relevance=torch.zeros(2, 5))
    with pytest.raises(HeroError, match=r"^token_relevance=.*floating"):
        tiles.replace(token_relevance=torch.zeros(2, 6, dtype=torch.long))


def test_only_cdpruner_needs_token_relevance() -> None:
    assert [name for name in presets.PRESETS if presets.get(name, 0.2).needs_token_relevance] == ["cdpruner"]
