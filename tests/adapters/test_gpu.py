"""CUDA runs of every host (``make gpu``; the default run deselects the ``gpu`` marker)."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.testing import check_adapter
from hero_core import presets
from hero_core.testing import count_host_syncs, make_tiles

from .hosts import HOSTS, host_row
from .test_syncs import BUDGET

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=sorted(HOSTS))
def cuda_host(request: pytest.FixtureRequest) -> Any:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    row = host_row(request.param)
    return row, copy.deepcopy(row.model).to("cuda")


def _to(inputs: dict[str, Any], device: str, dtype: torch.dtype | None = None) -> dict[str, Any]:
    moved = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        moved[key] = value
    return moved


def test_check_adapter_on_cuda(cuda_host: Any) -> None:
    row, model = cuda_host
    check_adapter(
        model,
        lambda texts, images: _to(row.inputs(texts, images), "cuda"),
        row.prompts(),
        row.pruner,
        vlm_options={"processor": row.processor},
        batch_atol=1e-3,
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keep_ratio_one_is_the_host(cuda_host: Any, dtype: torch.dtype) -> None:
    row, model = cuda_host
    half = copy.deepcopy(model).to(dtype)
    inputs = _to(row.batch(), "cuda")  # float32 pixels: the adapter meets the tower's dtype
    settings = {"max_new_tokens": 4, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        host = half.generate(**_to(row.batch(), "cuda", dtype), **settings)
    hero = HeroVLM(half, row.pruner(1.0), processor=row.processor).generate(**inputs, **settings)
    assert torch.equal(host.sequences, hero.sequences)
    pruned = HeroVLM(half, row.pruner(0.3), processor=row.processor).generate(**inputs, **settings)
    assert all(bool(torch.isfinite(step).all()) for step in pruned.logits)


# ---------------------------------------------------------------------------------------- host syncs on CUDA
class _RealSyncs:
    """CUDA's own sync detection (``torch.cuda.set_sync_debug_mode("warn")``): one warning per sync."""

    def __enter__(self) -> _RealSyncs:
        torch.cuda.synchronize()
        self._catch = warnings.catch_warnings(record=True)
        self.caught = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    @property
    def count(self) -> int:
        return sum(1 for w in self.caught if "synchroniz" in str(w.message))


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_pruner_plan_syncs_once_per_image_on_cuda(name: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pruner = presets.get(name, 0.3)
    relevance = torch.linspace(-0.2, 0.4, 5, device="cuda")
    tiles = make_tiles(num_views=5, grid=(8, 8), device="cuda")
    pruner.plan(tiles.replace(), relevance)  # warm
    fresh = tiles.replace()
    with _RealSyncs() as real, count_host_syncs() as counted:
        plan = pruner.plan(fresh, relevance)
    assert real.count == 1, [str(w.message) for w in real.caught]
    assert counted.count == 1, counted.table()
    assert plan.keep.device.type == "cuda" and plan.budgets.device.type == "cuda"


def test_plan_batch_reads_the_device_once_for_a_batch_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pruner = presets.hero(0.3)
    images = [make_tiles(num_views=v, grid=(8, 8), device="cuda", seed=v) for v in (5, 1, 7)]
    relevance = [torch.linspace(-0.2, 0.4, t.num_views, device="cuda") for t in images]
    pruner.plan_batch([t.replace() for t in images], relevance)  # warm
    fresh = [t.replace() for t in images]
    with _RealSyncs() as real:
        plans = pruner.plan_batch(fresh, relevance)
    assert real.count == 1, [str(w.message) for w in real.caught]
    assert all(torch.equal(p.keep.sum(-1), p.budgets) for p in plans)


def test_hero_vlm_syncs_on_cuda_match_the_counted_budget(cuda_host: Any) -> None:
    row, model = cuda_host
    vlm = HeroVLM(model, row.pruner(0.3), processor=row.processor)
    inputs = _to(row.batch(), "cuda")
    vlm.plan(**inputs)  # warm
    with _RealSyncs() as real, count_host_syncs() as counted:
        report = vlm.plan(**inputs)
    per_image, per_call = BUDGET[row.name]
    images = len(report.images)
    timer = sum(1 for op, _, _ in counted.calls if op == "synchronize")  # the stage timer records events instead
    assert timer == 0, counted.table()
    assert counted.hero == per_image * images + per_call, counted.table()
    assert set(report.timings) == {"encode", "plan", "assemble"} and all(t > 0 for t in report.timings.values())
    # the CPU counter's model of where tensors live must not miss a real sync (hero's and the host's)
    assert real.count <= counted.count, f"CUDA saw {real.count}, counted {counted.count}:\n{counted.table()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_everything_stays_on_the_models_device_and_dtype(cuda_host: Any, dtype: torch.dtype) -> None:
    row, model = cuda_host
    model = copy.deepcopy(model).to(dtype)
    vlm = HeroVLM(model, row.pruner(0.3), processor=row.processor)
    inputs = _to(row.batch(), "cuda")
    report = vlm.plan(**inputs)
    for image in report.images:
        assert image.plan.keep.device.type == "cuda" and image.plan.budgets.device.type == "cuda"
        assert image.encoded.cls_tokens.device.type == "cuda" and image.encoded.valid_mask.device.type == "cuda"
    ids, mask = vlm._check_prompt(inputs["input_ids"], inputs["attention_mask"])
    run = vlm._run(ids, mask, vlm._split(inputs)[0], None, _timer(vlm))
    run_features = [out.features for out in run.assembled]
    assert all(f.device.type == "cuda" and f.dtype == dtype for f in run_features)
    out = vlm.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.device.type == "cuda"


def _timer(vlm: HeroVLM) -> Any:
    from hero_adapters._timing import StageTimer

    return StageTimer(next(vlm.model.parameters()).device)


# ------------------------------------------------------------------------------- attach() and threads on CUDA
_GREEDY = {"max_new_tokens": 4, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}


def test_attach_on_cuda_at_keep_ratio_one_is_the_host(cuda_host: Any) -> None:
    row, model = cuda_host
    inputs = _to(row.batch(), "cuda")
    with torch.no_grad():
        host = model.generate(**inputs, **_GREEDY)
    vlm = HeroVLM(model, row.pruner(1.0), processor=row.processor)
    with vlm.attach():
        inside = model.generate(**inputs, **_GREEDY)
    assert torch.equal(host.sequences, inside.sequences)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(host.logits, inside.logits, strict=True))


