"""CUDA runs of every host (``make gpu``; the default run deselects the ``gpu`` marker)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.testing import check_adapter

from .hosts import HOSTS, host_row

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=sorted(HOSTS))
def cuda_host(request: pytest.FixtureRequest) -> Any:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    row = host_row(request.param)
    return row, copy.deepcopy(row.model).to("cuda")


def _to(inputs: dict[str, Any], device: str, dtype: torch.dtype | None = None) -> dict[str, Any]:
    moved = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        moved[key] = value
    return moved


def test_check_adapter_on_cuda(cuda_host: Any) -> None:
    row, model = cuda_host
    check_adapter(
        model,
        lambda texts, images: _to(row.inputs(texts, images), "cuda"),
        row.prompts(),
        row.pruner,
        vlm_options={"processor": row.processor},
        batch_atol=1e-3,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keep_ratio_one_is_the_host(cuda_host: Any, dtype: torch.dtype) -> None:
    row, model = cuda_host
    half = copy.deepcopy(model).to(dtype)
    inputs = _to(row.batch(), "cuda")  # float32 pixels: the adapter meets the tower's dtype
    settings = {"max_new_tokens": 4, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        host = half.generate(**_to(row.batch(), "cuda", dtype), **settings)
    hero = HeroVLM(half, row.pruner(1.0), processor=row.processor).generate(**inputs, **settings)
    assert torch.equal(host.sequences, hero.sequences)
    pruned = HeroVLM(half, row.pruner(0.3), processor=row.processor).generate(**inputs, **settings)
    assert all(bool(torch.isfinite(step).all()) for step in pruned.logits)
