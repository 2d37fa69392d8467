"""model.generate vs HeroVLM.generate end to end (see hero_adapters/bench/e2e.py `hero bench e2e`)."""

import logging

from hero_adapters.bench.e2e import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the notes of hero_adapters.bench
    raise SystemExit(main())
