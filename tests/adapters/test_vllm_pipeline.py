"""The vLLM plugin's parts that need no vLLM (issue 18): engine and request options, CLS rows from a fused q/k/v
projection against eager attention, the tensor-parallel head combination, and the encoder step's plan and
assembly against ``HeroVLM`` on the same tiny LLaVA-NeXT (the in-environment half of the cross-engine oracle).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.pixels import unnormalise
from hero_adapters.vllm_plugin.options import HeroOptions, parse_options, request_options
from hero_adapters.vllm_plugin.pipeline import (
    AnyresImage,
    assemble_vanilla,
    cls_rows_from_qkv,
    combine_head_parts,
    plan_images,
)
from hero_core import HeroError
from hero_core.counts import anyres_counts, anyres_grid, anyres_layout

from .hosts import host_row

transformers = pytest.importorskip("transformers")


# ------------------------------------------------------------------------------------------------ options
@pytest.fixture
def clip_dir(tmp_path: Path) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    return str(tmp_path)


def test_options_defaults_and_pruner(clip_dir: str) -> None:
    options = parse_options({"keep_ratio": 0.2, "clip": clip_dir, "alpha": 0.7}, depth=24)
    assert (options.preset, options.keep_ratio, options.clip_dtype) == ("hero", 0.2, "float32")
    assert options.pruner().allocator.alpha == 0.7
    assert options.pruner(0.5).keep_ratio == 0.5
    # layers are scaled to the tower's depth as presets do
    assert parse_options({"keep_ratio": 0.2, "alpha": 1.0}, depth=12).pruner().layers == (2, 3, 4, 10)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, r"^hf_overrides\['hero'\]=None is invalid"),
        ({"keep_ratio": 0.2, "alpha": 1.0, "alhpa": 0.5}, r"^hero\.alhpa=0\.5 is invalid: expected an override among"),
        ({"keep_ratio": 0.0, "alpha": 1.0}, r"^hero\.keep_ratio=0\.0 is invalid: expected a float in \(0, 1\]"),
        ({"keep_ratio": 1.5, "alpha": 1.0}, r"^hero\.keep_ratio=1\.5 is invalid"),
        ({"keep_ratio": "0.2", "alpha": 1.0}, r"^hero\.keep_ratio='0\.2' is invalid"),
        ({"alpha": 1.0}, r"^hero\.keep_ratio=None is invalid"),
        ({"keep_ratio": 0.2, "preset": "hero-reference"}, r"^hero\.preset='hero-reference' is invalid.*count"),
        ({"keep_ratio": 0.2, "preset": "hero-native", "alpha": 1.0}, r"^hero\.preset='hero-native' is invalid.*tiles"),
        ({"keep_ratio": 0.2, "preset": "cdpruner"}, r"^hero\.clip=None is invalid: .* 'cdpruner' weighs each token"),
        ({"keep_ratio": 0.2, "preset": "nope"}, r"^hero\.preset='nope' is invalid: expected one of"),
        ({"keep_ratio": 0.2}, r"^hero\.clip=None is invalid: expected a local CLIP checkpoint directory"),
        ({"keep_ratio": 0.2, "clip": "/no/such/dir"}, r"^hero\.clip='/no/such/dir' is invalid: expected a directory"),
        ({"keep_ratio": 0.2, "alpha": 1.0, "clip_dtype": "int8"}, r"^hero\.clip_dtype='int8' is invalid"),
        ({"keep_ratio": 0.2, "alpha": 1.0, "depth": 3}, r"^hero\.depth=3 is invalid: expected no such engine option"),
        ({"keep_ratio": 0.2, "alpha": 1.0, "name": "x"}, r"^hero\.name='x' is invalid"),
    ],
)
def test_bad_engine_options_name_the_key_and_value(raw: Any, message: str) -> None:
    with pytest.raises(HeroError, match=message):
        parse_options(raw, depth=24)


@pytest.mark.parametrize("preset", ["divprune", "dart", "visionzip", "cdpruner"])
def test_the_whole_image_presets_are_served(preset: str, clip_dir: str) -> None:
    """Their kept count is hero's, known from the image size before the encoder runs: the plugin serves them
    (cdpruner with the CLIP checkpoint it reads each token's relevance with; the others need none)."""
    raw = {"keep_ratio": 0.2, "preset": preset, **({"clip": clip_dir} if preset == "cdpruner" else {})}
    options = parse_options(raw, depth=24)
    assert (options.preset, options.pruner().count_known, options.pruner().needs_features) == (preset, True, True)


def test_a_non_clip_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next"}))
    with pytest.raises(
        HeroError, match=r"^hero\.clip=.* expected a CLIP checkpoint \(its config.json says 'llava_next'\)"
    ):
        parse_options({"keep_ratio": 0.2, "clip": str(tmp_path)}, depth=24)


def test_request_options() -> None:
    options = HeroOptions(preset="hero", keep_ratio=0.2, clip=None, clip_dtype="float32", overrides={"alpha": 1.0})
    assert request_options({}, options) == (None, 0.2)
    assert request_options({"hero_query": "a sign", "hero_keep_ratio": 0.5}, options) == ("a sign", 0.5)
    with pytest.raises(HeroError, match=r"^hero_keep_ratio=2 is invalid"):
        request_options({"hero_keep_ratio": 2}, options)
    with pytest.raises(HeroError, match=r"^hero_query=3 is invalid: expected a non-blank string"):
        request_options({"hero_query": 3}, options)
    for blank in ("", "  \n"):  # the scorer would refuse it in the engine's step, not in this request
        with pytest.raises(HeroError, match=r"^hero_query='.*' is invalid: expected a non-blank string"):
            request_options({"hero_query": blank}, options)
    # a misspelt option would otherwise be ignored (the request served at the engine's ratio without a word)
    with pytest.raises(
        HeroError, match=r"^hero_keepratio=0\.5 is invalid: expected one of \['hero_query', 'hero_keep_ratio'\]"
    ):
        request_options({"hero_keepratio": 0.5}, options)
    assert request_options({"other": 1}, options) == (None, 0.2)  # keys of the host's processor pass


# ------------------------------------------------------------------------------------------------ CLS rows
def _eager_clip(layers: int = 3, heads: int = 4) -> Any:
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=56,
        patch_size=14,
        attn_implementation="eager",
    )
    return transformers.CLIPVisionModel(config).eval()


