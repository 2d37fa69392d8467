"""Host-device syncs of HeroVLM on every host (issue 11, item 3), counted on the CPU by ``count_host_syncs``.

The planner (``Pruner.plan``) reads the device once per image; the adapter's ``assemble`` once more (the kept
positions, for the sequence lengths); OneVision's ``encode`` once more (its score maps are packed on the CPU).
Per call: the prompt is read once (ids and mask in one transfer), the features' finiteness once, and the
LLaVA family reads ``image_sizes`` (and OneVision ``batch_num_images``) once. The host model's own syncs
(inside its vision tower and ``generate``) are the host's and are not counted here. ``test_gpu.py`` checks
the same on CUDA with CUDA's own sync detection.
"""

from __future__ import annotations

from typing import Any

import pytest

from hero_adapters import HeroVLM
from hero_core.testing import count_host_syncs

from .hosts import HOSTS, host_row

# (per image, per call): hero's own syncs of HeroVLM.plan / generate
BUDGET = {
    "internvl": (2, 2),
    "llava_next": (2, 3),
    "llava_onevision": (3, 4),
    "llava_onevision-downsampled": (3, 4),
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
        assert planner == images, f"{images} images:\n{syncs.table()}"
        assert syncs.hero == per_image * images + per_call, f"{images} images:\n{syncs.table()}"
