"""The shared host matrix: every host through ``check_adapter``, padding and masks, reloads, bad input."""

from __future__ import annotations

import copy
import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM, InternVLAdapter, LlavaNextAdapter, cls_attention_hooks
from hero_adapters.testing import AdapterCheckError, check_adapter, hook_snapshot
from hero_core import HeroError, presets

from .hosts import CHECKED, HOSTS, HostRow, assert_same, check_arguments, generate, host_row


@pytest.fixture(scope="module", params=sorted(HOSTS))
def host(request: pytest.FixtureRequest) -> HostRow:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return host_row(request.param)


def _vlm(host: HostRow, keep_ratio: float, scorer: Any = None, **options: Any) -> HeroVLM:
    return HeroVLM(host.model, host.pruner(keep_ratio), scorer, processor=host.processor, **options)


_generate, _same = generate, assert_same


@pytest.mark.parametrize("name", CHECKED)
def test_check_adapter_passes(name: str) -> None:
    """Every host, and the example's own model with its own adapter: identity at keep ratio 1 (sequences and
    logits, greedy and beams), exact counts, batch equals singles, hooks gone."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    arguments, options = check_arguments(name)
    report = check_adapter(*arguments, **options)
    assert not report.failures and len(report.results) == 9


def test_check_adapter_catches_a_container_that_mixes_prompts_under_beams() -> None:
    """A (1, N, D) feature tensor runs on InternVL but hands beams of one prompt another prompt's features."""
    host = host_row("internvl")

    @dataclass(frozen=True, eq=False)
    class OneTensorAdapter(InternVLAdapter):
        def feature_inputs(self, assembled: Any) -> dict[str, Any]:
            inputs = super().feature_inputs(assembled)
            image = inputs["mm_encoder_outputs"]["image"]
            image.pooler_output = image.pooler_output.transpose(0, 1)  # (1, N, D)
            return inputs

    with pytest.raises(AdapterCheckError, match="beams"):
        check_adapter(
            host.model,
            host.inputs,
            host.prompts(),
            host.pruner,
            adapter=OneTensorAdapter(host.model, processor=host.processor),
        )


GLOBAL_VIEW = "the thumbnail is the host's global view; each view's attention and features are its own"


@pytest.mark.parametrize(
    ("name", "base", "wrong"), [("internvl", InternVLAdapter, 0), ("llava_next", LlavaNextAdapter, -1)]
)
def test_check_adapter_catches_a_wrong_thumbnail_index(name: str, base: type, wrong: int) -> None:
    """InternVL's thumbnail is its LAST view, LLaVA-NeXT's its first: an adapter that names the other end runs,
    keeps exact counts and is the host at keep ratio 1, but plans with the wrong view as the global one."""
    host = host_row(name)

    @dataclass(frozen=True, eq=False)
    class WrongThumbnail(base):  # type: ignore[misc, valid-type]
        def encode(self, *args: Any, **kwargs: Any) -> Any:
            return [
                dataclasses.replace(
                    image, tiles=dataclasses.replace(image.tiles, thumbnail_index=wrong % image.tiles.num_views)
                )
                for image in super().encode(*args, **kwargs)
            ]

    report = check_adapter(
        host.model,
        host.inputs,
        host.prompts(),
        host.pruner,
        adapter=WrongThumbnail(host.model, processor=host.processor),
        raise_on_failure=False,
    )
    right = 0 if wrong == -1 else 2  # the first prompt's image: 2 tiles + thumbnail
    assert report.failures[GLOBAL_VIEW].endswith(
        f"changes views [{right}], the adapter's thumbnail_index is {2 - right}"
    )
    assert report.results["keep ratio 1 = host (greedy)"][0]  # what the other checks cannot see


