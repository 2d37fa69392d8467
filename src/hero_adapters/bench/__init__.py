"""Benchmarks behind ``hero bench`` and ``benchmarks/bench_*.py``: each module has a ``main(argv)``."""

__all__ = ["BENCHMARKS"]

#: name -> module under hero_adapters.bench
BENCHMARKS = {"core": "core", "encode": "encode", "prefill": "prefill"}
