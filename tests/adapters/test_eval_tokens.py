"""``hero eval --tokens``: a patch-token budget per image (matched-count evaluation) on the tiny LLaVA-NeXT."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters.evaluate import TokenBudget, budget_ratio, evaluate
from hero_adapters.evaluate.metrics import Tally, summarise
from hero_adapters.rows import Row, read_rows
from hero_adapters.vlm import HeroVLM
from hero_core import HeroError
from hero_core.counts import ImageCounts, exact_total

from .conftest import HIGH, LOW
from .test_eval import files, host_of, loads, main  # noqa: F401  (module fixtures shared with test_eval)

LAYERS = {"low_layers": LOW, "high_layers": HIGH}


@pytest.mark.parametrize("views", [1, 3, 5])
@pytest.mark.parametrize("per_view", [1, 7, 100, 576, 2880])
def test_budget_ratio_keeps_exactly_the_budget(views, per_view):
    total = views * per_view
    for valid in sorted({total, max(total - per_view // 3, 0)}):
        counts = ImageCounts(views=views, tokens_per_view=per_view, valid=valid)
        for tokens in sorted({1, 29, 160, 320, 640, total - 1, total, total + 5} - {0}):
            if tokens < 1:
                continue
            ratio = budget_ratio(tokens, counts)
            assert 0 < ratio <= 1
            assert exact_total(ratio, counts) == min(tokens, valid), (tokens, counts, ratio)


FIELDS = {"hero": LAYERS, "visionzip": {"layer": 4, "contextual": 0.3}}  # layers the 6-layer tower has


@pytest.mark.parametrize("preset", ["hero", "uniform-random", "divprune", "dart", "visionzip", "cdpruner"])
def test_every_image_keeps_exactly_its_budget(tiny, batch, preset):
    """Every preset, the whole-image ones too (one budget across views; visionzip's merged tokens counted in it;
    cdpruner with the CLIP scorer's per-token relevance)."""
    from hero_adapters.testing import build_tiny_clip

    scorer = build_tiny_clip() if preset == "cdpruner" else None
    for tokens in (1, 5, 13, 10**6):
        vlm = HeroVLM(tiny.model, TokenBudget(preset, tokens, FIELDS.get(preset, {})), scorer, processor=tiny.processor)
        with torch.no_grad():
            vlm.generate(**batch["inputs"], max_new_tokens=1, query="what is in this picture")
        report = vlm.last_report
        assert report is not None and len(report.images) == 4
        for image in report.images:
            valid = int(image.encoded.valid_mask.sum())
            assert image.kept_patch_tokens == min(tokens, valid), (preset, tokens, image.index)
            assert image.tokens_out == image.kept_patch_tokens + image.newline_tokens


def test_a_preset_whose_count_is_not_exact_is_refused_for_a_token_budget(tiny, files):  # noqa: F811
    with pytest.raises(HeroError, match=r"^preset='hero-reference' is invalid: expected a preset that keeps exactly"):
        TokenBudget("hero-reference", 13, LAYERS)
    with pytest.raises(HeroError, match=r"^presets='hero-reference' is invalid"):
        evaluate(host_of(tiny), read_rows(files["data"]), presets=("hero", "hero-reference"), tokens=(6,))


def test_summary_relative_columns_are_the_raw_ones_over_the_unpruned_row():
    rows = [Row(i, None, "q", answer, i + 1) for i, answer in enumerate(["a", "b", "c", "d"])]  # type: ignore[arg-type]
    unpruned = Tally(texts=["a", "b", "c", "x"], ids=[[1], [2], [3], [4]], tokens_in=[9] * 4, tokens_out=[9] * 4,
                     prefill=[1.0])  # fmt: skip
    texts = [["a", "b", "y", "x"], ["a", "z", "y", "d"]]
    tallies = [Tally(texts=t, ids=[[1]] * 4, tokens_in=[9] * 4, tokens_out=[5] * 4, prefill=[0.5]) for t in texts]
    host: Any = type("H", (), {"source": "fake"})()
    result = summarise(host, None, rows, rows, ["hero"], [1.0], {"hero": {}}, unpruned, tallies,
                       settings={"tokens": [320, 160], "tokens_note": "newlines not counted"}, loop_seconds=1.0,
                       generate_seconds=1.0, complete=True, error=None, budgets=(320, 160))  # fmt: skip
    base = result.unpruned["accuracy"]
    assert base == 0.75
    for setting in result.results:
        assert setting.keep_ratio is None and setting.tokens in (320, 160)
        assert setting.agreement_relative == pytest.approx(setting.agreement / 1.0)
        assert setting.accuracy_relative == pytest.approx(setting.accuracy / base)
    assert [s.key for s in result.results] == ["hero@320t", "hero@160t"]
    table = result.table()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert "| tokens per image (newlines not counted) |" in lines[0] and lines[0].endswith(
        "| agreement % of unpruned | accuracy % of unpruned |"
    )
    assert lines[2].startswith("| unpruned |") and lines[2].endswith("| 100.0% | 100.0% |")
    # 320: agreement 3/4, accuracy 2/4 -> 66.7% of the unpruned 3/4; 160: agreement 1/4, accuracy 2/4
    assert lines[3].startswith("| hero | 320 | 75.0% of 4 |") and lines[3].endswith("| 75.0% | 66.7% |")
    assert lines[4].startswith("| hero | 160 | 25.0% of 4 |") and lines[4].endswith("| 25.0% | 66.7% |")
    assert "newlines not counted" in table


def test_evaluate_with_tokens_keeps_the_budget_per_row(tiny, files):  # noqa: F811
    rows = read_rows(files["data"])
    result = evaluate(host_of(tiny), rows, presets=("hero", "uniform-random"), tokens=(6, 10**6), max_new_tokens=2,
                      overrides=LAYERS)  # fmt: skip
    assert [(r.preset, r.tokens, r.keep_ratio) for r in result.results] == [
        ("hero", 6, None), ("hero", 10**6, None), ("uniform-random", 6, None), ("uniform-random", 10**6, None)
    ]  # fmt: skip
    for r in result.results:
        if r.tokens == 10**6:  # more than any image has: everything kept, the unpruned answers
            assert r.agreement == 1.0 and r.tokens_out == r.tokens_in
    assert set(result.answers[0].pruned) == {"hero@6t", "hero@1000000t", "uniform-random@6t", "uniform-random@1000000t"}
    assert result.settings["tokens"] == [6, 10**6] and result.settings["keep_ratios"] is None
    assert "newlines not counted" in result.table()


def test_evaluate_runs_the_whole_image_presets_at_a_token_budget(tiny, files):  # noqa: F811
    """cdpruner reads each row's prompt as its instruction (through the scorer), visionzip its own layer: both keep
    the budget per image, and an unreachable budget gives the unpruned answers."""
    from hero_adapters.testing import build_tiny_clip

    rows = read_rows(files["data"])
    result = evaluate(host_of(tiny), rows, presets=("cdpruner", "visionzip"), tokens=(6, 10**6), max_new_tokens=2,
                      overrides={"layer": 4}, scorer=build_tiny_clip())  # fmt: skip
    assert [(r.preset, r.tokens) for r in result.results] == [
        ("cdpruner", 6), ("cdpruner", 10**6), ("visionzip", 6), ("visionzip", 10**6)
    ]  # fmt: skip
    for r in result.results:
        if r.tokens == 10**6:
            assert r.agreement == 1.0 and r.tokens_out == r.tokens_in
        else:
            assert r.tokens_out < r.tokens_in


def test_cli_tokens_writes_the_budgets_and_the_relative_columns(files, loads, capsys, tmp_path):  # noqa: F811
    out = tmp_path / "eval.json"
    code = main("eval", "--model", files["model"], "--data", files["data"], "--presets", "hero", "uniform-random",
                "--tokens", "8", "4", "--max-new-tokens", "2", "--json", out)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = [line for line in captured.out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| preset | tokens per image (newlines not counted) |") and len(table) == 2 + 1 + 4
    assert re.search(r"^\| hero \| 8 \| ", captured.out, re.M)
    assert "newlines not counted" in captured.out
    payload = json.loads(out.read_text())
    assert [(r["preset"], r["tokens"]) for r in payload["results"]] == [
        ("hero", 8), ("hero", 4), ("uniform-random", 8), ("uniform-random", 4)
    ]  # fmt: skip
    assert all("agreement_relative" in r and "accuracy_relative" in r for r in payload["results"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tokens", "0"], "argument --tokens"),
        (["--tokens", "-3"], "argument --tokens"),
        (["--tokens", "3.5"], "argument --tokens"),
        (["--tokens", "x"], "argument --tokens"),
        (["--tokens", "320", "320"], "--tokens"),
        (["--tokens", "320", "--keep-ratios", "0.5"], "not allowed with"),
        (["--tokens", "320", "--tokens", "160"], "argument --tokens: given twice"),
        # hero-reference's floors keep a content-dependent count: refused before the model loads, not midway
        (["--tokens", "8", "--presets", "hero", "hero-reference"], "--presets='hero-reference' is invalid"),
    ],
)
def test_bad_tokens_are_one_line_exit_2_and_nothing_loaded(files, loads, capsys, args, needle):  # noqa: F811
    code = main("eval", "--model", files["model"], "--data", files["data"], *args)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hero: error:") and needle in lines[0], captured.err
    assert loads == []
