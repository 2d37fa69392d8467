"""``examples/serve_vllm.py`` runs to the end on the tiny checkpoints and prints what it promises."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from _checkpoints import save_llava_next
from _clip import save_clip

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serve_vllm.py"


def test_serve_vllm_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    model, clip = save_llava_next(tmp_path / "llava"), save_clip(tmp_path / "clip")
    pixels = torch.randint(0, 256, (100, 60, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(tmp_path / "photo.png")
    argv = [
        str(EXAMPLE), "--model", str(model), "--clip", str(clip), "--image", str(tmp_path / "photo.png"),
        "--question", "what is written on the sign ?", "--keep-ratio", "0.25",
        "--prompt-format", "USER: <image>\n{question} ASSISTANT:", "--max-tokens", "3", "--dtype", "float32",
        "--max-model-len", "2048", "--kv-cache-bytes", str(64 << 20),
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert exit_.value.code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row["keep_ratio"] for row in rows] == [1.0, 0.25]
    full, pruned = rows
    # width 60, height 100: a 2 x 2 grid (5 views of 16 tokens) whose 8 x 8 stitched map unpads to 8 rows x 4
    # columns: 16 + 32 = 48 valid tokens and 8 newlines = 56; at 0.25: min(floor(0.25 * 80), 48) + 8 = 28
    assert (full["image_tokens"], pruned["image_tokens"]) == (56, 28)
    assert full["prompt_tokens"] - pruned["prompt_tokens"] == 28
