"""HeroVLM on the tiny LLaVA-NeXT: identity at R = 1, exact counts at R < 1, batch == singles, options."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from hero_adapters import HeroVLM, PruneReport
from hero_core import presets

GREEDY = {"max_new_tokens": 6, "do_sample": False}
BEAMS = {"max_new_tokens": 4, "do_sample": False, "num_beams": 2, "num_return_sequences": 2}
SAMPLE = {"max_new_tokens": 5, "do_sample": True, "top_k": 8}


def _prompts(tiny: Any, case: str) -> dict[str, Any]:
    if case == "single":
        return tiny.inputs(["USER: <image> describe the image ASSISTANT:"], [tiny.image(40, 100)])
    if case == "separated-images-and-text-only":
        texts = ["USER: <image> compare two <image> a b ASSISTANT:", "USER: what is in this picture ASSISTANT:"]
        return tiny.inputs(texts, [tiny.image(100, 30), tiny.image(56, 56)])
    raise AssertionError(case)


def _generate_both(tiny: Any, vlm: HeroVLM, inputs: dict[str, Any], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    torch.manual_seed(123)
    with torch.no_grad():
        host = tiny.model.generate(**inputs, **kwargs)
    torch.manual_seed(123)
    ours = vlm.generate(**inputs, **kwargs)
    return host, ours


@pytest.mark.parametrize("kwargs", [GREEDY, BEAMS, SAMPLE], ids=["greedy", "beams", "sampling"])
@pytest.mark.parametrize("case", ["single", "batch3-left-padded", "separated-images-and-text-only"])
def test_keep_all_is_token_identical_to_the_host(
    tiny: Any, batch: dict[str, Any], case: str, kwargs: dict[str, Any]
) -> None:
    inputs = batch["inputs"] if case == "batch3-left-padded" else _prompts(tiny, case)
    vlm = HeroVLM(tiny.model, presets.hero(1.0, low_layers=tiny.low, high_layers=tiny.high))
    host, ours = _generate_both(tiny, vlm, inputs, kwargs)
    assert ours.shape == host.shape
    assert torch.equal(ours, host)
    report = vlm.last_report
    assert report is not None and report.tokens_out == report.tokens_in
    assert all(image.effective_ratio == 1.0 for image in report.images)


def test_keep_all_with_original_positions_is_identical(tiny: Any, batch: dict[str, Any]) -> None:
    vlm = HeroVLM(tiny.model, tiny.pruner(1.0), positions="original")
    host, ours = _generate_both(tiny, vlm, batch["inputs"], GREEDY)
    assert torch.equal(ours, host)


def test_pruning_changes_the_output(tiny: Any, batch: dict[str, Any]) -> None:
    """Guard for the identity tests above: the tiny model's tokens do depend on the image tokens."""
    vlm = HeroVLM(tiny.model, tiny.pruner(0.25))
    host, ours = _generate_both(tiny, vlm, batch["inputs"], GREEDY)
    assert ours.shape[0] == host.shape[0]
    assert not torch.equal(ours, host)
    # Ragged kept counts per image survive the host's expansion for beams / num_return_sequences.
    beams = vlm.generate(**batch["inputs"], **BEAMS)
    prompt = batch["inputs"]["input_ids"]
    assert beams.shape[0] == 2 * prompt.shape[0]
    assert torch.equal(beams[:, : prompt.shape[1]], prompt.repeat_interleave(2, dim=0))
    assert len({image.tokens_out for image in vlm.last_report.images}) > 1  # type: ignore[union-attr]


def _record_prefill_ids(tiny: Any) -> tuple[list[dict[str, Any]], Any]:
    calls: list[dict[str, Any]] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        call = {key: kwargs.get(key) for key in ("input_ids", "attention_mask", "position_ids")}
        if call["input_ids"] is None and args:  # LlavaNextForConditionalGeneration passes it positionally
            call["input_ids"] = args[0]
        calls.append(call)

    return calls, tiny.model.model.register_forward_pre_hook(hook, with_kwargs=True)


def _runs(row_ids: torch.Tensor, token: int) -> list[int]:
    """Lengths of the placeholder runs of one row, left to right (plain loop)."""
    runs, current = [], 0
    for value in [*row_ids.tolist(), -1]:
        if value == token:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    return runs


