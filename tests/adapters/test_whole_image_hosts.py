"""The presets that choose across an image's views (``divprune``, ``dart``) on every host: HeroVLM gives them the
host's own token features, they send exactly ``hero``'s count, and at keep ratio 1 the answer is the host's."""

from __future__ import annotations

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.adapter import preset_options
from hero_core import presets

from .hosts import HOSTS, assert_same, generate, host_row


@pytest.mark.parametrize("name", sorted(HOSTS))
@pytest.mark.parametrize("preset", ["divprune", "dart", "visionzip"])
def test_whole_image_presets_run_on_every_host(name: str, preset: str) -> None:
    row = host_row(name)
    inputs = row.batch()
    adapter = HeroVLM(row.model, row.pruner(0.5), processor=row.processor).adapter
    options = preset_options(adapter)
    ours = HeroVLM(row.model, presets.get(preset, 0.4, **options), processor=row.processor)
    reference = HeroVLM(row.model, row.pruner(0.4), processor=row.processor)
    report = ours.plan(**inputs)
    expected = reference.plan(**inputs)
    assert [i.tokens_out for i in report.images] == [i.tokens_out for i in expected.images]
    for image in report.images:  # chosen across views: the per-view counts are the selector's, padding never kept
        assert torch.equal(image.plan.keep.sum(-1), image.plan.budgets)
        assert not bool((image.plan.keep & ~image.encoded.valid_mask).any())
    out = ours.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    full = HeroVLM(row.model, presets.get(preset, 1.0, **options), processor=row.processor)
    with torch.no_grad():
        host = generate(row.model, inputs)
    assert_same(host, generate(full, inputs))
