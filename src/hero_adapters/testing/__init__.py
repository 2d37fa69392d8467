"""The adapter kit: tiny in-process host builders and ``check_adapter``.

The library's own tests, the demo and the benchmarks build their hosts with these builders; someone
writing an adapter for a new HR-LVLM runs ``check_adapter`` on a tiny build of their model (docs/adapters.md).
"""

from __future__ import annotations

from .builders import (
    DEMO_WORDS,
    INTERNVL_WORDS,
    LLAVA_NEXT_7B_PINPOINTS,
    BuiltHost,
    build_internvl,
    build_llava_next,
    build_llava_onevision,
    build_tiny_clip,
    word_tokenizer,
)
from .check import AdapterCheckError, AdapterCheckReport, check_adapter, check_scorer, hook_snapshot
from .qwen_builders import build_qwen2_5_vl, build_qwen3_vl

__all__ = [
    "DEMO_WORDS",
    "INTERNVL_WORDS",
    "LLAVA_NEXT_7B_PINPOINTS",
    "AdapterCheckError",
    "AdapterCheckReport",
    "BuiltHost",
    "build_internvl",
    "build_llava_next",
    "build_llava_onevision",
    "build_qwen2_5_vl",
    "build_qwen3_vl",
    "build_tiny_clip",
    "check_adapter",
    "check_scorer",
    "hook_snapshot",
    "word_tokenizer",
]
