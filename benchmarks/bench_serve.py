"""HERO inside vLLM, offline throughput at keep ratio 1 / 0.4 / 0.2 (needs vLLM: see hero_adapters.bench.serve)."""

from hero_adapters.bench.serve import main

if __name__ == "__main__":
    raise SystemExit(main())
