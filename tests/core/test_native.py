"""``presets.hero_native``: HERO for hosts without tiles (one view of merged tokens, regions as tiles).

Each claim is checked against a slow loop written here (the oracle), on values: region boxes, global picks,
region budgets and the tokens picked inside each region.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hero_core import EncodedTiles, HeroError, HeroNativePruner, ImageCounts, NativePlan, RegionAllocator, presets
from hero_core.counts import exact_total
from hero_core.testing import check_selector, count_host_syncs, keep_ratios, make_tiles

LAYERS = tuple(range(24))
QWEN25_FULL = (7, 15, 23, 31)


def _tiles(grid: tuple[int, int], seed: int = 0, **kw) -> EncodedTiles:
    return make_tiles(num_views=1, grid=grid, layers=LAYERS, token_features=True, seed=seed, **kw)


def _plan(pruner: HeroNativePruner, tiles: EncodedTiles, relevance=None) -> NativePlan:
    plan = pruner.plan(tiles, relevance)
    assert isinstance(plan, NativePlan)
    return plan


# ---------------------------------------------------------------------------------------------- the oracle


def _cuts(length: int, region: int) -> list[int]:
    parts = max(1, math.floor(Fraction(length, region) + Fraction(1, 2)))  # round half up
    return [math.floor(Fraction(i * length, parts)) for i in range(parts + 1)]


def _boxes(grid: tuple[int, int], region: int) -> list[tuple[int, int, int, int]]:
    rows, cols = _cuts(grid[0], region), _cuts(grid[1], region)
    return [(rows[i], cols[j], rows[i + 1], cols[j + 1]) for i in range(len(rows) - 1) for j in range(len(cols) - 1)]


def _score(tiles: EncodedTiles, layers: tuple[int, ...], head_reduction: str = "mean") -> list[float]:
    """(N,) head-reduced attention averaged over ``layers``, by the same float32 ops as the planner (the oracle is
    about regions, budgets and picks, not about rounding)."""
    rows = torch.stack([tiles.cls_attention[tiles.attention_layers.index(layer), 0] for layer in layers]).float()
    if head_reduction == "softmax_mean":
        rows = torch.softmax(rows, dim=-1)
    return rows.mean(dim=1).mean(dim=0).tolist()


def _top(scores: list[float], allowed: list[int], k: int) -> set[int]:
    return set(sorted(allowed, key=lambda j: (-scores[j], j))[:k])


def _hamilton(pool: int, weights: list[float], caps: list[int]) -> list[int]:
    """Capped largest remainders with redistribution, written out slowly."""
    shares, open_, left = [0] * len(caps), [i for i in range(len(caps)) if caps[i] > 0], pool
    w = [Fraction(x) for x in weights]
    while open_ and left > 0:
        mass = sum(w[i] for i in open_)
        quota = {i: left * (w[i] / mass if mass > 0 else Fraction(1, len(open_))) for i in open_}
        full = [i for i in open_ if quota[i] >= caps[i]]
        if full:
            for i in full:
                shares[i], left = caps[i], left - caps[i]
            open_ = [i for i in open_ if i not in full]
            continue
        for i in open_:
            shares[i] = math.floor(quota[i])
        extra = left - sum(math.floor(quota[i]) for i in open_)
        for i in sorted(open_, key=lambda i: (-(quota[i] - math.floor(quota[i])), i))[:extra]:
            shares[i] += 1
        left = 0
    return shares


def _oracle(tiles: EncodedTiles, ratio: float, relevance=None, **fields):
    """(keep set, global set, region budgets, importance) by loops over tokens and regions."""
    alloc = RegionAllocator(**{k: v for k, v in fields.items() if k in ("region", "global_share", "alpha")})
    low, high = fields.get("low_layers", (5, 6, 7, 8)), fields.get("high_layers", (21,))
    gh, gw = tiles.grid
    n = gh * gw
    total = min(math.floor(Fraction(repr(ratio)) * n), n)
    quota = math.floor(Fraction(repr(alloc.global_share)) * total)
    glob = _top(_score(tiles, high), list(range(n)), quota)
    boxes = _boxes(tiles.grid, alloc.region)
    feats, cls = tiles.token_features[0].double(), tiles.cls_tokens[0].double()
    cosines, caps, members = [], [], []
    for r0, c0, r1, c1 in boxes:
        tokens = [y * gw + x for y in range(r0, r1) for x in range(c0, c1)]
        members.append(tokens)
        mean = sum(feats[j] for j in tokens) / len(tokens)  # exact: the features are small integers
        cosines.append(float(torch.nn.functional.cosine_similarity(mean[None], cls[None])[0]))
        caps.append(sum(1 for j in tokens if j not in glob))
    sal = torch.softmax(torch.tensor(cosines, dtype=torch.float64) / alloc.tau_v, 0)
    if relevance is not None and alloc.alpha < 1:
        rel = torch.softmax(relevance.double() / alloc.tau_t, 0)
        imp = alloc.alpha * sal + (1 - alloc.alpha) * rel
    else:
        imp = sal
    budgets = _hamilton(total - quota, imp.tolist(), caps)
    low_score = _score(tiles, low)
    keep = set(glob)
    for tokens, budget in zip(members, budgets, strict=True):
        keep |= _top(low_score, [j for j in tokens if j not in glob], budget)
    return keep, glob, budgets, imp


def _set(mask: torch.Tensor) -> set[int]:
    return set(mask.flatten().nonzero().flatten().tolist())


# ---------------------------------------------------------------------------------------------- regions


def test_regions_are_pinned_for_a_qwen_sized_grid():
    pruner = presets.hero_native(0.2)
    tiles = _tiles((30, 41))  # 840 x 1148 px at 28 px per merged token
    # rows: round(30 / 12) = round(2.5) = 3 (half up), cuts 0, 10, 20, 30; cols: round(41 / 12) = 3, cuts 0, 13, 27, 41
    assert pruner.regions(tiles) == [
        (0, 0, 10, 13), (0, 13, 10, 27), (0, 27, 10, 41),
        (10, 0, 20, 13), (10, 13, 20, 27), (10, 27, 20, 41),
        (20, 0, 30, 13), (20, 13, 30, 27), (20, 27, 30, 41),
    ]  # fmt: skip
    assert presets.hero_native(0.2).regions(_tiles((5, 7))) == [(0, 0, 5, 7)]  # smaller than a region: one
    assert presets.hero_native(0.2).regions(_tiles((17, 6))) == [(0, 0, 17, 6)]  # 17 / 12 rounds to 1
    assert presets.hero_native(0.2).regions(_tiles((18, 3))) == [(0, 0, 9, 3), (9, 0, 18, 3)]  # 1.5 -> 2


@given(gh=st.integers(1, 60), gw=st.integers(1, 60), region=st.integers(1, 20))
def test_regions_cover_every_token_once_and_match_the_oracle(gh, gw, region):
    boxes = RegionAllocator(region=region).regions((gh, gw))
    assert boxes == _boxes((gh, gw), region)
    count = torch.zeros(gh, gw, dtype=torch.long)
    for r0, c0, r1, c1 in boxes:
        assert r1 > r0 and c1 > c0
        count[r0:r1, c0:c1] += 1
    assert bool((count == 1).all())
    ids = RegionAllocator(region=region).region_ids((gh, gw), torch.device("cpu")).view(gh, gw)
    for index, (r0, c0, r1, c1) in enumerate(boxes):
        assert bool((ids[r0:r1, c0:c1] == index).all())


# ---------------------------------------------------------------------------------------------- counts


@given(
    gh=st.integers(1, 40),
    gw=st.integers(1, 40),
    ratio=keep_ratios(),
    region=st.sampled_from([1, 3, 5, 12, 50]),
    share=st.sampled_from([0.0, 0.2, 0.5, 0.99]),
    seed=st.integers(0, 2**16),
)
def test_exact_counts_and_each_token_at_most_once(gh, gw, ratio, region, share, seed):
    tiles = _tiles((gh, gw), seed)
    pruner = presets.hero_native(ratio, region=region, global_share=share)
    boxes = pruner.regions(tiles)
    relevance = torch.linspace(-0.1, 0.3, len(boxes))
    plan = _plan(pruner, tiles, relevance)
    n = gh * gw
    total = exact_total(ratio, ImageCounts(views=1, tokens_per_view=n, valid=n))
    assert pruner.count_known and pruner.kept_count(ImageCounts(1, n, n)) == total
    assert plan.keep.shape == (1, n) and int(plan.keep.sum()) == total == plan.num_kept
    assert plan.budgets.tolist() == [total]
    if total == n:  # every token: nothing planned
        assert torch.equal(plan.keep, tiles.valid_mask) and plan.region_budgets is None
        return
    quota = math.floor(Fraction(repr(share)) * total)
    assert plan.global_keep is not None and plan.region_budgets is not None
    assert int(plan.global_keep.sum()) == quota
    assert bool((plan.keep[0] | ~plan.global_keep).all())  # global picks are kept
    assert int(plan.region_budgets.sum()) == total - quota  # the global picks are not counted twice
    beyond = (plan.keep[0] & ~plan.global_keep).view(gh, gw)
    left = (~plan.global_keep).view(gh, gw)
    for (r0, c0, r1, c1), budget in zip(boxes, plan.region_budgets.tolist(), strict=True):
        assert int(beyond[r0:r1, c0:c1].sum()) == budget  # each region keeps its budget inside its own box
        assert budget <= int(left[r0:r1, c0:c1].sum())


@pytest.mark.parametrize("grid", [(1, 1), (1, 9), (9, 1), (3, 200), (128, 96)])
@pytest.mark.parametrize("ratio", [0.01, 0.11, 0.5, 0.999])
def test_exact_counts_on_tiny_and_large_grids(grid, ratio):
    tiles = _tiles(grid, seed=5)
    pruner = presets.hero_native(ratio)
    n = grid[0] * grid[1]
    plan = pruner.plan(tiles, torch.zeros(len(pruner.regions(tiles))))
    assert (
        plan.num_kept
        == int(plan.keep.sum())
        == pruner.kept_count(ImageCounts(1, n, n))
        == math.floor(Fraction(repr(ratio)) * n)
    )


# ---------------------------------------------------------------------------------------------- the oracle


@given(
    gh=st.integers(1, 9),
    gw=st.integers(1, 9),
    ratio=st.sampled_from([0.05, 0.2, 0.33, 0.5, 0.8]),
    region=st.sampled_from([1, 2, 3, 4]),
    share=st.sampled_from([0.0, 0.2, 0.6]),
    alpha=st.sampled_from([0.0, 0.5, 1.0]),
    with_relevance=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_plan_equals_the_slow_oracle(gh, gw, ratio, region, share, alpha, with_relevance, seed):
    tiles = _tiles((gh, gw), seed)  # attention differs by layer: swapped low / high layers would show
    features = torch.randint(-3, 4, (1, gh * gw, 8), generator=torch.Generator().manual_seed(seed)).float()
    tiles = tiles.replace(token_features=features, cls_tokens=features.mean(1))  # region sums exact in any order
    fields = {"region": region, "global_share": share, "alpha": alpha}
    pruner = presets.hero_native(ratio, **fields)
    boxes = pruner.regions(tiles)
    relevance = torch.randn(len(boxes), generator=torch.Generator().manual_seed(seed)) if with_relevance else None
    plan = _plan(pruner, tiles, relevance)
    keep, glob, budgets, importance = _oracle(tiles, ratio, relevance, **fields)
    if plan.region_budgets is None:  # everything kept
        assert len(keep) == gh * gw
        return
    assert plan.region_budgets.tolist() == budgets
    assert plan.global_keep is not None and _set(plan.global_keep) == glob
    assert _set(plan.keep) == keep
    assert plan.region_importance is not None
    torch.testing.assert_close(plan.region_importance, importance.float())


def test_global_picks_are_the_top_k_of_the_late_layer():
    tiles = _tiles((20, 30), seed=4)
    pruner = presets.hero_native(0.2, high_layers=(22,))
    plan = _plan(pruner, tiles)
    late = tiles.cls_attention[LAYERS.index(22), 0].mean(0)  # (N,) head mean
    quota = math.floor(0.2 * math.floor(0.2 * 600))  # 24
    assert plan.global_keep is not None and int(plan.global_keep.sum()) == quota == 24
    assert _set(plan.global_keep) == set(torch.topk(late, quota).indices.tolist())
    # the early layer's top tokens are not what the global quota takes
    early = tiles.cls_attention[LAYERS.index(5), 0].mean(0)
    assert _set(plan.global_keep) != set(torch.topk(early, quota).indices.tolist())


def test_region_picks_follow_the_low_layers_inside_each_region():
    tiles = _tiles((12, 24), seed=9, separated=True)  # two regions side by side
    pruner = presets.hero_native(0.25, global_share=0.0, low_layers=(6,))
    plan = _plan(pruner, tiles)
    assert pruner.regions(tiles) == [(0, 0, 12, 12), (0, 12, 12, 24)]
    score = tiles.cls_attention[LAYERS.index(6), 0].mean(0).view(12, 24)
    assert plan.region_budgets is not None
    for (r0, c0, r1, c1), budget in zip(pruner.regions(tiles), plan.region_budgets.tolist(), strict=True):
        inside = torch.zeros(12, 24, dtype=torch.bool)
        inside[r0:r1, c0:c1] = True
        masked = score.masked_fill(~inside, -1.0).flatten()
        assert _set(plan.keep) & _set(inside) == set(torch.topk(masked, budget).indices.tolist())


# ---------------------------------------------------------------------------------------------- importance


def _aligned(grid: tuple[int, int], region_weights: list[float], seed: int = 0) -> EncodedTiles:
    """Tiles whose region r's token features lean towards the image embedding by ``region_weights[r]``."""
    tiles = _tiles(grid, seed)
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(8, generator=gen)
    noise = torch.randn(grid[0] * grid[1], 8, generator=gen)
    ids = RegionAllocator().region_ids(grid, torch.device("cpu"))
    weights = torch.tensor(region_weights)[ids]  # (N,)
    features = (weights[:, None] * direction + (1 - weights[:, None]) * noise)[None]
    return tiles.replace(token_features=features, cls_tokens=direction[None])


