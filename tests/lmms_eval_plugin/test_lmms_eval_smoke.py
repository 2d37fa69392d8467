"""``lmms-eval --model hero`` end to end through lmms-eval's own CLI, offline (``make test-lmms-eval``).

The test saves a tiny LLaVA-NeXT (random weights, 56-px views of 4 x 4 patches, a 6-layer CLIP tower, a 2-layer
Llama, a word-level tokenizer with a chat template) and a tiny CLIP checkpoint, writes a 4-row parquet of
generated images and questions with a task YAML in an include folder, and runs the ``lmms-eval`` command three
times: HERO at keep ratio 0.5 (with CLIP relevance), HERO at keep ratio 1, and lmms-eval's plain ``llava_hf``.
lmms-eval's CLI exits 0 on many failures, so every run is judged by the files it writes: ``*_results.json`` and
``*_samples_<task>.jsonl``. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("lmms_eval")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from hero_adapters.testing import build_llava_next, word_tokenizer  # noqa: E402

TASK = "hero_smoke"
SPECIAL = ("<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:")
TEXT = ("describe", "the", "image", "what", "is", "in", "this", "picture", "compare", "two", "color", "shape")
WORDS = (*SPECIAL, *TEXT, *"abcdefghijklmnop")
#: (question, answer, image height, image width): four shapes, so the tile grids differ.
ROWS = [
    ("what is in this picture", "a", 40, 100),
    ("describe the image", "b", 90, 60),
    ("what is the color", "c", 100, 30),
    ("what is the shape", "d", 56, 56),
]
#: A LLaVA-style template over the word vocabulary: "USER: <image>\n{text} ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for content in message['content'] if content['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for content in message['content'] if content['type'] == 'text' %}{{ content['text'] }}{% endfor %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for content in message['content'] if content['type'] == 'text' %}{{ content['text'] }}{% endfor %} </s> "
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
UTILS = """
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]
"""


def _image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lmms")
    host = build_llava_next(
        tile_pixels=56,
        pinpoints=[[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]],
        words=WORDS,
        vision_init=5.0,
        vision_layers=6,
        vision_width=32,
        vision_heads=4,
        vision_mlp=64,
        text_width=32,
        text_layers=2,
        text_heads=4,
        text_kv_heads=2,
        text_mlp=64,
        text_init=0.5,
    )
    host.processor.chat_template = CHAT_TEMPLATE  # llava_hf renders prompts with the checkpoint's template
    host.model.save_pretrained(root / "llava")
    host.processor.save_pretrained(root / "llava")

    clip_words = [*SPECIAL[:4], *TEXT, *(f"w{i}" for i in range(1000))]  # >= 1000 tokens: a plausible vocabulary
    clip = transformers.CLIPModel(
        transformers.CLIPConfig(
            text_config={
                "vocab_size": len(clip_words),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "max_position_embeddings": 77,
                "pad_token_id": 0,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 56,
                "patch_size": 14,
            },
            projection_dim=16,
        )
    )
    clip.save_pretrained(root / "clip")
    word_tokenizer(clip_words).save_pretrained(root / "clip")

    data = datasets.Dataset.from_dict(
        {
            "question": [q for q, _, _, _ in ROWS],
            "answer": [a for _, a, _, _ in ROWS],
            "image": [_image(h, w, seed) for seed, (_, _, h, w) in enumerate(ROWS)],
        },
        features=datasets.Features(
            {"question": datasets.Value("string"), "answer": datasets.Value("string"), "image": datasets.Image()}
        ),
    )
    data.to_parquet(str(root / "smoke.parquet"))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    (tasks / f"{TASK}.yaml").write_text(
        f"""task: {TASK}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {root / "smoke.parquet"}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""
    )
    return {"root": root, "llava": root / "llava", "clip": root / "clip", "tasks": tasks}


