"""``with_token_features``: each (view, token) slot holds the host's own LLM-side row for it, newlines left out,
unpadded slots zero; an adapter's own token features are kept."""

from __future__ import annotations

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters._features import with_token_features
from hero_adapters.sequence import placeholder_runs

from .hosts import host_row


@pytest.mark.parametrize("name", ["llava_next", "internvl", "llava_onevision"])
def test_slots_hold_the_hosts_rows(name: str) -> None:
    row = host_row(name)
    vlm = HeroVLM(row.model, row.pruner(0.5), processor=row.processor)
    inputs = row.batch()
    ids, mask = vlm._check_prompt(inputs["input_ids"], inputs["attention_mask"])
    runs = placeholder_runs(ids, mask, vlm.adapter.image_token_id)
    with torch.inference_mode():
        encoded = vlm.adapter.encode(vlm._split(inputs)[0], (), runs=runs)
    for image in encoded:
        filled = with_token_features(image).tiles.token_features
        views, tokens = image.tiles.num_views, image.tiles.num_tokens
        assert filled is not None and filled.shape == (views, tokens, image.features.shape[-1])
        flat = filled.reshape(views * tokens, -1)
        taken = torch.zeros(views * tokens, dtype=torch.bool)
        for position, slot in enumerate(image.source.tolist()):
            if slot >= 0:
                assert torch.equal(flat[slot], image.features[position])
                taken[slot] = True
        assert bool((flat[~taken] == 0).all())  # slots the host unpads away
        if name == "llava_next":
            assert bool((image.source < 0).any())  # newlines exist and were left out


def test_an_adapters_own_token_features_are_kept() -> None:
    row = host_row("qwen2_5_vl")
    vlm = HeroVLM(row.model, row.pruner(0.5), processor=row.processor)
    with torch.inference_mode():
        encoded = vlm.adapter.encode(vlm._split(row.batch())[0], ())
    for image in encoded:
        assert with_token_features(image) is image