def test_a_more_salient_region_gets_more_tokens():
    tiles = _aligned((24, 36), [0.9, 0.1, 0.5, 0.2, 0.7, 0.0])
    plan = _plan(presets.hero_native(0.2, alpha=1.0), tiles)
    assert plan.region_budgets is not None and plan.region_saliency is not None
    budgets = plan.region_budgets.tolist()
    assert budgets.index(max(budgets)) == 0  # the region most aligned with the whole image
    assert budgets[0] >= budgets[4] >= budgets[2] >= budgets[3] >= budgets[1] >= budgets[5]
    assert budgets[0] > budgets[5]


@given(relevance=st.lists(st.floats(-1, 1), min_size=6, max_size=6), share=st.sampled_from([0.0, 0.2]))
def test_higher_importance_never_gets_fewer_tokens(relevance, share):
    tiles = _aligned((24, 36), [0.3, 0.3, 0.3, 0.3, 0.3, 0.3], seed=2)
    pruner = presets.hero_native(0.3, global_share=share, tau_t=0.5)
    plan = _plan(pruner, tiles, torch.tensor(relevance))
    assert plan.region_budgets is not None and plan.region_importance is not None and plan.global_keep is not None
    budgets, importance = plan.region_budgets.tolist(), plan.region_importance.tolist()
    left = [int((~plan.global_keep).view(24, 36)[r0:r1, c0:c1].sum()) for r0, c0, r1, c1 in pruner.regions(tiles)]
    for i in range(6):
        for j in range(6):
            if importance[i] > importance[j] and left[i] >= left[j]:
                assert budgets[i] >= budgets[j], (i, j, budgets, importance)


