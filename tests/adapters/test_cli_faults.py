"""Faults a person meets with the ``hero`` command (issue 16): each ends in one line naming the flag or file and exit
code 2 (a closed pipe: a quiet exit, the files asked for written first), before the weights load where it can.

In-process (``cli.main``) where loads can be counted; a real subprocess where the behaviour is the process's own
(a pipe closed by its reader, stderr that is not a terminal, a file size limit).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from hero_adapters.testing import build_tiny_clip

from .hosts import host_row
from .test_cli import LAYERS, counting_loads, main, save_checkpoint

PIPE_CLOSED = 141  # 128 + SIGPIPE, what a shell reports for a program a closed pipe ended


def _cut(folder: Path, kind: str) -> None:
    """The folder's weights file cut in half, or emptied (an interrupted download)."""
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if kind == "half" else b"")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    files = save_checkpoint(root, tiny)
    clip = build_tiny_clip()
    clip.model.save_pretrained(root / "clip")
    clip.tokenizer.save_pretrained(root / "clip")
    for base in ("model", "clip"):
        for kind in ("half", "empty"):
            shutil.copytree(root / base, root / f"{base}-{kind}")
            _cut(root / f"{base}-{kind}", kind)
    rows = "".join(json.dumps({"id": f"r{i}", "image": "card.png", "prompt": "what is it"}) + "\n" for i in range(3))
    (root / "rows.jsonl").write_text(rows)
    return {**files, "root": root, "clip": root / "clip", "rows": root / "rows.jsonl",
            **{f"{b}-{k}": root / f"{b}-{k}" for b in ("model", "clip") for k in ("half", "empty")}}  # fmt: skip


def _env() -> dict[str, str]:
    """Offline, and tqdm left as it is (no TQDM_DISABLE): what a user's shell has."""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "0"}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("hero: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------- 1. cut weights files
def _command(name: str, ckpt: dict[str, Path], model: Path, clip: Path | None, out: Path) -> list[Any]:
    extra = ["--clip", clip] if clip is not None else []
    single = ["--model", model, "--image", ckpt["image"], "--prompt", "what is it", *LAYERS, *extra]
    return {
        "run": ["run", *single, "--max-new-tokens", "1"],
        "show": ["show", *single, "--out", out / "kept.png"],
        "layers": ["layers", "--model", model, "--images", ckpt["image"]],
        "eval": ["eval", "--model", model, "--data", ckpt["rows"], "--keep-ratios", "0.5", *LAYERS, *extra],
    }[name]


@pytest.mark.parametrize("kind", ["half", "empty"])
@pytest.mark.parametrize(
    ("name", "flag"),
    [("run", "--model"), ("show", "--model"), ("layers", "--model"), ("eval", "--model"),
     ("run", "--clip"), ("show", "--clip"), ("eval", "--clip")],
)  # fmt: skip
def test_a_cut_or_empty_weights_file_is_one_line_naming_the_flag_and_the_file(ckpt, tmp_path, capsys, name, flag, kind):
    broken = ckpt[f"{flag.removeprefix('--')}-{kind}"]
    model, clip = (broken, None) if flag == "--model" else (ckpt["model"], broken)
    with counting_loads() as loads:
        code = main(*_command(name, ckpt, model, clip, tmp_path))
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert line.startswith(
        f"hero: error: {flag}={str(broken)!r} is invalid: expected a checkpoint with complete weights"
    )
    assert f"{broken / 'model.safetensors'} is not a whole safetensors file" in line
    size = (broken / "model.safetensors").stat().st_size
    assert f"it is {size} bytes long" in line
    assert loads == []  # refused before any weights load (the CLIP's included)


# ------------------------------------------------------------------------------------------- 2. closed pipe
def _closed_pipe(args: list[Any]) -> subprocess.CompletedProcess[str]:
    """The command with its stdout reader gone before it prints anything (as ``| head -0``, or ``| head -1`` once
    head has its line): the first write to stdout meets a closed pipe."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hero_adapters.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, "", err)


def test_show_into_a_closed_pipe_writes_its_files_first_and_exits_quietly(ckpt, tmp_path):
    out, out_json = tmp_path / "kept.png", tmp_path / "plan.json"
    done = _closed_pipe(["show", "--model", ckpt["model"], "--image", ckpt["image"], "--prompt", "what is it",
                         "--out", out, "--json", out_json, "--layers", *LAYERS])  # fmt: skip
    assert done.returncode == PIPE_CLOSED, done.stderr
    assert "hero: note: no --clip given: tile budgets come from visual saliency alone" in done.stderr.splitlines()
    assert all(line.startswith("hero: ") for line in done.stderr.splitlines()), done.stderr  # no traceback
    assert json.loads(out_json.read_text())["preset"] == "hero"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "kept_layers.png").stat().st_size > 0


def test_run_data_into_a_closed_pipe_still_answers_every_row_into_json(ckpt, tmp_path):
    out_json = tmp_path / "answers.jsonl"
    done = _closed_pipe(["run", "--model", ckpt["model"], "--data", ckpt["rows"], "--max-new-tokens", "1",
                         "--json", out_json, *LAYERS])  # fmt: skip
    assert done.returncode == PIPE_CLOSED, done.stderr
    assert all(line.startswith("hero: ") for line in done.stderr.splitlines()), done.stderr  # no traceback
    assert [json.loads(line)["id"] for line in out_json.read_text().splitlines()] == ["r0", "r1", "r2"]


# -------------------------------------------------------------------------------------------- 3. full disk
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_json_on_a_full_device_is_one_line_naming_the_flag(ckpt, capsys):
    code = main("run", "--model", ckpt["model"], "--image", ckpt["image"], "--prompt", "what is it",
                "--max-new-tokens", "1", "--json", "/dev/full", *LAYERS)  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2
    assert line == (
        "hero: error: --json='/dev/full' is invalid: expected a file hero can write. Writing it failed: No space "
        "left on device. Free space or name another file."
    )
    assert Path("/dev/full").is_char_device()  # written through, not replaced by a file


def _at_most_512_bytes_per_file() -> None:
    """In the child, before it runs: writes past 512 bytes per file fail with EFBIG (a short write, like a quota)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails instead of the process being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))


