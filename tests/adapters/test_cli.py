"""The ``hero`` command through subprocesses, on a tiny LLaVA-NeXT checkpoint the test saves itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from hero_adapters.demo import draw_test_card

LAYERS = ["--set", "low_layers=1,2", "--set", "high_layers=4"]


def hero(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hero_adapters.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    """The session's tiny host (tests/adapters/conftest.py), saved as a checkpoint directory."""
    folder = tmp_path_factory.mktemp("cli")
    tiny.model.save_pretrained(folder / "model")
    tiny.processor.save_pretrained(folder / "model")
    tiny.model.save_pretrained(folder / "weights-only")  # no processor files
    draw_test_card(120, 80).save(folder / "card.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return {
        "model": folder / "model",
        "weights-only": folder / "weights-only",
        "image": folder / "card.png",
        "broken": folder / "broken.png",
        "dir": folder,
    }


def test_run_prints_answer_table_json_picture_and_compare(checkpoint):
    out_json, out_png = checkpoint["dir"] / "run.json", checkpoint["dir"] / "run.png"
    result = hero(
        "run", "--model", str(checkpoint["model"]), "--image", str(checkpoint["image"]), "--prompt", "what is it ?",
        "--keep-ratio", "0.5", "--max-new-tokens", "3", "--compare", "--json", str(out_json), "--show", str(out_png),
        *LAYERS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "answer (hero, keep ratio 0.5):" in result.stdout
    assert "answer (unpruned):" in result.stdout
    assert "thumbnail" in result.stdout and "effective ratio" in result.stdout and "TFLOPs" in result.stdout
    payload = json.loads(out_json.read_text())
    report = payload["report"]
    assert set(report) >= {"tokens_in", "tokens_out", "kept_patch_tokens", "newline_tokens", "timings", "images"}
    image = report["images"][0]
    assert image["tokens_out"] == image["kept_patch_tokens"] + image["newline_tokens"]
    assert image["kept_patch_tokens"] == sum(image["budgets"])
    assert payload["unpruned"]["answer"] is not None
    from PIL import Image

    with Image.open(out_png) as picture:
        picture.verify()
    rows, cols = image["tile_grid"]
    unit = 672 / max(rows, cols)  # render_plan's default display: the tile canvas fits 672 px
    panel_w, panel_h = round(cols * unit), round(rows * unit)
    expected = (panel_w + 336 + 3 * 16, max(panel_h, 336 + 40) + 34 + 84)  # + thumbnail, margins, header, legend
    with Image.open(out_png) as picture:
        assert picture.format == "PNG"
        assert picture.size == expected


def test_show_writes_picture_and_layer_strip(checkpoint):
    out = checkpoint["dir"] / "show.png"
    result = hero(
        "show", "--model", str(checkpoint["model"]), "--image", str(checkpoint["image"]), "--prompt", "describe",
        "--out", str(out), "--layers", "1", *LAYERS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    strip = out.with_name("show_layers.png")
    from PIL import Image

    with Image.open(strip) as picture:
        assert picture.size == (6 * 128 + 8, 120 + 26 + 30)  # 6 layers of the tiny tower, one row


def test_flops_reproduces_table_4():
    result = hero("flops", "--shape", "vicuna-7b", "--tokens", "2673", "583")
    assert result.returncode == 0, result.stderr
    assert "38.37" in result.stdout and "7.73" in result.stdout and "1336.5" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--model", "MODEL", "--image", "MISSING", "--prompt", "x"], "--image="),
        (["run", "--model", "MODEL", "--image", "BROKEN", "--prompt", "x"], "readable image"),
        (["run", "--model", "DIR", "--image", "IMAGE", "--prompt", "x"], "config.json"),
        (["run", "--model", "MODEL", "--image", "IMAGE", "--prompt", "x", "--keep-ratio", "0"], "(0, 1]"),
        (["run", "--model", "MODEL", "--image", "IMAGE", "--prompt", "x", "--keep-ratio", "1.5"], "(0, 1]"),
        (["show", "--model", "MODEL", "--image", "IMAGE", "--prompt", "x", "--preset", "fastv"], "invalid choice"),
        (["flops", "--shape", "vicuna-70b", "--tokens", "10"], "--shape="),
        (["show", "--model", "WEIGHTS", "--image", "IMAGE", "--prompt", "x"], "processor files"),
        (["run", "--model", "MODEL", "--image", "IMAGE", "--prompt", "x", "--json", "NODIR"], "--json="),
        (["show", "--model", "MODEL", "--image", "IMAGE", "--prompt", "x", "--out", "NODIR"], "--out="),
        (["bench", "core", "--device", "cuda"] if not __import__("torch").cuda.is_available() else ["bench", "x"], ""),
        (["bench", "nothing"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(checkpoint, args, needle):
    names = {"MODEL": checkpoint["model"], "IMAGE": checkpoint["image"], "BROKEN": checkpoint["broken"],
             "MISSING": checkpoint["dir"] / "missing.png", "DIR": checkpoint["dir"],
             "WEIGHTS": checkpoint["weights-only"], "NODIR": checkpoint["dir"] / "no" / "such" / "x.json"}  # fmt: skip
    result = hero(*[str(names.get(a, a)) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hero: error:") and needle in lines[0]
    assert "Traceback" not in result.stderr


def test_cuda_without_cuda_is_one_line(checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = hero("show", "--model", str(checkpoint["model"]), "--image", str(checkpoint["image"]), "--prompt", "x",
                  "--device", "cuda")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("hero: error: --device='cuda'")


def test_unsupported_model_type_is_one_line(checkpoint, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=28, patch_size=14)).save_pretrained(tmp_path)  # fmt: skip
    result = hero("show", "--model", str(tmp_path), "--image", str(checkpoint["image"]), "--prompt", "x")
    assert result.returncode == 2
    assert "llava_next" in result.stderr and "clip_vision_model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_has_examples():
    result = hero("--help")
    assert result.returncode == 0
    assert "hero demo" in result.stdout and "hero run --model" in result.stdout


def test_demo_subcommand_writes_report_and_picture(tmp_path):
    result = hero("demo", "--out", str(tmp_path / "demo"), "--keep-ratios", "0.2")
    assert result.returncode == 0, result.stderr
    assert "RANDOM" in result.stdout and "hero run --model" in result.stdout
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert [row["setting"] for row in report["rows"]] == ["vanilla", "HERO 20%"]
    from PIL import Image

    with Image.open(tmp_path / "demo" / "kept_tokens.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 600


def test_bench_core_subcommand_writes_json_and_table(tmp_path):
    result = hero("bench", "core", "--views", "2", "--repeats", "2", "--forward-repeats", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "core.json").read_text())
    assert {"benchmark", "what", "machine", "measured_at", "results", "target", "met"} <= set(record)
    assert {"cpu", "torch", "device", "torch_threads"} <= set(record["machine"])
    (row,) = record["results"]
    assert row["views"] == 2 and row["plan_ms"] > 0 and row["forward_ms"] > 0
    assert row["ratio"] == pytest.approx(row["plan_ms"] / row["forward_ms"])
    assert "| V | plan (ms)" in (tmp_path / "core.md").read_text()


def test_show_and_run_on_an_internvl_checkpoint(tmp_path: Path) -> None:
    """The CLI names no host key: an InternVL checkpoint (no image_sizes from its processor) works the same."""
    from .hosts import host_row

    host = host_row("internvl")
    host.model.save_pretrained(tmp_path / "model")
    host.processor.save_pretrained(tmp_path / "model")
    draw_test_card(300, 140).save(tmp_path / "card.png")
    out_png, out_json = tmp_path / "kept.png", tmp_path / "show.json"
    common = ["--model", str(tmp_path / "model"), "--image", str(tmp_path / "card.png"), "--prompt", "what is it ?"]
    result = hero("show", *common, "--keep-ratio", "0.5", "--out", str(out_png), "--json", str(out_json), *LAYERS)
    assert result.returncode == 0, result.stderr
    image = json.loads(out_json.read_text())["report"]["images"][0]
    assert image["thumbnail_index"] == image["views"] - 1 and image["views"] > 2  # tiles, then the thumbnail
    assert image["kept_patch_tokens"] == sum(image["budgets"]) and image["newline_tokens"] == 0
    assert out_png.is_file()
    result = hero("run", *common, "--keep-ratio", "0.5", "--max-new-tokens", "2", "--compare", *LAYERS)
    assert result.returncode == 0, result.stderr
    assert "answer (unpruned):" in result.stdout