def test_relevance_moves_tokens_to_the_region_it_names():
    tiles = _aligned((12, 36), [0.3, 0.3, 0.3], seed=3)
    pruner = presets.hero_native(0.2, alpha=0.0, global_share=0.0)
    for target in range(3):
        relevance = torch.full((3,), 0.1)
        relevance[target] = 0.3
        plan = _plan(pruner, tiles, relevance)
        assert plan.region_budgets is not None
        budgets = plan.region_budgets.tolist()
        assert budgets[target] == max(budgets) and budgets[target] > min(budgets)


# ---------------------------------------------------------------------------------------------- refusals


def test_no_token_features_is_refused_naming_what_to_pass():
    tiles = make_tiles(num_views=1, grid=(6, 6), layers=LAYERS)
    with pytest.raises(HeroError, match=r"token_features.*Qwen"):
        presets.hero_native(0.3).plan(tiles)
    assert torch.equal(presets.hero_native(1.0).plan(tiles).keep, tiles.valid_mask)  # R = 1 needs nothing


def test_tiles_with_two_views_are_refused():
    tiles = make_tiles(num_views=2, grid=(6, 6), layers=LAYERS, token_features=True)
    for ratio in (0.3, 1.0):
        with pytest.raises(HeroError, match=re.escape("hero-native is for hosts without tiles; use presets.hero")):
            presets.hero_native(ratio).plan(tiles)
    with pytest.raises(HeroError, match="without tiles"):
        presets.hero_native(0.3).regions(tiles)