def test_json_that_does_not_fit_leaves_no_partial_file_and_an_old_file_as_it_was(ckpt, tmp_path):
    """A real short write: the process may write at most 512 bytes per file (RLIMIT_FSIZE); the JSON is longer."""
    out_json = tmp_path / "report.json"
    out_json.write_text("old\n")

    done = subprocess.run(
        [sys.executable, "-m", "hero_adapters.cli", "run", "--model", str(ckpt["model"]), "--image",
         str(ckpt["image"]), "--prompt", "what is it", "--max-new-tokens", "1", "--json", str(out_json), *LAYERS],
        capture_output=True, text=True, env=_env(), preexec_fn=_at_most_512_bytes_per_file, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert line.startswith(f"hero: error: --json={str(out_json)!r} is invalid: expected a file hero can write.")
    assert "File too large" in line
    assert out_json.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no partial file beside it
    assert done.stdout == ""  # nothing printed before the file that failed


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_data_json_through_a_link_to_a_full_device_leaves_the_link(ckpt, tmp_path, capsys):
    """run --data --json: a path that is not a regular file is written as it is; a failed batch does not unlink
    (nor truncate) it (found in review: the link to /dev/full was removed)."""
    link = tmp_path / "answers.jsonl"
    link.symlink_to("/dev/full")
    code = main("run", "--model", ckpt["model"], "--data", ckpt["rows"], "--max-new-tokens", "1", "--json", link,
                *LAYERS)  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"hero: error: --json={str(link)!r} is invalid: expected a file hero can")
    assert "No space left on device" in line
    assert link.is_symlink() and Path("/dev/full").is_char_device()


