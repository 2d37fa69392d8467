"""Encoder-side cost: host vs HERO hooks + plan vs eager attention (`hero bench encode`, in hero_adapters.bench)."""

from hero_adapters.bench.encode import main

if __name__ == "__main__":
    raise SystemExit(main())