def test_check_adapter_catches_attention_rows_filed_under_another_view() -> None:
    """Attention rows rolled by one view (each view planned from its neighbour's attention) fail the check."""
    host = host_row("llava_next")

    @dataclass(frozen=True, eq=False)
    class RolledAttention(LlavaNextAdapter):
        def encode(self, *args: Any, **kwargs: Any) -> Any:
            out = []
            for image in super().encode(*args, **kwargs):
                rolled = image.tiles.cls_attention.roll(1, dims=1)  # (L, V, H, N)
                out.append(dataclasses.replace(image, tiles=dataclasses.replace(image.tiles, cls_attention=rolled)))
            return out

    report = check_adapter(
        host.model,
        host.inputs,
        host.prompts(),
        host.pruner,
        adapter=RolledAttention(host.model, processor=host.processor),
        raise_on_failure=False,
    )
    assert "whose CLS token changed [0, 1], whose recorded CLS attention changed [1, 2]" in report.failures[GLOBAL_VIEW]


# ----------------------------------------------------------------------------------------- padding and masks
def test_right_padding_is_refused_by_generate_and_kept_by_forward(host: HostRow) -> None:
    prompts = host.prompts()
    texts, images = [t for t, _ in prompts], [i for _, g in prompts for i in g]
    inputs = host.inputs(texts, images, padding_side="right")
    assert bool((inputs["attention_mask"][:, -1] == 0).any())
    vlm = _vlm(host, 1.0)
    before = hook_snapshot(host.model)
    with pytest.raises(HeroError, match="padding_side = 'left'"):
        vlm.generate(**inputs, max_new_tokens=2)
    assert hook_snapshot(host.model) == before
    with torch.no_grad():
        expected = host.model(**inputs).logits
    got = vlm.forward(**inputs).logits
    assert got.shape == expected.shape and float((got - expected).abs().max()) <= 1e-5


def test_no_attention_mask_is_inferred_as_the_host_infers_it(host: HostRow) -> None:
    inputs = host.batch()
    inputs.pop("attention_mask")
    _same(_generate(host.model, inputs), _generate(_vlm(host, 1.0), inputs))
    pruned = _generate(_vlm(host, 0.5), inputs)
    with_mask = _generate(_vlm(host, 0.5), host.batch())
    _same(pruned, with_mask)


def test_padding_in_every_row_keeps_lengths_and_max_length(host: HostRow) -> None:
    """pad_to_multiple_of leaves padding columns in every row; the host counts them in max_length."""
    prompts = host.prompts()
    texts, images = [t for t, _ in prompts], [i for _, g in prompts for i in g]
    inputs = host.inputs(texts, images, pad_to_multiple_of=64)
    assert bool((inputs["attention_mask"] == 0).any(dim=1).all())
    config = copy.deepcopy(host.model.generation_config)
    config.max_length = inputs["input_ids"].shape[1] + 3
    config.do_sample = False
    host_out = _generate(host.model, inputs, generation_config=config, max_new_tokens=None)
    hero_out = _generate(_vlm(host, 1.0), inputs, generation_config=config, max_new_tokens=None)
    _same(host_out, hero_out)
    assert hero_out.sequences.shape[1] == inputs["input_ids"].shape[1] + 3
    pruned = _generate(_vlm(host, 0.5), inputs, generation_config=config, max_new_tokens=None)
    assert pruned.sequences.shape[1] == inputs["input_ids"].shape[1] + 3  # 3 new tokens, as the host would give


def test_placeholders_under_padding_name_the_padding(host: HostRow) -> None:
    inputs = host.batch()
    mask = inputs["attention_mask"].clone()
    row = 0
    token = _vlm(host, 1.0).adapter.image_token_id
    mask[row, : int((inputs["input_ids"][row] == token).nonzero()[0]) + 1] = 0
    inputs["attention_mask"] = mask
    with pytest.raises(HeroError, match="under attention_mask 0"):
        _vlm(host, 0.5).generate(**inputs, max_new_tokens=2)


