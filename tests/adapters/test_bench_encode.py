"""`hero bench encode` on test-size towers: the library's path (adapter.encode + plan) against the host's call.

The real-size run (`hero bench encode`) takes minutes; these run the same code with ``--tiny`` hosts (every
tower: CLIP-L in LLaVA-NeXT, InternViT in InternVL, SigLIP in LLaVA-OneVision; 56-px views) in seconds,
so CI exercises every mode, the checks and the table (test_bench_output.py: where results go).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters.bench import encode
from hero_core import HeroError

TINY = ["--tiny", "--device", "cpu", "--repeats", "1", "--plan-repeats", "2"]


def _in_process_memory(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Memory measured in this process instead of a fresh subprocess per mode (each costs an import)."""
    calls: list[tuple[str, str]] = []

    def measure(tower: encode.Tower, mode: str, args: Any) -> dict[str, Any]:
        calls.append((tower.name, mode))
        return encode.measure_memory(tower, mode, args)

    monkeypatch.setattr(encode, "memory_in_subprocess", measure)
    return calls


def test_tiny_run_times_the_library_path_for_every_tower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _in_process_memory(monkeypatch)
    assert encode.main([*TINY, "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "encode-tiny.json").read_text())
    assert set(record["towers"]) == {"clip-l14-336", "internvit-300m", "siglip-so400m", "qwen2.5-vl"}
    modes_of = {name: encode.MODES[:2] if name == "qwen2.5-vl" else encode.MODES for name in record["towers"]}
    assert calls == [(tower, mode) for tower in record["towers"] for mode in modes_of[tower]]
    assert record["machine"]["device"] == "cpu" and record["machine"]["cpu"]
    paper, scaled = [5, 6, 7, 8, 21], [6, 7, 8, 9, 24]  # presets.hero(0.2, depth=27): scale_layers' rule
    for name, tokens, layers, depth in (  # the tiled towers
        ("clip-l14-336", 16, paper, 24),
        ("internvit-300m", 4, paper, 24),
        ("siglip-so400m", 16, scaled, 27),
    ):
        tower = record["towers"][name]
        assert (tower["views"], tower["tokens_per_view"], tower["tile_grid"]) == (5, tokens, [2, 2])
        assert tower["hooked_layers"] == layers and tower["encoder_layers"] == depth
        assert set(tower["modes"]) == set(encode.MODES) and tower["eager"].startswith("measured")
        modes, ratios = tower["modes"], tower["ratios"]
        # ratios and verdicts are the measured values, never constants
        assert ratios["b/a_time"] == pytest.approx(modes["b_hero"]["median_s"] / modes["a_host"]["median_s"])
        assert ratios["c/a_peak_memory"] == pytest.approx(
            modes["c_eager"]["peak_bytes"] / modes["a_host"]["peak_bytes"]
        )
        assert tower["met"]["b/a_time"] == (ratios["b/a_time"] <= encode.TIME_TARGET)
        assert tower["met"]["b/a_peak_memory"] == (ratios["b/a_peak_memory"] <= encode.MEMORY_TARGET)
        assert tower["plan"]["plan/a_host"] == pytest.approx(tower["plan"]["plan_ms"] / tower["plan"]["a_host_ms"])
        assert tower["meets_targets"] == all(tower["met"].values())
        # (b) hands the LLM exactly the host's features, and its CLS rows are the eager maps' rows
        checks = tower["checks"]
        # SigLIP has no CLS: the stand-in is recomputed from the eager run's layer inputs instead
        assert checks["eager_oracle"].startswith("the mean-token" if name == "siglip-so400m" else "the CLS rows")
        assert checks["max_abs_diff_features_b_vs_a"] == 0.0
        assert checks["max_abs_diff_hooks_vs_eager"] < 1e-5
        assert sum(checks["kept_tokens_b"]) < sum(checks["tokens_in"])
    qwen = record["towers"]["qwen2.5-vl"]  # one view at native resolution, hero-native, no eager maps
    assert (qwen["views"], qwen["tokens_per_view"], qwen["tile_grid"], qwen["image_size"]) == (1, 24, None, [112, 168])
    assert qwen["hooked_layers"] == [7, 31] and qwen["encoder_layers"] == 32  # snapped to the full-attention blocks
    assert set(qwen["modes"]) == {"a_host", "b_hero"} and qwen["eager"].startswith("not applicable")
    assert qwen["ratios"]["b/a_time"] == pytest.approx(
        qwen["modes"]["b_hero"]["median_s"] / qwen["modes"]["a_host"]["median_s"]
    )
    assert qwen["checks"]["max_abs_diff_features_b_vs_a"] == 0.0
    assert qwen["checks"]["kept_tokens_b"] == [4] and qwen["checks"]["tokens_in"] == [24]  # floor(0.2 * 24)
    assert record["meets_targets"] == all(t["meets_targets"] for t in record["towers"].values())
    table = (tmp_path / "encode-tiny.md").read_text()
    assert "tiny test towers" in table and "target <= 1.05" in table and "target <= 1.1" in table
    assert "Planning alone" in table and "InternViT-300M-shaped | 5 x 4" in table
    assert "SigLIP-so400m in LLaVA-OneVision" in table and "scaled to 27 layers" in table
    assert "Qwen2.5-VL-7B vision tower in Qwen2.5-VL: 1 views x 24 tokens" in table


def test_one_tower_without_eager_names_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _in_process_memory(monkeypatch)
    argv = [*TINY, "--tower", "internvit-300m", "--eager", "off", "--views", "3", "--out", str(tmp_path)]
    assert encode.main(argv) == 0
    record = json.loads((tmp_path / "encode-internvit-300m-tiny.json").read_text())
    tower = record["towers"]["internvit-300m"]
    assert calls == [("internvit-300m", "a_host"), ("internvit-300m", "b_hero")]
    assert set(tower["modes"]) == {"a_host", "b_hero"} and "c/a_time" not in tower["ratios"]
    assert (tower["views"], tower["tile_grid"]) == (3, [1, 2])
    assert "max_abs_diff_hooks_vs_eager" not in tower["checks"]


def test_memory_runs_in_a_fresh_subprocess() -> None:
    args = encode.parse(["--tiny", "--device", "cpu", "--tower", "clip-l14-336"])
    result = encode.memory_in_subprocess(encode.TOWERS["clip-l14-336"], "b_hero", args)
    assert result["peak_bytes"] >= result["baseline_bytes"] > 0
    assert result["kind"].startswith("process RSS")


def test_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        encode.parse(["--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    assert "--tower" in help_text and "--write-results" in help_text and "--tiny" not in help_text
    with pytest.raises(SystemExit):
        encode.parse(["--tower", "vit-h"])
    with pytest.raises(SystemExit):
        encode.parse(["--memory-mode", "a_host"])  # needs one tower
    if torch.cuda.is_available():
        assert encode.parse(["--device", "cuda"]).device == "cuda"
    else:
        with pytest.raises(HeroError, match="CUDA"):
            encode.parse(["--device", "cuda"])


def test_real_towers_geometry() -> None:
    args = SimpleNamespace(tiny=False, views=5, dtype="float32")
    # every layer's (V, H, P + 1, P + 1) float32 map: 577 tokens for CLIP-L/14-336, 1025 for InternViT at 448 px
    assert encode.eager_maps_bytes(encode.TOWERS["clip-l14-336"], args) == 24 * 5 * 16 * 577**2 * 4
    assert encode.eager_maps_bytes(encode.TOWERS["internvit-300m"], args) == 24 * 5 * 16 * 1025**2 * 4
    # SigLIP has no CLS: (V, H, P, P), 729 tokens at 384 px
    assert encode.eager_maps_bytes(encode.TOWERS["siglip-so400m"], args) == 27 * 5 * 16 * 729**2 * 4
    assert encode.image_size(5, 336) == (672, 672) and encode.image_size(5, 448) == (896, 896)
    assert encode.image_size(5, 384) == (768, 768)
    wrong = SimpleNamespace(**{**encode.INTERNVIT_300M, "use_qk_norm": True})
    with pytest.raises(HeroError, match="use_qk_norm"):
        encode._check_spec(encode.TOWERS["internvit-300m"], wrong)
    encode._check_spec(encode.TOWERS["internvit-300m"], SimpleNamespace(**encode.INTERNVIT_300M))


def test_siglip_tower_is_so400m_in_llava_onevision() -> None:
    siglip = encode.TOWERS["siglip-so400m"]
    assert (siglip.host, siglip.tile, siglip.layers, siglip.has_cls) == ("LLaVA-OneVision", 384, 27, False)
    assert encode.parse(["--tower", "siglip-so400m"]).tower == "siglip-so400m"
    encode._check_spec(siglip, SimpleNamespace(**encode.SIGLIP_SO400M))
    with pytest.raises(HeroError, match="intermediate_size"):
        encode._check_spec(siglip, SimpleNamespace(**{**encode.SIGLIP_SO400M, "intermediate_size": 4608}))
    encode._check_host(siglip, SimpleNamespace(vision_feature_layer=-1, vision_feature_select_strategy="full"))
    with pytest.raises(HeroError, match="vision_feature_layer"):
        encode._check_host(siglip, SimpleNamespace(vision_feature_layer=-2, vision_feature_select_strategy="full"))
    # the tiny build is the real tower's depth, so the tiny run hooks the real run's layers
    built = encode.build_host(siglip, tiny=True)
    assert built.model.config.vision_config.num_hidden_layers == 27 and built.tile_pixels == 56


def test_qwen_tower_is_the_7b_tower_at_its_processor_grid() -> None:
    qwen = encode.TOWERS["qwen2.5-vl"]
    assert (qwen.host, qwen.layers, qwen.has_cls, qwen.native) == ("Qwen2.5-VL", 32, False, True)
    assert qwen.image_of(5, tiny=False) == (672, 1008)  # 48 x 72 patches of 14 px: 864 merged tokens
    spec = encode.QWEN2_5_VL_7B_VISION
    assert (spec["hidden_size"], spec["num_heads"], spec["intermediate_size"]) == (1280, 16, 3420)
    assert spec["fullatt_block_indexes"] == [7, 15, 23, 31] and spec["window_size"] == 112
    encode._check_spec(qwen, SimpleNamespace(**spec))
    with pytest.raises(HeroError, match="window_size"):
        encode._check_spec(qwen, SimpleNamespace(**{**spec, "window_size": 224}))
    args = SimpleNamespace(tiny=False, views=5, dtype="float32")
    assert encode.eager_maps_bytes(qwen, args) == 0  # no maps: mode (c) is not applicable
