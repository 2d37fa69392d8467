"""Test-wide settings: offline hub, deterministic hypothesis profile."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from hypothesis import HealthCheck, settings

_COMMON = {"max_examples": 60, "deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("default", derandomize=False, **_COMMON)
# CI and `make mutants`: the same examples on every run (seeded from each test), no example database, so a
# failure (or a mutant's kill) never depends on one random draw or on an earlier run's saved examples.
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))
