"""Encoder-side cost: host vs HERO hooks + plan vs eager attention (`hero bench encode`, in hero_adapters.bench)."""

import logging

from hero_adapters.bench.encode import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the notes of hero_adapters.bench
    raise SystemExit(main())