def test_two_wrappers_in_two_threads_on_cuda_each_get_their_single_thread_plans(cuda_host: Any) -> None:
    import threading

    row, model = cuda_host
    inputs = _to(row.batch(), "cuda")
    wrappers = [
        HeroVLM(model, row.pruner(0.3), processor=row.processor),
        HeroVLM(model, presets.get("uniform-strided", 0.5), processor=row.processor),
    ]
    alone = [[image.plan.keep.cpu() for image in vlm.plan(**inputs).images] for vlm in wrappers]
    got: list[Any] = [None, None]
    start = threading.Barrier(2)

    def work(i: int) -> None:
        start.wait()
        plans = []
        for _ in range(5):
            plans.append([image.plan.keep.cpu() for image in wrappers[i].plan(**inputs).images])
        got[i] = plans

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(2):
        assert got[i] is not None
        for plans in got[i]:
            assert all(torch.equal(a, b) for a, b in zip(plans, alone[i], strict=True))


def test_visionzip_merges_are_the_same_run_to_run_on_cuda() -> None:
    """add_merged on CUDA sums in float64 (index_add_ there adds in no fixed order): many rows merged into few
    targets give bit-identical rows on every run, equal to the CPU's float64 merge rounded to the rows' dtype."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from hero_adapters._features import add_merged

    generator = torch.Generator().manual_seed(0)
    views, tokens, width = 5, 576, 4096
    rows = torch.randn(views * tokens, width, generator=generator)
    into = torch.randint(0, 16, (views, tokens), generator=generator)  # 2880 tokens merged into 16 targets
    into[0, :16] = torch.arange(16)  # the targets are kept (their own index)
    source = torch.arange(views * tokens)
    for dtype in (torch.bfloat16, torch.float32):
        cuda = rows.to("cuda", dtype)
        runs = [add_merged(cuda, source.cuda(), into.cuda()) for _ in range(3)]
        assert all(torch.equal(runs[0], run) for run in runs[1:]), dtype
        expected = add_merged(rows.to(dtype).double(), source, into).to(dtype)
        assert torch.equal(runs[0].cpu(), expected), dtype
