"""The embedded demo: its token counts equal the core's arithmetic for its image, and it writes its files."""

from __future__ import annotations

import json
import logging
import math

import pytest

pytest.importorskip("transformers")

from hero_adapters.demo import run_demo


def _vanilla_tokens(width: int, height: int) -> tuple[int, int]:
    """LLaVA-NeXT-7B arithmetic for a landscape image on the 2 x 2 (672 x 672) grid: (tokens, unpadded rows)."""
    side = 24 * 2  # patch rows/cols of the stitched 2 x 2 grid
    rows = int(height * (side / width))  # unpad: the grid keeps the image's aspect
    return 576 + rows * side + rows, rows


def test_demo_counts_match_the_arithmetic(tmp_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="hero_adapters"):
        results = run_demo(tmp_path, keep_ratios=(0.4, 0.2), max_new_tokens=2, repeats=1)
    # notes go to the hero_adapters.demo logger, nothing is printed (the bar is off when stderr is no terminal)
    assert capsys.readouterr() == ("", "")
    notes = [record.getMessage() for record in caplog.records if record.name == "hero_adapters.demo"]
    assert notes[0].startswith("building") and any(note.startswith("HERO 20%: ") for note in notes)
    vanilla, rows = _vanilla_tokens(960, 640)
    assert (vanilla, rows) == (2144, 32)
    by_setting = {row["setting"]: row for row in results["rows"]}
    assert by_setting["vanilla"]["image_tokens_out"] == vanilla
    for ratio, name in ((0.4, "HERO 40%"), (0.2, "HERO 20%")):
        row = by_setting[name]
        valid = 576 + 4 * 16 * 24  # thumbnail + 4 tiles of 16 unpadded patch rows
        patches = min(math.floor(round(ratio * 5 * 576, 9)), valid)
        assert row["image_tokens_in"] == vanilla
        assert row["kept_patch_tokens"] == patches
        assert row["newline_tokens"] == rows
        assert row["image_tokens_out"] == patches + rows
    for name in ("report.md", "report.json", "kept_tokens.png", "kept_tokens_40.png", "kept_tokens_20.png"):
        assert (tmp_path / name).is_file()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["plan"]["tokens_out"] == by_setting["HERO 20%"]["image_tokens_out"]
    markdown = (tmp_path / "report.md").read_text()
    assert "random" in markdown.lower() and "hero run --model" in markdown
