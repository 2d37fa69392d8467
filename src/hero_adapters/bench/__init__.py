"""Benchmarks behind ``hero bench`` and ``benchmarks/bench_*.py``: each module has a ``main(argv)``."""

from __future__ import annotations

from ._common import pick_device

__all__ = ["BENCHMARKS", "SERVING_BENCHMARKS", "pick_device"]

#: name -> module under hero_adapters.bench (the one list of benchmarks; ``hero bench all`` runs them in order)
BENCHMARKS = {"core": "core", "encode": "encode", "prefill": "prefill", "threads": "threads", "e2e": "e2e"}
#: name -> module of benchmarks that need vLLM (its own environment): run by name, never by ``hero bench all``
SERVING_BENCHMARKS = {"serve": "serve"}