def lmms_eval(setup: dict[str, Path], name: str, model: str, model_args: str) -> dict[str, Any]:
    """One ``lmms-eval`` CLI run; its results JSON and samples (by doc_id), checked to exist and be complete."""
    out = setup["root"] / f"out-{name}"
    script = Path(sys.executable).with_name("lmms-eval")
    command = [str(script)] if script.exists() else [shutil.which("lmms-eval") or "lmms-eval"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(setup["root"] / "datasets-cache"),
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
    }
    run = subprocess.run(
        [
            *command,
            "--model", model, "--model_args", model_args, "--include_path", str(setup["tasks"]), "--tasks", TASK,
            "--device", "cpu", "--batch_size", "1", "--log_samples", "--output_path", str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )  # fmt: skip
    log = f"exit {run.returncode}\n--- stdout\n{run.stdout[-4000:]}\n--- stderr\n{run.stderr[-8000:]}"
    results = sorted(out.rglob("*_results.json"))
    samples = sorted(out.rglob(f"*_samples_{TASK}.jsonl"))
    assert run.returncode == 0, log
    assert len(results) == 1 and len(samples) == 1, f"lmms-eval wrote {results} and {samples}\n{log}"
    payload = json.loads(results[0].read_text())
    rows = [json.loads(line) for line in samples[0].read_text().splitlines() if line.strip()]
    assert TASK in payload["results"], payload["results"]
    assert "exact_match,none" in payload["results"][TASK], payload["results"][TASK]
    assert sorted(row["doc_id"] for row in rows) == list(range(len(ROWS))), rows
    for row in rows:
        assert row["target"] == ROWS[row["doc_id"]][1]
        assert isinstance(_answer(row), str)
    return {
        "results": payload,
        "samples": {row["doc_id"]: row for row in rows},
        "log": log,
        "console": run.stdout + run.stderr,
    }


def _prompt_tokens(llava: Path) -> list[int]:
    """Tokens of each row's unpruned prompt, as llava_hf builds it (the checkpoint's template, images first)."""
    processor = transformers.AutoProcessor.from_pretrained(llava)
    counts = []
    for seed, (question, _, h, w) in enumerate(ROWS):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = processor(images=[_image(h, w, seed)], text=text, return_tensors="pt")
        counts.append(int(inputs["input_ids"].shape[1]))
    return counts


def _input_tokens(run: dict[str, Any]) -> list[int]:
    return [run["samples"][i]["token_counts"][0]["input_tokens"] for i in range(len(ROWS))]


def _answer(row: dict[str, Any]) -> Any:
    """The answer lmms-eval scored: ``filtered_resps`` (0.7.3 writes the string; older releases a list of one)."""
    answer = row["filtered_resps"]
    return answer[0] if isinstance(answer, list) and len(answer) == 1 else answer


def _answers(run: dict[str, Any]) -> list[str]:
    return [_answer(run["samples"][i]) for i in range(len(ROWS))]


@pytest.fixture(scope="module")
def runs(setup: dict[str, Path]) -> dict[str, dict[str, Any]]:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    llava, clip = setup["llava"], setup["clip"]
    reports = setup["root"] / "reports.jsonl"
    return {
        "pruned": lmms_eval(
            setup, "pruned", "hero", f"pretrained={llava},clip={clip},keep_ratio=0.5,dtype=float32,reports={reports}"
        ),
        "full": lmms_eval(setup, "full", "hero", f"pretrained={llava},preset=hero,keep_ratio=1,dtype=float32"),
        "plain": lmms_eval(setup, "plain", "llava_hf", f"pretrained={llava},dtype=float32,device_map=cpu"),
    }


def test_hero_runs_through_the_cli_and_reports_the_pruned_prompt(runs: dict[str, Any], setup: dict[str, Path]) -> None:
    pruned, full = runs["pruned"], runs["full"]
    assert pruned["results"]["config"]["model"] == "hero"
    # one visible line on lmms-eval's console (loguru) says HERO is active, with its preset and keep ratio
    assert pruned["console"].count("hero: HERO active: preset hero, keep ratio 0.5 (relevance from clip=") == 1
    assert full["console"].count("hero: HERO active: preset hero, keep ratio 1 (") == 1
    unpruned = _prompt_tokens(setup["llava"])
    assert _input_tokens(full) == unpruned  # keep ratio 1: the whole prompt reaches the LLM
    assert all(p < u for p, u in zip(_input_tokens(pruned), unpruned)), (_input_tokens(pruned), unpruned)
    efficiency = pruned["results"]["efficiency"]["by_task"][TASK]
    assert efficiency["docs_with_token_counts"] == len(ROWS)
    assert efficiency["total_input_tokens"] == sum(_input_tokens(pruned))
    for run in (pruned, full):
        assert all(1 <= run["samples"][i]["token_counts"][0]["output_tokens"] <= 4 for i in range(len(ROWS)))


def test_reports_file_holds_each_plan_and_the_recovered_question(runs: dict[str, Any], setup: dict[str, Path]) -> None:
    lines = [json.loads(line) for line in (setup["root"] / "reports.jsonl").read_text().splitlines()]
    assert sorted(line["doc_id"] for line in lines) == list(range(len(ROWS)))
    tokens = _input_tokens(runs["pruned"])
    unpruned = _prompt_tokens(setup["llava"])
    for line in lines:
        doc, report = line["doc_id"], line["report"]
        assert line["task"] == TASK
        assert line["input_tokens"] == tokens[doc]
        assert tokens[doc] == unpruned[doc] - report["tokens_in"] + report["tokens_out"]
        (image,) = report["images"]
        assert image["query"] == ROWS[doc][0]  # the user's text, recovered from the prompt by attach()
        assert image["relevance"] is not None  # the CLIP scorer ran
        assert image["kept_patch_tokens"] == sum(image["budgets"])


def test_keep_ratio_one_answers_as_plain_llava_hf(runs: dict[str, Any]) -> None:
    assert _answers(runs["full"]) == _answers(runs["plain"])
    assert all(answer.strip() for answer in _answers(runs["plain"]))  # real answers, not llava_hf's error ""
    # and the pruning reached the model: the tiny host's answers depend on its image features
    assert _answers(runs["pruned"]) != _answers(runs["full"])
    assert [row["exact_match"] for row in runs["full"]["samples"].values()] == [
        row["exact_match"] for row in runs["plain"]["samples"].values()
    ]
