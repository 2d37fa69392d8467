"""``hero run --data`` (the model loaded once, one result per row in input order, the rows before a failing row
kept) and ``hero run --compare`` (both paths warmed up, then alternated), in-process on a saved tiny checkpoint."""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from .notes import others
from .test_cli import LAYERS, counting_loads, main, save_checkpoint, snapshot

RESULT_KEYS = {"id", "line", "image", "prompt", "reference", "answer", "preset", "keep_ratio", "tokens_in",
               "tokens_out", "effective_ratio", "kept_patch_tokens", "newline_tokens", "budgets", "valid_tokens",
               "tile_grid", "batch_seconds"}  # fmt: skip


def write_rows(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    """A saved checkpoint, images of three shapes, a data file (with a blank line) and one broken in the middle."""
    folder = tmp_path_factory.mktemp("cli-batch")
    found = save_checkpoint(folder, tiny)
    tiny.image(40, 100).save(folder / "wide.png")
    tiny.image(90, 60).save(folder / "tall.png")
    # A download cut short: its header reads (so the up-front checks pass) and decoding it fails mid-run.
    truncated = io.BytesIO()
    tiny.image(64, 80).save(truncated, "JPEG")
    (folder / "truncated.jpg").write_bytes(truncated.getvalue()[: len(truncated.getvalue()) // 2])
    rows = [
        {"id": "card", "image": "card.png", "prompt": "what is in this picture", "answer": "a card"},
        "",
        {"id": 2, "image": "wide.png", "prompt": "describe the image"},
        {"id": "tall", "image": "tall.png", "prompt": "compare two"},
    ]
    broken = [rows[0], rows[2], {"id": "bad", "image": "truncated.jpg", "prompt": "describe"}, rows[3]]
    return {
        **found,
        "data": write_rows(folder / "rows.jsonl", rows),
        "broken-data": write_rows(folder / "broken.jsonl", broken),
    }


def test_run_data_loads_once_and_answers_every_row_in_order(files, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    with counting_loads() as loads:
        code = main("run", "--model", files["model"], "--data", files["data"], "--batch-size", "2", "--keep-ratio",
                    "0.5", "--max-new-tokens", "3", "--json", out, *LAYERS)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert loads == [str(files["model"])]
    assert others(captured.err) == "hero: note: no --clip given: tile budgets come from visual saliency alone"
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in results] == ["card", 2, "tall"]
    assert [r["line"] for r in results] == [1, 3, 4]
    assert [r["reference"] for r in results] == ["a card", None, None]
    for result in results:
        assert set(result) == RESULT_KEYS
        assert result["preset"] == "hero" and result["keep_ratio"] == 0.5
        assert result["tokens_out"] == result["kept_patch_tokens"] + result["newline_tokens"] < result["tokens_in"]
        assert sum(map(sum, result["budgets"])) == result["kept_patch_tokens"]
        assert result["effective_ratio"] == pytest.approx(result["tokens_out"] / result["tokens_in"])
    shown = [line for line in captured.out.splitlines() if "image tokens]" in line]
    assert [line.split(":")[0] for line in shown] == ["card", "2", "tall"]
    assert (
        shown[0]
        == f"card: {results[0]['answer']}  [{results[0]['tokens_in']} -> {results[0]['tokens_out']} image tokens]"
    )
    assert f"3 rows (hero, keep ratio 0.5): image tokens {sum(r['tokens_in'] for r in results)} -> " in captured.out
    # Batch size 1 (the default) gives the same answers and plans (float32, left padding).
    single = tmp_path / "single.jsonl"
    assert main("run", "--model", files["model"], "--data", files["data"], "--keep-ratio", "0.5",
                "--max-new-tokens", "3", "--json", single, "-q", *LAYERS) == 0  # fmt: skip
    ones = [json.loads(line) for line in single.read_text().splitlines()]
    drop = ("batch_seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in ones] == [
        {k: v for k, v in r.items() if k not in drop} for r in results
    ]


def test_run_data_failing_row_keeps_the_rows_before_it(files, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    with counting_loads() as loads:
        code = main("run", "--model", files["model"], "--data", files["broken-data"], "--max-new-tokens", "2",
                    "--json", out, *LAYERS)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    (line,) = [line for line in captured.err.strip().splitlines() if line.startswith("hero: error:")]
    assert line.startswith(f"hero: error: --data {files['broken-data']}, line 3: image=")
    assert line.endswith(f"The 2 row(s) before it are in {out}.")
    assert loads == [str(files["model"])]
    assert [json.loads(row)["id"] for row in out.read_text().splitlines()] == ["card", 2]
    assert [row.split(":")[0] for row in captured.out.splitlines()] == ["card", "2"]


@pytest.mark.parametrize("command", ["run", "eval"])
def test_data_prompt_with_a_placeholder_is_refused_before_loading(files, tmp_path, capsys, command):
    image = str(files["image"])
    rows = [{"id": 1, "image": image, "prompt": "x"}, {"id": 2, "image": image, "prompt": "<image> x"}]
    data = write_rows(tmp_path / "rows.jsonl", rows)
    before = snapshot(tmp_path)
    with counting_loads() as loads:
        code = main(command, "--model", files["model"], "--data", data, "--json", tmp_path / "out.json")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and loads == [] and snapshot(tmp_path) == before
    assert line.startswith(f"hero: error: --data {data}, line 2: prompt='<image> x' is invalid: expected a prompt")


def test_compare_warms_up_both_paths_then_alternates(files, tmp_path, capsys, monkeypatch, tiny):
    """The defect: the pruned pass ran cold and the unpruned one warm, once each. Now: one warm-up call of each,
    then --repeats rounds in alternating order, and the medians reported."""
    model_class = type(tiny.model)
    original = model_class.generate
    calls: list[str] = []

    def generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("unpruned" if "pixel_values" in kwargs else "pruned")  # HeroVLM passes the kept features
        return original(self, *args, **kwargs)

    monkeypatch.setattr(model_class, "generate", generate)
    out = tmp_path / "compare.json"
    code = main("run", "--model", files["model"], "--image", files["image"], "--prompt", "what is it",
                "--max-new-tokens", "2", "--compare", "--repeats", "3", "--json", out, "-v", *LAYERS)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warm, timed = calls[:2], calls[2:]
    assert warm == ["pruned", "unpruned"]
    assert timed == ["pruned", "unpruned", "unpruned", "pruned", "pruned", "unpruned"]
    timing = json.loads(out.read_text())["timing"]
    assert len(timing["pruned_seconds"]) == len(timing["unpruned_seconds"]) == 3
    assert timing["pruned_median"] == statistics.median(timing["pruned_seconds"])
    assert timing["unpruned_median"] == statistics.median(timing["unpruned_seconds"])
    assert f"time: pruned {timing['pruned_median']:.3f} s, unpruned {timing['unpruned_median']:.3f} s" in captured.out
    assert 1 <= timing["pruned_new_tokens"] <= 2 and 1 <= timing["unpruned_new_tokens"] <= 2  # the lengths timed
    assert f"{timing['pruned_new_tokens']} and {timing['unpruned_new_tokens']} new tokens" in captured.out
    debug = [line for line in captured.err.splitlines() if line.startswith("hero: debug: round")]
    assert len(debug) == 6
