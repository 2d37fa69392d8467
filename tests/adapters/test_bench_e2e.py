"""`hero bench e2e` on the test-size model: the rows and columns of its table, its identity check at keep ratio 1
(which must fail when HeroVLM changes the host's output), and where it writes.

The real run (`hero bench e2e`: minutes on CPU, the 7B shape on CUDA) runs the same code with ``--size tiny``
here, in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from hero_adapters.bench import BENCHMARKS, e2e
from hero_adapters.bench._common import readme_text
from hero_core import HeroError, presets

REPO = Path(__file__).resolve().parents[2]
TINY = ["--size", "tiny", "--device", "cpu", "--repeats", "1"]
#: The smallest run with an identity check: batch 1, HERO at keep ratio 1 only, no baselines, no threads.
IDENTITY_ONLY = [
    *TINY,
    "--batches",
    "1",
    "--keep-ratios",
    "1",
    "--baselines",
    "--threads",
    "0",
    "--hosts",
    "llava-next",
]
COLUMNS = [
    "setting",
    "image tokens",
    "TTFT ms",
    "speed-up",
    "16 new tokens, s",
    "tokens/s",
    "peak GiB",
    "encode ms",
    "score ms",
    "plan ms",
    "assemble ms",
    "HERO % of TTFT",
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _header(markdown: str, first: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {first} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_tiny_run_has_every_row_and_column(tmp_path: Path) -> None:
    argv = [*TINY, "--threads", "2", "--requests", "1", "--out", str(tmp_path)]
    assert e2e.main(argv) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["e2e-cpu-tiny.json", "e2e-cpu-tiny.md"]
    record = json.loads((tmp_path / "e2e-cpu-tiny.json").read_text())
    assert record["benchmark"] == "bench_e2e" and record["machine"]["device"] == "cpu"
    assert record["settings"]["hosts"] == ["LLaVA-NeXT", "Qwen2.5-VL"]
    assert record["identity_passed"]
    assert [(c["host"], c["batch"]) for c in record["identity"]] == [
        (host, batch) for host in ("LLaVA-NeXT", "Qwen2.5-VL") for batch in (1, 8)
    ]
    assert all(c["tokens_equal"] and c["max_abs_logit_diff"] <= c["atol"] for c in record["identity"])
    settings = [
        "model.generate",
        "HERO R = 1",
        "HERO R = 0.4",
        "HERO R = 0.2",
        "HERO R = 0.1",
        "`cls-attention` R = 0.2",
        "`uniform-strided` R = 0.2",
        "`thumbnail-attention` R = 0.2",
    ]
    native = ["model.generate", *(f"HERO-native R = {r}" for r in ("1", "0.4", "0.2", "0.1"))]
    for host, batch in [(host, batch) for host in ("LLaVA-NeXT", "Qwen2.5-VL") for batch in (1, 8)]:
        rows = [row for row in record["rows"] if row["batch"] == batch and row["host"] == host]
        assert [row["setting"] for row in rows] == (settings if host == "LLaVA-NeXT" else native)
        host, full, pruned = rows[0], rows[1], rows[3]
        assert full["image_tokens"] == host["image_tokens"] > pruned["image_tokens"] > 0
        assert all(row["ttft_s"] > 0 and row["tokens_per_s"] > 0 and row["peak_gib"] is None for row in rows)
        assert "stages_s" not in host and "score" not in full["stages_s"]  # R = 1 keeps all: nothing scored
        assert set(pruned["stages_s"]) == {"encode", "score", "plan", "assemble"}
        own = sum(pruned["stages_s"][stage] for stage in ("score", "plan", "assemble"))
        assert pruned["hero_share_of_ttft"] == pytest.approx(own / pruned["ttft_s"])
    hosts = [row["image_tokens"] for row in record["rows"] if row["setting"] == "model.generate"]
    assert hosts[1] > 4 * hosts[0]  # batch 8: eight images, different shapes (some smaller than batch 1's)
    assert hosts[2] == 24 and hosts[3] > 2 * hosts[2]  # Qwen: 1008 x 672 / 6 = 168 x 112 px: 4 x 6 merged tokens
    assert all(
        row["preset"] == "hero-native" for row in record["rows"] if row["host"] == "Qwen2.5-VL" and row["preset"]
    )
    assert [c["setting"] for c in record["concurrency"]] == ["model.generate", "HERO R = 0.2"]
    assert all(c["requests"] == 2 and c["p99_s"] >= c["p50_s"] > 0 for c in record["concurrency"])
    markdown = (tmp_path / "e2e-cpu-tiny.md").read_text()
    assert _header(markdown, "setting") == COLUMNS
    assert "#### LLaVA-NeXT, Batch 1" in markdown and "#### Qwen2.5-VL, Batch 8" in markdown
    assert "FAILED" not in markdown and "| HERO R = 0.2 | 2 |" in markdown
    assert "| LLaVA-NeXT, batch 1 | 4 | True | 0.00e+00 |" in markdown
    assert "| Qwen2.5-VL, batch 8 | 4 | True | 0.00e+00 |" in markdown and "| HERO-native R = 0.2 |" in markdown
    assert "LLaVA-NeXT only" in markdown  # concurrency: Qwen's rope_deltas live on the model
    assert "not measured on CPU" in markdown


def _wrong_keep_ratio_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """HERO asked for keep ratio 1 drops tokens (a pruner at 0.9)."""
    real = presets.get

    def get(name: str, ratio: float, **options: Any) -> Any:
        return real(name, 0.9 if ratio == 1.0 else ratio, **options)

    monkeypatch.setattr(presets, "get", get)


def _drops_the_last_prompt_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """HeroVLM.generate loses the prompt's last token before the host sees it."""
    from hero_adapters.vlm import HeroVLM

    real = HeroVLM.generate

    def generate(self: Any, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        return real(self, input_ids[:, :-1], attention_mask[:, :-1], **kwargs)

    monkeypatch.setattr(HeroVLM, "generate", generate)


@pytest.mark.parametrize(
    ("break_it", "host"),
    [
        (_wrong_keep_ratio_one, "llava-next"),
        (_drops_the_last_prompt_token, "llava-next"),
        (_wrong_keep_ratio_one, "qwen2.5-vl"),  # hero-native at keep ratio 1 must be the host too
    ],
)
def test_identity_check_fails_when_hero_changes_the_output(
    break_it: Any, host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [*IDENTITY_ONLY[:-1], host]
    assert e2e.main([*argv, "--out", str(tmp_path / "good")]) == 0  # the same run, unbroken, passes
    break_it(monkeypatch)
    with pytest.raises(HeroError, match="identity at keep ratio 1"):
        e2e.main([*argv, "--out", str(tmp_path / "bad")])
    record = json.loads((tmp_path / "bad" / "e2e-cpu-tiny.json").read_text())  # written, then the error
    assert not record["identity_passed"] and not record["identity"][0]["passed"]
    markdown = (tmp_path / "bad" / "e2e-cpu-tiny.md").read_text()
    assert "IDENTITY CHECK FAILED" in markdown and "**FAILED**" in markdown


def test_write_results_writes_only_the_tracked_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "checkout"
    (root / "benchmarks").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(REPO / "benchmarks" / "results", root / "benchmarks" / "results")
    (root / "benchmarks" / "README.md").write_text(readme_text(root / "benchmarks" / "results"))
    monkeypatch.chdir(root)
    before = _files(root)
    assert e2e.main([*IDENTITY_ONLY, "--write-results"]) == 0
    after = _files(root)
    changed = {name for name in after if before.get(name) != after[name]}
    assert changed == {
        "benchmarks/results/e2e-cpu-tiny.json",
        "benchmarks/results/e2e-cpu-tiny.md",
        "benchmarks/README.md",
    }
    assert set(before) <= set(after)
    assert (root / "benchmarks" / "README.md").read_text() == readme_text(root / "benchmarks" / "results")
    assert "### e2e-cpu-tiny" in (root / "benchmarks" / "README.md").read_text()


def test_options_and_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(BENCHMARKS)[-1] == "e2e"  # `hero bench all` runs it, last
    with pytest.raises(SystemExit) as done:
        e2e.parse(["--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    assert "--write-results" in help_text and "--size" in help_text and "--threads" in help_text
    assert e2e.parse([]).hosts == ["llava-next", "qwen2.5-vl"]
    for bad in (
        ["--hosts", "qwen3-vl"],
        ["--batches", "9"],
        ["--keep-ratios", "0.2"],
        ["--new-tokens", "1"],
        ["--repeats", "0"],
    ):
        with pytest.raises(SystemExit) as done:
            e2e.parse(bad)
        assert done.value.code == 2
    assert e2e.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and e2e.percentile([1.0, 9.0], 99) == pytest.approx(8.92)
