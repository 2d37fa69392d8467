"""Selectors that choose across all views of an image (``scope = "image"``): DivPrune, DART and CDPruner (issue 20).

The planner gives such a selector the image's total (``exact_total``), so every preset keeps as many tokens as
``hero`` at the same ratio; the plan reports the per-view counts the selector produced. Each method is held to a
slow, obviously-correct loop written here, on inputs without near-ties.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from hero_core import CDPrunerSelector, DartSelector, DivPruneSelector, HeroError, Pruner, UniformAllocator, presets
from hero_core.testing import (
    check_allocator,
    check_selector,
    count_host_syncs,
    encoded_tiles,
    expected_total,
    keep_ratios,
    make_tiles,
    with_token_features,
)

NEW = ("divprune", "dart", "cdpruner")
MARGIN = 1e-4  # float32 similarities are exact to ~1e-7: a gap this wide cannot be reordered by rounding

multi_view = encoded_tiles(max_views=6, max_side=5, token_features=True, token_relevance=True)


# ------------------------------------------------------------------------------------------- slow oracles


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _gap(values: list[float]) -> float:
    """How far the best of ``values`` (the largest) is from the next one (inf for a single value)."""
    ranked = sorted(values, reverse=True)
    return ranked[0] - ranked[1] if len(ranked) > 1 else math.inf


def divprune_oracle(vectors: list[list[float]], count: int) -> tuple[list[int], float]:
    """DivPrune's greedy max-min in plain Python (cosine distance), and the smallest gap any step decided by."""
    n = len(vectors)
    dist = [[1.0 - _cos(a, b) for b in vectors] for a in vectors]
    nearest = [min(dist[i][j] for j in range(n) if j != i) for i in range(n)]  # distance to the nearest neighbour
    first = max(range(n), key=lambda i: nearest[i])
    chosen, margin = [first], _gap(nearest)
    while len(chosen) < count:
        score = {i: min(dist[i][c] for c in chosen) for i in range(n) if i not in chosen}
        best = max(score, key=lambda i: score[i])
        margin = min(margin, _gap(list(score.values())))
        chosen.append(best)
    return chosen, margin


def dart_oracle(vectors: list[list[float]], total: int, pivots: int, rule: str) -> tuple[list[int], float]:
    """DART's pivots and per-pivot growth in plain Python, and the smallest gap any choice was decided by."""
    n = len(vectors)
    if rule == "l1":
        norms = [sum(abs(x) for x in v) for v in vectors]
    else:
        norms = [math.sqrt(sum(x * x for x in v)) for v in vectors]
    by_norm = sorted(range(n), key=lambda i: -norms[i])
    count = min(pivots, total)
    pivot_ids = by_norm[:count]
    margin = norms[by_norm[count - 1]] - norms[by_norm[count]] if count < n else math.inf
    kept = list(pivot_ids)
    candidates = [i for i in range(n) if i not in pivot_ids]
    for i, pivot in enumerate(pivot_ids):
        remaining = total - len(kept)
        if remaining <= 0:
            break
        take = math.ceil(remaining / (count - i))
        ranked = sorted(candidates, key=lambda c: _cos(vectors[pivot], vectors[c]))
        if take < len(ranked):
            margin = min(
                margin, _cos(vectors[pivot], vectors[ranked[take]]) - _cos(vectors[pivot], vectors[ranked[take - 1]])
            )
        kept += ranked[:take]
        candidates = ranked[take:]
    return kept, margin


def _valid_vectors(tiles: Any) -> tuple[list[int], list[list[float]]]:
    """Flat positions ``view * N + position`` of the valid tokens, ascending, and their features."""
    flat = tiles.valid_mask.reshape(-1).tolist()
    features = tiles.token_features.reshape(len(flat), -1).double().tolist()
    positions = [i for i, ok in enumerate(flat) if ok]
    return positions, [features[i] for i in positions]


def _kept_positions(keep: torch.Tensor) -> set[int]:
    return set(keep.reshape(-1).nonzero().flatten().tolist())


# ------------------------------------------------------------------------------------------- counts, padding


@pytest.mark.parametrize("name", NEW)
@given(tiles=multi_view, ratio=keep_ratios())
def test_exact_counts_equal_hero_and_padding_is_never_kept(name: str, tiles: Any, ratio: float) -> None:
    plan = presets.get(name, ratio).plan(tiles)
    hero = presets.hero(ratio).plan(tiles)
    assert plan.num_kept == hero.num_kept == expected_total(tiles, ratio)
    assert torch.equal(plan.keep.sum(-1), plan.budgets) and plan.budgets.dtype == torch.int64
    assert not bool((plan.keep & ~tiles.valid_mask).any())


