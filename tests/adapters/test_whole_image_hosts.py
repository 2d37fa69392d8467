"""The presets that choose across an image's views (``divprune``, ``dart``) on every host: HeroVLM gives them the
host's own token features, they send exactly ``hero``'s count, and at keep ratio 1 the answer is the host's."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.adapter import preset_options
from hero_core import HeroError, presets

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


@pytest.fixture(scope="module")
def clip() -> Any:
    from hero_adapters.testing import build_tiny_clip

    return build_tiny_clip()


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_cdpruner_runs_on_every_host_with_the_scorers_token_relevance(name: str, clip: Any) -> None:
    """cdpruner on every host: each image's token relevance is the scorer's per-token cosine on the view's own
    token grid, the count is hero's, and the instruction decides (the same image under two queries keeps other
    tokens); at keep ratio 1 the answer is the host's."""
    row = host_row(name)
    inputs = row.batch()
    options = preset_options(HeroVLM(row.model, row.pruner(0.5), processor=row.processor).adapter)
    ours = HeroVLM(row.model, presets.cdpruner(0.4, **options), clip, processor=row.processor)
    report = ours.plan(**inputs, query="what is in the picture?")
    expected = HeroVLM(row.model, row.pruner(0.4), processor=row.processor).plan(**inputs)
    assert [i.tokens_out for i in report.images] == [i.tokens_out for i in expected.images]
    with pytest.raises(HeroError, match=r"^query for image 0=None.*preset 'cdpruner'"):
        ours.plan(**inputs)  # no query: refused, naming the preset and what to pass
    with pytest.raises(HeroError, match=r"^query for image 0='  ' is invalid: expected the instruction.*'cdpruner'"):
        ours.plan(**inputs, query="  ")  # blank: no instruction either
    for image in report.images:
        relevance = image.encoded.token_relevance
        assert relevance is not None and relevance.shape == image.encoded.valid_mask.shape
        assert bool(((relevance >= -1) & (relevance <= 1)).all())
        assert not bool((image.plan.keep & ~image.encoded.valid_mask).any())
    first = ours.plan(**inputs, query="a red square in the corner").images[0].plan.keep
    second = ours.plan(**inputs, query="text written on a blue sign").images[0].plan.keep
    assert int(first.sum()) == int(second.sum()) and not torch.equal(first, second)
    full = HeroVLM(row.model, presets.cdpruner(1.0, **options), clip, processor=row.processor)
    with torch.no_grad():
        host = generate(row.model, inputs)
    assert_same(host, generate(full, inputs))  # R = 1: nothing planned, no query needed


def test_cdpruner_refuses_a_scorer_without_score_tokens_and_a_missing_query() -> None:
    row = host_row("llava_next")
    plain = lambda views, text: torch.zeros(views.shape[0])  # noqa: E731 - a plain TextScorer function
    with pytest.raises(HeroError, match=r"^text_scorer=.*score_tokens.*preset 'cdpruner'"):
        HeroVLM(row.model, presets.cdpruner(0.4), plain, processor=row.processor)
    with pytest.raises(HeroError, match=r"^text_scorer=None.*score_tokens"):
        HeroVLM(row.model, presets.cdpruner(0.4), processor=row.processor)
