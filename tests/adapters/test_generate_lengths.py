"""Every length setting as the host's own ``generate`` applies it, through ``HeroVLM.generate`` and ``attach()``;
assisted decoding inside ``attach()`` with the model itself and with another model as the assistant.

The oracle is the host: for each setting, the host's ``generate`` on the caller's prompt decides the number of
new tokens (its default ``max_length`` counts NEW tokens when nothing is set, a ``max_length`` set anywhere is
a total, ``max_new_tokens`` wins, the default total is capped at ``max_position_embeddings``); at keep ratio 1
HERO must give the same sequences and logits, and below it the same number of new tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_core import HeroError

from .hosts import HOSTS, HostRow, assert_same, host_row


@pytest.fixture(scope="module", params=sorted(HOSTS))
def host(request: pytest.FixtureRequest) -> HostRow:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return host_row(request.param)


def _image_prompt(host: HostRow) -> dict[str, Any]:
    """One image on a non-square canvas: the prompt is far over 20 tokens (the library's default max_length)."""
    return host.inputs([host.text("USER: {} describe the image ASSISTANT:")], [host.image(40, 100)])


def _text_prompt(host: HostRow) -> dict[str, Any]:
    """No image: a prompt under 20 tokens, where reading the default as a total gives fewer new tokens."""
    return host.inputs([host.text("USER: a b c ASSISTANT:")], [])


def _never_stop(vlm: HeroVLM) -> dict[str, Any]:
    """Settings under which the tiny model runs to its length limit: no eos, no image token generated (a random
    tiny model emits both; an image token in generated text breaks assisted decoding's placeholder count)."""
    return {"eos_token_id": None, "suppress_tokens": [vlm.adapter.image_token_id], "do_sample": False}


@contextmanager
def _setting(host: HostRow, name: str, length: int) -> Iterator[dict[str, Any]]:
    """The keywords of one length setting for a prompt of ``length`` tokens; model-level settings are put on the
    model for the block and taken off after (the shared tiny model is left as it was)."""
    model = host.model
    saved_generation, saved_config = copy.deepcopy(model.generation_config), model.config.__dict__.copy()
    try:
        if name == "unset":
            yield {}
        elif name == "max_length keyword":
            yield {"max_length": length + 3}
        elif name == "max_new_tokens over a max_length":
            yield {"max_length": length + 2, "max_new_tokens": 5}
        elif name == "generation_config max_length":
            config = copy.deepcopy(model.generation_config)
            config.max_length = length + 2
            yield {"generation_config": config}
        elif name == "model default max_length":
            model.generation_config.max_length = length + 4
            yield {}
        elif name == "position cap on the default":
            model.config.max_position_embeddings = length + 7
            yield {}
        elif name == "min_new_tokens":
            yield {"min_new_tokens": 3, "max_new_tokens": 5}
        elif name == "min_length keyword":
            yield {"min_length": length + 6, "max_new_tokens": 8}
        else:  # pragma: no cover
            raise AssertionError(name)
    finally:
        model.generation_config = saved_generation
        model.config.__dict__.clear()
        model.config.__dict__.update(saved_config)


SETTINGS = (
    "unset",
    "max_length keyword",
    "max_new_tokens over a max_length",
    "generation_config max_length",
    "model default max_length",
    "position cap on the default",
    "min_new_tokens",
    "min_length keyword",
)
#: New tokens the host gives for each setting, whatever the prompt length (the oracle's answer, checked below
#: against the host itself, so a change in transformers shows up here first).
EXPECTED_NEW = {
    "unset": 20,
    "max_length keyword": 3,
    "max_new_tokens over a max_length": 5,
    "generation_config max_length": 2,
    "model default max_length": 4,
    "position cap on the default": 7,
    "min_new_tokens": 5,
    "min_length keyword": 8,
}


def _through(entry: str, vlm: HeroVLM) -> Callable[..., Any]:
    """``vlm.generate``, or the model's own ``generate`` inside ``vlm.attach()``."""

    def call(**kwargs: Any) -> Any:
        if entry == "generate":
            return vlm.generate(**kwargs)
        with vlm.attach(query="describe"):
            return vlm.model.generate(**kwargs)

    return call


@pytest.mark.parametrize("entry", ["generate", "attach"])
@pytest.mark.parametrize("setting", SETTINGS)
def test_lengths_follow_the_host(host: HostRow, setting: str, entry: str) -> None:
    """Keep ratio 1: the host's sequences and logits; keep ratio 0.5: the host's number of new tokens."""
    for inputs in (_image_prompt(host), _text_prompt(host)):
        length = int(inputs["input_ids"].shape[1])
        same = HeroVLM(host.model, host.pruner(1.0), processor=host.processor)
        pruned = HeroVLM(host.model, host.pruner(0.5), processor=host.processor)
        fixed = {**_never_stop(same), "output_logits": True, "return_dict_in_generate": True}
        with _setting(host, setting, length) as lengths, torch.no_grad():
            expected = host.model.generate(**inputs, **lengths, **fixed)
            ours = _through(entry, same)(**inputs, **lengths, **fixed)
            smaller = _through(entry, pruned)(**inputs, **lengths, **fixed)
        assert expected.sequences.shape[1] - length == EXPECTED_NEW[setting]
        assert_same(expected, ours)
        assert smaller.sequences.shape[1] == expected.sequences.shape[1]
        assert torch.equal(smaller.sequences[:, :length], inputs["input_ids"])
        report = pruned.last_report
        assert report is not None
        assert [image.tokens_out < image.tokens_in for image in report.images] == [True] * ("pixel_values" in inputs)


def test_min_length_counts_the_callers_prompt(host: HostRow) -> None:
    """With eos possible, a min_length (a total) forbids eos for min_length - S new tokens, not - S'."""
    inputs = _image_prompt(host)
    length = int(inputs["input_ids"].shape[1])
    pruned = HeroVLM(host.model, host.pruner(0.25), processor=host.processor)
    with torch.no_grad():
        scores = pruned.generate(
            **inputs,
            min_length=length + 4,
            max_new_tokens=6,
            do_sample=False,
            output_logits=False,
            output_scores=True,
            return_dict_in_generate=True,
        ).scores
    eos = host.model.generation_config.eos_token_id
    eos = eos if isinstance(eos, int) else eos[0]
    blocked = [bool(torch.isinf(step[0, eos]) and step[0, eos] < 0) for step in scores]
    assert blocked[:4] == [True] * 4 and not any(blocked[4:])


def test_a_max_length_below_the_prompt_is_refused_as_the_host_refuses_it(host: HostRow) -> None:
    inputs = _image_prompt(host)
    length = int(inputs["input_ids"].shape[1])
    with pytest.raises(ValueError, match="max_length"):
        host.model.generate(**inputs, max_length=length)
    with pytest.raises(HeroError, match=f"max_length.*{length}"):
        HeroVLM(host.model, host.pruner(0.5), processor=host.processor).generate(**inputs, max_length=length)


# ------------------------------------------------------------------------------------------ assisted decoding
@pytest.mark.parametrize("keep_ratio", [1.0, 0.5])
def test_assisted_decoding_with_the_model_as_its_own_assistant(host: HostRow, keep_ratio: float) -> None:
    """transformers calls the assistant's generate with the features already computed (``mm_encoder_outputs``)
    and its own cache; inside attach() that call is the host's own, so assisted greedy equals plain greedy."""
    inputs = _image_prompt(host)
    vlm = HeroVLM(host.model, host.pruner(keep_ratio), processor=host.processor)
    settings = {**_never_stop(vlm), "max_new_tokens": 5}
    with torch.no_grad():
        with vlm.attach(query="describe") as attached:
            assisted = host.model.generate(**inputs, assistant_model=host.model, **settings)
        plain = vlm.generate(**inputs, **settings)
        host_assisted = host.model.generate(**inputs, assistant_model=host.model, **settings)
    assert len(attached.reports) == 1  # the assistant's calls are not HERO calls
    assert torch.equal(assisted, plain)
    if keep_ratio == 1.0:
        assert torch.equal(assisted, host_assisted)
    else:
        assert attached.reports[0].images[0].tokens_out < attached.reports[0].images[0].tokens_in


def test_assisted_decoding_with_another_attached_model_as_assistant() -> None:
    """The assistant is a second model (same vocabulary) with its own HeroVLM attached: its generate, called from
    inside the main model's host generate, is also the host's own (it receives the main model's features)."""
    main = host_row("internvl")
    inputs = _image_prompt(main)
    vlm = HeroVLM(main.model, main.pruner(0.5), processor=main.processor)
    assistant = copy.deepcopy(main.model)
    other = HeroVLM(assistant, main.pruner(0.5), processor=main.processor)
    settings = {**_never_stop(vlm), "max_new_tokens": 4}
    with torch.no_grad():
        plain = vlm.generate(**inputs, **settings)
        with other.attach(query="x") as outer, vlm.attach(query="describe") as inner:
            assisted = main.model.generate(**inputs, assistant_model=assistant, **settings)
    assert torch.equal(assisted, plain)
    assert len(inner.reports) == 1 and outer.reports == []