@pytest.mark.parametrize("name", NEW)
@given(tiles=multi_view, ratio=keep_ratios())
def test_plans_are_deterministic_and_a_batch_plans_as_each_image(name: str, tiles: Any, ratio: float) -> None:
    pruner = presets.get(name, ratio)
    first, again = pruner.plan(tiles.replace()), pruner.plan(tiles.replace())
    (batched,) = pruner.plan_batch([tiles.replace()])
    assert torch.equal(first.keep, again.keep) and torch.equal(first.keep, batched.keep)
    assert torch.equal(first.budgets, batched.budgets)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtype_and_device_are_kept_and_the_tiles_are_not_changed(name: str, dtype: torch.dtype) -> None:
    tiles = make_tiles(
        num_views=5, grid=(6, 6), padding="rows", token_features=True, token_relevance=True, dtype=dtype, seed=4
    )
    before = tiles.token_features.clone()
    plan = presets.get(name, 0.2).plan(tiles)
    assert plan.keep.dtype == torch.bool and plan.keep.device == tiles.device
    assert plan.budgets.dtype == torch.int64 and plan.budgets.device == tiles.device
    assert plan.num_kept == expected_total(tiles, 0.2)
    assert torch.equal(tiles.token_features, before) and tiles.token_features.dtype == dtype


@pytest.mark.parametrize("name", NEW)
def test_one_host_sync_per_batch(name: str) -> None:
    images = [
        make_tiles(num_views=5, grid=(4, 6), padding="rows", token_features=True, token_relevance=True, seed=s)
        for s in range(3)
    ]
    with count_host_syncs() as syncs:
        plans = presets.get(name, 0.3).plan_batch(images)
    assert syncs.count == 1, syncs.table()
    assert [p.num_kept for p in plans] == [expected_total(t, 0.3) for t in images]


def test_the_views_share_the_total_as_the_method_chooses() -> None:
    """Where the uniform split gives every tile the same share, DivPrune keeps a view whose tokens are
    all one vector at most once (the rest are at distance 0 from it), and DART none of a view of copies of its pivot."""
    tiles = make_tiles(num_views=5, grid=(6, 6), token_features=True, token_relevance=True, seed=2)
    assert presets.uniform_strided(0.3).plan(tiles).budgets.tolist() == [10, 11, 11, 11, 11]
    features = tiles.token_features.clone()
    features[3] = features[3, 0]  # view 3: 36 copies of one token
    assert int(presets.divprune(0.3).plan(tiles.replace(token_features=features)).budgets[3]) <= 1
    others = torch.cat([tiles.token_features[:3], tiles.token_features[4:]]).reshape(-1, 8)
    pivot = others[others.abs().sum(-1).argmax()]
    features[3] = 0.5 * pivot  # view 3: 36 shorter copies of the pivot (cosine 1 with it)
    plan = presets.dart(0.3, pivots=1).plan(tiles.replace(token_features=features))
    assert plan.num_kept == 54 and int(plan.budgets[3]) == 0


# ------------------------------------------------------------------------------------------- oracles


@given(
    tiles=encoded_tiles(max_views=4, max_side=4, token_features=True, token_relevance=True),
    ratio=keep_ratios(),
    rows=st.booleans(),
)
def test_divprune_matches_the_plain_greedy_loop(tiles: Any, ratio: float, rows: bool) -> None:
    positions, vectors = _valid_vectors(tiles)
    total = expected_total(tiles, ratio)
    assume(0 < total < len(positions))
    chosen, margin = divprune_oracle(vectors, total)
    assume(margin > MARGIN)
    selector = DivPruneSelector(max_matrix_tokens=0 if rows else 8192)  # both paths: rows per step, or the matrix
    keep = check_selector(selector, tiles, torch.tensor([total]))
    assert _kept_positions(keep) == {positions[i] for i in chosen}


@given(
    tiles=encoded_tiles(max_views=4, max_side=4, token_features=True, token_relevance=True),
    ratio=keep_ratios(),
    pivots=st.integers(1, 6),
    rule=st.sampled_from(["l1", "l2"]),
)
def test_dart_matches_the_plain_loop(tiles: Any, ratio: float, pivots: int, rule: str) -> None:
    positions, vectors = _valid_vectors(tiles)
    total = expected_total(tiles, ratio)
    assume(0 < total < len(positions))
    chosen, margin = dart_oracle(vectors, total, pivots, rule)
    assume(margin > MARGIN)
    keep = check_selector(DartSelector(pivots=pivots, pivot_rule=rule), tiles, torch.tensor([total]))
    assert _kept_positions(keep) == {positions[i] for i in chosen}


def _circle(degrees: list[float], radii: list[float] | None = None) -> Any:
    """One view of ``len(degrees)`` tokens whose features are 2-d points at those angles (and radii)."""
    radii = radii or [1.0] * len(degrees)
    points = [[r * math.cos(math.radians(a)), r * math.sin(math.radians(a))] for a, r in zip(degrees, radii)]
    tiles = make_tiles(num_views=1, grid=(1, len(degrees)))
    return tiles.replace(token_features=torch.tensor([points], dtype=torch.float32))


