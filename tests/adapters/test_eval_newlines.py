"""``hero eval --tokens T --count-newlines``: T counts every image token sent, the row newlines included.

Oracle: an image with ``n`` newlines (in the adapter's layout) and ``valid`` patch tokens keeps
``min(max(T - n, 0), valid)`` patch tokens with the flag and ``min(T, valid)`` without; its newlines are sent
either way. The tiny LLaVA-NeXT's images are non-square, so ``n`` is not a function of the tile grid alone (the
2 x 2 grid of a 60 x 90 image sends 6 newlines in the vanilla layout, 8 in the reference one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters.evaluate import TOKENS_NOTE, TOKENS_NOTE_COUNTED, TokenBudget, evaluate
from hero_adapters.rows import read_rows
from hero_adapters.vlm import HeroVLM
from hero_core import HeroError, presets

from .conftest import HIGH, LOW
from .hosts import host_row
from .test_eval import files, host_of, loads, main, write_rows  # noqa: F401  (module fixtures shared with test_eval)

LAYERS = {"low_layers": LOW, "high_layers": HIGH}
SHAPES = ((60, 90), (30, 100), (160, 70), (40, 100))  # (height, width)
#: Newlines per image of SHAPES: the host's own (vanilla) packing, and every padded row (reference).
NEWLINES = {"vanilla": [6, 2, 10, 4], "reference": [8, 4, 12, 4]}
TEXTS = [
    "USER: <image> describe the image ASSISTANT:",
    "USER: <image><image> compare two ASSISTANT:",
    "USER: what is in this <image> picture a b c ASSISTANT:",
]


def images_of(vlm: HeroVLM, inputs: dict[str, Any]) -> list[Any]:
    with torch.no_grad():
        vlm.generate(**inputs, max_new_tokens=1)
    assert vlm.last_report is not None
    return list(vlm.last_report.images)


@pytest.mark.parametrize("preset", ["hero", "divprune"])
@pytest.mark.parametrize("layout", ["vanilla", "reference"])
def test_counted_budget_keeps_t_minus_the_newlines(tiny, layout, preset):
    inputs = tiny.inputs(TEXTS, [tiny.image(*shape) for shape in SHAPES])
    options = LAYERS if preset == "hero" else {}
    over = 0
    for tokens in (1, 3, 7, 13, 30, 10**6):
        plain, counted = (
            images_of(
                HeroVLM(tiny.model, TokenBudget(preset, tokens, options, count_newlines=flag), processor=tiny.processor,
                        layout=layout),
                inputs,
            )
            for flag in (False, True)
        )  # fmt: skip
        assert [image.newline_tokens for image in counted] == NEWLINES[layout]
        assert [image.newline_tokens for image in plain] == NEWLINES[layout]  # every newline sent, whatever is kept
        for before, after in zip(plain, counted, strict=True):
            valid, n = int(after.encoded.valid_mask.sum()), after.newline_tokens
            if layout == "vanilla":  # the host's own sequence: its patches plus its newlines
                assert after.tokens_in == valid + n
            assert before.kept_patch_tokens == min(tokens, valid)
            assert after.kept_patch_tokens == min(max(tokens - n, 0), valid), (tokens, after.index)
            assert after.tokens_out == after.kept_patch_tokens + n
            assert int(after.plan.keep.sum()) == after.kept_patch_tokens
            if n <= tokens:  # T counts everything sent
                assert after.tokens_out == min(tokens, valid + n)
            else:  # the newlines alone exceed T: no patch token, the newlines sent, more than T
                over += 1
                assert after.kept_patch_tokens == 0 and after.tokens_out == n > tokens
            if n <= tokens <= valid:
                assert before.kept_patch_tokens - after.kept_patch_tokens == n
    # images with more newlines than T: T = 1: all 4; T = 3: 3 (vanilla) or 4; T = 7: 1 or 2; T >= 13: none
    assert over == {"vanilla": 4 + 3 + 1, "reference": 4 + 4 + 2}[layout]


def test_a_host_without_newlines_keeps_the_same_tokens_with_the_flag():
    row = host_row("internvl")
    batch = row.batch()
    for tokens in (1, 5, 17, 10**6):
        plain, counted = (
            images_of(
                HeroVLM(row.model, TokenBudget("hero", tokens, LAYERS, count_newlines=flag), processor=row.processor),
                batch,
            )
            for flag in (False, True)
        )
        assert len(plain) == 3
        for before, after in zip(plain, counted, strict=True):
            valid = int(after.encoded.valid_mask.sum())
            assert before.newline_tokens == after.newline_tokens == 0
            assert before.kept_patch_tokens == after.kept_patch_tokens == min(tokens, valid)
            assert torch.equal(before.plan.keep, after.plan.keep)


def test_llava_onevision_counts_its_newlines_too():
    row = host_row("llava_onevision")
    batch = row.batch()
    everything = images_of(HeroVLM(row.model, presets.get("uniform-random", 1.0), processor=row.processor), batch)
    newlines = [image.newline_tokens for image in everything]
    assert all(n > 0 for n in newlines)
    for tokens in (1, min(newlines) + 3, 10**6):
        got = images_of(
            HeroVLM(row.model, TokenBudget("uniform-random", tokens, count_newlines=True), processor=row.processor),
            batch,
        )
        for image, n, full in zip(got, newlines, everything, strict=True):
            assert image.newline_tokens == n
            assert image.kept_patch_tokens == min(max(tokens - n, 0), full.kept_patch_tokens)


def test_plan_alone_cannot_count_newlines_and_bad_flags_are_refused(tiny, files):  # noqa: F811
    budget = TokenBudget("hero", 8, LAYERS, count_newlines=True)
    with pytest.raises(HeroError, match="plan_encoded"):
        budget.plan(object())
    assert "count_newlines=True" in repr(budget) and "count_newlines" not in repr(TokenBudget("hero", 8, LAYERS))
    with pytest.raises(HeroError, match="count_newlines"):
        TokenBudget("hero", 8, LAYERS, count_newlines=1)  # type: ignore[arg-type]
    rows = read_rows(files["data"])
    with pytest.raises(HeroError, match=r"count_newlines=True needs tokens"):
        evaluate(host_of(tiny), rows, keep_ratios=(0.5,), count_newlines=True)
    with pytest.raises(HeroError, match=r"count_newlines=True needs tokens"):
        evaluate(host_of(tiny), rows, count_newlines=True)
    with pytest.raises(HeroError, match="count_newlines='yes' is invalid"):
        evaluate(host_of(tiny), rows, tokens=(8,), count_newlines="yes")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def shaped(tiny: Any, files: dict[str, Path]) -> Path:  # noqa: F811
    """A data file with one image of each of SHAPES per row."""
    folder = files["dir"] / "shaped"
    folder.mkdir()
    for i, shape in enumerate(SHAPES):
        tiny.image(*shape).save(folder / f"{i}.png")
    rows: list[dict[str, Any] | str] = [
        {"id": i, "image": f"{i}.png", "prompt": "describe the image"} for i in range(len(SHAPES))
    ]
    return write_rows(folder / "rows.jsonl", rows)


def expected_mean_out(tokens: int, counted: bool) -> float:
    """Mean image tokens sent per row (one image per row), from the oracle; valid tokens of SHAPES: 64 32 56 48."""
    sent = []
    for n, valid in zip(NEWLINES["vanilla"], (64, 32, 56, 48), strict=True):
        patches = min(max(tokens - n, 0), valid) if counted else min(tokens, valid)
        sent.append(patches + n)
    return sum(sent) / len(sent)


def test_evaluate_reports_the_convention_and_the_images_over_budget(tiny, shaped):
    rows = read_rows(shaped)
    results = {
        flag: evaluate(host_of(tiny), rows, presets=("hero", "uniform-random"), tokens=(4, 8, 10**6),
                       count_newlines=flag, max_new_tokens=2, overrides=LAYERS, warmup=False)
        for flag in (False, True)
    }  # fmt: skip
    plain, counted = results[False], results[True]
    assert [r.key for r in counted.results] == [
        "hero@4t+nl", "hero@8t+nl", "hero@1000000t+nl",
        "uniform-random@4t+nl", "uniform-random@8t+nl", "uniform-random@1000000t+nl",
    ]  # fmt: skip
    assert [r.key for r in plain.results][:3] == ["hero@4t", "hero@8t", "hero@1000000t"]
    assert set(counted.answers[0].pruned) == {r.key for r in counted.results}
    # newlines 6 2 10 4: at T = 4 two images exceed it (the 4-newline one fills it exactly: 0 patch tokens, 4
    # sent, not over), at T = 8 one (10 newlines), at 10**6 none
    assert [r.images_over_budget for r in counted.results] == [2, 1, 0, 2, 1, 0]
    assert [r.images_over_budget for r in plain.results] == [None] * 6
    for result in (plain, counted):
        flag = result is counted
        for r in result.results:
            assert r.count_newlines is flag and r.tokens is not None
            assert r.tokens_out == pytest.approx(expected_mean_out(r.tokens, flag)), (flag, r.key)
            assert r.tokens_in == pytest.approx(sum(n + v for n, v in zip(NEWLINES["vanilla"], (64, 32, 56, 48))) / 4)
    # T = 8, no image over budget but the 10-newline one: counted sends fewer tokens than uncounted
    assert plain.results[1].tokens_out - counted.results[1].tokens_out == pytest.approx((6 + 2 + 8 + 4) / 4)
    settings = counted.to_dict()["settings"]
    assert settings["count_newlines"] is True and settings["tokens_convention"] == "newlines counted in T"
    assert settings["tokens_note"] == TOKENS_NOTE_COUNTED
    assert plain.to_dict()["settings"]["count_newlines"] is False
    assert plain.to_dict()["settings"]["tokens_convention"] == "newlines not counted in T"
    assert plain.to_dict()["settings"]["tokens_note"] == TOKENS_NOTE
    entry = counted.to_dict()["results"][0]
    assert (entry["count_newlines"], entry["images_over_budget"]) == (True, 2)
    table = counted.table().splitlines()
    assert table[0].startswith("| preset | tokens per image (newlines counted) |")
    assert plain.table().splitlines()[0].startswith("| preset | tokens per image (newlines not counted) |")
    notes = table[table.index("") + 1 :]
    assert notes == [
        TOKENS_NOTE_COUNTED,
        "hero@4t+nl: 2 image(s) have more newlines than 4: they kept 0 patch tokens and sent their newlines, more "
        "than 4",
        "hero@8t+nl: 1 image(s) have more newlines than 8: they kept 0 patch tokens and sent their newlines, more "
        "than 8",
        "uniform-random@4t+nl: 2 image(s) have more newlines than 4: they kept 0 patch tokens and sent their "
        "newlines, more than 4",
        "uniform-random@8t+nl: 1 image(s) have more newlines than 8: they kept 0 patch tokens and sent their "
        "newlines, more than 8",
    ]
    assert plain.table().splitlines()[-1] == TOKENS_NOTE


def test_cli_count_newlines_writes_the_convention(files, shaped, loads, capsys, tmp_path):  # noqa: F811
    out = tmp_path / "eval.json"
    code = main("eval", "--model", files["model"], "--data", shaped, "--presets", "hero", "--tokens", "30",
                "--count-newlines", "--max-new-tokens", "2", "--json", out)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert lines[0].startswith("| preset | tokens per image (newlines counted) |")
    assert lines[3].startswith("| hero | 30 | ")
    assert f"-> {expected_mean_out(30, True):.1f} |" in lines[3]  # 30 sent per image: newlines counted
    assert TOKENS_NOTE_COUNTED in lines
    assert "no image has more newlines than its budget T: every image sent at most T image tokens" in lines
    payload = json.loads(out.read_text())
    assert payload["settings"]["count_newlines"] is True
    assert payload["settings"]["tokens_convention"] == "newlines counted in T"
    assert [(r["preset"], r["tokens"], r["count_newlines"], r["images_over_budget"]) for r in payload["results"]] == [
        ("hero", 30, True, 0)
    ]
    assert list(payload["answers"][0]["pruned"]) == ["hero@30t+nl"]


@pytest.mark.parametrize(
    "args",
    [["--count-newlines"], ["--keep-ratios", "0.5", "--count-newlines"], ["--count-newlines", "--preset", "hero"]],
)
def test_count_newlines_without_tokens_is_one_line_exit_2_and_nothing_loaded(files, loads, capsys, args):  # noqa: F811
    code = main("eval", "--model", files["model"], "--data", files["data"], *args)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("hero: error: --count-newlines needs --tokens:")
    assert "--tokens 640 320 160" in lines[0] and "drop --count-newlines" in lines[0]
    assert loads == [] and captured.out == ""
