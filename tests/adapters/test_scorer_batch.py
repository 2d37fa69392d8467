"""One scorer call per HeroVLM call (issue 17, items 1 and 2): the library's CLIP scorers score every image's
tiles in one image-tower call (``score_batch``), embed each distinct query once and keep it (a bounded cache,
emptied when the model's device or dtype changes); HeroVLM uses the batched method when the scorer has one, and a
plain function image by image. Batched answers equal single ones."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters import HeroVLM
from hero_adapters.testing import AdapterCheckError, build_tiny_clip, check_scorer
from hero_core import HeroError

from .hosts import HOSTS, HostRow, host_row


@pytest.fixture(scope="module")
def clip() -> Any:
    return build_tiny_clip()


def _views(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_batched_scores_equal_single_calls_for_mixed_sizes_and_queries(clip: Any) -> None:
    """Images of different sizes and view counts, a query repeated and a distinct one: within 1e-5 in float32."""
    views = [_views(2, 48, 64, 0), _views(3, 56, 56, 1), _views(1, 30, 90, 2), _views(4, 48, 64, 3)]
    texts = ["a red sign", "what is written", "a red sign", "what is written"]
    worst = check_scorer(clip, views, texts)
    assert worst <= 1e-5
    batched = clip.score_batch(views, texts)
    assert [tuple(s.shape) for s in batched] == [(2,), (3,), (1,), (4,)]
    # Normal tensors, as a single call's: usable outside inference mode (an in-place edit of an inference
    # tensor there raises).
    assert not any(s.is_inference() for s in batched) and not clip(views[0], texts[0]).is_inference()
    batched[0].add_(1.0)
    assert clip.score_batch([], []) == []
    with pytest.raises(AdapterCheckError, match="no score_batch"):
        check_scorer(lambda views, text: clip(views, text), views, texts)


def test_a_query_is_tokenised_and_embedded_once_while_the_model_keeps_its_dtype(clip: Any, monkeypatch: Any) -> None:
    calls: list[str] = []
    original = type(clip)._tokens

    def counting(self: Any, text: str) -> Any:
        calls.append(text)
        return original(self, text)

    monkeypatch.setattr(type(clip), "_tokens", counting)
    clip.clear_text_cache()
    views = _views(3, 48, 48, 4)
    first = clip(views, "a stop sign")
    clip.score_batch([views, views], ["a stop sign", "a cat"])
    again = clip(views, "a stop sign")
    assert calls == ["a stop sign", "a cat"]  # each distinct text once
    assert torch.equal(first, again)
    try:
        clip.model.to(torch.float64)  # another dtype: the cached float32 embeddings are not used
        wide = clip(views.double(), "a stop sign")
        assert calls == ["a stop sign", "a cat", "a stop sign"]
        assert float((wide - first).abs().max()) < 1e-4
    finally:
        clip.model.to(torch.float32)
        clip.clear_text_cache()
    clip(views, "a stop sign")
    assert calls[-1] == "a stop sign" and len(calls) == 4  # cleared: embedded again


class _Counting:
    """The tiny CLIP scorer, counting its batched and single calls (a wrapper keeps score_batch when asked to)."""

    def __init__(self, scorer: Any, batched: bool) -> None:
        self.scorer, self.batches, self.singles = scorer, [], []
        if batched:
            self.score_batch = self._batch

    def _batch(self, views: Any, texts: Any) -> Any:
        self.batches.append((len(views), list(texts)))
        return self.scorer.score_batch(views, texts)

    def __call__(self, views: Any, text: str) -> Any:
        self.singles.append(text)
        return self.scorer(views, text)


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_one_scorer_call_per_generate_on_every_host(name: str, clip: Any) -> None:
    """Three prompts (two with images, one without) and per-prompt queries, two of them equal: ONE batched call
    over every image's tiles; relevance and plans equal scoring image by image with a plain function."""
    host: HostRow = host_row(name)
    inputs = host.batch()
    queries = ["what is in the picture", "what is in the picture", "a b c"]
    batched, single = _Counting(clip, True), _Counting(clip, False)
    ours = HeroVLM(host.model, host.pruner(0.5), batched, processor=host.processor)
    plain = HeroVLM(host.model, host.pruner(0.5), single, processor=host.processor)
    with torch.no_grad():
        out = ours.generate(**inputs, query=queries, max_new_tokens=2, do_sample=False)
        expected = plain.generate(**inputs, query=queries, max_new_tokens=2, do_sample=False)
    # a lone view is the thumbnail, except on hosts without tiles, whose hero-native scores regions of it
    tiled = sum(1 for image in ours.last_report.images if image.views > 1 or host.native)
    assert len(batched.batches) == 1 and batched.singles == []
    assert batched.batches[0][0] == tiled >= 1  # every image of the call that has local tiles, in one call
    assert len(single.singles) == tiled and single.batches == []
    for a, b in zip(ours.last_report.images, plain.last_report.images, strict=True):
        assert a.relevance is not None and b.relevance is not None
        assert float((a.relevance - b.relevance).abs().max()) <= 1e-5
        assert torch.equal(a.plan.keep, b.plan.keep)
    assert torch.equal(out, expected)


def test_a_batched_answer_of_the_wrong_shape_names_the_scorer_and_the_image(clip: Any) -> None:
    host = host_row("llava_next")

    class Broken:
        def __call__(self, views: Any, text: str) -> Any:
            return clip(views, text)

        def score_batch(self, views: Any, texts: Any) -> Any:
            scores = clip.score_batch(views, texts)
            scores[-1] = scores[-1][:-1]  # one cosine short for the last image
            return scores

    class Short(Broken):
        def score_batch(self, views: Any, texts: Any) -> Any:
            return clip.score_batch(views, texts)[:-1]

    inputs = host.batch()
    wrong_shape = r"text_scorer Broken output for image 2=.*expected a finite float tensor of shape \(\d+,\)"
    with pytest.raises(HeroError, match=wrong_shape):
        HeroVLM(host.model, host.pruner(0.5), Broken(), processor=host.processor).plan(**inputs, query="x")
    with pytest.raises(HeroError, match=r"text_scorer Short.score_batch output.*a list of 3 tensors"):
        HeroVLM(host.model, host.pruner(0.5), Short(), processor=host.processor).plan(**inputs, query="x")
