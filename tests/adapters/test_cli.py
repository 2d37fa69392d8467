"""The ``hero`` command end to end, on a tiny LLaVA-NeXT checkpoint the test saves itself.

Most checks call ``cli.main`` in-process (fast; model loads can be counted); a few run the installed command
in a subprocess, where the real exit code, stdout and stderr are seen. ``test_cli_args.py`` holds the careless
arguments, ``test_cli_batch.py`` ``run --data`` and ``run --compare``; the helpers here are shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from hero_adapters import cli
from hero_adapters.demo import draw_test_card

from .notes import others

LAYERS = ["--set", "low_layers=1,2", "--set", "high_layers=4"]


def hero(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess (``python -m hero_adapters.cli``), offline, without progress bars."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hero_adapters.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def main(*args: Any) -> int:
    """``cli.main`` in-process; argparse's exits (usage errors, ``--help``, ``--version``) become the code."""
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exit:
        return int(exit.code or 0)


@contextmanager
def counting_loads() -> Iterator[list[str]]:
    """Counts host model loads in this process, with transformers' loading bar off (as ``TQDM_DISABLE`` does in a
    subprocess, so that stderr holds only what ``hero`` prints)."""
    import transformers

    calls: list[str] = []
    cls = transformers.AutoModelForImageTextToText
    original = cls.from_pretrained

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return original(*args, **kwargs)

    own = vars(cls).get("from_pretrained")  # the raw classmethod, when the class defines it itself
    cls.from_pretrained = counted
    enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield calls
    finally:
        if own is not None:
            cls.from_pretrained = own
        else:
            del cls.from_pretrained
        if enabled:
            transformers.utils.logging.enable_progress_bar()


def save_checkpoint(folder: Path, tiny: Any) -> dict[str, Path]:
    """The session's tiny host (tests/adapters/conftest.py) saved as a checkpoint, a test card and a broken image."""
    tiny.model.save_pretrained(folder / "model")
    tiny.processor.save_pretrained(folder / "model")
    draw_test_card(120, 80).save(folder / "card.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return {"model": folder / "model", "image": folder / "card.png", "broken": folder / "broken.png", "dir": folder}


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folders``: (size, mtime in ns), to prove that a refused call wrote nothing."""
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cli")
    files = save_checkpoint(folder, tiny)
    tiny.model.save_pretrained(folder / "weights-only")  # no processor files
    return {**files, "weights-only": folder / "weights-only"}


def test_run_prints_answer_table_json_picture_and_compare(checkpoint):
    """Subprocess: the real console output of ``run --compare --show --json``."""
    out_json, out_png = checkpoint["dir"] / "run.json", checkpoint["dir"] / "run.png"
    result = hero(
        "run", "--model", str(checkpoint["model"]), "--image", str(checkpoint["image"]), "--prompt", "what is it ?",
        "--keep-ratio", "0.5", "--max-new-tokens", "3", "--compare", "--repeats", "2", "--json", str(out_json),
        "--show", str(out_png), *LAYERS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "answer (hero, keep ratio 0.5):" in result.stdout
    assert "answer (unpruned):" in result.stdout
    assert "median of 2 alternating runs after one warm-up of each" in result.stdout
    assert "thumbnail" in result.stdout and "effective ratio" in result.stdout and "TFLOPs" in result.stdout
    # The tiny host sends 46 of 70 tokens at 0.5 (padding counted in the budget, newlines kept): a ratio note.
    assert others(result.stderr) == "hero: note: no --clip given: tile budgets come from visual saliency alone"
    assert "the budget counts all 5 x 16 = 80 view positions, 16 of them padding" in result.stderr
    payload = json.loads(out_json.read_text())
    report = payload["report"]
    assert set(report) >= {"tokens_in", "tokens_out", "kept_patch_tokens", "newline_tokens", "timings", "images"}
    image = report["images"][0]
    assert image["tokens_out"] == image["kept_patch_tokens"] + image["newline_tokens"]
    assert image["kept_patch_tokens"] == sum(image["budgets"])
    assert payload["unpruned"]["answer"] is not None
    timing = payload["timing"]
    assert timing["warmup"] == 1 and timing["repeats"] == 2
    assert len(timing["pruned_seconds"]) == len(timing["unpruned_seconds"]) == 2
    assert payload["unpruned"]["seconds"] == timing["unpruned_median"]
    from PIL import Image

    with Image.open(out_png) as picture:
        assert picture.format == "PNG" and picture.size[0] > 672  # the tile canvas fits 672 px, the thumbnail beside


def test_show_writes_picture_layer_strip_and_json(checkpoint, capsys):
    out, out_json = checkpoint["dir"] / "show.png", checkpoint["dir"] / "show.json"
    code = main("show", "--model", checkpoint["model"], "--image", checkpoint["image"], "--prompt", "describe",
                "--out", out, "--layers", "1", "--json", out_json, *LAYERS)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"wrote {out}" in captured.out and f"wrote {out_json}" in captured.out
    strip = out.with_name("show_layers.png")
    from PIL import Image

    with Image.open(strip) as picture:
        assert picture.format == "PNG" and picture.size[0] > 6 * 100  # 6 layers of the tiny tower, side by side
    assert json.loads(out_json.read_text())["preset"] == "hero"


def test_flops_reproduces_table_4(capsys):
    assert main("flops", "--shape", "vicuna-7b", "--tokens", "2673", "583") == 0
    out = capsys.readouterr().out
    assert "38.37" in out and "7.73" in out and "1336.5" in out


def test_demo_subcommand_writes_report_and_picture(tmp_path, capsys):
    assert main("demo", "--out", tmp_path / "demo", "--keep-ratios", "0.2") == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out and "hero run --model" in out
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert [row["setting"] for row in report["rows"]] == ["vanilla", "HERO 20%"]
    from PIL import Image

    with Image.open(tmp_path / "demo" / "kept_tokens.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 600


def test_show_and_run_on_an_internvl_checkpoint(tmp_path: Path, capsys) -> None:
    """The CLI names no host key: an InternVL checkpoint (no image_sizes from its processor) works the same."""
    from .hosts import host_row

    host = host_row("internvl")
    host.model.save_pretrained(tmp_path / "model")
    host.processor.save_pretrained(tmp_path / "model")
    draw_test_card(300, 140).save(tmp_path / "card.png")
    out_png, out_json = tmp_path / "kept.png", tmp_path / "show.json"
    common = ["--model", tmp_path / "model", "--image", tmp_path / "card.png", "--prompt", "what is it ?"]
    code = main("show", *common, "--keep-ratio", "0.5", "--out", out_png, "--json", out_json, *LAYERS)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    image = json.loads(out_json.read_text())["report"]["images"][0]
    assert image["thumbnail_index"] == image["views"] - 1 and image["views"] > 2  # tiles, then the thumbnail
    assert image["kept_patch_tokens"] == sum(image["budgets"]) and image["newline_tokens"] == 0
    assert out_png.is_file()
    # The processor's own placeholder is refused after the processor loads, before the weights do.
    with counting_loads() as loads:
        code = main("run", *common[:4], "--prompt", "<IMG_CONTEXT> what", "--max-new-tokens", "2", *LAYERS)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--prompt='<IMG_CONTEXT> what'" in line and loads == []
    code = main("run", *common, "--keep-ratio", "0.5", "--max-new-tokens", "2", "--compare", "--repeats", "1", *LAYERS)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "answer (unpruned):" in captured.out
