"""Bad input: every case is a HeroError that names the field and the fix, and the model is left as it was
(same hooks on every module, no new attributes, same outputs afterwards)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hero_adapters import HeroVLM, get_adapter
from hero_core import HeroError, presets


def _wrong_shape(views: torch.Tensor, text: str) -> torch.Tensor:
    return torch.zeros(views.shape[0] + 1)


def _nan_scores(views: torch.Tensor, text: str) -> torch.Tensor:
    return torch.full((views.shape[0],), float("nan"))


def _integer_scores(views: torch.Tensor, text: str) -> torch.Tensor:
    return torch.ones(views.shape[0], dtype=torch.long)


def _drop_last_image(tiny: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    return {**inputs, "pixel_values": inputs["pixel_values"][:-1], "image_sizes": inputs["image_sizes"][:-1]}


def _move_one_placeholder(tiny: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Same total, wrong per-image runs: one placeholder moves from prompt 0's run to prompt 2's."""
    ids = inputs["input_ids"].clone()
    token = tiny.image_token_id
    first = int((ids[0] == token).nonzero()[0, 0])
    ids[0, first] = 5  # a text token
    row2 = (ids[2] == token).nonzero()[:, 0]
    ids[2, int(row2[-1]) + 1] = token  # one longer run
    return {**inputs, "input_ids": ids}


def _nan_pixels(tiny: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    pixels = inputs["pixel_values"].clone()
    pixels[1, 0, 0, 0, 0] = float("nan")
    return {**inputs, "pixel_values": pixels}


def _no_sizes(tiny: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in inputs.items() if key != "image_sizes"}


def _no_pixels(tiny: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in inputs.items() if key not in ("pixel_values", "image_sizes")}


# (id, change to the inputs, extra call kwargs, text scorer, words the message must contain)
CASES: list[tuple[str, Callable[..., dict[str, Any]] | None, dict[str, Any], Any, tuple[str, ...]]] = [
    ("image-count", _drop_last_image, {}, None, ("input_ids", "placeholder", "one image per <image>")),
    (
        "per-image-run",
        _move_one_placeholder,
        {},
        None,
        ("placeholder run of prompt 0", "image 0 alone needs 52 of the 51", "do not edit"),
    ),
    ("pixels-without-sizes", _no_sizes, {}, None, ("image_sizes=None", "Pass the processor's image_sizes")),
    ("placeholders-without-pixels", _no_pixels, {}, None, ("pixel_values=None", "placeholder")),
    ("query-list-length", None, {"query": ["a", "b"]}, None, ("query=", "list of 3 str")),
    ("query-not-str", None, {"query": 3}, None, ("query=3", "one per prompt")),
    ("scorer-shape", None, {"query": "what"}, _wrong_shape, ("_wrong_shape", "shape (", "one raw CLIP cosine")),
    ("scorer-nan", None, {"query": "what"}, _nan_scores, ("_nan_scores", "finite float")),
    ("scorer-int", None, {"query": "what"}, _integer_scores, ("_integer_scores", "finite float")),
    ("nan-pixels", _nan_pixels, {}, None, ("pixel_values", "NaN/inf", "image(s) [1]")),
    ("inputs-embeds", None, {"inputs_embeds": torch.zeros(1)}, None, ("inputs_embeds", "Pass input_ids")),
    ("position-ids", None, {"position_ids": torch.zeros(1)}, None, ("position_ids", "positions=")),
]


@pytest.mark.parametrize("method", ["generate", "forward", "plan"])
@pytest.mark.parametrize(("name", "change", "extra", "scorer", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_hero_error_and_leaves_the_model_alone(
    tiny: Any,
    batch: dict[str, Any],
    method: str,
    name: str,
    change: Callable[..., dict[str, Any]] | None,
    extra: dict[str, Any],
    scorer: Any,
    words: tuple[str, ...],
) -> None:
    inputs = change(tiny, batch["inputs"]) if change else batch["inputs"]
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5, alpha=0.5), scorer)
    before = tiny.snapshot()
    call = getattr(vlm, method)
    with pytest.raises(HeroError) as raised:
        call(**inputs, **extra)
    message = str(raised.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "expected" in message  # HeroError.field: name=value is invalid: expected ... fix
    assert tiny.snapshot() == before


def test_model_outputs_unchanged_after_failures(tiny: Any, batch: dict[str, Any]) -> None:
    inputs = batch["inputs"]
    with torch.no_grad():
        reference = tiny.model(**inputs).logits
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5, alpha=0.5), _nan_scores)
    for _ in range(2):
        with pytest.raises(HeroError):
            vlm.generate(**inputs, query="q", max_new_tokens=2)
        with pytest.raises(HeroError):
            vlm.generate(**_nan_pixels(tiny, inputs), max_new_tokens=2)
    with torch.no_grad():
        assert torch.equal(tiny.model(**inputs).logits, reference)
    assert tiny.model.config._attn_implementation == "sdpa"