@pytest.mark.parametrize("layout", ["vanilla", "reference"])
def test_llm_receives_exactly_the_reported_tokens(tiny: Any, batch: dict[str, Any], layout: str) -> None:
    inputs = batch["inputs"]
    preset = "hero" if layout == "vanilla" else "hero-reference"
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5, preset), layout=layout)
    calls, handle = _record_prefill_ids(tiny)
    try:
        out = vlm.generate(**inputs, **GREEDY)
    finally:
        handle.remove()
    report = vlm.last_report
    assert report is not None
    sent = calls[0]["input_ids"]  # the prefill
    with torch.inference_mode():
        host_counts = [
            f.shape[0]
            for f in tiny.model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
        ]
    for row in range(sent.shape[0]):
        images = [image for image in report.images if image.prompt == row]
        assert sum(image.tokens_out for image in images) == int((sent[row] == tiny.image_token_id).sum())
        # the batch fixture: row 1 holds two adjacent images in one run
        assert _runs(sent[row], tiny.image_token_id) == ([sum(image.tokens_out for image in images)] if images else [])
    for image, host_count in zip(report.images, host_counts):
        assert image.tokens_in == host_count
        assert image.tokens_out == image.kept_patch_tokens + image.newline_tokens
        assert image.kept_patch_tokens == int(image.plan.keep.sum()) == sum(image.budgets)
        assert image.kept_patch_tokens < sum(image.valid_tokens)
        assert image.effective_ratio == image.tokens_out / image.tokens_in
    assert [image.prompt for image in report.images] == [0, 1, 1, 2]
    assert sent.shape[1] < inputs["input_ids"].shape[1]
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])  # caller's prompt first
    assert (
        calls[0]["attention_mask"].sum(-1)
        == torch.tensor([len(r) for r in [sent[i][calls[0]["attention_mask"][i].bool()] for i in range(sent.shape[0])]])
    ).all()
    assert (calls[0]["attention_mask"][:, -1] == 1).all()  # left padding


def test_batch_gives_the_same_plans_and_sequences_as_single_prompts(tiny: Any, batch: dict[str, Any]) -> None:
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5))
    together = vlm.generate(**batch["inputs"], **GREEDY)
    plans = [image.plan.keep for image in vlm.last_report.images]  # type: ignore[union-attr]
    prompt_length = batch["inputs"]["input_ids"].shape[1]
    groups = [[0], [1, 2], [3]]
    for row, (text, group) in enumerate(zip(batch["texts"], groups)):
        alone = tiny.inputs([text], [batch["images"][i] for i in group])
        out = vlm.generate(**alone, **GREEDY)
        alone_plans = [image.plan.keep for image in vlm.last_report.images]  # type: ignore[union-attr]
        assert len(alone_plans) == len(group)
        assert all(torch.equal(keep, plans[i]) for keep, i in zip(alone_plans, group))
        assert torch.equal(out[0, alone["input_ids"].shape[1] :], together[row, prompt_length:])


def test_original_positions_are_the_unpruned_ones(tiny: Any, batch: dict[str, Any]) -> None:
    inputs = batch["inputs"]
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5), positions="original")
    calls, handle = _record_prefill_ids(tiny)
    try:
        vlm.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        handle.remove()
    positions, mask, ids = calls[0]["position_ids"], calls[0]["attention_mask"].bool(), calls[0]["input_ids"]
    original = inputs["attention_mask"].cumsum(-1) - 1
    for row in range(ids.shape[0]):
        row_positions = positions[row][mask[row]]
        assert row_positions[-1] == original[row, -1]  # the last prompt token keeps its unpruned position
        assert bool((row_positions.diff() > 0).all())
        is_image = ids[row][mask[row]] == tiny.image_token_id
        unpruned_image = original[row][inputs["input_ids"][row] == tiny.image_token_id]
        assert set(row_positions[is_image].tolist()) <= set(unpruned_image.tolist())