def _fused_qkv(layer: Any, hidden: torch.Tensor, heads: range | None = None, dim: int = 8) -> torch.Tensor:
    """What vLLM's QKVParallelLinear returns on a rank holding ``heads``: [q | k | v] of those heads."""
    normed = layer.layer_norm1(hidden)
    parts = []
    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
        out = proj(normed)
        if heads is not None:
            out = out[..., heads.start * dim : heads.stop * dim]
        parts.append(out)
    return torch.cat(parts, dim=-1)


def test_cls_rows_from_the_fused_projection_equal_eager_attention() -> None:
    model = _eager_clip()
    pixels = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
        for index, layer in enumerate(model.encoder.layers):
            rows = cls_rows_from_qkv(_fused_qkv(layer, out.hidden_states[index]), heads=4)
            torch.testing.assert_close(rows, out.attentions[index][:, :, 0, :].float(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("tp", [2, 4])
def test_head_parts_of_tensor_parallel_ranks_combine_to_the_full_rows(tp: int) -> None:
    model = _eager_clip()
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[1]
        layer = model.encoder.layers[1]
        full = cls_rows_from_qkv(_fused_qkv(layer, hidden), heads=4)
        per = 4 // tp
        parts = [
            cls_rows_from_qkv(_fused_qkv(layer, hidden, range(r * per, (r + 1) * per)), heads=per) for r in range(tp)
        ]
    torch.testing.assert_close(combine_head_parts(parts), full, atol=0, rtol=0)
    # the ranks' order matters: reversed parts are a different (wrong) head order
    assert not torch.equal(combine_head_parts(parts[::-1]), full)


def test_bad_fused_projection_is_refused() -> None:
    with pytest.raises(HeroError, match=r"^qkv="):
        cls_rows_from_qkv(torch.zeros(2, 5, 31), heads=4)


# ------------------------------------------------------------------------------------------------ oracle
@pytest.fixture(scope="module")
def hf_scorer_tiny() -> Any:
    from hero_adapters.text_scorers import HFClipTextScorer, clip_tokenizer_from_open_clip

    torch.manual_seed(1)
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 56,
            "patch_size": 14,
        },
        projection_dim=16,
    )
    return HFClipTextScorer(transformers.CLIPModel(config).eval(), clip_tokenizer_from_open_clip())