def test_unsupported_model_type_lists_the_supported_ones() -> None:
    config = LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = LlamaForCausalLM(config)
    with pytest.raises(HeroError, match=r"model.config.model_type='llama'.*\['internvl', 'llava_next'"):
        HeroVLM(model, presets.hero(0.5))
    with pytest.raises(HeroError, match="register_adapter"):
        get_adapter(model)
    with pytest.raises(HeroError, match="model_type=None"):
        get_adapter(torch.nn.Linear(2, 2))


def test_encoder_too_shallow_for_the_preset(tiny: Any, batch: dict[str, Any]) -> None:
    """presets.hero() reads layers 5-8 and 21; the tiny tower has 6: a HeroError, no hooks left behind."""
    before = tiny.snapshot()
    with pytest.raises(HeroError, match=r"has 6 layers.*low_layers"):
        HeroVLM(tiny.model, presets.hero(0.5)).generate(**batch["inputs"], max_new_tokens=1)
    assert tiny.snapshot() == before


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"layout": "padded"}, "layout='padded'"),
        ({"positions": "absolute"}, "positions='absolute'"),
        ({"pruner": "hero"}, "pruner='hero'"),
        ({"text_scorer": 3}, "text_scorer=3"),
    ],
)
def test_bad_options(tiny: Any, kwargs: dict[str, Any], words: str) -> None:
    options: dict[str, Any] = {"pruner": tiny.pruner(0.5), **kwargs}
    with pytest.raises(HeroError, match=words.replace("(", r"\(")):
        HeroVLM(tiny.model, **options)


def test_bad_labels_and_lengths(tiny: Any, batch: dict[str, Any]) -> None:
    inputs = batch["inputs"]
    vlm = HeroVLM(tiny.model, tiny.pruner(0.5))
    labels = inputs["input_ids"].clone()
    labels[0, -3] = -100  # not an image token: fine
    image_positions = (inputs["input_ids"][1] == tiny.image_token_id).nonzero()[:, 0]
    labels[1, image_positions[0]] = 7  # an image run with two label values
    with pytest.raises(HeroError, match="labels of image 1"):
        vlm.forward(**inputs, labels=labels)
    with pytest.raises(HeroError, match="labels="):
        vlm.forward(**inputs, labels=labels[:, 1:])
    with pytest.raises(HeroError, match="max_length"):
        vlm.generate(**inputs, max_length=4)
    with pytest.raises(HeroError, match="attention_mask"):
        vlm.generate(**{**inputs, "attention_mask": inputs["attention_mask"] * 2}, max_new_tokens=1)


def test_hooks_removed_when_the_encoder_fails_half_way(tiny: Any, batch: dict[str, Any]) -> None:
    """A failure inside the hooked vision forward (simulated by a caller's hook on encoder layer 3, after the
    CLS hooks of layers 1-2 already ran) leaves no HERO hook behind."""
    before = tiny.snapshot()

    def fail(module: Any, args: Any, output: Any) -> None:
        raise RuntimeError("encoder failed half way")

    handle = tiny.model.model.vision_tower.encoder.layers[3].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="half way"):
            HeroVLM(tiny.model, tiny.pruner(0.5)).generate(**batch["inputs"], max_new_tokens=1)
    finally:
        handle.remove()
    assert tiny.snapshot() == before


@pytest.mark.parametrize(
    "pixels",
    [
        lambda p: p[..., :28],  # wrong view size
        lambda p: p[:, :, :2],  # wrong channel count
        lambda p: p.long(),  # not float
        lambda p: p[0, 0],  # a single (3, h, w) view
    ],
    ids=["size", "channels", "dtype", "rank"],
)
def test_malformed_pixel_values(tiny: Any, batch: dict[str, Any], pixels: Callable[..., Any]) -> None:
    inputs = batch["inputs"]
    before = tiny.snapshot()
    with pytest.raises(HeroError, match=r"pixel_values=.*\(\.\.\., 3, 56, 56\)"):
        HeroVLM(tiny.model, tiny.pruner(0.5)).plan(**{**inputs, "pixel_values": pixels(inputs["pixel_values"])})
    assert tiny.snapshot() == before


def test_base_model_plans_but_refuses_generate(tiny: Any, batch: dict[str, Any]) -> None:
    vlm = HeroVLM(tiny.model.model, tiny.pruner(0.5))  # LlavaNextModel: no generate()
    report = vlm.plan(**batch["inputs"])
    assert len(report.images) == 4
    before = tiny.snapshot()
    with pytest.raises(HeroError, match=r"^model='LlavaNextModel'.*ForConditionalGeneration"):
        vlm.generate(**batch["inputs"], max_new_tokens=1)
    assert tiny.snapshot() == before