def test_generate_options_pass_through(tiny: Any) -> None:
    inputs = _prompts(tiny, "single")
    vlm = HeroVLM(tiny.model, tiny.pruner(1.0))
    kwargs = {"max_new_tokens": 4, "do_sample": False, "return_dict_in_generate": True, "output_scores": True}
    host, ours = _generate_both(tiny, vlm, inputs, kwargs)
    assert torch.equal(ours.sequences, host.sequences)
    assert len(ours.scores) == len(host.scores) == 4
    assert not ours.sequences.is_inference() and not ours.scores[0].is_inference()  # usable like the host's
    length = inputs["input_ids"].shape[1]
    host, ours = _generate_both(tiny, vlm, inputs, {"max_length": length + 3, "do_sample": False})
    assert ours.shape[1] == host.shape[1] == length + 3 and torch.equal(ours, host)

    class Collect(BaseStreamer):
        def __init__(self) -> None:
            self.chunks: list[torch.Tensor] = []

        def put(self, value: torch.Tensor) -> None:
            self.chunks.append(value.detach().clone().reshape(-1))

        def end(self) -> None:
            self.chunks.append(torch.tensor([-1]))

    streamer = Collect()
    out = HeroVLM(tiny.model, tiny.pruner(0.5)).generate(**inputs, streamer=streamer, max_new_tokens=4, do_sample=False)
    streamed = torch.cat(streamer.chunks[1:-1])  # after the (shortened) prompt, before end()
    assert torch.equal(streamed, out[0, length:])
    assert streamer.chunks[-1].item() == -1


def test_prompts_without_images(tiny: Any) -> None:
    inputs = tiny.inputs(["USER: what is in this picture ASSISTANT:", "USER: a b c ASSISTANT:"], None)
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5))
    host, ours = _generate_both(tiny, vlm, inputs, GREEDY)
    assert torch.equal(ours, host)
    assert vlm.last_report is not None and vlm.last_report.images == []
    assert vlm.last_report.effective_ratio == 1.0


def test_forward_logits_and_loss(tiny: Any, batch: dict[str, Any]) -> None:
    inputs = batch["inputs"]
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    labels = labels.masked_fill(labels == tiny.image_token_id, -100)
    with torch.no_grad():
        host = tiny.model(**inputs, labels=labels)
    ours = HeroVLM(tiny.model, tiny.pruner(1.0)).forward(**inputs, labels=labels)
    assert torch.equal(ours.logits, host.logits)
    torch.testing.assert_close(ours.loss, host.loss, rtol=0, atol=0)

    # R < 1: the loss equals the host's on the pruned prompt with labels shrunk by hand from what was sent.
    seen: list[dict[str, Any]] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(kwargs)

    vlm = HeroVLM(tiny.model, tiny.pruner(0.5))
    handle = tiny.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pruned = vlm(**inputs, labels=labels)
    finally:
        handle.remove()
    sent, mask = seen[0]["input_ids"], seen[0]["attention_mask"]
    assert pruned.logits.shape[:2] == sent.shape and sent.shape[1] < inputs["input_ids"].shape[1]
    assert torch.isfinite(pruned.loss) and pruned.loss.grad_fn is None
    shrunk = sent.masked_fill(mask == 0, -100).masked_fill(sent == tiny.image_token_id, -100)
    assert torch.equal(seen[0]["labels"], shrunk)
    with torch.no_grad():
        manual = tiny.model(
            input_ids=sent, attention_mask=mask, labels=shrunk, mm_encoder_outputs=seen[0]["mm_encoder_outputs"]
        )
    torch.testing.assert_close(pruned.loss, manual.loss, rtol=0, atol=0)


