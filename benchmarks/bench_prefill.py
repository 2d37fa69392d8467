"""Prefill speed-up vs the FLOPs model and HERO's own cost (see hero_adapters/bench/prefill.py `hero bench prefill`)."""

import logging

from hero_adapters.bench.prefill import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the notes of hero_adapters.bench
    main()
