"""VisionZip on a host (issue 20): the language model receives, at every contextual token, its own row plus the
mean of the rows merged into it, and every other kept row unchanged; counts are ``hero``'s."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters._features import merged_rows
from hero_adapters.adapter import EncodedImage
from hero_core import presets

from .test_llava_next_layout import _capture_llm_inputs, _slow_sequence, _tile_features


def _merged_slow(feats: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """(V, N, D) with every target's row plus the mean of the rows merged into it, by plain loops."""
    views, tokens, _ = feats.shape
    out = feats.clone()
    flat = into.reshape(-1).tolist()
    for target in range(views * tokens):
        members = [a for a, t in enumerate(flat) if t == target and a != target]
        if members:
            rows = torch.stack([feats[a // tokens, a % tokens] for a in members])
            out[target // tokens, target % tokens] = feats[target // tokens, target % tokens] + rows.mean(0)
    return out


@pytest.mark.parametrize("layout", ["vanilla", "reference"])
def test_the_llm_receives_the_merged_rows(tiny: Any, batch: dict[str, Any], layout: str) -> None:
    inputs = batch["inputs"]
    pruner = presets.visionzip(0.5, depth=tiny.model.config.vision_config.num_hidden_layers, contextual=0.4)
    vlm = HeroVLM(tiny.model, pruner, layout=layout)
    calls, handles = _capture_llm_inputs(tiny)
    try:
        vlm.generate(**inputs, max_new_tokens=1, do_sample=False)
    finally:
        for handle in handles:
            handle.remove()
    prefill = calls[0]
    received = prefill["inputs_embeds"][prefill["input_ids"] == tiny.image_token_id]
    images = vlm.last_report.images
    feats = _tile_features(tiny, inputs, [image.views for image in images])
    expected, merges = [], 0
    for i, image in enumerate(images):
        into = image.plan.merge_into
        assert into is not None
        merges += int(((into >= 0) & ~image.plan.keep).sum())
        sizes = tuple(inputs["image_sizes"][i].tolist())
        sequence, _ = _slow_sequence(
            _merged_slow(feats[i], into), tiny.model.model.image_newline, image.plan.keep, sizes, layout
        )
        expected.append(sequence)
    assert merges > 0  # the test sees merges, not only dominant tokens
    torch.testing.assert_close(received, torch.cat(expected), rtol=1e-5, atol=1e-5)
    # the same counts as hero at the same ratio
    hero = HeroVLM(tiny.model, tiny.pruner(0.5), layout=layout).plan(**inputs)
    assert [i.kept_patch_tokens for i in images] == [i.kept_patch_tokens for i in hero.images]


def test_merged_rows_leaves_newlines_and_unmerged_rows_alone() -> None:
    """Rows map to slots by the source map (newline rows -1); a target gets its own row plus the mean of its
    members, other rows are unchanged, the dtype is kept."""
    features = torch.arange(12, dtype=torch.float16).reshape(6, 2)  # rows 0..5
    source = torch.tensor([0, 1, -1, 2, 3, -1])  # slots 0..3 of a (1, 4) image, two newline rows
    image = EncodedImage(tiles=None, features=features, source=source, views=torch.zeros(1, 3, 2, 2))  # type: ignore[arg-type]
    into = torch.tensor([[0, 0, 3, 3]])  # slot 1 into 0, slot 2 into 3
    out = merged_rows(image, into).features
    assert out.dtype == torch.float16
    assert out[0].tolist() == (features[0] + features[1]).tolist()  # target 0 + mean of slot 1's row
    assert out[4].tolist() == (features[4] + features[3]).tolist()  # target 3 (row 4) + slot 2 (row 3)
    assert torch.equal(out[[1, 2, 3, 5]], features[[1, 2, 3, 5]])
    assert merged_rows(image, None) is image
    # float64 (a float64 host): sums in float64, and rows nothing merges into stay bit-exact (no float32 trip)
    wide = (torch.arange(12, dtype=torch.float64).reshape(6, 2) + 1) / 3
    out = merged_rows(EncodedImage(tiles=None, features=wide, source=source, views=image.views), into).features  # type: ignore[arg-type]
    assert out.dtype == torch.float64 and torch.equal(out[[1, 2, 3, 5]], wide[[1, 2, 3, 5]])
    assert torch.equal(out[0], wide[0] + wide[1]) and torch.equal(out[4], wide[4] + wide[3])
