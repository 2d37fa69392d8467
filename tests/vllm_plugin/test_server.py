"""A real OpenAI-compatible server with the plugin: ``vllm serve DIR --hf-overrides ...`` as a subprocess on
127.0.0.1, 20 concurrent chat requests with different images, questions and keep ratios (``mm_processor_kwargs``
in the request body, as the OpenAI client's ``extra_body`` sends it), one bad request answered 400 while the
others go on, and a clean shutdown.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from _checkpoints import LLAVA_NEXT_PINPOINTS, save_llava_next
from _clip import save_clip

from hero_core import presets
from hero_core.counts import anyres_counts

TEMPLATE = "{% for message in messages %}USER: {{ message['content'] }} ASSISTANT:{% endfor %}"
QUESTIONS = ["what is written on the sign ?", "describe the red circle .", "what is in this picture ?"]
DEPTH = 4


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    root = tmp_path_factory.mktemp("serve")
    model, clip = save_llava_next(root / "llava"), save_clip(root / "clip")
    (root / "template.jinja").write_text(TEMPLATE)
    port = _port()
    overrides = {
        "architectures": ["HeroLlavaNextForConditionalGeneration"],
        "hero": {"preset": "hero", "keep_ratio": 0.4, "clip": str(clip)},
    }
    command = [
        str(Path(sys.executable).with_name("vllm")), "serve", str(model),  # vLLM's own CLI
        "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny-llava",
        "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "8", "--enforce-eager",
        "--kv-cache-memory-bytes", str(64 << 20), "--limit-mm-per-prompt", json.dumps({"image": 1}),
        "--chat-template", str(root / "template.jinja"), "--hf-overrides", json.dumps(overrides),
        "--trust-request-mm-kwargs",  # vLLM refuses per-request mm_processor_kwargs without it
        "--shutdown-timeout", "30",  # drain, then stop the engine (0 = abort: vLLM logs its own EngineDeadError)
    ]  # fmt: skip
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"vllm serve did not come up; its log:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    yield base, process, log
    if process.poll() is None:
        process.kill()


def _png(width: int, height: int, seed: int) -> str:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _chat(base: str, image: str, question: str, hero: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = {
        "model": "tiny-llava",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": question}],
            }
        ],
        "max_tokens": 3,
        "temperature": 0.0,
        "mm_processor_kwargs": hero,  # what the OpenAI client sends for extra_body={"mm_processor_kwargs": ...}
    }
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read() or b"{}")


def _image_tokens(width: int, height: int, ratio: float) -> int:
    counts = anyres_counts((height, width), LLAVA_NEXT_PINPOINTS, 56, 14)
    return counts.tokens_out(presets.hero(ratio, depth=DEPTH).kept_count(counts))


def test_twenty_concurrent_requests_and_a_bad_one(server: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    base, process, _ = server
    sizes = [(60, 100), (150, 56), (56, 56), (400, 30), (30, 400), (333, 111), (90, 200)]
    ratios = [0.1, 0.25, 0.4, 0.6, 1.0]
    jobs = []
    for i in range(20):
        width, height = sizes[i % len(sizes)]
        ratio, question = ratios[i % len(ratios)], QUESTIONS[i % len(QUESTIONS)]
        jobs.append((width, height, ratio, question, {"hero_query": question, "hero_keep_ratio": ratio}))
    bad = (60, 100, None, QUESTIONS[0], {"hero_query": QUESTIONS[0], "hero_keep_ratio": 7})
    with ThreadPoolExecutor(max_workers=21) as pool:
        futures = [
            pool.submit(_chat, base, _png(w, h, seed=n), question, hero)
            for n, (w, h, _, question, hero) in enumerate([*jobs[:10], bad, *jobs[10:]])
        ]
        answers = [future.result() for future in futures]
    status, refused = answers.pop(10)
    assert status == 400, refused
    assert "hero_keep_ratio=7 is invalid" in json.dumps(refused)
    text_tokens: dict[str, set[int]] = {}
    for (width, height, ratio, question, _), (status, answer) in zip(jobs, answers, strict=True):
        assert status == 200, answer
        assert answer["choices"][0]["message"]["content"] is not None
        usage = answer["usage"]
        assert usage["completion_tokens"] == 3
        # the prompt = the question's text tokens + the image's HERO count at this request's keep ratio
        text_tokens.setdefault(question, set()).add(usage["prompt_tokens"] - _image_tokens(width, height, ratio))
    assert all(len(counts) == 1 for counts in text_tokens.values()), text_tokens
    assert process.poll() is None  # still serving


def test_the_server_shuts_down_cleanly(server: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    _, process, log = server
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("vllm serve did not stop within 90 s of SIGINT")
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "all workers exited gracefully" in text and "Application shutdown complete" in text
    # vLLM 0.32's front end logs an EngineDeadError from its output handler once the engine it stopped is gone
    # (stock architectures too); nothing of the plugin may appear in an error
    assert not [line for line in text.splitlines() if "ERROR" in line and "hero" in line.lower()]
