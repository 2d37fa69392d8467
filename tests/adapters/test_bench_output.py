"""Where `hero bench` writes: ./hero-bench-results (or --out), never a checkout's tracked records unless asked.

`bench core` runs in-process with a tiny CLIP tower in place of the real-size one (the path logic is what is
tested); the cwd is a fake checkout in tmp_path holding copies of the real tracked records.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters.bench import core, encode, prefill
from hero_adapters.bench._common import output_folder, readme_text
from hero_core import HeroError

REPO = Path(__file__).resolve().parents[2]
CORE = ["--device", "cpu", "--views", "2", "--repeats", "1", "--forward-repeats", "1"]


def _tiny_tower(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=336, patch_size=112
    )
    return CLIPVisionModel(config).to(device, dtype).eval()


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake checkout (pyproject.toml, benchmarks/README.md, benchmarks/results/*) as the cwd; a tiny tower."""
    root = tmp_path / "checkout"
    (root / "benchmarks").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(REPO / "benchmarks" / "README.md", root / "benchmarks" / "README.md")
    shutil.copytree(REPO / "benchmarks" / "results", root / "benchmarks" / "results")
    monkeypatch.chdir(root)
    monkeypatch.setattr(core, "clip_tower", _tiny_tower)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _hero(*argv: str) -> int:
    """The `hero` command in-process (its bench subcommand runs the same module objects this test patches)."""
    from hero_adapters.cli import main

    return main(list(argv))


def test_hero_bench_writes_to_hero_bench_results_and_leaves_tracked_files(checkout: Path) -> None:
    before = _files(checkout)
    assert _hero("bench", "core", *CORE) == 0
    after = _files(checkout)
    written = {name for name in after if name.startswith("hero-bench-results/")}
    assert written == {"hero-bench-results/core.json", "hero-bench-results/core.md"}
    assert {name: data for name, data in after.items() if name not in written} == before  # nothing else touched
    record = json.loads((checkout / "hero-bench-results" / "core.json").read_text())
    assert {"benchmark", "what", "machine", "measured_at", "results", "target", "met"} <= set(record)
    assert {"cpu", "torch", "device", "torch_threads"} <= set(record["machine"])
    (row,) = record["results"]
    assert record["benchmark"] == "bench_core" and row["views"] == 2 and row["plan_ms"] > 0 and row["forward_ms"] > 0
    assert row["ratio"] == pytest.approx(row["plan_ms"] / row["forward_ms"])
    assert "| V | plan (ms)" in (checkout / "hero-bench-results" / "core.md").read_text()


def test_out_names_the_folder(checkout: Path, tmp_path: Path) -> None:
    before = _files(checkout)
    assert _hero("bench", "core", *CORE, "--out", str(tmp_path / "mine")) == 0
    assert sorted(path.name for path in (tmp_path / "mine").iterdir()) == ["core.json", "core.md"]
    assert _files(checkout) == before


def test_write_results_updates_the_tracked_records_and_their_readme(checkout: Path) -> None:
    tracked = checkout / "benchmarks" / "results"
    old = (tracked / "core.json").read_text()
    assert core.main([*CORE, "--write-results"]) is None
    assert (tracked / "core.json").read_text() != old
    assert json.loads((tracked / "core.json").read_text())["results"][0]["views"] == 2
    assert (checkout / "benchmarks" / "README.md").read_text() == readme_text(tracked)
    assert not (checkout / "hero-bench-results").exists()


def _no_build(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the output folder must be checked before any model is built")


def test_bad_output_options_fail_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not a checkout
    monkeypatch.setattr(core, "clip_tower", _no_build)
    monkeypatch.setattr(prefill, "_token_counts", _no_build)
    monkeypatch.setattr(encode, "run_tower", _no_build)
    with pytest.raises(HeroError, match=r"^--write-results=.*checkout's root"):
        core.main([*CORE, "--write-results"])
    with pytest.raises(HeroError, match=r"^--write-results"):
        prefill.main(["--device", "cpu", "--write-results"])
    with pytest.raises(HeroError, match=r"^--write-results"):
        encode.main(["--tiny", "--device", "cpu", "--write-results"])
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(HeroError, match=r"^--out=.*a folder"):
        core.main([*CORE, "--out", "file.txt"])
    with pytest.raises(SystemExit) as done:  # argparse: the two are mutually exclusive
        core.main([*CORE, "--out", "x", "--write-results"])
    assert done.value.code == 2
    assert _hero("bench", "core", *CORE, "--write-results") == 2  # one line on stderr, no traceback
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file.txt"]


def test_output_folder_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    assert output_folder(None, False) == tmp_path / "hero-bench-results"  # even inside something like a checkout
    assert output_folder(Path("x"), False) == tmp_path / "x"
    with pytest.raises(HeroError, match="--write-results"):
        output_folder(None, True)  # benchmarks/results without pyproject.toml is not a checkout
    (tmp_path / "pyproject.toml").write_text("")
    assert output_folder(None, True) == tmp_path / "benchmarks" / "results"


def test_tracked_readme_is_generated_from_the_tracked_records() -> None:
    """benchmarks/README.md is exactly what `--write-results` would write from benchmarks/results/*.md."""
    assert (REPO / "benchmarks" / "README.md").read_text() == readme_text(REPO / "benchmarks" / "results")


@pytest.mark.parametrize("module", ["core", "encode", "prefill", "threads", "e2e"])
def test_a_bench_usage_error_is_one_line_and_exit_2(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    bench = importlib.import_module(f"hero_adapters.bench.{module}")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--bogus"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hero: error: unrecognized arguments: --bogus"), lines


def test_bench_serve_without_vllm_is_one_line_naming_where_to_run_it(
    checkout: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("vllm").origin is not None:
        pytest.skip("vLLM is installed here: tests/vllm_plugin runs bench serve")
    assert _hero("bench", "serve", "--requests", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hero bench serve" in err[0] and "make test-vllm" in err[0]
    assert not (checkout / "hero-bench-results").exists()  # nothing written


def test_bench_all_leaves_serve_out() -> None:
    from hero_adapters.bench import BENCHMARKS, SERVING_BENCHMARKS

    assert "serve" in SERVING_BENCHMARKS and "serve" not in BENCHMARKS
