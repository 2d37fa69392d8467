"""``hero eval`` and ``hero_adapters.evaluate`` on the tiny LLaVA-NeXT, with data files and images the tests write.

Most tests call ``evaluate`` or ``cli.main`` in-process (fast, and generate / load calls can be counted); one
runs the installed command in a subprocess, end to end.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters import cli
from hero_adapters.demo import draw_test_card
from hero_adapters.evaluate import Evaluation, EvaluationError, Host, evaluate, normalize_answer
from hero_adapters.rows import Row, read_rows
from hero_core import HeroError

from .notes import others
from .test_cli import hero

RATIOS = (1.0, 0.5)
PRESETS = ("hero", "uniform-random")


# ------------------------------------------------------------------------------------------------ files
def write_rows(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    """A saved checkpoint, images of four shapes, a good data file and one whose third image does not decode."""
    folder = tmp_path_factory.mktemp("eval")
    tiny.model.save_pretrained(folder / "model")
    tiny.processor.save_pretrained(folder / "model")
    images = folder / "images"
    images.mkdir()
    draw_test_card(120, 80).save(images / "card.png")
    tiny.image(40, 100).save(images / "wide.png")
    tiny.image(90, 60).save(images / "tall.png")
    tiny.image(50, 50).save(images / "square.png")
    (images / "broken.png").write_bytes(b"not an image")
    # A download cut short: its header reads (so the up-front checks pass) and decoding it fails mid-run.
    truncated = io.BytesIO()
    tiny.image(64, 80).save(truncated, "JPEG")
    (images / "truncated.jpg").write_bytes(truncated.getvalue()[: len(truncated.getvalue()) // 2])
    rows = [
        {"id": "card", "image": "images/card.png", "prompt": "what is in this picture", "answer": "The stop sign."},
        "",
        {"id": 2, "image": "images/wide.png", "prompt": "describe the image"},
        {"id": "tall", "image": str(images / "tall.png"), "prompt": "compare two", "answer": None},
        {"id": "sq", "image": "images/square.png", "prompt": "what is this", "answer": "a"},
    ]
    broken = [rows[0], rows[2], {"id": "bad", "image": "images/truncated.jpg", "prompt": "describe"}, rows[4]]
    return {
        "dir": folder,
        "model": folder / "model",
        "data": write_rows(folder / "rows.jsonl", rows),
        "broken": write_rows(folder / "broken.jsonl", broken),
    }


def host_of(tiny: Any) -> Host:
    return Host("tiny", tiny.model, tiny.processor, torch.device("cpu"), torch.float32)


class Counting:
    """Wraps ``model.generate`` (an instance attribute, so HeroVLM's host calls pass through it too)."""

    def __init__(self, model: Any) -> None:
        self.model, self.original, self.calls = model, model.generate, []

    def __enter__(self) -> Counting:
        def generate(*args: Any, **kwargs: Any) -> Any:
            # The unpruned call gets pixel_values; HeroVLM's host call gets the kept features instead.
            self.calls.append(("unpruned" if "pixel_values" in kwargs else "pruned", kwargs.get("max_new_tokens")))
            return self.original(*args, **kwargs)

        self.model.generate = generate
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.generate


@pytest.fixture(scope="module")
def single(tiny: Any, files: dict[str, Path]) -> tuple[Evaluation, list[tuple[str, Any]]]:
    """Batch size 1, two presets at keep ratios 1 and 0.5, with every generate call counted."""
    rows = read_rows(files["data"])
    with Counting(tiny.model) as counting:
        result = evaluate(
            host_of(tiny), rows, presets=PRESETS, keep_ratios=RATIOS, max_new_tokens=4, data=files["data"]
        )
    return result, counting.calls


# ------------------------------------------------------------------------------------------------- rows
def test_read_rows_resolves_images_skips_blank_lines_and_keeps_order(files):
    rows = read_rows(files["data"])
    assert [row.id for row in rows] == ["card", 2, "tall", "sq"]
    assert [row.line for row in rows] == [1, 3, 4, 5]  # line 2 is blank
    assert rows[0] == Row("card", files["dir"] / "images" / "card.png", "what is in this picture", "The stop sign.", 1)
    assert rows[1].answer is None and rows[2].answer is None  # absent, null
    assert all(row.image.is_file() for row in rows)


GOOD = {"id": 1, "image": "card.png", "prompt": "what is it"}


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (['{"id": 1, "image": "card.png",'], "line 1: JSON="),
        ([GOOD, "[1, 2]"], "line 2: JSON="),
        ([{"image": "card.png", "prompt": "x"}], "line 1: id=None"),
        ([{"id": 1, "prompt": "x"}], "line 1: image=None"),
        ([{**GOOD, "prompt": "  "}], "line 1: prompt="),
        ([{**GOOD, "prompt": 3}], "line 1: prompt=3"),
        ([{**GOOD, "id": True}], "line 1: id=True"),
        ([{**GOOD, "id": ""}], "line 1: id=''"),
        ([{**GOOD, "answer": 7}], "line 1: answer=7"),
        ([{**GOOD, "question": "x"}], "line 1: key='question'"),
        ([GOOD, "", {**GOOD, "id": "1"}], "line 3: id='1' is invalid: expected an id no other row has (line 1"),
        ([{**GOOD, "image": "missing.png"}], "line 1: image='missing.png'"),
        (["", "   "], "at least one row"),
    ],
)
def test_read_rows_names_the_file_line_and_field(tmp_path, lines, needle):
    draw_test_card(40, 40).save(tmp_path / "card.png")
    path = write_rows(tmp_path / "rows.jsonl", lines)
    with pytest.raises(HeroError) as info:
        read_rows(path)
    message = str(info.value)
    assert message.startswith("--data") and str(path) in message and needle in message, message


