"""hero_core's invariants on CUDA tiles (``make gpu``; the default run deselects the ``gpu`` marker).

Every allocator and selector of the registry keeps its contract on CUDA, each preset's plan on CUDA equals
its plan on the CPU (tiles whose scores are far apart, so no float rounding can reorder them), and the plan
stays on the tiles' device.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from hero_core import EncodedTiles, UniformAllocator, presets
from hero_core.testing import check_allocator, check_selector, encoded_tiles, keep_ratios, make_tiles

from .registry import ALLOCATORS, PRESETS, SELECTORS, tiles_for

pytestmark = pytest.mark.gpu


def _cuda(tiles: EncodedTiles) -> EncodedTiles:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    features = None if tiles.token_features is None else tiles.token_features.cuda()
    return tiles.replace(
        cls_tokens=tiles.cls_tokens.cuda(),
        cls_attention=tiles.cls_attention.cuda(),
        valid_mask=tiles.valid_mask.cuda(),
        token_features=features,
    )


@pytest.mark.parametrize("row", ALLOCATORS, ids=[row.id for row in ALLOCATORS])
@settings(max_examples=20)
@given(tiles=encoded_tiles(), ratio=keep_ratios())
def test_every_allocator_keeps_its_contract_on_cuda(row, tiles, ratio):
    gpu = _cuda(tiles)
    relevance = torch.linspace(-0.3, 0.3, gpu.num_views, device="cuda")
    budgets = check_allocator(row.make(), gpu, relevance, ratio, exact_total=row.exact_total)
    assert budgets.device.type == "cuda"


@pytest.mark.parametrize("row", SELECTORS, ids=[row.id for row in SELECTORS])
@settings(max_examples=20)
@given(tiles=encoded_tiles(), ratio=keep_ratios())
def test_every_selector_keeps_its_contract_on_cuda(row, tiles, ratio):
    gpu = _cuda(tiles)
    budgets = UniformAllocator()(gpu, None, ratio)
    keep = check_selector(row.make(), gpu, budgets)
    assert keep.device.type == "cuda"


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5, 1.0])
def test_every_preset_plans_on_cuda_as_on_the_cpu(name, ratio):
    tiles = tiles_for(name, make_tiles(num_views=5, grid=(12, 12), num_heads=4, padding="rows", separated=True, seed=3))
    gpu = _cuda(tiles)
    relevance = torch.tensor([0.0, 0.31, 0.12, 0.27, 0.05])
    pruner = presets.get(name, ratio)
    cpu_plan, gpu_plan = pruner.plan(tiles, relevance), pruner.plan(gpu, relevance.cuda())
    assert gpu_plan.keep.device.type == "cuda" and gpu_plan.budgets.device.type == "cuda"
    assert torch.equal(gpu_plan.budgets.cpu(), cpu_plan.budgets)
    assert torch.equal(gpu_plan.keep.cpu(), cpu_plan.keep)
