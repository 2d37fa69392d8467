"""The scripts in examples/ run to the end (exit 0) in their no-download modes.

Each runs in-process as ``__main__`` (``runpy``), with its own command line. ``test_custom_allocator.py``
is not here: pytest collects it as a test module of its own (``testpaths`` includes ``examples``).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> int:
    path = EXAMPLES / script
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1 if exit_.code else 0
    return 0


@pytest.mark.parametrize("script", ["core_quickstart.py", "custom_pruner.py"])
def test_core_examples_run(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(script, monkeypatch=monkeypatch) == 0


@pytest.mark.parametrize(("script", "draws"), [("quickstart_internvl.py", True), ("quickstart_llava_next.py", False)])
def test_quickstarts_run_on_a_tiny_host(
    script: str, draws: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    report, picture = tmp_path / "report.json", tmp_path / "kept.png"
    args = ["--tiny", "--max-new-tokens", "2", "--json", str(report)] + (["--show", str(picture)] if draws else [])
    assert _run(script, *args, monkeypatch=monkeypatch) == 0
    assert report.is_file() and picture.is_file() == draws
    assert "tokens to the LLM" in capsys.readouterr().out


def test_quickstart_needs_a_model_or_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run("quickstart_internvl.py", monkeypatch=monkeypatch) == 2  # argparse: usage error


def test_check_my_adapter_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    assert _run("check_my_adapter.py", monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert "FAIL" in out.split("OneTensorAdapter")[1] and "FAIL" not in out.split("OneTensorAdapter")[0]


def test_custom_hr_lvlm_runs_and_passes_check_adapter(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("timm")
    assert _run("custom_hr_lvlm.py", monkeypatch=monkeypatch) == 0
    out = capsys.readouterr().out
    assert "image tokens to the LLM" in out
    checks = out.split("check_adapter:")[1].strip().splitlines()
    assert len(checks) == 9 and all(line.startswith("ok ") for line in checks)
