"""Planning cost vs one CLIP ViT-L/14-336 forward; see hero_adapters/bench/core.py (same as `hero bench core`)."""

import logging

from hero_adapters.bench.core import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the notes of hero_adapters.bench
    main()