def test_data_json_that_fails_at_its_first_batch_puts_the_old_file_back(ckpt, tmp_path):
    """run --data --json over an existing file: when the first batch cannot be written (512-byte file limit), the
    old content is back, as for every other output file."""
    out_json = tmp_path / "answers.jsonl"
    out_json.write_text("old\n")

    done = subprocess.run(
        [sys.executable, "-m", "hero_adapters.cli", "run", "--model", str(ckpt["model"]), "--data",
         str(ckpt["rows"]), "--batch-size", "3", "--max-new-tokens", "1", "--json", str(out_json), *LAYERS],
        capture_output=True, text=True, env=_env(), preexec_fn=_at_most_512_bytes_per_file, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "File too large" in _one_error_line(done.stderr)
    assert out_json.read_text() == "old\n"


# ---------------------------------------------------------------------------------- 4. --layers before loads
@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "0", "-1", "1.5"])
def test_show_layers_that_is_no_tile_number_is_one_line(ckpt, tmp_path, capsys, value):
    """A superscript two or an Arabic-Indic three are digits to str.isdigit but no tile number (found in review:
    int('\u00b2') raised a ValueError traceback)."""
    code = main("show", "--model", ckpt["model"], "--image", ckpt["image"], "--prompt", "x", "--out",
                tmp_path / "a.png", "--layers", value)  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith(f"hero: error: --layers={value!r} is invalid: expected 'thumbnail' or a tile")


def test_show_layers_beyond_the_tiles_is_refused_before_the_weights_load(ckpt, tmp_path, capsys):
    """The processor alone (loaded before the weights) says how many tiles the image makes: one more is refused
    before any weights load, the last one is drawn after."""
    args = ["show", "--model", ckpt["model"], "--image", ckpt["image"], "--prompt", "what is it", *LAYERS]
    with counting_loads() as loads:
        code = main(*args, "--out", tmp_path / "a.png", "--layers", "9")
    line = _one_error_line(capsys.readouterr().err)
    assert (code, loads) == (2, [])
    found = re.fullmatch(
        r"hero: error: --layers='9' is invalid: expected 'thumbnail' or a tile number in \[1, (\d+)\]\. The processor "
        rf"cuts {re.escape(str(ckpt['image']))} into (\d+) tile\(s\)\.",
        line,
    )
    assert found is not None, line
    tiles = int(found[1])
    assert int(found[2]) == tiles >= 2
    with counting_loads() as loads:  # the last tile the processor made is the last the loaded model has
        assert main(*args, "--out", tmp_path / "b.png", "--layers", str(tiles)) == 0
    table = capsys.readouterr().out.split("\n\n")[0]
    assert loads == [str(ckpt["model"])] and (tmp_path / "b_layers.png").is_file()
    assert table.count("\ntile ") == tiles
    with counting_loads() as loads:
        assert main(*args, "--out", tmp_path / "c.png", "--layers", str(tiles + 1)) == 2
    assert loads == [] and f"tile number in [1, {tiles}]" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- 5. broken processor config
def _broken_processor(root: Path, name: str, edit: Any) -> Path:
    folder = root / name
    if not folder.exists():
        shutil.copytree(root / "model", folder)
        path = folder / "processor_config.json"
        config = json.loads(path.read_text())
        path.write_text(edit(config))
    return folder


def _pinpoints(config: dict[str, Any]) -> str:
    config["image_processor"]["image_grid_pinpoints"] = "nonsense"
    return json.dumps(config)


def _crop(config: dict[str, Any]) -> str:  # another model's views: 28 px where the encoder takes 56
    config["image_processor"]["crop_size"] = {"height": 28, "width": 28}
    return json.dumps(config)


@pytest.mark.parametrize(
    ("name", "edit", "says"),
    [
        ("bad-json", lambda config: "{not json", "is not a valid JSON file"),
        ("bad-pinpoints", _pinpoints, "fails on a plain image: TypeError: grid_pinpoints must be a list"),
        ("bad-crop", _crop, "makes views of 28x28 pixels, but the vision encoder takes 56x56"),
    ],
)
def test_a_broken_processor_config_is_named_as_such_before_the_weights_load(ckpt, tmp_path, capsys, name, edit, says):
    folder = _broken_processor(ckpt["root"], name, edit)
    with counting_loads() as loads:
        code = main("show", "--model", folder, "--image", ckpt["image"], "--prompt", "what is it",
                    "--out", tmp_path / "k.png", *LAYERS)  # fmt: skip
    line = _one_error_line(capsys.readouterr().err)
    assert (code, loads) == (2, [])
    assert str(folder / "processor_config.json") in line and says in line
    assert "pixel_values" not in line


