"""``hero bench encode``'s measurements of one tower: peak memory of one mode (run in a fresh subprocess) and the
modes' times round-robin after a warm-up that checks HERO's features and CLS rows against the host's."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._progress import progress
from ._common import median_seconds, sync
from ._encode_cases import TINY_VISION, Case, Tower, _pair, eager_call, hero_call, host_call, make_case, runner


# ------------------------------------------------------------------------------------------------ memory
def rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc (Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark to the current RSS (Linux >= 4.0), so the peak is the run's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def available_bytes(device: torch.device) -> int:
    """Memory free for new tensors: CUDA's free memory, else MemAvailable (Linux), else total RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def eager_maps_bytes(tower: Tower, args: argparse.Namespace) -> int:
    """Size of the attention maps ``output_attentions=True`` keeps: L x V x H x (P + 1)^2 values (P^2: SigLIP);
    0 for a host whose attention returns no maps (``Tower.no_eager``)."""
    if tower.no_eager:
        return 0
    heads = TINY_VISION["vision_heads"] if args.tiny else int(tower.spec["num_attention_heads"])
    tile = tower.tiny_tile if args.tiny else tower.tile
    tokens = (tile // _pair(tower.spec["patch_size"])[0]) ** 2 + int(tower.has_cls)  # tiny towers: patch 14 too
    itemsize = int(torch.finfo(getattr(torch, args.dtype)).bits) // 8
    return int(tower.layers * args.views * heads * tokens * tokens * itemsize)


def measure_memory(tower: Tower, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run inside a fresh subprocess: build, reset the peak, run the mode once, report peaks."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    case = make_case(tower, args, "eager" if mode == "c_eager" else "sdpa")
    gc.collect()
    sync(device)
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            result = runner(mode)(case)
            sync(device)
            peak = torch.cuda.max_memory_allocated(device)
            del result
            return {"peak_bytes": peak, "baseline_bytes": base, "extra_bytes": peak - base, "kind": "cuda allocated"}
        base = rss_bytes("VmRSS")
        exact = reset_peak_rss()
        result = runner(mode)(case)
        peak = rss_bytes("VmHWM") if exact else rss_bytes("ru_maxrss")
        del result
    return {
        "peak_bytes": peak,
        "baseline_bytes": base,
        "extra_bytes": peak - base,
        "kind": "process RSS high-water mark" + ("" if exact else " (since start: clear_refs unavailable)"),
    }


def _bytes(tensors: Any) -> int:
    return sum(int(t.numel()) * t.element_size() for t in tensors if isinstance(t, Tensor))


def cuda_memory(case: Case, mode: str) -> dict[str, Any]:
    """CUDA, in this process: what a fresh process holding only ``case`` would show. ``max_memory_allocated``
    counts live tensors (never the allocator's cache), so the peak above the call's start is the call's own;
    the mode's model and inputs are added as the baseline (the other mode's host may be resident too)."""
    device = torch.device("cuda", torch.cuda.current_device())
    gc.collect()
    sync(device)
    base = _bytes([*case.model.parameters(), *case.model.buffers()])
    base += _bytes({id(t): t for t in [*case.host_inputs.values(), *case.hero_inputs.values()]}.values())
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = runner(mode)(case)
    sync(device)
    extra = torch.cuda.max_memory_allocated(device) - start
    del result
    return {"peak_bytes": base + extra, "baseline_bytes": base, "extra_bytes": extra, "kind": "cuda allocated"}


# ------------------------------------------------------------------------------------------------ time
def _host_features(output: Any, images: list[Any]) -> list[Tensor]:
    """The host's LLM-side features per image (LLaVA-NeXT: a list; InternVL: (sum T, N, D) split by image)."""
    pooled = output.pooler_output
    if isinstance(pooled, (list, tuple)):
        return [feature for feature in pooled]
    out, start = [], 0
    for image in images:
        views = image.tiles.num_views
        out.append(pooled[start : start + views].reshape(-1, pooled.shape[-1]))
        start += views
    return out


def _eager_rows(case: Case, output: Any, layers: tuple[int, ...]) -> Tensor:
    """(L, V, H, N) the CLS rows of the eager maps, CLS key dropped, as the adapter's tiles hold them
    (InternVL: summed over each LLM token's patches, by the host's own ``pixel_shuffle`` on an index map)."""
    rows = torch.stack([output.attentions[layer][:, :, 0, 1:].float() for layer in layers])
    if case.tower.host != "InternVL":
        return rows
    vision = case.model.config.vision_config
    height, width = (a // b for a, b in zip(_pair(vision.image_size), _pair(vision.patch_size), strict=True))
    index = torch.arange(height * width, dtype=torch.float64).view(1, height, width, 1)
    shuffled = case.model.model.pixel_shuffle(index, scale_factor=case.model.config.downsample_ratio)
    groups = shuffled.reshape(-1, shuffled.shape[-1]).round().long().to(rows.device)
    return rows[..., groups].sum(-1)


def _stand_in_rows(case: Case, layers: tuple[int, ...]) -> Tensor:
    """(L, V, H, N) SigLIP's mean-token stand-in rows, recomputed outside HERO's hooks: the eager host call
    with plain pre-hooks capturing each layer's input, then softmax(mean(LN1(x)) W_q . (LN1(x) W_k)^T * scale)."""
    blocks = case.model.model.vision_tower.encoder.layers
    seen: dict[int, Tensor] = {}

    def grab(layer: int) -> Callable[..., None]:
        def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen[layer] = args[0] if args else kwargs["hidden_states"]

        return pre

    handles = [blocks[layer].register_forward_pre_hook(grab(layer), with_kwargs=True) for layer in layers]
    try:
        eager_call(case)
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for layer in layers:
        block = blocks[layer]
        attention = block.self_attn
        hidden = block.layer_norm1(seen[layer])
        views, tokens, _ = hidden.shape
        heads = int(attention.num_heads)
        query = attention.q_proj(hidden.mean(1, keepdim=True)).float().view(views, 1, heads, -1).transpose(1, 2)
        keys = attention.k_proj(hidden).float().view(views, tokens, heads, -1).transpose(1, 2)
        rows.append(torch.softmax((query @ keys.transpose(-1, -2)).squeeze(2) * attention.scale, dim=-1))
    return torch.stack(rows)


def measure_time(tower: Tower, args: argparse.Namespace, modes: tuple[str, ...]) -> dict[str, Any]:
    """The tower's modes in this process, round-robin after a warm-up that checks (b) against (a) and (c)."""
    device = torch.device(args.device)
    cases = {"sdpa": make_case(tower, args, "sdpa")}
    if "c_eager" in modes:
        cases["eager"] = make_case(tower, args, "eager")
    case_of = {"a_host": cases["sdpa"], "b_hero": cases["sdpa"], "c_eager": cases.get("eager")}
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    checks: dict[str, Any] = {}
    with torch.inference_mode():
        host_out = host_call(cases["sdpa"])
        images, plans = hero_call(cases["sdpa"])
        pairs = zip(_host_features(host_out, images), images, strict=True)
        checks["max_abs_diff_features_b_vs_a"] = max(float((a - b.features).abs().max()) for a, b in pairs)
        checks["kept_tokens_b"] = [int(plan.keep.sum()) for plan in plans]
        checks["tokens_in"] = [int(image.tokens_in) for image in images]
        del host_out
        if "c_eager" in modes:
            eager = cases["eager"]
            layers = images[0].tiles.attention_layers
            if tower.has_cls:
                out = eager_call(eager)
                oracle = _eager_rows(eager, out, layers)
                checks["eager_oracle"] = "the CLS rows of the eager maps"
                del out
            else:
                oracle = _stand_in_rows(eager, layers)
                checks["eager_oracle"] = (
                    "the mean-token stand-in recomputed from the eager run's layer inputs "
                    "(layer_norm1, q/k projections, softmax; not a row of the eager maps)"
                )
            hooked = torch.cat([image.tiles.cls_attention for image in images], dim=1).float()
            checks["max_abs_diff_hooks_vs_eager"] = float((hooked - oracle.to(hooked.device)).abs().max())
            del oracle, hooked
        gc.collect()
        sdpa = cases["sdpa"]
        for _ in progress(range(args.repeats), desc=f"bench encode: {tower.name} timing"):
            for mode in modes:
                case = case_of[mode]
                assert case is not None
                sync(device)
                start = time.perf_counter()
                result = runner(mode)(case)
                sync(device)
                seconds[mode].append(time.perf_counter() - start)
                del result

        def plan_only(images: list[Any] = images, case: Case = sdpa) -> None:
            for image in images:  # fresh tiles, as encode hands them over: the plan reads its host facts
                case.pruner.plan(image.tiles.replace(), case.relevance)

        plan_s = median_seconds(plan_only, device, repeats=args.plan_repeats, warmup=3)
        memory = {}
        if device.type == "cuda":
            for mode in modes:
                case = case_of[mode]
                assert case is not None
                memory[mode] = cuda_memory(case, mode)
    tiles = images[0].tiles
    geometry = {
        "views": int(tiles.num_views),
        "tokens_per_view": int(tiles.num_tokens),
        "tile_grid": list(tiles.tile_grid) if tiles.tile_grid else None,
        "hooked_layers": list(tiles.attention_layers),
        "encoder_layers": int(sdpa.adapter.num_layers),
    }
    del cases, case_of, images, plans, sdpa
    gc.collect()
    return {"seconds": seconds, "plan_s": plan_s, "checks": checks, "geometry": geometry, "memory": memory}