def test_the_row_and_matrix_paths_agree_past_one_strip() -> None:
    """1728 tokens: the similarity matrix and DivPrune's rows per step are computed in strips of 768 rows, so the
    second and third strips (their diagonal offsets) are exercised; both paths pick the same tokens, and the
    matrix equals x x^T."""
    from hero_core.selectors.divprune import _similarity

    tiles = make_tiles(num_views=3, grid=(24, 24), token_features=True, width=32, seed=3)
    x = torch.nn.functional.normalize(tiles.token_features.reshape(-1, 32), dim=-1)
    torch.testing.assert_close(_similarity(x), x @ x.T, atol=1e-6, rtol=0)
    for total in (7, 40):
        budget = torch.tensor([total])
        assert torch.equal(DivPruneSelector()(tiles, budget), DivPruneSelector(max_matrix_tokens=0)(tiles, budget))
    # a token far from all others, in the last strip, is DivPrune's first pick on both paths
    features = tiles.token_features.clone()
    features[..., -1] = 0.0  # every token in the first 31 dimensions, but one along the 32nd: cosine 0 to all
    features[2, 500] = torch.nn.functional.one_hot(torch.tensor(31), 32).float()
    odd = tiles.replace(token_features=features)
    for selector in (DivPruneSelector(), DivPruneSelector(max_matrix_tokens=0)):
        assert bool(selector(odd, torch.tensor([1]))[2, 500])


def test_divprune_pinned_on_points_of_a_circle() -> None:
    # 90 deg is farthest from its nearest neighbour (80 deg to 10); then 185 (95 deg away); then 0 (90 from 90)
    tiles = _circle([0, 10, 90, 180, 185])
    keep = DivPruneSelector()(tiles, torch.tensor([3]))
    assert keep[0].tolist() == [True, False, True, False, True]


def test_dart_pinned_on_points_of_a_circle() -> None:
    # the pivot is the longest vector (at 0 deg); the two least similar to it are at 180 and 150 deg
    tiles = _circle([0, 20, 90, 150, 180, 10], radii=[3, 1, 1, 1, 1, 1])
    keep = DartSelector(pivots=1)(tiles, torch.tensor([3]))
    assert keep[0].tolist() == [True, False, False, True, True, False]
    # two pivots (0 deg, then 20 deg: its L1 norm cos + sin is the largest left), one more token each:
    # the pivot at 0 takes 180; the pivot at 20 takes the least similar of the rest, 150 (130 deg away)
    tiles = _circle([0, 20, 90, 150, 180, 10], radii=[3, 2, 1, 1, 1, 1])
    keep = DartSelector(pivots=2)(tiles, torch.tensor([4]))
    assert keep[0].tolist() == [True, True, False, True, True, False]


# ------------------------------------------------------------------------------------------- the testing kit


@pytest.mark.parametrize(
    "make",
    [
        DivPruneSelector,
        DartSelector,
        lambda: DartSelector(pivots=1, pivot_rule="l2"),
        CDPrunerSelector,
        lambda: CDPrunerSelector(theta=0.5),
    ],
)
@given(tiles=encoded_tiles(token_features=True, token_relevance=True), ratio=keep_ratios())
def test_the_testing_kit_invariants_hold(make: Any, tiles: Any, ratio: float) -> None:
    budgets = check_allocator(UniformAllocator(), tiles, None, ratio, exact_total=True)
    keep = check_selector(make(), tiles, budgets)  # per-view budgets: the selector takes their total
    assert int(keep.sum()) == int(budgets.sum())


def test_check_selector_holds_image_selectors_to_the_total() -> None:
    tiles = make_tiles(num_views=3, grid=(2, 2), token_features=True, token_relevance=True)

    class OneShort:
        scope = "image"
        layers = ()

        def __call__(self, tiles: Any, budgets: torch.Tensor, /) -> torch.Tensor:
            keep = DivPruneSelector()(tiles, budgets)
            keep.view(-1)[keep.view(-1).nonzero()[0]] = False
            return keep

    with pytest.raises(AssertionError, match="over the image"):
        check_selector(OneShort(), tiles, torch.tensor([2, 1, 1]))


def test_with_token_features_keeps_dtype_device_and_the_other_tensors() -> None:
    tiles = make_tiles(num_views=2, grid=(2, 3), dtype=torch.float16)
    fed = with_token_features(tiles, width=5, seed=1)
    assert fed.token_features.shape == (2, 6, 5) and fed.token_features.dtype == torch.float16
    assert torch.equal(fed.cls_tokens, tiles.cls_tokens) and torch.equal(fed.cls_attention, tiles.cls_attention)
    assert torch.equal(with_token_features(tiles, width=5, seed=1).token_features, fed.token_features)


