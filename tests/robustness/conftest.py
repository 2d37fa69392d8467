"""The robustness suite: malformed inputs, half-way failures, dtypes, determinism and memory.

Every test here reuses the cached tiny hosts of ``tests/adapters/hosts.py`` (``host_row``) and keeps its
hypothesis budgets small: the whole folder runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread while these tests run (restored after each module): the tiny hosts' tensors are far
    too small to gain from a second thread, and on a loaded 2-core machine OpenMP's waiting makes every call
    about 20 times slower (measured: a ``HeroVLM.plan`` takes 8 ms on one thread, 200 ms on two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
