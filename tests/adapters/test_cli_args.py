"""Careless arguments: one line on stderr naming the flag, exit code 2, nothing loaded, nothing written.

In-process (``cli.main``) so that model loads can be counted and every case costs milliseconds; two cases run
the installed command in a subprocess, where the real exit code and stderr (no traceback) are seen. Also the
conventions: ``--version``, bare ``hero``, defaults in every option's help, ``-v`` / ``-q``.
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from hero_adapters import __version__, cli

from .notes import others
from .test_cli import LAYERS, counting_loads, hero, main, save_checkpoint, snapshot


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    """A saved tiny checkpoint, a test card, a broken image, a data file, a weights-only and a non-host checkpoint."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = tmp_path_factory.mktemp("cli-args")
    found = save_checkpoint(folder, tiny)
    tiny.model.save_pretrained(folder / "weights-only")
    vision = CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28, patch_size=14)  # fmt: skip
    CLIPVisionModel(vision).save_pretrained(folder / "not-a-host")
    (folder / "rows.jsonl").write_text(json.dumps({"id": 1, "image": "card.png", "prompt": "what is it"}) + "\n")
    (folder / "card_layers.png").write_bytes(found["image"].read_bytes())  # what `show --out card.png --layers` writes
    return {**found, "data": folder / "rows.jsonl", "weights-only": folder / "weights-only",
            "not-a-host": folder / "not-a-host", "strip-input": folder / "card_layers.png"}  # fmt: skip


RUN = ["run", "--model", "MODEL", "--image", "IMAGE", "--prompt", "what is it"]
SHOW = ["show", "--model", "MODEL", "--image", "IMAGE", "--prompt", "what is it"]
EVAL = ["eval", "--model", "MODEL", "--data", "DATA"]