def test_query_reaches_each_image_of_its_prompt(tiny: Any, batch: dict[str, Any]) -> None:
    seen: list[tuple[tuple[int, ...], str, float, float]] = []

    def scorer(views: torch.Tensor, text: str) -> torch.Tensor:
        seen.append((tuple(views.shape), text, float(views.min()), float(views.max())))
        return views.mean(dim=(1, 2, 3))  # one score per view

    vlm = HeroVLM(tiny.model, tiny.pruner(0.5, alpha=0.5), scorer)
    vlm.plan(**batch["inputs"], query=["first", "second", "third"])
    assert [text for _, text, _, _ in seen] == ["first", "second", "second", "third"]
    assert all(shape[1:] == (3, 56, 56) and low >= 0.0 and high <= 1.0 for shape, _, low, high in seen)
    report = vlm.last_report
    assert report is not None
    assert [image.query for image in report.images] == ["first", "second", "second", "third"]
    assert all(image.relevance is not None and image.relevance.shape == (image.views,) for image in report.images)
    # only the local tiles are scored (the thumbnail's relevance is never read): K = V - 1 views per call
    assert [shape[0] for shape, _, _, _ in seen] == [image.views - 1 for image in report.images]
    for image in report.images:
        assert image.relevance is not None
        assert float(image.relevance[image.encoded.thumbnail_index]) == 0.0
        assert image.to_dict()["relevance"][image.encoded.thumbnail_index] is None
    assert "score" in report.timings
    seen.clear()
    vlm.generate(**batch["inputs"], query="same for all", max_new_tokens=1)
    assert [text for _, text, _, _ in seen] == ["same for all"] * 4
    seen.clear()
    HeroVLM(tiny.model, tiny.pruner(0.5, alpha=1.0), scorer).plan(**batch["inputs"], query="unused")
    assert seen == []  # alpha = 1: the allocator reads no relevance, the scorer is skipped


def test_plan_runs_no_language_model_and_matches_generate(tiny: Any, batch: dict[str, Any]) -> None:
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5))
    calls, handle = _record_prefill_ids(tiny)
    try:
        report = vlm.plan(**batch["inputs"])
        no_prompt = vlm.plan(pixel_values=batch["inputs"]["pixel_values"], image_sizes=batch["inputs"]["image_sizes"])
    finally:
        handle.remove()
    assert calls == []
    assert isinstance(report, PruneReport) and vlm.last_report is no_prompt
    assert [image.prompt for image in no_prompt.images] == [None] * 4
    vlm.generate(**batch["inputs"], max_new_tokens=1)
    for planned, generated in zip(report.images, vlm.last_report.images):  # type: ignore[union-attr]
        assert torch.equal(planned.plan.keep, generated.plan.keep)
        assert planned.tokens_out == generated.tokens_out
    assert {"encode", "plan", "assemble"} <= set(report.timings)
    assert {"encode", "plan", "assemble", "generate"} <= set(vlm.last_report.timings)  # type: ignore[union-attr]
    summary = json.loads(json.dumps(vlm.last_report.to_dict()))  # type: ignore[union-attr]
    assert summary["tokens_out"] == sum(image["tokens_out"] for image in summary["images"])
    assert summary["images"][1]["budgets"] == vlm.last_report.images[1].budgets  # type: ignore[union-attr]
    assert 0 < summary["effective_ratio"] < 1


def test_concatenated_tiles_give_the_same_plans(tiny: Any, batch: dict[str, Any]) -> None:
    """pixel_values as (sum T_i, 3, h, w), which the host also accepts, plans like the padded 5-d form."""
    inputs = batch["inputs"]
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5))
    padded = vlm.plan(**inputs)
    flat = torch.cat([inputs["pixel_values"][i, : image.views] for i, image in enumerate(padded.images)])
    again = vlm.plan(**{**inputs, "pixel_values": flat})
    assert [image.tokens_out for image in again.images] == [image.tokens_out for image in padded.images]
    assert all(torch.equal(a.plan.keep, b.plan.keep) for a, b in zip(again.images, padded.images, strict=True))


def test_pixels_in_another_dtype_are_cast_to_the_tower(tiny: Any, batch: dict[str, Any]) -> None:
    """float64 / bfloat16 pixel_values reach the float32 tower as float32: same plan as the processor's output."""
    inputs = batch["inputs"]
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5))
    reference = vlm.plan(**inputs)
    other = vlm.plan(**{**inputs, "pixel_values": inputs["pixel_values"].double()})
    for a, b in zip(reference.images, other.images, strict=True):
        assert torch.equal(a.plan.keep, b.plan.keep)
    vlm.generate(**{**inputs, "pixel_values": inputs["pixel_values"].bfloat16()}, max_new_tokens=1)
