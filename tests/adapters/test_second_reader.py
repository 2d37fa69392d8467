"""Tests for what the second reader's fresh mutants (tools/mutants_fresh.py, issue 16) showed no test pinned: the
position ids and the id under new padding, InternVL's tile grid for non-square images, OneVision's stand-in CLS."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters import HeroVLM
from hero_adapters.hosts._shared import pad_token_id

from .hosts import host_row


def test_original_positions_under_padding_are_what_the_hosts_generate_writes() -> None:
    """positions="original" hands the host position ids; under the padding they equal what the host's own
    ``generate`` writes there (transformers 5: 0; 4.x wrote 1), and over the text they count on from the
    image's unpruned layout (F43)."""
    host = host_row("llava_next")
    vlm = HeroVLM(host.model, host.pruner(0.5), processor=host.processor, positions="original")
    inputs = host.inputs(
        [host.text("USER: {} describe the image ASSISTANT:"), host.text("USER: a b c ASSISTANT:")],
        [host.image(40, 100)],
    )
    seen: list[dict[str, Any]] = []
    handle = host.model.register_forward_pre_hook(
        lambda m, a, k: seen.append(k) if not seen else None, with_kwargs=True
    )
    try:
        vlm.generate(**inputs, max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    mask, positions = seen[0]["attention_mask"], seen[0]["position_ids"]
    assert bool((mask[1] == 0).any())  # the text-only row is padded on the left
    expected = host.model._prepare_position_ids_for_generation(
        seen[0]["input_ids"], {"attention_mask": mask, "input_ids": seen[0]["input_ids"]}
    )
    assert torch.equal(positions[mask == 0], expected[mask == 0])
    assert positions[1][mask[1] == 1].tolist() == list(range(int(mask[1].sum())))  # no image: 0, 1, 2, ...
    last = int(positions[0, -1])  # the image row's last text token: counted over the unpruned image run
    assert last == int(inputs["attention_mask"][0].sum()) - 1


def test_new_padding_takes_the_pad_id_before_the_eos_id() -> None:
    """The id written into new padding: the generation config's pad id, then its eos id, then the text config's,
    then the config's (F47: eos read first)."""
    config = SimpleNamespace(text_config=SimpleNamespace(pad_token_id=5, eos_token_id=6), pad_token_id=None)
    both = SimpleNamespace(config=config, generation_config=SimpleNamespace(pad_token_id=7, eos_token_id=[2, 3]))
    assert pad_token_id(both) == 7
    eos_only = SimpleNamespace(config=config, generation_config=SimpleNamespace(pad_token_id=None, eos_token_id=[2, 3]))
    assert pad_token_id(eos_only) == 2
    text = SimpleNamespace(config=config, generation_config=SimpleNamespace(pad_token_id=None, eos_token_id=None))
    assert pad_token_id(text) == 5
    bare = SimpleNamespace(config=SimpleNamespace(text_config=None), generation_config=None)
    assert pad_token_id(bare) == 0


@pytest.mark.parametrize(("height", "width", "grid"), [(40, 100, (1, 2)), (100, 40, (3, 1)), (90, 60, (3, 2))])
def test_internvl_tile_grids_of_non_square_images(height: int, width: int, grid: tuple[int, int]) -> None:
    """With image_sizes (``adapter.image_inputs``), InternVL's tile grid is (rows, cols) of the processor's tiling:
    a wide image has more columns, a tall one more rows (F54: GotOcr2's (cols, rows) read as (rows, cols))."""
    host = host_row("internvl")
    vlm = HeroVLM(host.model, host.pruner(0.5), processor=host.processor)
    image = host.image(height, width)
    inputs = {**host.inputs([host.text("USER: {} x ASSISTANT:")], [image]), **vlm.adapter.image_inputs([image])}
    (report,) = vlm.plan(**inputs).images
    assert report.encoded.tile_grid == grid
    assert report.views == grid[0] * grid[1] + 1


def test_onevision_stand_in_cls_is_the_mean_token_of_the_last_layer() -> None:
    """SigLIP has no CLS: the saliency embedding of each view is the mean of the tower's last hidden state over
    its tokens (before post_layernorm), not its first token (F56)."""
    host = host_row("llava_onevision")
    vlm = HeroVLM(host.model, host.pruner(0.5), processor=host.processor)
    inputs = host.inputs([host.text("USER: {} x ASSISTANT:")], [host.image(40, 100)])
    (report,) = vlm.plan(**inputs).images
    views = inputs["pixel_values"][0][: report.views]
    with torch.no_grad():
        last = vlm.adapter.vision_tower(pixel_values=views, output_hidden_states=True).hidden_states[-1].float()
    assert torch.allclose(report.encoded.cls_tokens, last.mean(dim=1), atol=1e-6)
    assert not torch.allclose(report.encoded.cls_tokens, last[:, 0], atol=1e-3)