def test_read_rows_missing_file(tmp_path):
    with pytest.raises(HeroError, match=r"--data=.*a JSON Lines file that exists"):
        read_rows(tmp_path / "nothing.jsonl")


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("The Stop-sign.", "stopsign"),
        ("  a  red\tcar ", "red car"),
        ("An apple, the end!", "apple end"),
        ("theatre", "theatre"),  # only whole words are articles
        ("«Yes»", "yes"),
        ("", ""),
    ],
)
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


# --------------------------------------------------------------------------------------------- evaluate
def test_agreement_is_measured_and_one_at_keep_ratio_1(single):
    result, _ = single
    assert result.complete and result.rows == 4 and result.error is None
    assert [(r.preset, r.keep_ratio) for r in result.results] == [(p, k) for p in PRESETS for k in RATIOS]
    for r in result.results:
        if r.keep_ratio == 1.0:
            assert r.agreement == 1.0 and r.first_divergence == (None,) * 4
            assert r.tokens_out == r.tokens_in
        else:
            assert r.tokens_out is not None and r.tokens_in is not None and r.tokens_out < r.tokens_in
        assert len(r.first_divergence) == 4
        diverged = [d for d in r.first_divergence if d is not None]
        assert r.agreement == pytest.approx(1 - len(diverged) / 4)
        assert r.prefill_seconds is not None and r.prefill_seconds > 0 and r.speedup is not None
    assert result.overhead is not None and 0 <= result.overhead < 1


def test_presets_keep_equal_counts_at_equal_ratios(single):
    result, _ = single
    by_key = {(r.preset, r.keep_ratio): r for r in result.results}
    for ratio in RATIOS:
        assert by_key["hero", ratio].tokens_out == by_key["uniform-random", ratio].tokens_out
        assert by_key["hero", ratio].tokens_in == by_key["uniform-random", ratio].tokens_in