def test_past_key_values_is_refused_with_what_to_do(host: HostRow) -> None:
    with pytest.raises(HeroError, match="whole conversation"):
        _vlm(host, 0.5).generate(**host.batch(), past_key_values=object(), max_new_tokens=2)


# ------------------------------------------------------------------------------------------------- reload
def test_saved_and_reloaded_checkpoint_prunes_identically(host: HostRow, tmp_path: Any) -> None:
    transformers = pytest.importorskip("transformers")
    host.model.save_pretrained(tmp_path)
    host.processor.save_pretrained(tmp_path)
    model = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    processor = transformers.AutoProcessor.from_pretrained(tmp_path)
    assert type(model) is type(host.model) and type(processor) is type(host.processor)
    prompts = host.prompts()
    texts, images = [t for t, _ in prompts], [i for _, g in prompts for i in g]
    inputs = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    reloaded = HeroVLM(model, host.pruner(1.0), processor=processor)
    _same(_generate(model, inputs), _generate(reloaded, inputs))
    pruned = HeroVLM(model, host.pruner(0.5), processor=processor)
    _same(_generate(pruned, inputs), _generate(_vlm(host, 0.5), inputs))


# ---------------------------------------------------------------------------------------------- threads
def test_two_wrappers_in_two_threads_each_get_their_own_result(host: HostRow) -> None:
    inputs = host.batch()
    wrappers = [
        _vlm(host, 0.5),
        HeroVLM(host.model, presets.get("cls-attention", 0.3, layer=4), processor=host.processor),
    ]
    alone = [w.plan(**inputs).to_dict()["images"] for w in wrappers]
    before = hook_snapshot(host.model)
    results: dict[int, list[Any]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for _ in range(3):
                results[index].append(wrappers[index].plan(**inputs).to_dict()["images"])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in (0, 1):
        assert all(result == alone[index] for result in results[index])
    assert hook_snapshot(host.model) == before


# -------------------------------------------------------------------------------------------- bad input
def test_internvl_run_not_a_multiple_of_the_view_tokens() -> None:
    host = host_row("internvl")
    inputs = host.batch()
    vlm = _vlm(host, 0.5)
    token = vlm.adapter.image_token_id
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == token).nonzero()[0])
    ids[0, first] = host.processor.tokenizer.convert_tokens_to_ids("a")
    before = hook_snapshot(host.model)
    with pytest.raises(HeroError, match="multiples of 16 tokens"):
        vlm.generate(**{**inputs, "input_ids": ids}, max_new_tokens=2)
    assert hook_snapshot(host.model) == before


def test_internvl_tiles_disagreeing_with_the_runs() -> None:
    host = host_row("internvl")
    inputs = host.batch()
    before = hook_snapshot(host.model)
    with pytest.raises(HeroError, match="as the placeholder runs"):
        _vlm(host, 0.5).generate(**{**inputs, "pixel_values": inputs["pixel_values"][1:]}, max_new_tokens=2)
    assert hook_snapshot(host.model) == before


def test_an_adapter_that_is_not_a_host_adapter() -> None:
    host = host_row("internvl")

    class Half:
        model = host.model

        def encode(self, *args: Any) -> None: ...

    with pytest.raises(HeroError, match="HostAdapter") as raised:
        HeroVLM(host.model, host.pruner(0.5), adapter=Half())  # type: ignore[arg-type]
    assert "assemble" in str(raised.value) and "feature_inputs" in str(raised.value)


def test_an_adapter_instance_wraps_a_model_without_a_registered_type() -> None:
    host = host_row("internvl")
    model = copy.deepcopy(host.model)
    model.config.model_type = "my_internvl_fork"
    with pytest.raises(HeroError, match="adapter=MyAdapter"):
        HeroVLM(model, host.pruner(0.5))
    vlm = HeroVLM(model, host.pruner(1.0), adapter=InternVLAdapter(model, processor=host.processor))
    _same(_generate(model, host.batch()), _generate(vlm, host.batch()))


