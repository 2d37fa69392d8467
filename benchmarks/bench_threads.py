"""Two threads sharing one model; see hero_adapters/bench/threads.py (same as `hero bench threads`)."""

import logging

from hero_adapters.bench.threads import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the notes of hero_adapters.bench
    main()