def test_unpruned_runs_once_per_row(single):
    _, calls = single
    # One warm-up pair (1 new token) on the first batch, then per row: 1 unpruned + 4 pruned calls.
    assert calls.count(("unpruned", 1)) == 1 and calls.count(("pruned", 1)) == 1
    assert calls.count(("unpruned", 4)) == 4
    assert calls.count(("pruned", 4)) == 4 * len(PRESETS) * len(RATIOS)
    assert len(calls) == 2 + 4 * (1 + len(PRESETS) * len(RATIOS))


def test_accuracy_normalised_against_the_answer(tiny, files, single):
    result, _ = single
    answered = [a for a in result.answers if a.reference is not None]
    assert [a.id for a in answered] == ["card", "sq"]
    expected = sum(normalize_answer(a.unpruned) == normalize_answer(a.reference or "") for a in answered) / 2
    assert result.unpruned["accuracy"] == expected
    # Rows whose answers are the unpruned answers in other case, with an article and punctuation: accuracy 1.
    rows = read_rows(files["data"])[:2]
    rows = [Row(r.id, r.image, r.prompt, f"The {a.unpruned.upper()}!", r.line) for r, a in zip(rows, result.answers)]
    again = evaluate(host_of(tiny), rows, presets=("hero",), keep_ratios=(1.0,), max_new_tokens=4, warmup=False)
    assert again.unpruned["accuracy"] == 1.0 and again.results[0].accuracy == 1.0


def test_flips_count_right_to_wrong_and_wrong_to_right(tiny, files, single):
    """With the unpruned answers as references, every disagreement is a right -> wrong flip; with a pruned
    setting's answers as references, every disagreement is a wrong -> right one."""
    result, _ = single
    rows = read_rows(files["data"])
    changed = next(r for r in result.results if r.agreement is not None and r.agreement < 1)
    for reference, direction in (("unpruned", "right_to_wrong"), (changed.key, "wrong_to_right")):
        graded = [
            Row(r.id, r.image, r.prompt, a.unpruned if reference == "unpruned" else a.pruned[reference], r.line)
            for r, a in zip(rows, result.answers)
        ]
        again = evaluate(
            host_of(tiny), graded, presets=(changed.preset,), keep_ratios=(changed.keep_ratio,), max_new_tokens=4,
            warmup=False,
        )  # fmt: skip
        disagreeing = sum(a.unpruned != a.pruned[changed.key] for a in again.answers)
        assert disagreeing > 0
        assert again.results[0].flips == {
            "right_to_wrong": disagreeing if direction == "right_to_wrong" else 0,
            "wrong_to_right": disagreeing if direction == "wrong_to_right" else 0,
        }
    assert again.to_dict()["results"][0]["flips"]["wrong_to_right"] == disagreeing


def test_batch_size_2_equals_batch_size_1(tiny, files, single):
    result, _ = single
    rows = read_rows(files["data"])
    batched = evaluate(
        host_of(tiny), rows, presets=PRESETS, keep_ratios=RATIOS, max_new_tokens=4, batch_size=2, warmup=False
    )
    assert [a.to_dict() for a in batched.answers] == [a.to_dict() for a in result.answers]
    for one, two in zip(result.results, batched.results, strict=True):
        assert (one.agreement, one.first_divergence, one.accuracy) == (
            two.agreement,
            two.first_divergence,
            two.accuracy,
        )
        assert (one.tokens_in, one.tokens_out) == (two.tokens_in, two.tokens_out)
    assert len(batched.unpruned) and batched.settings["batch_size"] == 2


def test_failing_row_raises_with_the_rows_done(tiny, files):
    rows = read_rows(files["broken"])
    seen: list[Evaluation] = []
    with pytest.raises(EvaluationError, match=r"line 3: image=.*a readable image") as info:
        evaluate(host_of(tiny), rows, presets=("uniform-random",), keep_ratios=(0.5,), max_new_tokens=2,
                 data=files["broken"], on_failure=seen.append)  # fmt: skip
    partial = info.value.partial
    assert seen == [partial] and not partial.complete and partial.rows == 2 and partial.rows_in_data == 4
    assert [a.id for a in partial.answers] == ["card", 2] and partial.error is not None