def test_selector_layers_the_tower_lacks_are_refused_at_construction(host: HostRow) -> None:
    with pytest.raises(HeroError, match="this vision encoder has 6 layers"):
        HeroVLM(host.model, host.pruner(0.5, high_layers=(21,)), processor=host.processor)


def test_the_picture_draws_every_host(host: HostRow, tmp_path: Any) -> None:
    from hero_adapters.visualize import render_plan

    picture = host.image(90, 200, seed=4)
    vlm = _vlm(host, 0.3)
    inputs = host.inputs([host.text("USER: {} describe ASSISTANT:")], [picture])
    report = vlm.plan(**inputs, **vlm.adapter.image_inputs([picture]))
    image = report.images[0]
    assert image.view_boxes is not None and len(image.view_boxes) == image.views
    assert image.view_boxes[image.encoded.thumbnail_index] == (0.0, 0.0, 1.0, 1.0)
    out = render_plan(picture, image, tmp_path / "kept.png")
    assert (tmp_path / "kept.png").is_file() and out.size[0] > out.size[1] > 100


# -------------------------------------------------------------------------------------------- OneVision
def test_onevision_images_of_multi_image_prompts_are_single_views() -> None:
    host = host_row("llava_onevision")
    report = _vlm(host, 0.5).plan(**host.batch())
    assert [image.views for image in report.images] == [3, 1, 1]  # prompt 0 tiled (1 x 2 + base), prompt 1 not
    assert all(image.encoded.query_source == "mean-token" for image in report.images)
    assert [image.prompt for image in report.images] == [0, 1, 1]


def test_onevision_downsampled_scores_follow_the_host_packing() -> None:
    """anyres_max_1: the stitched grid is shrunk bilinearly; each LLM token carries the host's own blend."""
    host, plain = host_row("llava_onevision-downsampled"), host_row("llava_onevision")
    picture = host.image(60, 200, seed=2)
    inputs = host.inputs([host.text("USER: {} describe ASSISTANT:")], [picture])
    vlm = _vlm(host, 1.0)
    image = vlm.plan(**inputs).images[0]
    full = _vlm(plain, 1.0).plan(**plain.inputs([plain.text("USER: {} describe ASSISTANT:")], [picture])).images[0]
    assert image.tokens_in < full.tokens_in  # the host really downsampled this image
    adapter = vlm.adapter
    layers = vlm.pruner.layers
    with torch.inference_mode():
        encoded = adapter.encode(inputs, layers)[0]
        with cls_attention_hooks(adapter.vision_tower, layers, query="mean") as record:
            adapter.vision_tower(inputs["pixel_values"][0, : encoded.tiles.num_views])
        raw = record.patch_attention()  # (L, V, H, n)
        count, n = encoded.tiles.num_views, encoded.tiles.num_tokens
        maps = raw.permute(1, 3, 0, 2).reshape(count, n, -1).double()
        packed, _ = adapter.base.pack_image_features(
            [maps], inputs["image_sizes"], image_newline=torch.zeros(maps.shape[-1], dtype=torch.float64),
            vision_aspect_ratio="anyres_max_1",
        )  # fmt: skip
    packed = packed[0]
    source = encoded.source.cpu()
    patches = (source >= 0).nonzero().flatten()
    view, slot = source[patches] // n, source[patches] % n
    got = encoded.tiles.cls_attention[:, view, :, slot].reshape(len(patches), -1)  # (P, L H): advanced dims first
    assert float((got.double() - packed[patches]).abs().max()) <= 1e-6
    assert int(encoded.tiles.valid_mask.sum()) == len(patches)  # every LLM patch token has one slot


