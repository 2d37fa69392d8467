"""Memory: 200 consecutive ``HeroVLM.plan`` calls on a tiny model grow neither the number of live tensors nor
the resident set size beyond a small bound (after a warm-up)."""

from __future__ import annotations

import gc
import os
import sys
import warnings

import pytest
import torch

from adapters.hosts import host_row
from hero_adapters import HeroVLM

CALLS, WARM_UP = 200, 20
MAX_NEW_TENSORS = 4
MAX_RSS_GROWTH = 24 * 2**20  # bytes; allocator noise, far below 200 leaked reports of this size


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some lazy torch objects warns about deprecated names
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_200_plans_do_not_grow_live_tensors_or_rss() -> None:
    row = host_row("llava_next")
    vlm = HeroVLM(row.model, row.pruner(0.3), lambda views, text: views.mean(dim=(1, 2, 3)), processor=row.processor)
    text, images = row.prompts()[0]
    inputs = row.inputs([text], images)
    for _ in range(WARM_UP):
        vlm.plan(**inputs, query="what")
    tensors, rss = _live_tensors(), _rss()
    for _ in range(CALLS):
        vlm.plan(**inputs, query="what")
    grown_tensors, grown_rss = _live_tensors() - tensors, _rss() - rss
    assert grown_tensors <= MAX_NEW_TENSORS, grown_tensors
    assert grown_rss <= MAX_RSS_GROWTH, grown_rss / 2**20