# ------------------------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_only_the_new_presets_need_features_and_choose_across_views(name: str) -> None:
    pruner = presets.get(name, 0.2)
    new = name in NEW
    assert pruner.needs_features is (new or name == "visionzip")  # VisionZip merges by features, inside each view
    assert (pruner.scope == "image") is new
    if new:
        assert pruner.layers == () and pruner.uses_relevance is False and pruner.count_known is True


@pytest.mark.parametrize("name", NEW)
def test_planning_without_features_is_refused_naming_the_preset(name: str) -> None:
    tiles = make_tiles(num_views=3, grid=(4, 4))
    with pytest.raises(HeroError, match=rf"^tiles\.token_features=None.*preset '{name}'.*HeroVLM"):
        presets.get(name, 0.3).plan(tiles)
    with pytest.raises(HeroError, match=rf"preset '{name}'"):
        presets.get(name, 0.3).plan_batch([with_token_features(tiles), tiles])
    with pytest.raises(HeroError, match=rf"preset '{name}'"):  # called directly
        presets.get(name, 0.3).selector(tiles, torch.tensor([3]))
    # nothing is selected at R = 1 (every valid token): no features needed
    assert torch.equal(presets.get(name, 1.0).plan(tiles).keep, tiles.valid_mask)


@pytest.mark.parametrize("name", NEW)
def test_non_finite_features_are_refused_inside_the_one_sync(name: str) -> None:
    tiles = make_tiles(num_views=3, grid=(4, 4), token_features=True, token_relevance=True)
    features = tiles.token_features.clone()
    features[1, 2, 0] = float("nan")
    with pytest.raises(HeroError, match=r"^token_features=.*finite"):
        presets.get(name, 0.3).plan(tiles.replace(token_features=features))


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: presets.dart(0.2, pivots=0), "pivots"),
        (lambda: presets.dart(0.2, pivots=True), "pivots"),
        (lambda: presets.dart(0.2, pivot_rule="max"), "pivot_rule"),
        (lambda: presets.divprune(0.2, max_matrix_tokens=-1), "max_matrix_tokens"),
        (lambda: presets.divprune(0.2, alpha=0.5), "alpha"),
        (lambda: presets.divprune(0.2, depth=1), "depth"),
        (lambda: presets.dart(0.2, full_attention=(40,)), "full_attention"),
    ],
)
def test_bad_fields_name_the_field(make: Any, field: str) -> None:
    with pytest.raises(HeroError, match=rf"^{field}="):
        make()


def test_bad_budgets_and_a_bad_scope_are_refused() -> None:
    tiles = make_tiles(num_views=3, grid=(2, 2), token_features=True, token_relevance=True)
    with pytest.raises(HeroError, match=r"^budgets=.*\(1,\)"):
        DivPruneSelector()(tiles, torch.tensor([1.0]))
    with pytest.raises(HeroError, match=r"total budget=13"):
        DartSelector()(tiles, torch.tensor([13]))

    def anywhere(tiles: Any, budgets: torch.Tensor, /) -> torch.Tensor:
        return torch.zeros_like(tiles.valid_mask)

    anywhere.layers = ()  # type: ignore[attr-defined]
    anywhere.scope = "tile"  # type: ignore[attr-defined]
    with pytest.raises(HeroError, match=r"^selector\.scope='tile'"):
        Pruner(0.5, UniformAllocator(), anywhere)


def test_a_custom_image_selector_is_checked_and_reports_its_per_view_counts() -> None:
    tiles = make_tiles(num_views=3, grid=(2, 2), padding="random", pad_amount=0.5, seed=5)

    def first_valid(tiles: Any, total: torch.Tensor, /) -> torch.Tensor:
        """The first ``total`` valid positions in raster order over the views."""
        flat = tiles.valid_mask.reshape(-1)
        rank = flat.long().cumsum(0) - 1
        return ((rank < int(total.sum())) & flat).reshape(tiles.valid_mask.shape)

    first_valid.layers = ()  # type: ignore[attr-defined]
    first_valid.scope = "image"  # type: ignore[attr-defined]
    plan = Pruner(0.5, UniformAllocator(), first_valid).plan(tiles)
    assert plan.num_kept == expected_total(tiles, 0.5)
    assert torch.equal(plan.budgets, plan.keep.sum(-1))

    def everything(tiles: Any, total: torch.Tensor, /) -> torch.Tensor:
        return torch.ones_like(tiles.valid_mask)  # padding and too many

    everything.layers = ()  # type: ignore[attr-defined]
    everything.scope = "image"  # type: ignore[attr-defined]
    with pytest.raises(HeroError, match=r"keep mask=.*exactly the image's total"):
        Pruner(0.5, UniformAllocator(), everything).plan(tiles)