def test_onevision_image_count_disagreeing_with_batch_num_images() -> None:
    host = host_row("llava_onevision")
    inputs = host.batch()
    before = hook_snapshot(host.model)
    with pytest.raises(HeroError, match="batch_num_images"):
        _vlm(host, 0.5).generate(**{**inputs, "batch_num_images": torch.tensor([1, 1])}, max_new_tokens=2)
    assert hook_snapshot(host.model) == before


def test_onevision_videos_are_refused_with_what_to_do() -> None:
    host = host_row("llava_onevision")
    with pytest.raises(HeroError, match=r"model\.generate directly for videos"):
        _vlm(host, 0.5).generate(**host.batch(), pixel_values_videos=torch.zeros(1, 2, 3, 56, 56), max_new_tokens=2)


def test_encoder_facts_are_data(host: HostRow) -> None:
    facts = _vlm(host, 0.5).adapter.encoder
    assert facts.depth == 6 and facts.feature_layer in (-1, -2)
    if host.name.startswith("llava_onevision"):
        assert (facts.cls_position, facts.query_source, facts.tower) == ("none", "mean-token", "siglip")
    elif host.native:
        tower = {"qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl"}[host.name]
        assert (facts.cls_position, facts.query_source, facts.tower, facts.feature_layer) == (
            "none",
            "mean-token",
            tower,
            -1,
        )
    else:
        assert (facts.cls_position, facts.query_source) == ("first", "cls")


def test_an_adapter_whose_feature_count_disagrees_with_its_report_is_refused() -> None:
    host = host_row("internvl")

    @dataclass(frozen=True, eq=False)
    class Miscounting(InternVLAdapter):
        def assemble(self, image: Any, keep: Any) -> Any:
            out = super().assemble(image, keep)
            return type(out)(out.features[1:], out.offsets[1:], out.layout_length, out.kept_patch_tokens, 0)

    vlm = HeroVLM(host.model, host.pruner(0.5), adapter=Miscounting(host.model, processor=host.processor))
    before = hook_snapshot(host.model)
    with pytest.raises(HeroError, match=r"Miscounting\.assemble output for image 0"):
        vlm.generate(**host.batch(), max_new_tokens=2)
    assert hook_snapshot(host.model) == before


def test_an_encode_whose_token_count_disagrees_with_the_placeholder_run_is_refused() -> None:
    host = host_row("internvl")

    @dataclass(frozen=True, eq=False)
    class ShortEncode(InternVLAdapter):
        def encode(self, inputs: Any, layers: Any, *, runs: Any = None) -> Any:
            images = super().encode(inputs, layers, runs=runs)
            first = images[0]
            return [type(first)(first.tiles, first.features, first.source, first.views, None, None)] + [
                type(image)(image.tiles, image.features[:-1], image.source[:-1], image.views) for image in images[1:]
            ]

    vlm = HeroVLM(host.model, host.pruner(0.5), adapter=ShortEncode(host.model, processor=host.processor))
    with pytest.raises(HeroError, match="input_ids"):
        vlm.generate(**host.batch(), max_new_tokens=2)


def test_the_global_view_check_passes_a_right_adapter_on_every_image_kind() -> None:
    """RGBA with transparency and palette images are painted and compared in RGB (painting them in their own
    mode changes pixels far from the corner, and every view would change); channel-first arrays are skipped."""
    import numpy as np

    from hero_adapters.testing.check import _global_view

    host = host_row("llava_next")
    vlm = _vlm(host, 0.5)
    image = host.image(40, 100)
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    prompt = host.text("USER: {} describe ASSISTANT:")
    for kind in (image, rgba, image.quantize(64), np.asarray(image)):
        passed, detail = _global_view(host.inputs, [(prompt, [kind])], vlm)
        assert passed and detail.endswith("changes views [0], the adapter's thumbnail_index is 0"), detail
    passed, detail = _global_view(host.inputs, [(prompt, [np.asarray(image).transpose(2, 0, 1)])], vlm)
    assert passed and detail.startswith("skipped")
