"""The vLLM plugin's InternVL encoder step without vLLM (``vllm_plugin.pipeline_tiled``): CLS rows from a layer's
normed queries and keys against eager attention (qk-norm on), the pixel-shuffle merge groups against the adapter's,
and plan + assembly against ``HeroVLM`` on the same tiny InternVL (the in-environment half of the cross-engine
oracle; the vLLM half is tests/vllm_plugin/test_internvl_plugin.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.pixels import unnormalise
from hero_adapters.vllm_plugin.pipeline import cls_rows_from_qk
from hero_adapters.vllm_plugin.pipeline_tiled import (
    TiledImage,
    assemble_tiled,
    merge_groups,
    merge_rows,
    plan_tiled,
    token_grid,
)
from hero_core import HeroError
from hero_core.counts import tiled_counts

from .hosts import host_row

transformers = pytest.importorskip("transformers")


@contextmanager
def _eager(tower: Any) -> Iterator[None]:
    old = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    try:
        yield
    finally:
        tower.config._attn_implementation = old


@contextmanager
def _qk_rows(tower: Any, layers: Sequence[int], found: dict[int, torch.Tensor]) -> Iterator[None]:
    """What the plugin hooks in vLLM's InternS1 tower: each wanted layer's queries and keys after the qk-norm
    (the attention kernel's inputs), turned into (B, H, T) CLS rows."""
    handles, seen = [], {}

    def hook_for(layer: int, attention: Any, which: str) -> Any:
        def hook(_module: Any, _args: Any, output: torch.Tensor) -> None:
            seen[(layer, which)] = output
            if which == "k":
                found[layer] = cls_rows_from_qk(
                    seen[(layer, "q")], output, int(attention.num_heads), float(attention.scale)
                )

        return hook

    try:
        for layer in layers:
            attention = tower.encoder.layer[layer].attention
            handles.append(attention.q_norm.register_forward_hook(hook_for(layer, attention, "q")))
            handles.append(attention.k_norm.register_forward_hook(hook_for(layer, attention, "k")))
        yield
    finally:
        for handle in handles:
            handle.remove()


def test_cls_rows_from_normed_queries_and_keys_equal_eager_attention() -> None:
    model = host_row("internvl").model
    tower = model.model.vision_tower
    assert tower.config.use_qk_norm  # the host's norms are on (and away from 1): skipping them would show
    pixels = torch.randn(3, 3, 112, 112)
    depth = len(tower.encoder.layer)
    found: dict[int, torch.Tensor] = {}
    with torch.no_grad(), _eager(tower), _qk_rows(tower, range(depth), found):
        out = tower(pixel_values=pixels, output_attentions=True)
    for layer in range(depth):
        torch.testing.assert_close(found[layer], out.attentions[layer][:, :, 0, :].float(), atol=1e-6, rtol=1e-5)


def test_bad_queries_and_keys_are_refused() -> None:
    with pytest.raises(HeroError, match=r"^query / key="):
        cls_rows_from_qk(torch.zeros(2, 5, 32), torch.zeros(2, 4, 32), heads=4)
    with pytest.raises(HeroError, match=r"^query / key="):
        cls_rows_from_qk(torch.zeros(2, 5, 30), torch.zeros(2, 5, 30), heads=4)


def test_merge_groups_are_the_adapters() -> None:
    row = host_row("internvl")
    model = row.model
    adapter = HeroVLM(model, row.pruner(0.5), processor=row.processor).adapter
    groups = merge_groups((8, 8), lambda x: model.model.pixel_shuffle(x, scale_factor=model.config.downsample_ratio))
    assert torch.equal(groups, adapter._token_groups)  # type: ignore[attr-defined]
    assert token_grid(16) == (4, 4) and token_grid(8) == (1, 8)
    with pytest.raises(HeroError, match=r"^pixel_shuffle="):
        merge_groups((2, 2), lambda x: torch.zeros(1, 1, 1, 4))


@pytest.fixture(scope="module")
def hf_scorer_tiny() -> Any:
    from hero_adapters.text_scorers import HFClipTextScorer, clip_tokenizer_from_open_clip

    torch.manual_seed(1)
    width = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = transformers.CLIPConfig(
        text_config=width, vision_config={**width, "image_size": 112, "patch_size": 14}, projection_dim=16
    )
    return HFClipTextScorer(transformers.CLIPModel(config).eval(), clip_tokenizer_from_open_clip())


def _tile_grid(image_processor: Any, height: int, width: int, views: int) -> tuple[int, int] | None:
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    size = image_processor.size
    tile = (int(size["height"]), int(size["width"])) if isinstance(size, dict) else (size.height, size.width)
    cols, rows = get_optimal_tiled_canvas(
        (height, width), tile, image_processor.min_patches, image_processor.max_patches
    )
    return (rows, cols) if views > 1 and rows * cols == views - 1 else None


@pytest.mark.parametrize("preset", ["hero", "divprune", "dart", "visionzip", "cdpruner"])
@pytest.mark.parametrize("ratio", [0.2, 0.5, 1.0])
def test_the_encoder_step_keeps_what_herovlm_keeps(ratio: float, preset: str, hf_scorer_tiny: Any) -> None:
    """Three images (tiled wide, tiled tall, a single view), with and without a question (cdpruner: each with
    one): the plugin's planning, fed as vLLM's layer loop feeds it (CLS rows from the normed q / k, summed per
    2 x 2 merge group, thumbnail last; the projected features for presets that read them), keeps exactly
    HeroVLM.plan's tokens, and its assembly equals the adapter's rows (VisionZip's merged rows included), in the
    count fixed in advance."""
    from hero_adapters._features import merged_rows
    from hero_adapters.adapter import preset_options
    from hero_core import presets

    row = host_row("internvl")
    model, processor = row.model, row.processor
    sizes = [(60, 230), (250, 70), (50, 50)]  # (height, width)
    images = [row.image(h, w, seed=4 + i) for i, (h, w) in enumerate(sizes)]
    inputs = row.inputs([row.text("describe {} the image"), row.text("what is {}"), row.text("{} a b c")], images)
    options = preset_options(HeroVLM(model, row.pruner(0.5), processor=processor).adapter)
    if preset == "hero":
        pruner_for = lambda r: row.pruner(r, alpha=0.5)  # noqa: E731
    else:
        pruner_for = lambda r: presets.get(preset, r, **options)  # noqa: E731
    pruner = pruner_for(ratio)
    queries = ["a red sign", "the sky" if preset == "cdpruner" else None, "the image"]
    vlm = HeroVLM(model, pruner, text_scorer=hf_scorer_tiny, processor=processor)
    report = vlm.plan(**inputs, query=queries)

    tower = model.model.vision_tower
    image_processor = processor.image_processor
    mean_std = (image_processor.image_mean, image_processor.image_std)
    groups = merge_groups((8, 8), lambda x: model.model.pixel_shuffle(x, scale_factor=model.config.downsample_ratio))
    n = int(groups.shape[0])
    layers = pruner.layers
    views_per_image = [int(image_processor.get_number_of_image_patches(h, w)) for h, w in sizes]
    assert sum(views_per_image) == inputs["pixel_values"].shape[0]
    assert views_per_image[2] == 1 and min(views_per_image[:2]) > 2
    tiled = [
        TiledImage(
            counts=tiled_counts(v, n),
            tile_grid=_tile_grid(image_processor, h, w, v),
            keep_ratio=ratio,
            query=queries[i],
        )
        for i, ((h, w), v) in enumerate(zip(sizes, views_per_image, strict=True))
    ]
    found: dict[int, torch.Tensor] = {}
    pixels = inputs["pixel_values"]
    with torch.no_grad():
        with _qk_rows(tower, layers, found):
            last = tower(pixel_values=pixels).last_hidden_state
        features = model.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output
        rows = torch.stack([found[layer] for layer in layers]) if layers else torch.zeros(0, pixels.shape[0], 4, 65)
        merged = merge_rows(rows, groups)
        plans = plan_tiled(
            tiled,
            list(last[:, 0].split(views_per_image)),
            list(merged.split(views_per_image, dim=1)),
            layers,
            pruner_for,
            hf_scorer_tiny,
            lambda i: unnormalise(pixels.split(views_per_image)[i], mean_std),
            features=list(features.split(views_per_image)),
        )
        encoded = vlm.adapter.encode(inputs, layers)
    merging = False
    for i, (image, feats) in enumerate(zip(report.images, features.split(views_per_image), strict=True)):
        keep, into = plans[i].keep, plans[i].merge_into
        assert torch.equal(keep, image.plan.keep), f"image {i}"
        assert (into is None) == (image.plan.merge_into is None)
        if into is not None:
            assert torch.equal(into, image.plan.merge_into)
            merging |= bool(((into >= 0) & (into != torch.arange(into.numel()).view_as(into))).any())
        assert encoded[i].tiles.thumbnail_index == tiled[i].thumbnail_index
        sent = assemble_tiled(tiled[i], keep, feats.flatten(0, 1), pruner, into)
        assert sent.shape[0] == pruner.kept_count(tiled[i].counts)
        expected = vlm.adapter.assemble(merged_rows(encoded[i], into), keep).features
        torch.testing.assert_close(sent, expected, atol=1e-5, rtol=1e-5)
    assert merging == (preset == "visionzip" and ratio < 1)  # the merge path was exercised


def test_assembly_refuses_a_keep_mask_off_the_count() -> None:
    pruner = host_row("internvl").pruner(0.5)
    image = TiledImage(counts=tiled_counts(3, 16), tile_grid=(1, 2), keep_ratio=0.5, query=None)
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep[0, :3] = True
    expected = pruner.kept_count(image.counts)
    with pytest.raises(HeroError, match=rf"encoder step=3 is invalid: expected {expected} = "):
        assemble_tiled(image, keep, torch.zeros(48, 8), pruner)
    with pytest.raises(HeroError, match=r"^keep / features="):
        assemble_tiled(image, keep[:2], torch.zeros(48, 8), pruner)
