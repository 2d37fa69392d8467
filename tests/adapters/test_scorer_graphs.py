"""CUDA graphs of the CLIP scorers' image tower (issue 17, item 3): ``graphs=True`` replays a graph captured per
input shape on CUDA; on the CPU, with ``graphs=False``, in training mode or with autograd on, the tower is eager.
A failure while capturing or replaying logs one warning per scorer and falls back to eager with the same answers.

The CPU tests drive the graph table through a fake capture (``_graphs.capture`` replaced); the ``gpu`` test
captures real graphs and holds them to eager within the dtype's tolerance.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters.testing import build_tiny_clip
from hero_adapters.text_scorers import HFClipTextScorer, OpenClipTextScorer, _graphs
from hero_core import HeroError

TEXT = "a red stop sign"


def _views(count: int, seed: int, height: int = 48, width: int = 64) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _tiny_open_clip() -> OpenClipTextScorer:
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(1)
    vision = CLIPVisionCfg(layers=2, width=32, head_width=8, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)
    model = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()
    return OpenClipTextScorer(model, open_clip.get_tokenizer("ViT-L-14-336"))


def _build(backend: str) -> Any:
    return build_tiny_clip() if backend == "hf" else _tiny_open_clip()


@pytest.fixture(scope="module", params=["hf", "open_clip"])
def scorer(request: pytest.FixtureRequest) -> Any:
    return _build(request.param)


@pytest.fixture
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    """The records of ``_graphs``'s logger (a handler of its own: independent of propagation settings)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(_graphs.__name__)
    handler, level = _Keep(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _FakeGraph:
    """Stands in for a captured graph on the CPU: replays the eager tower and counts replays."""

    def __init__(self, tower: Any, pixels: torch.Tensor) -> None:
        self.tower, self.shape, self.replays = tower, tuple(pixels.shape), 0

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        assert tuple(pixels.shape) == self.shape
        self.replays += 1
        return self.tower(pixels).clone()

    def wait(self) -> None:
        pass


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[_FakeGraph]:
    """Every call counts as graph-eligible and captures a :class:`_FakeGraph`; returns the captured graphs."""
    captured: list[_FakeGraph] = []

    def fake_capture(tower: Any, pixels: torch.Tensor) -> _FakeGraph:
        captured.append(_FakeGraph(tower, pixels))
        return captured[-1]

    monkeypatch.setattr(_graphs, "graphs_apply", lambda model, pixels: not model.training)
    monkeypatch.setattr(_graphs, "capture", fake_capture)
    return captured


def _eager(scorer: Any) -> Any:
    """The same scorer (same model) with graphs off."""
    return dataclasses.replace(scorer, graphs=False)


# ------------------------------------------------------------------------------------------------ the CPU
def test_graphs_are_not_used_on_the_cpu(scorer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(tower: Any, pixels: torch.Tensor) -> Any:
        raise AssertionError("no capture on the CPU")

    monkeypatch.setattr(_graphs, "capture", never)
    assert scorer.graphs is True  # the default
    views, other = _views(3, 0), _views(5, 1)
    eager = _eager(scorer)
    assert torch.equal(scorer(views, TEXT), eager(views, TEXT))
    for a, b in zip(scorer.score_batch([views, other], [TEXT, "x"]), eager.score_batch([views, other], [TEXT, "x"])):
        assert torch.equal(a, b)
    assert getattr(scorer, "_image_graphs", None) is None  # no graph table was even made


def test_a_capture_failure_warns_once_and_answers_as_eager(
    scorer: Any, monkeypatch: pytest.MonkeyPatch, warnings_logged: list[logging.LogRecord]
) -> None:
    def broken(tower: Any, pixels: torch.Tensor) -> Any:
        raise RuntimeError("capture failed\non purpose")

    monkeypatch.setattr(_graphs, "graphs_apply", lambda model, pixels: True)
    monkeypatch.setattr(_graphs, "capture", broken)
    fresh = dataclasses.replace(scorer)  # a new instance: no graph table yet
    eager = _eager(scorer)
    for seed, count in enumerate((2, 2, 4)):
        views = _views(count, seed)
        assert torch.equal(fresh(views, TEXT), eager(views, TEXT))
    batch = [_views(1, 7), _views(3, 8)]
    for a, b in zip(fresh.score_batch(batch, [TEXT, TEXT]), eager.score_batch(batch, [TEXT, TEXT]), strict=True):
        assert torch.equal(a, b)
    assert len(warnings_logged) == 1
    message = warnings_logged[0].getMessage()
    assert type(scorer).__name__ in message and "capture failed on purpose" in message and "\n" not in message
    assert fresh._image_graphs.failed and len(fresh._image_graphs) == 0

    other = dataclasses.replace(scorer)  # once per scorer instance: another one warns for itself
    other(_views(2, 0), TEXT)
    assert len(warnings_logged) == 2


def test_a_replay_failure_warns_once_and_answers_as_eager(
    scorer: Any, monkeypatch: pytest.MonkeyPatch, warnings_logged: list[logging.LogRecord]
) -> None:
    class Broken(_FakeGraph):
        def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("replay failed")

    monkeypatch.setattr(_graphs, "graphs_apply", lambda model, pixels: True)
    monkeypatch.setattr(_graphs, "capture", Broken)
    fresh, eager = dataclasses.replace(scorer), _eager(scorer)
    for _ in range(3):
        assert torch.equal(fresh(_views(3, 0), TEXT), eager(_views(3, 0), TEXT))
    assert len(warnings_logged) == 1 and "replay failed" in warnings_logged[0].getMessage()


def test_graphs_false_is_eager(scorer: Any, fake_cuda: list[_FakeGraph]) -> None:
    eager = _eager(scorer)
    assert eager.graphs is False and "graphs=False" in repr(eager)
    eager(_views(2, 0), TEXT)
    eager.score_batch([_views(2, 0)], [TEXT])
    assert fake_cuda == [] and getattr(eager, "_image_graphs", None) is None


def test_one_capture_per_shape_then_replays(fake_cuda: list[_FakeGraph]) -> None:
    """The graph table (driven on the CPU): one capture per batch size, replays after, answers equal to eager."""
    scorer = build_tiny_clip(seed=3)
    eager = _eager(scorer)
    for count in (2, 5, 2, 5, 2):
        views = _views(count, count)
        assert torch.equal(scorer(views, TEXT), eager(views, TEXT))
    assert [g.shape[0] for g in fake_cuda] == [2, 5]
    assert [g.replays for g in fake_cuda] == [3, 2]  # the capturing call replays too
    table = scorer._image_graphs
    assert table.captures == 2 and len(table) == 2


def test_graphs_are_dropped_when_the_model_changes_dtype(fake_cuda: list[_FakeGraph]) -> None:
    scorer = build_tiny_clip(seed=4)
    views = _views(2, 0)
    scorer(views, TEXT)
    try:
        scorer.model.to(torch.float64)
        scorer(views, TEXT)
        assert len(fake_cuda) == 2 and len(scorer._image_graphs) == 1  # the float32 graph was dropped
    finally:
        scorer.model.to(torch.float32)
    scorer(views, TEXT)
    assert len(fake_cuda) == 3  # and the float64 one: captured again


def test_training_mode_is_eager(fake_cuda: list[_FakeGraph]) -> None:
    scorer = build_tiny_clip(seed=5)
    scorer.model.train()
    try:
        scorer(_views(2, 0), TEXT)
    finally:
        scorer.model.eval()
    assert fake_cuda == []


def test_at_most_the_limit_of_graphs_then_eager(fake_cuda: list[_FakeGraph]) -> None:
    scorer = build_tiny_clip(seed=6)
    eager = _eager(scorer)
    scorer(_views(1, 0), TEXT)
    scorer._image_graphs.limit = 2
    for count in (2, 3, 4, 1):
        views = _views(count, count)
        assert torch.equal(scorer(views, TEXT), eager(views, TEXT))
    assert [g.shape[0] for g in fake_cuda] == [1, 2]  # 3 and 4 ran eagerly; 1 still replays
    assert fake_cuda[0].replays == 2


def test_threads_share_one_table(fake_cuda: list[_FakeGraph]) -> None:
    scorer = build_tiny_clip(seed=7)
    eager = _eager(scorer)
    inputs = [_views(1 + i % 3, i) for i in range(12)]
    expected = [eager(v, TEXT) for v in inputs]
    got: list[Any] = [None] * len(inputs)

    def work(start: int) -> None:
        for i in range(start, len(inputs), 4):
            got[i] = scorer(inputs[i], TEXT)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert sorted(g.shape[0] for g in fake_cuda) == [1, 2, 3]  # one capture per size, whichever thread came first


def test_a_copied_scorer_starts_without_graphs(fake_cuda: list[_FakeGraph]) -> None:
    scorer = build_tiny_clip(seed=8)
    scorer(_views(2, 0), TEXT)
    twin = copy.deepcopy(scorer)
    assert len(twin._image_graphs) == 0 and twin._image_graphs is not scorer._image_graphs
    twin(_views(2, 0), TEXT)
    assert len(fake_cuda) == 2


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_a_bad_graphs_flag_is_refused(scorer: Any, bad: Any) -> None:
    with pytest.raises(HeroError, match=r"graphs=.* is invalid: expected True or False"):
        dataclasses.replace(scorer, graphs=bad)
    with pytest.raises(HeroError, match=r"graphs=.* is invalid"):
        HFClipTextScorer.from_pretrained("/nonexistent/clip", graphs=bad)  # refused before loading anything
    with pytest.raises(HeroError, match=r"graphs=.* is invalid"):
        OpenClipTextScorer.create("ViT-B-32", graphs=bad)


# ------------------------------------------------------------------------------------------------ CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["hf", "open_clip"])
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_cuda_graphs_equal_eager_and_replay(
    backend: str, dtype: torch.dtype, atol: float, warnings_logged: list[logging.LogRecord]
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    scorer = _build(backend)
    scorer.model.to(device="cuda", dtype=dtype)
    eager = _eager(scorer)
    for count in (3, 7):
        views = _views(count, count).cuda()
        graphed = scorer(views, TEXT)
        assert float((graphed - eager(views, TEXT)).abs().max()) <= atol
        pixels = scorer.preprocess(views)
        with torch.inference_mode():
            embedded, reference = scorer._embed_image(pixels), eager._embed_image(pixels)
        scale = max(1.0, float(reference.abs().max()))
        assert float((embedded.float() - reference.float()).abs().max()) <= atol * scale
    table = scorer._image_graphs
    assert table.captures == 2 and not table.failed
    again = scorer(_views(3, 3).cuda(), TEXT)  # the same size: replayed, not captured again
    assert table.captures == 2 and torch.equal(again, scorer(_views(3, 3).cuda(), TEXT))
    batched = scorer.score_batch([_views(3, 0).cuda(), _views(4, 1).cuda()], [TEXT, "x"])  # 7 views: replayed
    assert table.captures == 2 and [tuple(s.shape) for s in batched] == [(3,), (4,)]
    assert warnings_logged == []


def test_graphs_are_dropped_when_any_weight_is_replaced(fake_cuda: list[_FakeGraph]) -> None:
    """Not only the first parameter: the graph reads every weight where it lay at capture."""
    scorer = build_tiny_clip(seed=9)
    views = _views(2, 0)
    scorer(views, TEXT)
    projection = scorer.model.visual_projection
    projection.weight = torch.nn.Parameter(projection.weight.detach().clone())  # same dtype, new storage
    scorer(views, TEXT)
    assert len(fake_cuda) == 2 and len(scorer._image_graphs) == 1


def test_no_graph_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture under autocast would read autocast's cached weight casts, freed when the caller's block exits."""

    class _Pixels:
        is_cuda, requires_grad = True, False

    model = torch.nn.Linear(2, 2).eval()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    with torch.no_grad():
        monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args: False)
        assert _graphs.graphs_apply(model, _Pixels())  # type: ignore[arg-type]
        monkeypatch.setattr(torch, "is_autocast_enabled", lambda *args: True)
        assert not _graphs.graphs_apply(model, _Pixels())  # type: ignore[arg-type]
