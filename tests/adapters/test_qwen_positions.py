"""Qwen-VL hosts: the positions the LLM receives after pruning are the unpruned prompt's (M-RoPE), the decode
steps continue where the unpruned prompt would, DeepStack is pruned at the same tokens, and bad input is refused
with the model left as it was (HOSTS.md "Round 3")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_core import HeroError

from .hosts import host_row

QWEN = ("qwen2_5_vl", "qwen3_vl")


def _prompts(row: Any) -> dict[str, Any]:
    """Two prompts, left padded: one image with text on both sides, and two images of different shapes."""
    texts = [row.text("USER: {} describe the image ASSISTANT:"), row.text("USER: what is {} in this {} ASSISTANT:")]
    images = [row.image(60, 150), row.image(90, 40, seed=1), row.image(70, 70, seed=2)]
    return row.inputs(texts, images)


@contextmanager
def _rotary_positions(model: Any) -> Iterator[list[torch.Tensor]]:
    """Every (3, B, S) position tensor the LLM's rotary embedding receives, call by call."""
    seen: list[torch.Tensor] = []

    def hook(module: Any, args: tuple[Any, ...]) -> None:
        seen.append(args[1].detach().clone())

    handle = model.model.language_model.rotary_emb.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _expected_prefill(row: Any, inputs: dict[str, Any], vlm: HeroVLM, side: str = "left") -> torch.Tensor:
    """(3, B, S') the unpruned positions (the host's get_rope_index) at the columns the pruned prompt keeps,
    written independently of the adapter: text columns, and per image its run start + kept token indices; each
    row padded on ``side`` with 0, as get_rope_index writes padding."""
    model = row.model
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions, _ = model.model.get_rope_index(
        ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"], attention_mask=mask
    )
    report = vlm.last_report
    assert report is not None
    token = int(model.config.image_token_id)
    rows = []
    image = 0
    for b in range(ids.shape[0]):
        keep = mask[b].bool().clone()
        is_image = (ids[b] == token) & keep
        starts = [int(i) for i in is_image.nonzero().flatten() if i == 0 or not bool(is_image[i - 1])]
        keep &= ~is_image
        for start in starts:
            kept = report.images[image].plan.keep[0].nonzero().flatten().cpu()
            keep[start + kept] = True
            image += 1
        rows.append(positions[:, b, keep])
    width = max(r.shape[1] for r in rows)
    out = torch.zeros(3, ids.shape[0], width, dtype=torch.long)
    for b, r in enumerate(rows):
        where = slice(width - r.shape[1], width) if side == "left" else slice(0, r.shape[1])
        out[:, b, where] = r
    return out


@pytest.mark.parametrize("name", QWEN)
def test_prefill_positions_are_the_unpruned_positions_of_the_kept_tokens(name: str) -> None:
    row = host_row(name)
    inputs = _prompts(row)
    vlm = HeroVLM(row.model, row.pruner(0.4), processor=row.processor)
    with _rotary_positions(row.model) as seen:
        out = vlm.generate(**inputs, max_new_tokens=3, do_sample=False)
    expected = _expected_prefill(row, inputs, vlm)
    prefill = seen[0]
    assert prefill.shape == expected.shape
    live = expected != 0  # padding columns: the host writes 0 there too
    assert torch.equal(prefill[live], expected[live])
    assert torch.equal(prefill[~live], torch.zeros_like(prefill[~live]))
    # the pruned prompt is shorter, and the kept image positions are not contiguous (contiguous would pass only
    # if nothing were dropped)
    assert expected.shape[-1] < inputs["input_ids"].shape[1]
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("name", QWEN)
def test_decode_steps_use_the_unpruned_runs_positions(name: str) -> None:
    """The new tokens' positions are the ones the host's own unpruned generate gives its new tokens (positions do
    not depend on which tokens are generated), step by step."""
    row = host_row(name)
    inputs = _prompts(row)
    with _rotary_positions(row.model) as host_seen, torch.no_grad():
        row.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    host_deltas = row.model.model.rope_deltas.clone()
    vlm = HeroVLM(row.model, row.pruner(0.4), processor=row.processor)
    with _rotary_positions(row.model) as hero_seen:
        vlm.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert len(host_seen) == len(hero_seen) == 3
    for step in (1, 2):
        assert hero_seen[step].shape == host_seen[step].shape == (3, 2, 1)
        assert torch.equal(hero_seen[step], host_seen[step]), step
    # rope_deltas: unpruned next position minus the pruned length, so the model's own cache-based decode agrees
    report = vlm.last_report
    assert report is not None
    removed = [0, 0]
    for image in report.images:
        removed[int(image.prompt)] += image.tokens_in - image.tokens_out
    expected = host_deltas + torch.tensor(removed)[:, None]
    assert torch.equal(row.model.model.rope_deltas, expected)