CASES = [
    # outputs: a picture needs a picture suffix; no directory; never an input; never inside the checkpoint
    ([*RUN, "--show", "OUT/kept.txt"], "--show="),
    ([*SHOW, "--out", "OUT/kept"], "--out="),
    ([*RUN, "--show", "OUT"], "not a directory"),
    ([*SHOW, "--out", "IMAGE"], "a file other than --image"),  # would overwrite the user's photo
    (["show", "--model", "MODEL", "--image", "STRIPINPUT", "--prompt", "x", "--out", "IMAGE", "--layers"], "strip)="),
    ([*RUN, "--json", "OUT/report.png"], "not a picture's"),
    ([*RUN, "--json", "MODEL/report.json"], "outside the --model checkpoint folder"),
    ([*RUN, "--show", "OUT/a.png", "--json", "OUT/no/such/a.json"], "--json="),
    ([*SHOW, "--out", "OUT/no/such/x.png"], "--out="),
    (["run", "--model", "MODEL", "--data", "DATA", "--json", "DATA"], "a file other than --data"),
    ([*EVAL, "--json", "OUT/eval.png"], "not a picture's"),
    (["layers", "--model", "MODEL", "--images", "IMAGE", "--json", "OUT"], "not a directory"),
    # prompts and images
    ([*RUN[:-1], "<image> what is it"], "--prompt='<image> what is it' is invalid: expected a prompt without <image>"),
    ([*RUN[:-1], ""], "--prompt='' is invalid"),
    ([*RUN[:-1], "   "], "--prompt='   ' is invalid"),
    (["layers", "--model", "MODEL", "--images", "IMAGE", "--prompt", ""], "--prompt=''"),
    ([*RUN, "--prompt", "again"], "argument --prompt: given twice"),
    ([*RUN, "--image", "IMAGE"], "argument --image: given twice"),
    ([*RUN, "--keep-ratio", "0.5", "--keep-ratio", "0.4"], "argument --keep-ratio: given twice"),
    (["run", "--model", "MODEL", "--image", "MISSING", "--prompt", "x"], "--image="),
    (["run", "--model", "MODEL", "--image", "BROKEN", "--prompt", "x"], "readable image"),
    (["run", "--model", "MODEL", "--prompt", "x"], "--image is required"),
    # run modes
    ([*RUN, "--data", "DATA"], "--data and --image are mutually exclusive"),
    (["run", "--model", "MODEL", "--data", "DATA", "--compare"], "--data and --compare are mutually exclusive"),
    (["run", "--model", "MODEL", "--data", "DATA", "--show", "OUT/x.png"], "--data and --show"),
    ([*RUN, "--batch-size", "2"], "--batch-size is for --data"),
    ([*RUN, "--repeats", "2"], "--repeats is for --compare"),
    ([*RUN, "--compare", "--repeats", "0"], "--repeats=0"),
    ([*RUN, "--max-new-tokens", "0"], "--max-new-tokens=0"),
    (["run", "--model", "MODEL", "--data", "DATA", "--batch-size", "0"], "--batch-size=0"),
    ([*SHOW, "--layers", "zero"], "--layers='zero'"),
    ([*SHOW, "--layers", "0"], "--layers='0'"),
    # --set: keys and values before the model loads (layers against the config's depth), named with the flag
    ([*RUN, "--set", "alpah=0.7"], "--set alpah=0.7 is invalid: expected an override among"),
    ([*RUN, "--set", "alpha=7"], "--set alpha=7 is invalid: expected a float in [0, 1]"),
    ([*RUN, "--set", "low_layers=1,99"], "--set low_layers=1,99 is invalid: expected layers in [0, 5]"),
    ([*RUN, "--set", "alpha=0.5", "--set", "alpha=0.6"], "alpha is given twice"),
    ([*RUN, "--set", "alpha"], "expected KEY=VALUE"),
    ([*RUN, "--set", "depth=3"], "depth is not a preset field"),  # once a TypeError from presets.get
    ([*RUN, "--set", "keep_ratio=0.5"], "it is set by --keep-ratio"),
    ([*RUN, "--set", "name=hero"], "it is set by --preset"),
    ([*EVAL, "--set", "alpah=0.7"], "--set alpah=0.7 is invalid"),
    ([*EVAL, "--presets", "hero", "cls-attention", "--set", "layer=9"], "--set layer=9 is invalid"),
    # --clip: always checked, used or not
    ([*RUN, "--clip", "MISSING"], "--clip="),
    ([*RUN, "--clip", "MISSING", "--preset", "uniform-random"], "--clip="),
    ([*RUN, "--clip", "MODEL"], "--clip model_type='llava_next'"),
    ([*EVAL, "--clip", "MISSING"], "--clip="),
    # models
    (["run", "--model", "OUT", "--image", "IMAGE", "--prompt", "x"], "config.json"),
    (["show", "--model", "WEIGHTS", "--image", "IMAGE", "--prompt", "x"], "processor files"),
    (["show", "--model", "NOTAHOST", "--image", "IMAGE", "--prompt", "x"], "clip_vision_model"),
    ([*RUN, "--keep-ratio", "0"], "(0, 1]"),
    ([*RUN, "--keep-ratio", "1.5"], "(0, 1]"),
    ([*SHOW, "--preset", "fastv"], "invalid choice"),
    # other commands
    (["flops", "--shape", "vicuna-70b", "--tokens", "10"], "--shape="),
    (["flops", "--tokens", "10", "--bytes", "0"], "--bytes=0"),
    (["flops", "--tokens", "10", "--bytes", "-1"], "--bytes=-1"),
    (["flops", "--tokens", "0"], "--tokens="),
    (["demo", "--out", "IMAGE"], "--out="),  # an existing file: the demo's --out is a folder
    (["demo", "--out", "DIR"], "a new or empty folder, or one an earlier `hero demo` wrote"),
    (["bench", "nothing"], "invalid choice"),
    (["-v", "flops", "--tokens", "5", "-q"], "not allowed with"),
]