def _plugin_side(row: Any, inputs: dict[str, Any], queries: list[str | None], ratio: float, layers: Any) -> Any:
    """What vLLM's layer loop gives the plugin for ``inputs``, from the host tower's own outputs: the images,
    CLS states and rows, local tiles, all views (RGB in [0, 1]) and projected features per image."""
    model, processor = row.model, row.processor
    config = model.config
    vision = config.vision_config
    sizes = [tuple(int(x) for x in s) for s in inputs["image_sizes"].tolist()]
    tower = model.model.vision_tower
    mean_std = (processor.image_processor.image_mean, processor.image_processor.image_std)
    images, cls_tokens, rows, tiles, views, features = [], [], [], [], [], []
    with torch.no_grad():
        for i, (h, w) in enumerate(sizes):
            counts = anyres_counts((h, w), config.image_grid_pinpoints, vision.image_size, vision.patch_size)
            pixels = inputs["pixel_values"][i][: counts.views]
            old = tower.config._attn_implementation
            tower.config._attn_implementation = "eager"
            try:
                out = tower(pixels, output_attentions=True, output_hidden_states=True)
            finally:
                tower.config._attn_implementation = old
            images.append(
                AnyresImage(
                    counts=counts,
                    layout=anyres_layout((h, w), config.image_grid_pinpoints, vision.image_size, vision.patch_size),
                    tile_grid=anyres_grid((h, w), config.image_grid_pinpoints, vision.image_size),
                    keep_ratio=ratio,
                    query=queries[i],
                )
            )
            cls_tokens.append(out.last_hidden_state[:, 0])
            first = out.attentions[0][None, :, :, 0, :]  # the plugin's rows are (0, V, H, T) without layers
            rows.append(torch.stack([out.attentions[layer][:, :, 0, :] for layer in layers]) if layers else first[:0])
            tiles.append(unnormalise(pixels[1:], mean_std))
            views.append(unnormalise(pixels, mean_std))
            hidden = out.hidden_states[config.vision_feature_layer]
            features.append(model.model.multi_modal_projector(hidden[:, 1:]))  # (V, N, D)
    return images, cls_tokens, rows, tiles, views, features


#: Image sizes (height, width): two whose tiles are all valid, two that the host unpads (40 and 32 of 64 valid).
SIZES = {"full": [(60, 170), (150, 50)], "unpadded": [(20, 170), (100, 20)]}