# --------------------------------------------------------------------------------------- 6. interrupted eval
@pytest.mark.parametrize("with_json", [True, False])
def test_an_interrupted_eval_says_where_its_partial_file_is(ckpt, tmp_path, capsys, monkeypatch, with_json):
    from hero_adapters.evaluate import runner

    opened = []
    original = runner._open_image

    def open_image(row: Any, where: str) -> Any:
        opened.append(row.line)
        if len(opened) == 2:  # ^C while row 2 (batch size 1) is under way
            raise KeyboardInterrupt
        return original(row, where)

    monkeypatch.setattr(runner, "_open_image", open_image)
    out_json = tmp_path / "eval.json"
    extra = ["--json", out_json] if with_json else []
    code = main("eval", "--model", ckpt["model"], "--data", ckpt["rows"], "--keep-ratios", "0.5",
                "--max-new-tokens", "1", *LAYERS, *extra)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 130 and err.endswith("hero: interrupted\n")
    (warning,) = [line for line in err.splitlines() if line.startswith("hero: warning: interrupted")]
    assert warning.startswith(f"hero: warning: interrupted at --data {ckpt['rows']}, line 2")
    if with_json:
        assert warning.endswith(f"the 1 row(s) before it are in {out_json} (complete: false)")
        payload = json.loads(out_json.read_text())
        assert (payload["complete"], payload["rows"]) == (False, 1)
        assert payload["error"] == f"interrupted at --data {ckpt['rows']}, line 2"  # the location once
    else:
        assert warning.endswith("no --json given: the 1 row(s) before it are not kept")
        assert not out_json.exists()


# -------------------------------------------------------------------------------- 7. no loading bars in a pipe
def test_loading_bars_stay_off_stderr_when_it_is_not_a_terminal(ckpt, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hero_adapters.cli", "run", "--model", str(ckpt["model"]), "--clip", str(ckpt["clip"]),
         "--image", str(ckpt["image"]), "--prompt", "what is it", "--max-new-tokens", "1", *LAYERS],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "%|" not in done.stderr and "Loading weights" not in done.stderr
    assert all(line.startswith("hero: ") for line in done.stderr.splitlines()), done.stderr  # notes only


# ------------------------------------------------------------------------------- 8. one tile numbering (InternVL)
def test_internvl_tiles_are_numbered_as_the_picture_numbers_them(tmp_path, capsys, monkeypatch):
    """InternVL puts its thumbnail LAST: the table names views 0.. as tile 1.., as render_plan labels them, and
    ``--layers 1`` draws view 0."""
    import hero_adapters.visualize as visualize

    row = host_row("internvl")
    row.model.save_pretrained(tmp_path / "internvl")
    row.processor.save_pretrained(tmp_path / "internvl")
    image = tmp_path / "wide.png"
    row.image(112, 336).save(image)
    drawn: dict[str, Any] = {}
    strip = visualize.render_layer_strip

    def record(attention: Any, layers: Any, grid: Any, path: Any, *, view_name: str, read_layers: Any) -> Any:
        drawn.update(view_name=view_name, attention=attention.clone())
        return strip(attention, layers, grid, path, view_name=view_name, read_layers=read_layers)

    monkeypatch.setattr(visualize, "render_layer_strip", record)
    code = main("show", "--model", tmp_path / "internvl", "--image", image, "--prompt", "describe the image",
                "--out", tmp_path / "k.png", "--json", tmp_path / "k.json", "--layers", "1", *LAYERS)  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    names = [line.split()[0] + (" " + line.split()[1] if line.startswith("tile") else "")
             for line in out.split("\n\n")[0].splitlines()[1:]]  # fmt: skip
    views = len(names)
    assert views >= 3 and names == [f"tile {k}" for k in range(1, views)] + ["thumbnail"]
    assert drawn["view_name"] == "tile 1"
    report = json.loads((tmp_path / "k.json").read_text())["report"]
    assert report["images"][0]["thumbnail_index"] == views - 1


