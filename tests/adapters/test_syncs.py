"""Host-device syncs of HeroVLM on every host (issue 11, item 3; issue 17, item 5), counted on the CPU by
``count_host_syncs``.

HERO's own stages read the device twice per call, whatever the number of images: the planner once for the whole
batch (``Pruner.plan_batch``: every image's tile weights and host facts, the scorer's answers checked in the same
read), the adapter's ``assemble_batch`` once (every image's kept positions). Per call besides: the prompt (ids and
mask in one transfer), the features' finiteness, and the LLaVA family's ``image_sizes`` (OneVision also
``batch_num_images``). Per image, only OneVision's ``encode`` reads once (its score maps are packed on the CPU).
The host model's own syncs (inside its vision tower and ``generate``) are the host's and are not counted here.
``test_gpu.py`` checks the same on CUDA with CUDA's own sync detection.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.sequence import placeholder_runs
from hero_core.testing import count_host_syncs

from .hosts import HOSTS, host_row

# (per image, per call): hero's own syncs of HeroVLM.plan / generate
BUDGET = {
    "internvl": (0, 4),
    "llava_next": (0, 5),
    "llava_onevision": (1, 6),
    "llava_onevision-downsampled": (1, 6),
    "qwen2_5_vl": (0, 6),  # + image_grid_thw, + mm_token_type_ids (checked against the placeholders)
    "qwen3_vl": (0, 6),
}


def test_every_host_has_a_budget():
    assert set(BUDGET) == set(HOSTS)


def _inputs(row: Any, prompts: list[Any]) -> dict[str, Any]:
    return row.inputs([t for t, _ in prompts], [i for _, group in prompts for i in group])


def _call(vlm: HeroVLM, entry: str, inputs: dict[str, Any]) -> Any:
    if entry == "plan":
        return vlm.plan(**inputs)
    return vlm.generate(**inputs, max_new_tokens=2, do_sample=False, num_beams=2 if entry == "beams" else 1)


@pytest.mark.parametrize("name", sorted(HOSTS))
@pytest.mark.parametrize("entry", ["plan", "generate", "beams"])
def test_syncs_per_image_and_per_call(name: str, entry: str) -> None:
    row = host_row(name)
    vlm = HeroVLM(row.model, row.pruner(0.3), processor=row.processor)
    per_image, per_call = BUDGET[name]
    first, second = row.prompts()[:2]
    for prompts in ([first], [second], [first, second]):
        inputs = _inputs(row, prompts)
        images = sum(len(group) for _, group in prompts)
        _call(vlm, entry, inputs)  # warm: the host installs its own hooks on a first call
        with count_host_syncs() as syncs:
            _call(vlm, entry, inputs)
        planner = sum(1 for _, where, _ in syncs.calls if where.startswith("hero_core/"))
        assemble = sum(1 for _, where, _ in syncs.calls if "host_copies" in where)
        assert planner == 1 and assemble == 1, f"{images} images:\n{syncs.table()}"  # one each for the batch
        assert syncs.hero == per_image * images + per_call, f"{images} images:\n{syncs.table()}"


@pytest.mark.parametrize("name", sorted(HOSTS))
@pytest.mark.parametrize("layout", ["vanilla", "reference"])
def test_assemble_batch_equals_assemble_image_by_image(name: str, layout: str) -> None:
    row = host_row(name)
    if layout not in HeroVLM(row.model, row.pruner(0.3)).adapter.layouts:
        pytest.skip(f"{name} has no {layout} layout")
    vlm = HeroVLM(row.model, row.pruner(0.3), processor=row.processor, layout=layout)
    inputs = row.batch()
    report = vlm.plan(**inputs)
    ids, mask = vlm._check_prompt(inputs["input_ids"], inputs["attention_mask"])
    runs = placeholder_runs(ids, mask, vlm.adapter.image_token_id)
    encoded = vlm.adapter.encode(vlm._split(inputs)[0], vlm.pruner.layers, runs=runs)
    keeps = [image.plan.keep for image in report.images]
    together = vlm.adapter.assemble_batch(encoded, keeps)
    for image, keep, out in zip(encoded, keeps, together, strict=True):
        alone = vlm.adapter.assemble(image, keep)
        assert torch.equal(out.features, alone.features) and torch.equal(out.offsets, alone.offsets)
        assert (out.layout_length, out.kept_patch_tokens, out.newline_tokens) == (
            alone.layout_length,
            alone.kept_patch_tokens,
            alone.newline_tokens,
        )
    assert [out.tokens_out for out in together] == [image.tokens_out for image in report.images]