@pytest.mark.parametrize(
    "relevance",
    [
        torch.zeros(1),  # one per view, not per region
        torch.zeros(4, 1),
        torch.zeros(5),
        torch.ones(4, dtype=torch.long),
        torch.tensor([0.1, float("nan"), 0.2, 0.3]),
        torch.tensor([0.1, float("inf"), 0.2, 0.3]),
        [0.1, 0.2, 0.3, 0.4],
    ],
)
def test_bad_relevance_is_refused(relevance):
    tiles = _tiles((24, 24))
    pruner = presets.hero_native(0.3)
    assert len(pruner.regions(tiles)) == 4
    with pytest.raises(HeroError, match="relevance"):
        pruner.plan(tiles, relevance)


def test_non_finite_token_features_and_a_width_mismatch_are_refused():
    tiles = _tiles((6, 6))
    bad = tiles.token_features.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(HeroError, match="token_features"):
        presets.hero_native(0.3).plan(tiles.replace(token_features=bad))
    with pytest.raises(HeroError, match=r"token_features.*width"):
        presets.hero_native(0.3).plan(tiles.replace(token_features=torch.randn(1, 36, 5)))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("region", 0),
        ("region", -3),
        ("region", 2.5),
        ("region", True),
        ("global_share", 1.0),
        ("global_share", -0.1),
        ("global_share", float("nan")),
        ("global_share", "0.2"),
        ("alpha", 1.5),
        ("tau_v", 0.0),
        ("low_layers", (-1,)),
        ("high_layers", ()),
        ("head_reduction", "max"),
        ("no_such_field", 1),
    ],
)
def test_bad_fields_name_the_field(field, value):
    with pytest.raises(HeroError, match=rf"{field}="):
        presets.hero_native(0.2, **{field: value})


