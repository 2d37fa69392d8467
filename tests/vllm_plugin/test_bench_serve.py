"""``hero bench serve`` runs in the vLLM environment and records what it promises (the tiny size: seconds)."""

from __future__ import annotations

import json
from pathlib import Path

from hero_adapters.bench.serve import main


def test_bench_serve_records_every_keep_ratio(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["--device", "cpu", "--size", "tiny", "--requests", "3", "--new-tokens", "2", "--kv-cache-mib", "64"]
    assert main([*argv, "--out", str(out)]) == 0
    record = json.loads((out / "serve-cpu-tiny.json").read_text())
    rows = record["rows"]
    assert [row["keep_ratio"] for row in rows] == [1.0, 0.4, 0.2]
    assert all(row["requests"] == 3 and row["requests_per_s"] > 0 for row in rows)
    # fewer image tokens, fewer prompt tokens and KV blocks per request, more requests in the same KV cache
    images = [row["image_tokens_mean"] for row in rows]
    assert images[0] > images[1] > images[2]
    assert rows[0]["prompt_tokens_mean"] - rows[2]["prompt_tokens_mean"] == images[0] - images[2]
    assert rows[0]["kv_blocks_per_request"] >= rows[2]["kv_blocks_per_request"]
    assert rows[0]["requests_in_kv_cache"] <= rows[2]["requests_in_kv_cache"]
    assert record["settings"]["kv_cache_blocks"] > 0
    assert "| keep ratio |" in (out / "serve-cpu-tiny.md").read_text()
