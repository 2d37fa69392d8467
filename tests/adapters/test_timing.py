"""Stage timings (issue 17, item 5): on CUDA from events, read only when the timings are read, never a device
synchronise per stage. The CUDA path runs here with stand-in events; ``test_gpu.py`` runs it on a GPU."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from hero_adapters._timing import StageTimer


class _Event:
    clock = 0.0

    def __init__(self) -> None:
        _Event.clock += 1.0
        self.at, self.waited = _Event.clock, 0

    def synchronize(self) -> None:
        self.waited += 1

    def elapsed_time(self, end: Any) -> float:
        return 1000.0 * (end.at - self.at)  # milliseconds, as CUDA's


def test_cpu_stages_add_up_wall_time() -> None:
    timer = StageTimer("cpu")
    with timer.stage("plan"):
        sum(range(10_000))
    with timer.stage("plan"):
        pass
    with timer.stage("assemble"):
        pass
    assert list(timer.seconds) == ["plan", "assemble"] and timer.seconds["plan"] > 0
    assert json.loads(json.dumps(timer.seconds)) == dict(timer.seconds)


def test_cuda_stages_record_events_and_read_them_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[_Event] = []

    def event(self: StageTimer) -> _Event:
        events.append(_Event())
        return events[-1]

    def no_sync(*args: object) -> None:
        raise AssertionError("a device synchronise inside a stage")

    monkeypatch.setattr(StageTimer, "_event", event)
    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    timer = StageTimer(torch.device("cuda", 0))
    with timer.stage("encode"):  # events 1, 2: 1 s
        pass
    with timer.stage("plan"):  # events 3, 5: 2 s (a nested event in between)
        events.append(_Event())
    with timer.stage("encode"):  # events 6, 7: 1 s more
        pass
    assert all(e.waited == 0 for e in events)  # nothing read while the call runs
    assert dict(timer.seconds) == {"encode": 2.0, "plan": 2.0}
    assert sum(e.waited for e in events) == 3  # each stage's end event waited for once, when first read
    with timer.stage("generate"):
        pass
    assert timer.seconds.get("generate") == 1.0 and "generate" in timer.seconds and len(timer.seconds) == 3
    assert json.loads(json.dumps(timer.seconds))["plan"] == 2.0


def test_timings_copy_pickle_and_asdict_as_plain_seconds() -> None:
    import copy
    import dataclasses
    import pickle

    from hero_adapters.report import PruneReport

    timer = StageTimer("cpu")
    with timer.stage("plan"):
        pass
    report = PruneReport(images=[], timings=timer.seconds)
    for copied in (copy.deepcopy(report).timings, pickle.loads(pickle.dumps(report.timings))):
        assert copied == dict(timer.seconds) and list(copied) == ["plan"]
    assert dataclasses.asdict(report)["timings"] == dict(timer.seconds)
