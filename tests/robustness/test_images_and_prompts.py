"""Odd images through each host's processor, and prompts of 0 and 5000 words, through ``HeroVLM``.

What the host's own processor refuses (a ``ValueError`` / ``TypeError`` of transformers or Pillow, before
HERO sees anything) is the processor's contract, not ours: such cases are skipped, not passed silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.hosts import HOSTS, host_row
from hero_adapters import HeroVLM
from hero_adapters.testing import hook_snapshot
from hero_core import HeroError
from hero_core.testing import expected_total

from .common import result_or_hero_error


def _image(mode: str, height: int, width: int) -> Image.Image:
    rng = np.random.default_rng(height * 31 + width)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(rng.random((height, width), dtype=np.float32))
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return rgb.convert(mode)


IMAGES = {
    "1x4000": ("RGB", 1, 4000),
    "4000x1": ("RGB", 4000, 1),
    "1x1": ("RGB", 1, 1),
    "grayscale": ("L", 60, 90),
    "rgba": ("RGBA", 60, 90),
    "cmyk": ("CMYK", 60, 90),
    "16-bit": ("I;16", 60, 90),
    "32-bit-float": ("F", 60, 90),
    "palette": ("P", 60, 90),
    "1-bit": ("1", 60, 90),
}


def _processed(name: str, text: str, images: list[Image.Image]) -> dict[str, Any]:
    row = host_row(name)
    try:
        return row.inputs([text], images)
    except (ValueError, TypeError, OSError) as error:  # the processor's own refusal, before HERO runs
        pytest.skip(f"the {name} processor refuses it: {type(error).__name__}: {error}"[:200])


@pytest.mark.parametrize("kind", sorted(IMAGES))
@pytest.mark.parametrize("name", sorted(HOSTS))
def test_odd_images_through_the_processor(name: str, kind: str) -> None:
    row = host_row(name)
    inputs = _processed(name, row.text("USER: {} describe the image ASSISTANT:"), [_image(*IMAGES[kind])])
    vlm = HeroVLM(row.model, row.pruner(0.5), processor=row.processor)
    before = hook_snapshot(row.model)
    report = result_or_hero_error(lambda: vlm.plan(**inputs))
    if name == "llava_next":  # generate runs the same encode and plan, then the host's LLM: once is enough
        out = result_or_hero_error(lambda: vlm.generate(**inputs, max_new_tokens=2, do_sample=False))
        if not isinstance(out, HeroError):
            assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert hook_snapshot(row.model) == before
    if not isinstance(report, HeroError):
        assert len(report.images) == 1
        image = report.images[0]
        assert image.kept_patch_tokens <= image.tokens_out <= image.tokens_in
        assert image.plan.num_kept == image.kept_patch_tokens == expected_total(image.encoded, 0.5)
        assert torch.equal(image.plan.keep.sum(-1), image.plan.budgets)


@pytest.mark.parametrize("words", [0, 5000])
@pytest.mark.parametrize("with_image", [True, False])
@pytest.mark.parametrize("name", sorted(HOSTS))
def test_prompts_of_0_and_5000_words(name: str, words: int, with_image: bool) -> None:
    row = host_row(name)
    body = " ".join(["a"] * words)
    text = row.text(f"{{}} {body}") if with_image else body
    inputs = _processed(name, text, [row.image(40, 100)] if with_image else [])
    vlm = HeroVLM(row.model, row.pruner(0.5), processor=row.processor)
    before = hook_snapshot(row.model)
    report = result_or_hero_error(lambda: vlm.plan(**inputs))
    if not isinstance(report, HeroError):
        assert len(report.images) == int(with_image)
    if words == 0 or name == "llava_next":  # one long generate is enough (the LLM is the host's)
        out = result_or_hero_error(lambda: vlm.generate(**inputs, max_new_tokens=1, do_sample=False))
        if not isinstance(out, HeroError):
            assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert hook_snapshot(row.model) == before
