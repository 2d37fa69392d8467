"""Nothing to do at keep ratio 1 (issue 17, item 4): on every host HeroVLM at R = 1 calls no scorer, hooks no
attention, runs no allocator or selector, still reports what was kept, and stays the host (sequences and logits,
greedy and beams). ``hero-reference`` keeps planning: its floors drop tokens even at R = 1."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters import HeroVLM
from hero_adapters.testing import build_tiny_clip
from hero_core import HeroAllocator
from hero_core.selectors import FunctionAwareSelector

from .hosts import HOSTS, assert_same, generate, host_row


class _CountingScorer:
    def __init__(self, scorer: Any) -> None:
        self.scorer, self.calls = scorer, 0

    def score_batch(self, views: Any, texts: Any) -> Any:
        self.calls += 1
        return self.scorer.score_batch(views, texts)

    def __call__(self, views: Any, text: str) -> Any:
        self.calls += 1
        return self.scorer(views, text)


@pytest.fixture(scope="module")
def clip() -> Any:
    return build_tiny_clip()


@pytest.mark.parametrize("name", sorted(HOSTS))
@pytest.mark.parametrize("beams", [1, 2])
def test_ratio_one_scores_and_plans_nothing_and_is_the_host(
    name: str, beams: int, clip: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = host_row(name)
    scorer = _CountingScorer(clip)
    vlm = HeroVLM(row.model, row.pruner(1.0), scorer, processor=row.processor)
    planned: list[str] = []
    for cls, method in ((HeroAllocator, "allocate"), (FunctionAwareSelector, "__call__")):
        original = getattr(cls, method)

        def spy(self: Any, *args: Any, _original: Any = original, _name: str = cls.__name__) -> Any:
            planned.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(cls, method, spy)
    inputs = row.batch()
    queries = ["what is in the picture", "a b c", "the sign"]
    ours = generate(vlm, inputs, query=queries, num_beams=beams)
    assert scorer.calls == 0 and planned == []
    assert_same(ours, generate(row.model, inputs, num_beams=beams))
    report = vlm.last_report
    assert report.images and "score" not in report.timings
    for image in report.images:
        assert image.encoded.attention_layers == ()  # nothing hooked: no layer is read
        assert torch.equal(image.plan.keep, image.encoded.valid_mask)
        assert image.kept_patch_tokens == int(image.encoded.valid_mask.sum()) and image.tokens_out == image.tokens_in
        assert image.relevance is None and image.plan.importance is None


def test_the_reference_preset_still_plans_at_ratio_one(clip: Any) -> None:
    row = host_row(sorted(HOSTS)[0])
    scorer = _CountingScorer(clip)
    vlm = HeroVLM(row.model, row.pruner(1.0, "hero-reference"), scorer, processor=row.processor)
    report = vlm.plan(**row.batch(), query="what is in the picture")
    assert scorer.calls == 1
    assert all(image.plan.importance is not None for image in report.images if image.views > 1)
    assert any(image.encoded.attention_layers for image in report.images)


def test_below_ratio_one_the_scorer_runs(clip: Any) -> None:
    row = host_row(sorted(HOSTS)[0])
    scorer = _CountingScorer(clip)
    HeroVLM(row.model, row.pruner(0.99), scorer, processor=row.processor).plan(**row.batch(), query="a sign")
    assert scorer.calls == 1