@pytest.mark.parametrize("sizes", sorted(SIZES))
@pytest.mark.parametrize("ratio", [0.2, 0.5, 1.0])
def test_the_encoder_step_keeps_what_herovlm_keeps(ratio: float, sizes: str, hf_scorer_tiny: Any) -> None:
    """Two images of different shapes, one with a question and one without: the plugin's planning (fed with the
    host tower's own outputs, as vLLM's layer loop produces them) keeps exactly HeroVLM.plan's tokens, and its
    assembly equals the adapter's rows, in the count fixed in advance."""
    row = host_row("llava_next")
    model, processor = row.model, row.processor
    (h0, w0), (h1, w1) = SIZES[sizes]
    images = [row.image(h0, w0, seed=4), row.image(h1, w1, seed=5)]
    inputs = row.inputs([row.text("look {}"), row.text("and {}")], images)
    pruner = row.pruner(ratio, alpha=0.5)
    queries = ["a red sign", None]
    vlm = HeroVLM(model, pruner, text_scorer=hf_scorer_tiny, processor=processor)
    report = vlm.plan(**inputs, query=queries)
    layers = pruner.layers
    plugin_images, cls_tokens, rows, tiles, _, features = _plugin_side(row, inputs, queries, ratio, layers)
    with torch.no_grad():
        plans = plan_images(
            plugin_images, cls_tokens, rows, layers, lambda r: row.pruner(r, alpha=0.5), hf_scorer_tiny,
            tiles.__getitem__,
        )  # fmt: skip
        encoded = vlm.adapter.encode(inputs, layers)
        for i, image in enumerate(report.images):
            keep = plans[i].keep
            assert torch.equal(keep, image.plan.keep), f"image {i}"
            flat = features[i].flatten(0, 1)
            sent = assemble_vanilla(plugin_images[i], keep, flat, model.model.image_newline, pruner)
            assert sent.shape[0] == plugin_images[i].counts.tokens_out(pruner.kept_count(plugin_images[i].counts))
            torch.testing.assert_close(sent, vlm.adapter.assemble(encoded[i], keep).features, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("sizes", sorted(SIZES))
@pytest.mark.parametrize("preset", ["divprune", "dart", "visionzip", "cdpruner"])
@pytest.mark.parametrize("ratio", [0.3, 1.0])
def test_the_encoder_step_runs_the_whole_image_presets_as_herovlm(
    preset: str, ratio: float, sizes: str, hf_scorer_tiny: Any
) -> None:
    """The presets that read token features (and cdpruner each token's CLIP relevance, visionzip its merges): fed
    the projected features the plugin holds, its planning keeps HeroVLM.plan's tokens and its assembly sends the
    rows HeroVLM sends (VisionZip's merged rows included), in the count fixed in advance."""
    from hero_adapters._features import merged_rows
    from hero_adapters.adapter import preset_options
    from hero_core import presets

    row = host_row("llava_next")
    model, processor = row.model, row.processor
    (h0, w0), (h1, w1) = SIZES[sizes]
    inputs = row.inputs(
        [row.text("look {}"), row.text("and {}")], [row.image(h0, w0, seed=4), row.image(h1, w1, seed=5)]
    )
    queries: list[str | None] = ["a red sign", "the sky"]
    options = preset_options(HeroVLM(model, row.pruner(0.5), processor=processor).adapter)
    pruner_for = lambda r: presets.get(preset, r, **options)  # noqa: E731
    pruner = pruner_for(ratio)
    scorer = hf_scorer_tiny if pruner.needs_token_relevance else None
    vlm = HeroVLM(model, pruner, scorer, processor=processor)
    report = vlm.plan(**inputs, query=queries)
    layers = pruner.layers
    plugin_images, cls_tokens, rows, tiles, views, features = _plugin_side(row, inputs, queries, ratio, layers)
    with torch.no_grad():
        plans = plan_images(
            plugin_images, cls_tokens, rows, layers, pruner_for, scorer, tiles.__getitem__,
            features=features, all_views=views.__getitem__,
        )  # fmt: skip
        encoded = vlm.adapter.encode(inputs, layers)
        merging = False
        for i, image in enumerate(report.images):
            plan = plans[i]
            assert torch.equal(plan.keep, image.plan.keep), f"image {i}"
            into = plan.merge_into
            assert (into is None) == (image.plan.merge_into is None)
            if into is not None:
                assert torch.equal(into, image.plan.merge_into)
                merging |= bool(((into >= 0) & (into != torch.arange(into.numel()).view_as(into))).any())
            flat = features[i].flatten(0, 1)
            sent = assemble_vanilla(plugin_images[i], plan.keep, flat, model.model.image_newline, pruner, into)
            assert sent.shape[0] == plugin_images[i].counts.tokens_out(pruner.kept_count(plugin_images[i].counts))
            expected = vlm.adapter.assemble(merged_rows(encoded[i], into), plan.keep).features
            torch.testing.assert_close(sent, expected, atol=1e-3, rtol=1e-4)
        assert merging == (preset == "visionzip" and ratio < 1)  # the merge path was exercised, not skipped


def test_cdpruner_without_a_query_plans_with_uniform_relevance_and_says_so(hf_scorer_tiny: Any) -> None:
    """vLLM's profiling run and requests without ``hero_query`` carry no instruction: the plugin plans them with
    every token equally relevant (diversity alone), ``unconditioned`` flags exactly them, and the question-less
    plan equals the core's plan at any constant relevance."""
    from hero_adapters.adapter import preset_options
    from hero_adapters.vllm_plugin.pipeline import unconditioned
    from hero_core import presets

    row = host_row("llava_next")
    inputs = row.inputs(
        [row.text("look {}"), row.text("and {}")], [row.image(60, 170, seed=4), row.image(150, 50, seed=5)]
    )
    options = preset_options(HeroVLM(row.model, row.pruner(0.5), processor=row.processor).adapter)
    pruner_for = lambda r: presets.cdpruner(r, **options)  # noqa: E731
    queries: list[str | None] = ["a red sign", None]
    images, cls_tokens, rows, tiles, views, features = _plugin_side(row, inputs, queries, 0.3, pruner_for(0.3).layers)
    plans = plan_images(
        images, cls_tokens, rows, pruner_for(0.3).layers, pruner_for, hf_scorer_tiny, tiles.__getitem__,
        features=features, all_views=views.__getitem__,
    )  # fmt: skip
    assert unconditioned(images, pruner_for) == [False, True]
    at_one = [dataclasses.replace(image, keep_ratio=1.0) for image in images]  # everything kept: nothing planned
    assert unconditioned(at_one, pruner_for) == [False, False]
    encoded = HeroVLM(row.model, pruner_for(0.3), hf_scorer_tiny, processor=row.processor).adapter.encode(inputs, ())
    tiles_1 = encoded[1].tiles
    valid = tiles_1.valid_mask
    table = torch.where(valid[..., None], features[1], 0)
    constant = tiles_1.replace(token_features=table, token_relevance=torch.full(valid.shape, 0.37))
    assert torch.equal(plans[1].keep, pruner_for(0.3).plan(constant).keep)
    with pytest.raises(HeroError, match=r"all_views=None is invalid"):
        plan_images(
            images, cls_tokens, rows, pruner_for(0.3).layers, pruner_for, hf_scorer_tiny, tiles.__getitem__,
            features=features,
        )  # fmt: skip
    with pytest.raises(HeroError, match=r"needs token features|token_features"):
        plan_images(
            images, cls_tokens, rows, pruner_for(0.3).layers, pruner_for, hf_scorer_tiny, tiles.__getitem__,
            all_views=views.__getitem__,
        )  # fmt: skip


def test_assembly_refuses_a_keep_mask_off_the_count() -> None:
    row = host_row("llava_next")
    config = row.model.config
    vision = config.vision_config
    counts = anyres_counts((60, 100), config.image_grid_pinpoints, vision.image_size, vision.patch_size)
    image = AnyresImage(
        counts=counts,
        layout=anyres_layout((60, 100), config.image_grid_pinpoints, vision.image_size, vision.patch_size),
        tile_grid=anyres_grid((60, 100), config.image_grid_pinpoints, vision.image_size),
        keep_ratio=0.5,
        query=None,
    )
    pruner = row.pruner(0.5)
    keep = torch.zeros(counts.views, counts.tokens_per_view, dtype=torch.bool)
    keep[0, :3] = True
    features = torch.zeros(counts.views * counts.tokens_per_view, 8)
    expected = pruner.kept_count(counts)
    with pytest.raises(HeroError, match=rf"encoder step=3 is invalid: expected {expected} = "):
        assemble_vanilla(image, keep, features, torch.zeros(8), pruner)
