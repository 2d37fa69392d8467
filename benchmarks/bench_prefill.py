"""Prefill speed-up vs the FLOPs model and HERO's own cost (see hero_adapters/bench/prefill.py `hero bench prefill`)."""

from hero_adapters.bench.prefill import main

if __name__ == "__main__":
    main()