# ------------------------------------------------------------------------- 9. views without valid positions
def test_views_without_valid_positions_show_no_scores(ckpt, tmp_path, capsys, tiny):
    image = tmp_path / "strip.png"
    tiny.image(20, 4000).save(image)
    code = main("show", "--model", ckpt["model"], "--image", image, "--prompt", "what is it",
                "--out", tmp_path / "k.png", *LAYERS)  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out.split("\n\n")[0].splitlines()[1:]
    empty = [line for line in table if line.split()[-1] == "padding)"]
    full = [line for line in table if line not in empty]
    assert empty and full  # the image makes both kinds of view
    for line in empty:
        parts = line.split()
        name_width = 2 if line.startswith("tile") else 1
        valid, budget, kept, importance, saliency, relevance = parts[name_width : name_width + 6]
        assert (valid, budget, kept, importance, saliency, relevance) == ("0", "0", "0", "-", "-", "-")
        assert line.endswith("no valid positions (all padding)")
    for line in full:
        assert re.search(r" \d\.\d{3} +\d\.\d{3} +\d\.\d{3}$", line), line
    assert all(float(line.split()[-3]) != pytest.approx(1 / 3) for line in full if line.startswith("tile"))


# ----------------------------------------------------------------------------------- 10. layers: distinct files
def test_layers_counts_each_file_once(ckpt, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(ckpt["image"], folder / "card.png")
    os.symlink(folder / "card.png", tmp_path / "link.png")
    out_json = tmp_path / "layers.json"
    code = main("layers", "--model", ckpt["model"], "--images", folder / "card.png", folder, tmp_path / "link.png",
                folder / "card.png", ckpt["image"], "--json", out_json)  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out_json.read_text())
    assert payload["images"] == [str(folder / "card.png"), str(ckpt["image"])]  # the first naming of each, in order
    assert payload["profile"]["num_images"] == 2 and "; 2 image(s)," in out


# ---------------------------------------------------------------------------------- 11. flops: a decoder LLM
def test_flops_refuses_a_config_that_is_not_a_decoder_llm(ckpt, tmp_path, capsys):
    clip_config = ckpt["clip"] / "config.json"
    assert main("flops", "--shape", clip_config, "--tokens", "100") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"hero: error: --shape={str(clip_config)!r} is invalid: expected the config.json of a ")
    assert "model_type 'clip_text_model' (the text_config of a 'clip' config)" in line
    seq2seq = tmp_path / "t5.json"
    seq2seq.write_text(json.dumps({"model_type": "t5", "is_encoder_decoder": True, "hidden_size": 8,
                                   "num_hidden_layers": 2, "intermediate_size": 16}))  # fmt: skip
    assert main("flops", "--shape", seq2seq, "--tokens", "100") == 2
    assert "It is an encoder-decoder model." in _one_error_line(capsys.readouterr().err)
    # a VLM's config (its text_config is a Llama) and a hand-written one without model_type are LLM shapes
    assert main("flops", "--shape", ckpt["model"] / "config.json", "--tokens", "100") == 0
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128}))
    assert main("flops", "--shape", hand, "--tokens", "100") == 0
    assert capsys.readouterr().out.count("hand.json: 2 layers, d=64, MLP 128") == 1


# ------------------------------------------------------------------------------------ 12. --compare spread
def test_compare_prints_the_spread_of_its_repeats(ckpt, tmp_path, capsys):
    out_json = tmp_path / "run.json"
    code = main("run", "--model", ckpt["model"], "--image", ckpt["image"], "--prompt", "what is it",
                "--max-new-tokens", "1", "--compare", "--repeats", "3", "--json", out_json, *LAYERS)  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    timing = json.loads(out_json.read_text())["timing"]
    pruned, unpruned = timing["pruned_seconds"], timing["unpruned_seconds"]
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("time: pruned "))
    assert lines[at + 1] == (
        f"spread (min-max of the 3 timed runs): pruned {min(pruned):.3f}-{max(pruned):.3f} s, unpruned "
        f"{min(unpruned):.3f}-{max(unpruned):.3f} s"
    )


@pytest.mark.parametrize("kind", ["half", "empty"])
def test_library_loaders_refuse_cut_weights_with_a_hero_error(ckpt, kind):
    """Python callers (not only the command line, which checks the files first) get a HeroError naming the
    argument and the folder, not safetensors' own error, from load_host and HFClipTextScorer.from_pretrained."""
    from hero_adapters.evaluate import load_host
    from hero_adapters.text_scorers import HFClipTextScorer
    from hero_core import HeroError

    with pytest.raises(HeroError, match=r"^--model=.*model-" + kind):
        load_host(str(ckpt[f"model-{kind}"]))
    with pytest.raises(HeroError, match=r"^path_or_id=.*clip-" + kind):
        HFClipTextScorer.from_pretrained(ckpt[f"clip-{kind}"])
