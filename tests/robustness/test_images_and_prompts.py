"""Odd images through each host's processor, and prompts of 0 and 5000 words, through ``HeroVLM`` on every host.

Each input is run four ways on each host of the matrix: the host's processor, the host's own ``model.generate``,
then ``HeroVLM.generate`` at keep ratio 1 and at a low keep ratio (and ``plan`` there). Every outcome is a
correct result or a ``HeroError``:

- at keep ratio 1 the sequences (and logits) are the host's own for the same inputs;
- at the low ratio the output starts with the caller's prompt, and the language model receives exactly the
  image tokens the report counts (``tokens_out`` per image, ``expected_total`` kept patches);
- where the host's own ``generate`` raises, ``HeroVLM`` raises the same exception type or a ``HeroError``.

What the host's processor itself refuses (before HERO sees anything) is the processor's contract: such cases
are skipped, naming the refusal. ``outcomes`` returns what happened, for the table in docs and reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from adapters.hosts import HOSTS, HostRow, assert_same, generate, host_row
from hero_adapters import HeroVLM, PruneReport
from hero_adapters.testing import hook_snapshot
from hero_core import HeroError
from hero_core.testing import expected_total

#: The low keep ratio (the paper's smallest).
LOW = 0.2
#: Tokens generated per call: the LLM is the host's, one or two tokens show the prompt it received.
NEW_TOKENS = 2
#: Words of the long prompt.
LONG = 5000


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
_WORDS = " ".join(["a"] * LONG)
#: case -> (prompt template, ``{}`` for the image; the image, or None for a text-only prompt)
CASES: dict[str, tuple[str, Callable[[HostRow], Image.Image] | None]] = {
    **{
        f"image-{kind}": ("USER: {} describe the image ASSISTANT:", lambda row, spec=spec: _image(*spec))
        for kind, spec in IMAGES.items()
    },
    "0-words-and-an-image": ("{}", lambda row: row.image(40, 100)),
    "0-words": ("", None),
    f"{LONG}-words-and-an-image": (f"{{}} {_WORDS}", lambda row: row.image(40, 100)),
    f"{LONG}-words": (_WORDS, None),
}


def _attempt(call: Callable[[], Any]) -> tuple[Any, Exception | None]:
    try:
        return call(), None
    except Exception as error:  # judged by the caller: only some are allowed
        return None, error


def _said(error: Exception | None) -> str:
    return "ok" if error is None else f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:90]}"


def _allowed(hero: Exception, host: Exception | None, what: str) -> None:
    """HERO's exception, only where the host's own generate raised too: a HeroError that says what was wrong, or
    the very type the host raised (an input the host takes must not be refused)."""
    if host is None:
        raise AssertionError(f"{what} raised {type(hero).__name__} where the host succeeded: {_said(hero)}") from hero
    if isinstance(hero, HeroError):
        assert str(hero).strip(), "a HeroError must say what was wrong"
        return
    if host is not None and type(hero) is type(host):
        return
    raise AssertionError(f"{what} raised {type(hero).__name__} (host: {_said(host)})") from hero


def _check_report(report: PruneReport, images: int) -> None:
    assert len(report.images) == images
    for image in report.images:
        assert 0 <= image.kept_patch_tokens <= image.tokens_out <= image.tokens_in
        assert image.plan.num_kept == image.kept_patch_tokens == expected_total(image.encoded, LOW)
        assert torch.equal(image.plan.keep.sum(-1), image.plan.budgets)


def _low(row: HostRow, inputs: dict[str, Any], images: int, host_error: Exception | None) -> str:
    """``HeroVLM.generate`` at ``LOW``: the LLM's prefill holds the reported image tokens, or a refusal."""
    vlm = HeroVLM(row.model, row.pruner(LOW), processor=row.processor)
    prefills: list[torch.Tensor] = []
    embeddings = row.model.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, args, out: prefills.append(args[0].detach().clone()))
    try:
        out, error = _attempt(lambda: vlm.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False))
    finally:
        handle.remove()
    if error is not None:
        _allowed(error, host_error, f"HeroVLM.generate at R={LOW}")
        return _said(error)
    assert host_error is None, f"HeroVLM.generate at R={LOW} answered where the host raised {_said(host_error)}"
    ids, report = inputs["input_ids"], vlm.last_report
    assert report is not None
    assert ids.shape[1] < out.shape[1] <= ids.shape[1] + NEW_TOKENS and out.shape[0] == ids.shape[0]
    assert torch.equal(out[:, : ids.shape[1]], ids)  # the caller's prompt, never the shortened one
    _check_report(report, images)
    sent = prefills[0]  # the prefill: the prompt the host's LLM received
    tokens_in, tokens_out = sum(i.tokens_in for i in report.images), sum(i.tokens_out for i in report.images)
    assert sent.shape == (1, ids.shape[1] - tokens_in + tokens_out), (sent.shape, tokens_in, tokens_out)
    assert int((sent == int(vlm.adapter.image_token_id)).sum()) == tokens_out
    assert int((ids == int(vlm.adapter.image_token_id)).sum()) == tokens_in
    planned, error = _attempt(lambda: vlm.plan(**inputs))
    assert error is None, f"plan raised where generate answered: {_said(error)}"
    assert [i.kept_patch_tokens for i in planned.images] == [i.kept_patch_tokens for i in report.images]
    return f"ok, {tokens_in} -> {tokens_out} image tokens"


def outcomes(name: str, case: str) -> dict[str, str]:
    """Run ``case`` on host ``name`` the four ways (asserting each outcome); what each did."""
    row = host_row(name)
    template, picture = CASES[case]
    images = [] if picture is None else [picture(row)]
    seen = {"processor": "", "host generate": "", "HERO R=1": "", f"HERO R={LOW}": ""}
    before = hook_snapshot(row.model)
    inputs, refused = _attempt(lambda: row.inputs([row.text(template)], images))
    seen["processor"] = _said(refused)
    if refused is not None:
        assert isinstance(refused, (ValueError, TypeError, OSError)), _said(refused)  # transformers' / Pillow's
        return seen
    host, host_error = _attempt(lambda: generate(row.model, inputs, max_new_tokens=NEW_TOKENS))
    seen["host generate"] = _said(host_error)
    full = HeroVLM(row.model, row.pruner(1.0), processor=row.processor)
    hero, error = _attempt(lambda: generate(full, inputs, max_new_tokens=NEW_TOKENS))
    if error is not None:
        _allowed(error, host_error, "HeroVLM.generate at R=1")
    elif host_error is not None:
        raise AssertionError(f"HeroVLM.generate at R=1 answered where the host raised {_said(host_error)}")
    else:
        assert_same(hero, host)  # the host's own sequences (and logits)
    seen["HERO R=1"] = _said(error) if error is not None else "ok, the host's sequences"
    seen[f"HERO R={LOW}"] = _low(row, inputs, len(images), host_error)
    assert hook_snapshot(row.model) == before
    return seen


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", sorted(HOSTS))
def test_odd_inputs_give_the_hosts_result_or_a_hero_error(name: str, case: str) -> None:
    seen = outcomes(name, case)
    if seen["processor"] != "ok":
        pytest.skip(f"the {name} processor refuses it: {seen['processor']}")
