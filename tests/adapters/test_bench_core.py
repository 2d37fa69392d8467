"""`hero bench core`'s every-preset table: one row per preset of `presets.PRESETS`, each against the same forward.

Runs in-process with a tiny CLIP tower and narrow token features (the inputs and the record are what is tested).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters.bench import core
from hero_core import EncodedTiles, presets
from hero_core.native import HeroNativePruner

from .test_bench_output import CORE, _tiny_tower


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(core, "clip_tower", _tiny_tower)
    monkeypatch.setattr(core, "D", 16)  # narrow features and CLS tokens: fast, same code path
    return tmp_path


def _record(folder: Path, *argv: str) -> dict[str, object]:
    assert core.main([*CORE, *argv, "--out", str(folder)]) is None
    record: dict[str, object] = json.loads((folder / "core.json").read_text())
    return record


def test_every_preset_has_one_row_against_the_same_forward(tiny: Path) -> None:
    record = _record(tiny / "out", "--preset-views", "2")
    table = record["presets"]
    assert isinstance(table, dict) and table["views"] == 2 and table["met"] in (True, False)
    rows = table["results"]
    assert [row["preset"] for row in rows] == list(presets.PRESETS)  # the registry, in its order
    (view_row,) = record["results"]  # type: ignore[misc]
    for row in rows:
        pruner = presets.get(row["preset"], 0.2)
        native = isinstance(pruner, HeroNativePruner)
        assert row["views"] == (1 if native else 2)
        assert row["features"] == (pruner.needs_features or native)
        assert row["plan_ms"] > 0 and row["forward_ms"] == view_row["forward_ms"]  # the V = 2 forward, reused
        assert row["ratio"] == pytest.approx(row["plan_ms"] / row["forward_ms"])
    text = (tiny / "out" / "core.md").read_text()
    assert "| V | plan (ms) | CLIP ViT-L/14-336 forward (ms) | plan / forward |" in text  # the old table, unchanged
    assert "| preset | views x tokens | features | plan (ms) | plan / forward |" in text
    assert all(f"| {name} |" in text for name in presets.PRESETS)


def test_preset_views_outside_the_view_rows_get_their_own_forward(tiny: Path) -> None:
    record = _record(tiny / "out", "--preset-views", "3")
    rows = record["presets"]["results"]  # type: ignore[index]
    assert {row["forward_ms"] for row in rows} != {record["results"][0]["forward_ms"]}  # type: ignore[index]
    assert {row["views"] for row in rows} == {1, 3}


def test_preset_inputs_give_each_planner_what_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "D", 16)
    cpu = torch.device("cpu")
    for name in presets.PRESETS:
        pruner = presets.get(name, 0.2)
        raw, relevance = core.preset_inputs(pruner, 5, cpu, torch.float32)
        tiles = EncodedTiles(**raw)  # type: ignore[arg-type]
        assert set(pruner.layers) <= set(tiles.attention_layers)
        if isinstance(pruner, HeroNativePruner):
            assert tiles.num_views == 1 and tiles.grid == (24, 24) and relevance.shape == (len(pruner.regions(tiles)),)
        else:
            assert tiles.num_views == 5 and tiles.tile_grid == (2, 2) and relevance.shape == (5,)
        features = tiles.token_features
        assert (features is not None) == (pruner.needs_features or isinstance(pruner, HeroNativePruner))
        assert features is None or features.shape[-1] == 16
        pruner.plan(tiles, relevance)


def test_tile_grid() -> None:
    assert [core.tile_grid(v) for v in (1, 2, 3, 5, 7, 13)] == [None, (1, 1), (1, 2), (2, 2), (2, 3), (3, 4)]


def test_preset_views_must_be_positive(tiny: Path) -> None:
    with pytest.raises(SystemExit) as done:
        core.main([*CORE, "--preset-views", "0"])
    assert done.value.code == 2