@pytest.mark.parametrize("full", [(), (7, 7), (-1,), (32,), "7", (7.0,), (True,)])
def test_bad_full_attention_is_refused(full):
    with pytest.raises(HeroError, match="full_attention="):
        presets.hero_native(0.2, depth=32, full_attention=full)


def test_encoded_tiles_check_token_features():
    tiles = _tiles((4, 4))
    for bad in (
        torch.randn(16, 8),
        torch.randn(2, 16, 8),
        torch.randn(1, 15, 8),
        torch.ones(1, 16, 8, dtype=torch.long),
    ):
        with pytest.raises(HeroError, match="token_features="):
            tiles.replace(token_features=bad)
    with pytest.raises(HeroError, match="devices"):
        tiles.replace(token_features=torch.randn(1, 16, 8, device="meta"))
    # carried by replace and from_outputs; absent by default
    assert tiles.replace().token_features is tiles.token_features
    fields = {name: getattr(tiles, name) for name in tiles.__dataclass_fields__}
    assert EncodedTiles.from_outputs(SimpleNamespace(**fields)).token_features is tiles.token_features
    fields.pop("token_features")
    assert EncodedTiles.from_outputs(SimpleNamespace(**fields)).token_features is None
    assert make_tiles(num_views=3, grid=(2, 2)).token_features is None


