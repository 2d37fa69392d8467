"""VisionZip (issue 20): dominant tokens by CLS attention, contextual tokens that absorb the rest, held to a
plain-loop re-implementation of the released algorithm on every view."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from hero_core import HeroError, Pruner, UniformAllocator, VisionZipSelector, presets
from hero_core.testing import count_host_syncs, encoded_tiles, expected_total, keep_ratios, make_tiles


def visionzip_oracle(
    attention: list[float], features: list[list[float]], valid: list[bool], budget: int, share: float
) -> tuple[set[int], dict[int, int], float]:
    """One view by plain loops: (kept positions, merged position -> target, smallest decision gap)."""
    n_valid = [i for i, ok in enumerate(valid) if ok]
    if budget >= len(n_valid):
        return set(n_valid), {}, math.inf
    contextual = int(budget * share + 0.5) if budget > 0 else 0
    dominant = budget - contextual
    ranked = sorted(n_valid, key=lambda i: (-attention[i], i))
    margin = math.inf
    if 0 < dominant < len(ranked):
        margin = attention[ranked[dominant - 1]] - attention[ranked[dominant]]
    kept = set(ranked[:dominant])
    rest = [i for i in n_valid if i not in kept]  # raster order
    if contextual == 0:
        return kept, {}, margin
    step = max(1, len(rest) // contextual)
    targets = [rest[k] for k in range(0, len(rest), step)][:contextual]
    kept |= set(targets)

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    merged = {}
    for i in rest:
        if i in targets:
            continue
        sims = [cos(features[i], features[t]) for t in targets]
        best = max(range(len(targets)), key=lambda k: (sims[k], -k))
        ordered = sorted(sims, reverse=True)
        if len(ordered) > 1:
            margin = min(margin, ordered[0] - ordered[1])
        merged[i] = targets[best]
    return kept, merged, margin


@given(
    tiles=encoded_tiles(max_views=4, max_side=5, token_features=True),
    ratio=keep_ratios(),
    share=st.sampled_from([10 / 64, 0.4, 0.0, 0.9]),
)
def test_visionzip_equals_the_plain_loop_on_every_view(tiles: Any, ratio: float, share: float) -> None:
    pruner = presets.visionzip(ratio, contextual=share)
    plan = pruner.plan(tiles)
    budgets = plan.budgets.tolist()
    attention = tiles.cls_attention[tiles.attention_layers.index(22)].float().mean(dim=1)  # (V, N)
    tokens = tiles.num_tokens
    flat = torch.arange(tiles.num_views * tokens).reshape(tiles.num_views, tokens)
    merge_into = plan.merge_into if plan.merge_into is not None else torch.where(plan.keep, flat, -1)  # R = 1
    for view in range(tiles.num_views):
        kept, merged, margin = visionzip_oracle(
            attention[view].tolist(),
            tiles.token_features[view].float().tolist(),
            tiles.valid_mask[view].tolist(),
            budgets[view],
            share,
        )
        assume(margin > 1e-5)
        assert set(plan.keep[view].nonzero().flatten().tolist()) == kept
        into = merge_into[view].tolist()
        for position in range(tokens):
            if position in kept:
                assert into[position] == view * tokens + position
            elif position in merged:
                assert into[position] == view * tokens + merged[position]
            else:
                assert into[position] == -1
    assert plan.num_kept == expected_total(tiles, ratio) == presets.hero(ratio).plan(tiles).num_kept


def test_visionzip_pinned_on_one_view() -> None:
    """8 tokens, budget 4 with contextual 0.5: 2 dominant (the two largest attentions), 2 targets (every 3rd of
    the 6 left: positions 0 and 4), the others merged into the more similar target."""
    tiles = make_tiles(num_views=1, grid=(2, 4), layers=(22,), num_heads=1)
    attention = torch.tensor([0.05, 0.3, 0.05, 0.05, 0.05, 0.05, 0.4, 0.05])[None, None, None]
    features = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.2, 0.8], [0.0, 1.0], [1.0, 0.2], [1.0, 1.0], [0.1, 1.0]]
    )[None]
    tiles = tiles.replace(cls_attention=attention, token_features=features)
    keep, into = VisionZipSelector(contextual=0.5).plan_merge(tiles, torch.tensor([4]))
    assert keep[0].tolist() == [True, True, False, False, True, False, True, False]
    assert into[0].tolist() == [0, 1, 0, 4, 4, 0, 6, 4]


def test_without_contextual_share_it_is_cls_attention() -> None:
    tiles = make_tiles(num_views=5, grid=(6, 6), padding="rows", token_features=True, seed=7)
    plan = presets.visionzip(0.3, contextual=0.0).plan(tiles)
    assert torch.equal(plan.keep, presets.cls_attention(0.3).plan(tiles).keep)
    assert torch.equal(plan.merge_into >= 0, plan.keep)  # nothing merged


def test_every_valid_token_is_kept_or_merged_and_padding_never_is() -> None:
    tiles = make_tiles(num_views=5, grid=(6, 6), padding="random", pad_amount=0.3, token_features=True, seed=3)
    plan = presets.visionzip(0.25).plan(tiles)
    into = plan.merge_into
    assert bool(((into >= 0) == tiles.valid_mask).all())
    flat_keep = plan.keep.reshape(-1)
    targets = into.reshape(-1)[into.reshape(-1) >= 0]
    assert bool(flat_keep[targets].all())  # every merge lands on a kept token
    views = torch.div(targets, tiles.num_tokens, rounding_mode="floor")
    own = torch.arange(tiles.num_views).repeat_interleave(tiles.valid_mask.sum(-1))
    assert torch.equal(views, own)  # ... of the same view


def test_one_host_sync_and_dtype_preserved() -> None:
    images = [make_tiles(num_views=5, grid=(4, 6), padding="rows", token_features=True, seed=s) for s in range(3)]
    with count_host_syncs() as syncs:
        plans = presets.visionzip(0.3).plan_batch(images)
    assert syncs.count == 1, syncs.table()
    half = make_tiles(num_views=3, grid=(4, 4), token_features=True, dtype=torch.bfloat16)
    plan = presets.visionzip(0.3).plan(half)
    assert plan.merge_into.dtype == torch.int64 and plan.keep.dtype == torch.bool
    assert [p.num_kept for p in plans] == [expected_total(t, 0.3) for t in images]


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: presets.visionzip(0.2, contextual=1.0), "contextual"),
        (lambda: presets.visionzip(0.2, contextual=-0.1), "contextual"),
        (lambda: presets.visionzip(0.2, contextual=True), "contextual"),
        (lambda: presets.visionzip(0.2, layer=-1), "layer"),
        (lambda: presets.visionzip(0.2, head_reduction="max"), "head_reduction"),
    ],
)
def test_bad_fields_name_the_field(make: Any, field: str) -> None:
    with pytest.raises(HeroError, match=rf"^{field}="):
        make()


def test_planning_without_features_is_refused_naming_the_preset() -> None:
    tiles = make_tiles(num_views=3, grid=(4, 4))
    with pytest.raises(HeroError, match=r"^tiles\.token_features=None.*preset 'visionzip'"):
        presets.visionzip(0.3).plan(tiles)
    with pytest.raises(HeroError, match=r"^budgets="):
        VisionZipSelector().plan_merge(
            make_tiles(num_views=3, grid=(4, 4), token_features=True), torch.tensor([20, 1, 1])
        )


def test_a_custom_pruner_with_the_selector_carries_the_merges() -> None:
    tiles = make_tiles(num_views=3, grid=(4, 4), token_features=True, seed=1)
    plan = Pruner(0.5, UniformAllocator(), VisionZipSelector(contextual=0.5)).plan(tiles)
    assert plan.merge_into is not None and int(((plan.merge_into >= 0) & ~plan.keep).sum()) > 0
    assert presets.hero(0.5).plan(tiles).merge_into is None
