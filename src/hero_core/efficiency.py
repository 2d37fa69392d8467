"""The efficiency model of HERO's Table 4: prefill FLOPs and KV-cache bytes of a LLaMA-style LLM."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import HeroError

__all__ = ["VICUNA_7B", "VICUNA_13B", "ModelShape", "kv_cache_bytes", "prefill_flops"]


def prefill_flops(num_tokens: int, *, num_layers: int, hidden_size: int, intermediate_size: int) -> float:
    """FLOPs of one prefill over ``n`` tokens: ``2 T (4 n d^2 + 2 n^2 d + 3 n d m)``.

    Per layer: the q, k, v, o projections (``4 n d^2`` multiply-adds), the attention scores and the
    weighted sum (``2 n^2 d``), and SwiGLU's three matrices (``3 n d m``); a multiply-add is 2 FLOPs.
    Vicuna-7B gives 38.4 TFLOPs at n = 2673 and 7.7 at n = 583, HERO's Table 4.
    """
    n, d, m = (
        _count("num_tokens", num_tokens),
        _count("hidden_size", hidden_size),
        _count("intermediate_size", intermediate_size),
    )
    layers = _count("num_layers", num_layers)
    return 2.0 * layers * (4 * n * d * d + 2 * n * n * d + 3 * n * d * m)


def kv_cache_bytes(num_tokens: int, *, num_layers: int, kv_hidden_size: int, bytes_per_value: int = 2) -> int:
    """Bytes of the K and V caches for ``n`` tokens: ``2 T d_kv bytes n`` (1336.5 MiB at n = 2673, Vicuna-7B fp16)."""
    return (
        2
        * _count("num_layers", num_layers)
        * _count("kv_hidden_size", kv_hidden_size)
        * _count("bytes_per_value", bytes_per_value)
        * _count("num_tokens", num_tokens)
    )


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a LLaMA-style language model that the efficiency model needs."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    kv_hidden_size: int

    def prefill_flops(self, num_tokens: int) -> float:
        return prefill_flops(
            num_tokens,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
        )

    def kv_cache_bytes(self, num_tokens: int, bytes_per_value: int = 2) -> int:
        return kv_cache_bytes(
            num_tokens, num_layers=self.num_layers, kv_hidden_size=self.kv_hidden_size, bytes_per_value=bytes_per_value
        )

    @classmethod
    def from_config(cls, config: dict[str, Any] | str | Path, name: str | None = None) -> ModelShape:
        """From a Hugging Face ``config.json`` (a dict or a path); a VLM's ``text_config`` is used if present."""
        if not isinstance(config, dict):
            path = Path(config)
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise HeroError.field("config", str(path), "a readable JSON config file", str(error)) from error
            if not isinstance(config, dict):
                raise HeroError.field("config", str(path), "a JSON object")
        text = config.get("text_config") or config.get("llm_config") or config
        try:
            hidden = int(text["hidden_size"])
            heads = int(text.get("num_attention_heads", 1))
            kv_heads = int(text.get("num_key_value_heads") or heads)
            return cls(
                name=name or str(text.get("model_type", config.get("model_type", "custom"))),
                num_layers=int(text["num_hidden_layers"]),
                hidden_size=hidden,
                intermediate_size=int(text["intermediate_size"]),
                kv_hidden_size=hidden * kv_heads // heads,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise HeroError.field(
                "config",
                sorted(text)[:8],
                "a LLaMA-style config with hidden_size, num_hidden_layers and intermediate_size",
                f"Missing or bad: {error}.",
            ) from error


VICUNA_7B = ModelShape("vicuna-7b", num_layers=32, hidden_size=4096, intermediate_size=11008, kv_hidden_size=4096)
VICUNA_13B = ModelShape("vicuna-13b", num_layers=40, hidden_size=5120, intermediate_size=13824, kv_hidden_size=5120)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HeroError.field(name, value, "a non-negative int")
    return value