def test_make_tiles_with_token_features_leaves_the_other_tensors_alone():
    plain = make_tiles(num_views=1, grid=(5, 4), seed=3)
    rich = make_tiles(num_views=1, grid=(5, 4), seed=3, token_features=True)
    assert torch.equal(plain.cls_attention, rich.cls_attention) and torch.equal(plain.valid_mask, rich.valid_mask)
    assert rich.token_features is not None and rich.token_features.shape == (1, 20, 8)
    torch.testing.assert_close(rich.cls_tokens, rich.token_features.mean(1))
    assert rich.query_source == "mean-token"


# ---------------------------------------------------------------------------------------------- layers


def test_layers_snap_to_full_attention_as_documented():
    qwen25 = presets.hero_native(0.2, depth=32, full_attention=QWEN25_FULL)
    # scaled: (7, 8, 9, 11) and (28,); 11 is 4 from both 7 and 15 (tie: the earlier), 28 is nearest 31
    assert (qwen25.selector.low_layers, qwen25.selector.high_layers) == ((7,), (31,))
    assert qwen25.layers == (7, 31)
    plain32 = presets.hero_native(0.2, depth=32)
    assert (plain32.selector.low_layers, plain32.selector.high_layers) == ((7, 8, 9, 11), (28,))
    full27 = presets.hero_native(0.2, depth=27)  # a full-attention tower (Qwen3-VL-style, SigLIP): no snapping
    assert (full27.selector.low_layers, full27.selector.high_layers) == ((6, 7, 8, 9), (24,))
    assert presets.hero_native(0.2, depth=27, full_attention=tuple(range(27))) == full27
    assert presets.hero_native(0.2) == presets.hero_native(0.2, depth=24)
    assert (presets.hero_native(0.2).selector.low_layers, presets.hero_native(0.2).selector.high_layers) == (
        (5, 6, 7, 8),
        (21,),
    )
    # explicit layers are used as given: neither scaled nor snapped
    given_ = presets.hero_native(0.2, depth=32, full_attention=QWEN25_FULL, low_layers=(3, 4))
    assert (given_.selector.low_layers, given_.selector.high_layers) == ((3, 4), (31,))
    assert presets.snap_layers((11, 12, 8), (7, 15)) == (7, 15)
    assert presets.snap_layers((20, 3), (31, 0, 15)) == (15, 0)


def test_hero_native_is_registered_and_routes_fields():
    pruner = presets.get("hero_native", 0.3, region=8, global_share=0.1, alpha=0.7, low_layers=(4,))
    assert isinstance(pruner, HeroNativePruner) and "hero-native" in presets.PRESETS
    assert pruner.allocator == RegionAllocator(region=8, global_share=0.1, alpha=0.7)
    assert pruner.selector.low_layers == (4,) and pruner.layers == (4, 21)
    assert pruner.uses_relevance and not presets.hero_native(0.3, alpha=1.0).uses_relevance
    with pytest.raises(HeroError, match="RegionAllocator"):
        HeroNativePruner(0.3, allocator=presets.hero(0.3).allocator)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- the planner