@pytest.mark.parametrize("name", QWEN)
def test_the_models_own_decode_after_a_pruned_prefill_continues_at_the_unpruned_position(name: str) -> None:
    """A step through ``model(...)`` with the pruned prefill's cache and no position_ids: the host derives the
    position from its ``rope_deltas`` (``past length + delta``; its unpadded route), which HeroVLM set: it equals
    the unpruned next position."""
    row = host_row(name)
    inputs = row.inputs([row.text("USER: what is {} in this {} ASSISTANT:")], [row.image(90, 40), row.image(70, 70)])
    vlm = HeroVLM(row.model, row.pruner(0.4), processor=row.processor)
    out = vlm.generate(**inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
    assert out.past_key_values.get_seq_length() < inputs["input_ids"].shape[1]
    with _rotary_positions(row.model) as seen, torch.no_grad():
        row.model(input_ids=out.sequences[:, -1:], past_key_values=out.past_key_values)
    positions, _ = row.model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    unpruned_next = int(positions.max()) + 1
    assert seen[0].flatten().tolist() == [unpruned_next] * 3


def test_deepstack_levels_are_pruned_at_the_same_tokens() -> None:
    row = host_row("qwen3_vl")
    inputs = _prompts(row)
    captured: list[Any] = []

    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if kwargs.get("deepstack_visual_embeds") is not None:
            captured.append([level.detach().clone() for level in kwargs["deepstack_visual_embeds"]])

    with torch.no_grad():
        full = row.model.model.get_image_features(
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"], return_dict=True
        )
    vlm = HeroVLM(row.model, row.pruner(0.4), processor=row.processor)
    handle = row.model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        vlm.generate(**inputs, max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    report = vlm.last_report
    assert report is not None and captured
    levels = captured[0]
    assert len(levels) == len(full.deepstack_features) == 2
    for level, (given, per_image) in enumerate(zip(levels, full.deepstack_features, strict=True)):
        expected = torch.cat(
            [per_image[image.index][image.plan.keep[0].nonzero().flatten()] for image in report.images]
        )
        assert given.shape == expected.shape, level
        torch.testing.assert_close(given, expected, rtol=0, atol=1e-6)
    # the levels differ from one another and from the LLM rows: a container that repeated one would fail
    assert not torch.allclose(levels[0], levels[1])


# ------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", QWEN)
@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda i: {**i, "pixel_values_videos": i["pixel_values"]}, "pixel_values_videos"),
        (lambda i: {**i, "video_grid_thw": i["image_grid_thw"]}, "video_grid_thw"),
        (lambda i: {**i, "second_per_grid_ts": torch.ones(1)}, "second_per_grid_ts"),
        (lambda i: {**i, "position_ids": torch.zeros_like(i["input_ids"])}, "position_ids"),
        (lambda i: {**i, "rope_deltas": torch.zeros(2, 1, dtype=torch.long)}, "rope_deltas"),
        (lambda i: {**i, "image_grid_thw": i["image_grid_thw"].flip(0)}, "image_grid_thw"),
        (lambda i: {k: v for k, v in i.items() if k != "mm_token_type_ids"}, "mm_token_type_ids"),
        (lambda i: {**i, "mm_token_type_ids": torch.zeros_like(i["mm_token_type_ids"])}, "mm_token_type_ids"),
        (lambda i: {**i, "mm_token_type_ids": i["mm_token_type_ids"] * 2}, "mm_token_type_ids"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(name: str, change: Any, field: str) -> None:
    """Refused before the scorer runs (the grids before the scorer too), with ``last_report`` and the model's
    ``rope_deltas`` those of the previous, good call."""
    row = host_row(name)
    inputs = _prompts(row)
    calls: list[int] = []

    def scorer(views: torch.Tensor, text: str) -> torch.Tensor:
        calls.append(int(views.shape[0]))
        return views.flatten(1).std(-1)

    vlm = HeroVLM(row.model, row.pruner(0.4), scorer, processor=row.processor)
    vlm.generate(**inputs, query="what", max_new_tokens=1, do_sample=False)  # a good call first
    report, deltas, scored = vlm.last_report, row.model.model.rope_deltas.clone(), len(calls)
    assert scored > 0
    with pytest.raises(HeroError) as caught:
        vlm.generate(**change(inputs), query="what", max_new_tokens=1, do_sample=False)
    assert field in str(caught.value)
    assert vlm.last_report is report and len(calls) == scored
    assert torch.equal(row.model.model.rope_deltas, deltas)


@pytest.mark.parametrize("name", QWEN)
def test_a_failing_host_call_leaves_rope_deltas_as_they_were(name: str) -> None:
    row = host_row(name)
    inputs = _prompts(row)
    vlm = HeroVLM(row.model, row.pruner(0.4), processor=row.processor)
    vlm.generate(**inputs, max_new_tokens=1, do_sample=False)
    deltas = row.model.model.rope_deltas.clone()
    other = row.inputs([row.text("USER: what is {} in this {} ASSISTANT:")], [row.image(90, 40), row.image(70, 70)])
    with pytest.raises(ValueError, match="not used by the model"):
        vlm.generate(**other, max_new_tokens=1, do_sample=False, not_a_generate_option=1)
    assert torch.equal(row.model.model.rope_deltas, deltas)


@pytest.mark.parametrize("name", QWEN)
def test_forward_positions_with_right_padding(name: str) -> None:
    """``forward`` keeps the caller's padding side: right padding, pruned, gets the unpruned positions of its
    kept columns (three rows, padding 0 as get_rope_index writes it); a prompt ending with an image is taken."""
    row = host_row(name)
    processor = row.processor
    processor.tokenizer.padding_side = "right"
    try:
        texts = [row.text("USER: {} describe the image ASSISTANT:"), row.text("USER: what is {} in this {}")]
        inputs = row.inputs(texts, [row.image(60, 150), row.image(90, 40, seed=1), row.image(70, 70, seed=2)])
    finally:
        processor.tokenizer.padding_side = "left"
    assert int(inputs["attention_mask"][:, -1].min()) == 0  # one row is padded on the right
    vlm = HeroVLM(row.model, row.pruner(0.4), processor=row.processor)
    with _rotary_positions(row.model) as seen:
        vlm(**inputs)
    expected = _expected_prefill(row, inputs, vlm, side="right")
    assert torch.equal(seen[0], expected)


def test_qwen2_5_rows_and_token_features_are_in_raster_order() -> None:
    """The tower runs in window order; the adapter's rows and token features must be in the processor's
    (raster) order: checked against the tower's own recording un-permuted with ``unpermute_windows`` and the
    host's window index, on a grid of several windows."""
    from transformers.vision_utils import get_vision_window_index

    from hero_adapters.towers import cls_attention_hooks, unpermute_windows

    row = host_row("qwen2_5_vl")
    vlm = HeroVLM(row.model, row.pruner(0.4), processor=row.processor)
    inputs = row.inputs([row.text("USER: {} describe ASSISTANT:")], [row.image(60, 150)])
    grid = inputs["image_grid_thw"]
    tower = row.model.model.visual
    with torch.inference_mode():
        encoded = vlm.adapter.encode(vlm._split(inputs)[0], (2,))[0]
        with cls_attention_hooks(tower, (2,), query="mean") as record:
            output = tower(inputs["pixel_values"], grid_thw=grid)
    index, windows = get_vision_window_index(grid, spatial_merge_size=2, window_size=56, patch_size=14)
    assert len(windows) > 3  # several windows: window order differs from raster order
    assert not torch.equal(index, torch.arange(index.numel()))
    rows = unpermute_windows(record.stacked(), index, 4)[0, 0]  # (H, S) in raster order
    expected = rows.reshape(rows.shape[0], -1, 4).sum(-1)
    torch.testing.assert_close(encoded.tiles.cls_attention[0, 0], expected, rtol=0, atol=1e-6)
    hidden = unpermute_windows(output.last_hidden_state.T, index, 4).T  # (S, D) in raster order
    assert encoded.tiles.token_features is not None
    torch.testing.assert_close(
        encoded.tiles.token_features[0], hidden.reshape(-1, 4, hidden.shape[-1]).mean(1), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("name", QWEN)
def test_contiguous_positions_are_refused(name: str) -> None:
    row = host_row(name)
    with pytest.raises(HeroError, match="positions"):
        HeroVLM(row.model, row.pruner(0.4), positions="contiguous")
    assert HeroVLM(row.model, row.pruner(0.4), positions="original").positions == "original"
    assert HeroVLM(row.model, row.pruner(0.4)).positions == "original"


def test_a_video_grid_is_refused_as_image() -> None:
    row = host_row("qwen2_5_vl")
    inputs = _prompts(row)
    grid = inputs["image_grid_thw"].clone()
    grid[0, 0] = 2
    vlm = HeroVLM(row.model, row.pruner(0.4))
    with pytest.raises(HeroError, match="t = 1"):
        vlm.plan(pixel_values=inputs["pixel_values"], image_grid_thw=grid)