@pytest.mark.parametrize(("args", "needle"), CASES)
def test_careless_argument_is_one_line_exit_2_nothing_loaded_or_written(files, tmp_path, capsys, args, needle):
    names = {"MODEL": files["model"], "IMAGE": files["image"], "BROKEN": files["broken"], "DATA": files["data"],
             "MISSING": files["dir"] / "missing.png", "OUT": tmp_path, "DIR": files["dir"],
             "WEIGHTS": files["weights-only"], "NOTAHOST": files["not-a-host"],
             "STRIPINPUT": files["strip-input"]}  # fmt: skip
    before = snapshot(files["dir"], tmp_path)
    prefixes = {"OUT/": f"{tmp_path}/", "MODEL/": f"{files['model']}/"}
    argv = [str(names[a]) if a in names else a for a in args]
    for prefix, folder in prefixes.items():
        argv = [folder + a.removeprefix(prefix) if a.startswith(prefix) else a for a in argv]
    with counting_loads() as loads:
        layers = args[0] in ("run", "show") and "--set" not in args and "--preset" not in args
        code = main(*argv, *(LAYERS if layers else []))
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("hero: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in captured.err and "path_or_id" not in captured.err
    assert loads == []
    assert snapshot(files["dir"], tmp_path) == before  # nothing created or changed


def test_decompression_bomb_is_refused_before_loading(files, tmp_path, capsys, monkeypatch):
    """Pillow raises above 2 x MAX_IMAGE_PIXELS and only warns above MAX_IMAGE_PIXELS: both are refused."""
    from PIL import Image

    width, height = Image.open(files["image"]).size
    for limit in (width * height // 3, width * height - 1):  # the error range, then the warning range
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with counting_loads() as loads:
            code = main("run", "--model", files["model"], "--image", files["image"], "--prompt", "x", *LAYERS)
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and loads == []
        assert line.startswith(f"hero: error: --image='{files['image']}' is invalid: expected an image of at most ")
        assert "decompression-bomb" in line


def bomb_png(path: Path, side: int = 40_000) -> Path:
    """A PNG whose header claims side x side pixels (1.6 G: over twice Pillow's default limit); no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("case", ["overwrite", "bomb"])
def test_careless_arguments_in_a_subprocess(files, tmp_path, case):
    """The real exit code and stderr: ``show --out`` naming the input photo, and a decompression bomb."""
    image = tmp_path / "mine.png"
    image.write_bytes(files["image"].read_bytes())
    if case == "bomb":
        args = ["--image", str(bomb_png(tmp_path / "bomb.png")), "--out", str(tmp_path / "kept.png")]
    else:
        args = ["--image", str(image), "--out", str(image)]
    before = snapshot(tmp_path)
    result = hero("show", "--model", str(files["model"]), "--prompt", "x", *args, *LAYERS)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert line.startswith("hero: error: --image=" if case == "bomb" else "hero: error: --out=")
    assert ("decompression-bomb" if case == "bomb" else "a file other than --image") in line
    assert snapshot(tmp_path) == before


def test_clip_is_loaded_used_or_not_and_the_notes_say_so(files, tiny, tmp_path, capsys):
    from hero_adapters.testing import build_tiny_clip

    scorer = build_tiny_clip()
    scorer.model.save_pretrained(tmp_path / "clip")
    scorer.tokenizer.save_pretrained(tmp_path / "clip")
    common = ["run", "--model", files["model"], "--image", files["image"], "--prompt", "x", "--max-new-tokens", "1"]
    capsys.readouterr()
    with counting_loads():
        assert main(*common, "--clip", tmp_path / "clip", *LAYERS) == 0
        assert others(capsys.readouterr().err) == ""  # relevance read: no note about --clip
        assert main(*common, "--clip", tmp_path / "clip", "--preset", "uniform-random") == 0
        assert others(capsys.readouterr().err) == (
            "hero: note: --clip loaded and checked, but preset 'uniform-random' reads no relevance: it is not used"
        )
        # A broken CLIP checkpoint (config, no weights) fails on loading, still named --clip, even when unused.
        (tmp_path / "clip" / "model.safetensors").unlink()
        assert main(*common, "--clip", tmp_path / "clip", "--preset", "uniform-random") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hero: error: --clip=") and "path_or_id" not in line


def test_quiet_hides_notes_verbose_adds_debug_lines(files, capsys):
    common = ["run", "--model", files["model"], "--image", files["image"], "--prompt", "x", "--max-new-tokens", "1"]
    assert main("-q", *common, *LAYERS) == 0  # transformers' own loading bar is off under -q too
    captured = capsys.readouterr()
    assert captured.err == "" and "answer (hero" in captured.out
    with counting_loads():
        assert main(*common, "-v", *LAYERS) == 0
    err = capsys.readouterr().err.splitlines()
    assert "hero: note: no --clip given: tile budgets come from visual saliency alone" in err
    assert any(line.startswith("hero: debug: loaded --model") for line in err)
    assert any(line.startswith("hero: debug: pruned generate:") for line in err)


def test_version_and_bare_hero(capsys):
    assert main("--version") == 0
    assert capsys.readouterr().out.strip() == f"hero {__version__}"
    from importlib.metadata import version

    assert __version__ == version("hero-prune")
    assert main() == 0  # bare `hero`: the help, exit 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hero") and "hero demo" in out and "run" in out


def test_every_option_shows_its_default_and_help_has_examples(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or action.required or action.nargs == 0:
                continue  # positionals, required options, flags (-h, -v, --compare ...)
            text = formatter._expand_help(action)
            assert "default" in text or "required unless" in text, f"hero {name} {action.option_strings[0]}: {text!r}"
    assert main("run", "--help") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.2)" in out and "(default: 64)" in out and "examples:" in out and "hero run --model" in out


def test_cuda_without_cuda_is_one_line(files, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main("show", "--model", files["model"], "--image", files["image"], "--prompt", "x", "--device", "cuda")
    assert code == 2
    assert capsys.readouterr().err.strip().startswith("hero: error: --device='cuda'")