def test_keeps_all_at_ratio_one_without_reading_anything():
    pruner = presets.hero_native(1.0)
    assert pruner.keeps_all()
    tiles = _tiles((7, 9))
    with count_host_syncs() as syncs:
        plan = pruner.plan(tiles.replace())
    assert syncs.count == 0 and torch.equal(plan.keep, tiles.valid_mask) and plan.budgets.tolist() == [63]


def test_one_host_sync_per_plan_and_per_batch():
    pruner = presets.hero_native(0.3)
    images = [_tiles((13, 30), seed=1), _tiles((7, 5), seed=2), _tiles((25, 25), seed=3)]
    relevance = [torch.linspace(0, 1, len(pruner.regions(t))) if i != 1 else None for i, t in enumerate(images)]
    for tiles, rel in zip(images, relevance, strict=True):
        with count_host_syncs() as syncs:
            pruner.plan(tiles.replace(), rel)
        assert syncs.count == 1, syncs.table()
    with count_host_syncs() as syncs:
        together = pruner.plan_batch([t.replace() for t in images], relevance)
    assert syncs.count == 1, syncs.table()
    for plan, tiles, rel in zip(together, images, relevance, strict=True):
        alone = pruner.plan(tiles.replace(), rel)
        assert torch.equal(plan.keep, alone.keep) and torch.equal(plan.budgets, alone.budgets)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes_and_device_are_kept(dtype):
    tiles = _tiles((20, 26), seed=7, separated=True)
    cast = tiles.replace(
        cls_attention=tiles.cls_attention.to(dtype),
        cls_tokens=tiles.cls_tokens.to(dtype),
        token_features=tiles.token_features.to(dtype),
    )
    pruner = presets.hero_native(0.25)
    relevance = torch.linspace(-0.2, 0.3, len(pruner.regions(tiles)))
    plan, reference = _plan(pruner, cast, relevance.to(dtype)), _plan(pruner, tiles, relevance)
    assert plan.keep.dtype == torch.bool and plan.budgets.dtype == torch.int64
    assert plan.keep.device == tiles.device and plan.region_budgets is not None
    assert plan.num_kept == reference.num_kept == math.floor(0.25 * 520)
    assert plan.global_keep is not None and reference.global_keep is not None
    assert torch.equal(plan.global_keep, reference.global_keep)  # separated attention survives the cast
    if dtype == torch.float64:
        assert torch.equal(plan.keep, reference.keep)


def test_the_testing_helpers_accept_token_features():
    tiles = _tiles((4, 4), separated=True)
    from hero_core import FunctionAwareSelector, UniformAllocator

    check_selector(FunctionAwareSelector(), tiles, UniformAllocator()(tiles, None, 0.5), dtypes=True)


@pytest.mark.gpu
def test_plans_on_cuda_as_on_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    tiles = _tiles((30, 41), seed=3, separated=True)
    gpu = tiles.replace(
        **{
            name: getattr(tiles, name).cuda()
            for name in ("cls_tokens", "cls_attention", "valid_mask", "token_features")
        }
    )
    pruner = presets.hero_native(0.2)
    relevance = torch.linspace(-0.2, 0.3, len(pruner.regions(tiles)))
    cpu_plan, gpu_plan = _plan(pruner, tiles, relevance), _plan(pruner, gpu, relevance.cuda())
    assert gpu_plan.keep.device.type == "cuda" and gpu_plan.region_budgets is not None
    assert cpu_plan.region_budgets is not None
    assert torch.equal(gpu_plan.region_budgets.cpu(), cpu_plan.region_budgets)
    assert torch.equal(gpu_plan.keep.cpu(), cpu_plan.keep)