def test_bad_options_raise_before_any_row(tiny):
    for options, needle in [
        ({"batch_size": 0}, "batch_size=0"),
        ({"keep_ratios": (0.5, 0.5)}, "given twice"),
        ({"keep_ratios": (0.0,)}, "keep_ratios=0.0"),
        ({"presets": ("fastv",)}, "presets='fastv'"),
        ({"overrides": {"alpha": 2.0}}, "alpha"),
    ]:
        with pytest.raises(HeroError, match=needle):
            evaluate(host_of(tiny), [], **options)


# ----------------------------------------------------------------------------------------- command line
@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Counts model loads in this process (with transformers' own loading bar off, as TQDM_DISABLE does in a
    subprocess, so that stderr holds only what ``hero`` prints)."""
    import transformers

    calls: list[str] = []
    original = transformers.AutoModelForImageTextToText.from_pretrained

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", counted)
    enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield calls
    finally:
        if enabled:
            transformers.utils.logging.enable_progress_bar()


def main(*args: Any) -> int:
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exit:  # argparse's errors
        return int(exit.code or 0)


def test_cli_in_process_loads_the_model_once(files, loads, capsys, tmp_path):
    out = tmp_path / "eval.json"
    code = main("eval", "--model", files["model"], "--data", files["data"], "--presets", *PRESETS,
                "--keep-ratios", "1", "0.5", "--max-new-tokens", "3", "--json", out)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert loads == [str(files["model"])]
    assert others(captured.err) == "hero: note: no --clip given: tile budgets come from visual saliency alone"
    table = [line for line in captured.out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| preset | keep ratio | agreement | first divergence | accuracy | right -> wrong /")
    assert len(table) == 2 + 1 + 4 and table[2].startswith("| unpruned |")
    assert "| hero | 1 | 100.0% of 4 | - |" in captured.out
    assert "overhead beyond generate: " in captured.out and f"wrote {out}" in captured.out
    payload = json.loads(out.read_text())
    assert payload["complete"] is True and payload["rows"] == 4
    assert payload["settings"]["clip"] is None and payload["settings"]["batch_size"] == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--keep-ratios", "0"], "(0, 1]"),
        (["--keep-ratios", "1.5"], "(0, 1]"),
        (["--keep-ratios", "0.5", "0.5"], "given twice"),
        (["--keep-ratios", "0.2", "0.2000001"], "given twice"),  # one answer key, hero@0.2
        (["--keep-ratios", "nan"], "argument --keep-ratios"),
        (["--batch-size", "0"], "--batch-size=0"),
        (["--max-new-tokens", "0"], "--max-new-tokens=0"),
        (["--preset", "hero", "--presets", "hero"], "not allowed with"),
        (["--data", "BAD"], "line 2: JSON="),
        (["--data", "EMPTY"], "at least one row"),
        (["--json", "NODIR"], "--json="),
        (["--json", "DATA"], "a file other than --data"),
        (["--json", "TMPDIR"], "not a directory"),
        (["--data", "DATA", "--data", "BAD"], "argument --data: given twice"),
        (["--data", "NOTIMAGE"], "line 2: image="),  # not an image: refused before the model loads
        (["--model", "UNSUPPORTED"], "clip_vision_model"),
        (["--presets", "hero", "cdpruner"], "--clip=None is invalid: expected a CLIP checkpoint: preset 'cdpruner'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_loaded_or_written(files, loads, capsys, tmp_path, args, needle):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    bad = write_rows(tmp_path / "bad.jsonl", [{"id": 1, "image": str(files["dir"] / "images" / "card.png"),
                                              "prompt": "x"}, "{oops"])  # fmt: skip
    folder = files["dir"] / "images"
    pictures = [{"id": 1, "image": str(folder / "card.png"), "prompt": "x"},
                {"id": 2, "image": str(folder / "broken.png"), "prompt": "x"}]  # fmt: skip
    not_image = write_rows(tmp_path / "notimage.jsonl", pictures)
    names = {"NOTIMAGE": not_image, "BAD": bad, "EMPTY": write_rows(tmp_path / "empty.jsonl", [""]),
             "DATA": files["data"], "NODIR": tmp_path / "no" / "such" / "x.json", "UNSUPPORTED": tmp_path / "clip",
             "TMPDIR": tmp_path}  # fmt: skip
    if "UNSUPPORTED" in args:
        CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=28, patch_size=14)).save_pretrained(
            names["UNSUPPORTED"])  # fmt: skip
    before = sorted(p.name for p in tmp_path.iterdir())
    given = [names.get(a, a) for a in args]
    base: list[Any] = []
    for flag, value in (("--model", files["model"]), ("--data", files["data"])):
        if flag not in given:  # each flag once: a repeat is refused
            base += [flag, value]
    code = main("eval", *base, *given)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hero: error:") and needle in lines[0], captured.err
    assert loads == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert files["data"].read_text().startswith('{"id": "card"')


def test_failing_row_writes_the_rows_done_and_exits_2(files, loads, capsys, tmp_path):
    out = tmp_path / "partial.json"
    code = main("eval", "--model", files["model"], "--data", files["broken"], "--preset", "uniform-random",
                "--keep-ratios", "0.5", "--max-new-tokens", "2", "--json", out)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2
    (line,) = others(captured.err).splitlines()
    assert line.startswith(f"hero: error: --data {files['broken']}, line 3: image=") and "complete: false" in line
    assert loads == [str(files["model"])]
    payload = json.loads(out.read_text())
    assert payload["complete"] is False and "line 3" in payload["error"]
    assert payload["rows"] == 2 and payload["rows_in_data"] == 4
    assert [a["id"] for a in payload["answers"]] == ["card", 2]
    assert len(payload["results"][0]["first_divergence"]) == 2


def test_eval_subprocess_writes_the_json_schema(files, tmp_path):
    out = tmp_path / "eval.json"
    result = hero("eval", "--model", str(files["model"]), "--data", str(files["data"]), "--presets", *PRESETS,
                  "--keep-ratios", "1", "0.5", "--batch-size", "2", "--max-new-tokens", "3",
                  "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "| preset | keep ratio |" in result.stdout and "overhead beyond generate:" in result.stdout
    payload = json.loads(out.read_text())
    assert set(payload) == {"model", "data", "rows", "rows_in_data", "complete", "error", "settings", "overhead",
                            "timing", "unpruned", "results", "answers"}  # fmt: skip
    assert payload["model"] == str(files["model"]) and payload["data"] == str(files["data"]) and payload["rows"] == 4
    assert set(payload["unpruned"]) == {"accuracy", "tokens_in", "prefill_seconds", "generate_seconds"}
    assert [(r["preset"], r["keep_ratio"]) for r in payload["results"]] == [(p, k) for p in PRESETS for k in RATIOS]
    for r in payload["results"]:
        assert {"preset", "keep_ratio", "agreement", "accuracy", "flips", "tokens_in", "tokens_out", "prefill_seconds",
                "speedup", "first_divergence"} <= set(r)  # fmt: skip
        assert len(r["first_divergence"]) == 4
        if r["keep_ratio"] == 1:
            assert r["agreement"] == 1.0
    assert [a["id"] for a in payload["answers"]] == ["card", 2, "tall", "sq"]
    assert set(payload["answers"][0]["pruned"]) == {"hero@1", "hero@0.5", "uniform-random@1", "uniform-random@0.5"}
    assert 0 <= payload["overhead"] < 1
