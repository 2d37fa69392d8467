"""Cost of HERO's encoder-side work through the library's own path, on real-size vision towers.

Each tower (``--tower``, default ``all``) sits in a real transformers host built from configs by
``hero_adapters.testing`` (the vision tower at its real size, a tiny LLM, random weights, seeded; nothing
is downloaded):

- ``clip-l14-336``: LLaVA-NeXT with CLIP ViT-L/14-336 (24 layers, width 1024, 16 heads, MLP 4096, 336 px,
  patch 14, quick_gelu). V = 5 views: a 672 x 672 image (a 2 x 2 anyres grid) plus the base view;
  N = 576 tokens per view.
- ``internvit-300m``: InternVL with an InternViT-300M-shaped tower (InternVL 2.5 / 3: 24 layers, width
  1024, 16 heads, MLP 4096, 448 px, patch 14, LayerNorm, no q/k norm). V = 5 views: an 896 x 896 image
  (4 tiles) plus the thumbnail; N = 256 LLM tokens per view after the 2 x 2 pixel shuffle.
- ``siglip-so400m``: LLaVA-OneVision with SigLIP-so400m (27 layers, width 1152, 16 heads, MLP 4304, 384 px,
  patch 14, ``vision_use_head=False``; feature layer -1, strategy ``full``). V = 5 views: a 768 x 768 image
  (a 2 x 2 anyres grid of the builder's pinpoints, multiples of 384 up to 3 x 3) plus the base view; N = 729
  tokens per view. SigLIP has no CLS: HERO records the mean-token stand-in query.

Three modes per tower, on the same pixels:

- ``a_host``:  the host's own image-feature call, ``model.model.get_image_features(...)`` (SDPA).
- ``b_hero``:  ``adapter.encode(...)``, which runs that same host call under HERO's scoped CLS-attention
               hooks and describes every image, then ``Pruner.plan`` per image (``presets.hero(0.2)``, the
               paper's layers: low 5-8, high 21; on InternViT these are CLIP-L's defaults applied to a
               24-layer tower; on SigLIP-so400m ``presets.hero(0.2, depth=27)``, the paper's layers scaled
               to 27 layers by ``hero_core.presets.scale_layers``: low 6-9, high 24). A fixed relevance
               vector stands in for the text scorer, which is not timed here (``hero bench prefill`` times it).
- ``c_eager``: the peers' route: the host call with eager attention and ``output_attentions=True`` (every
               layer's full map). ``--eager auto`` skips it when the maps would not fit in memory.

Time: one process per run builds the hosts and runs the modes round-robin after a warm-up (which also
checks that (b)'s features are (a)'s and its CLS rows are the eager maps' rows; SigLIP's stand-in rows are
recomputed from the eager run's hidden states), so load drift hits all
modes alike; the median of ``--repeats`` is reported. Peak memory: one fresh subprocess per mode (process
peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA), because allocator caches make in-process
numbers unfair. Planning alone (``Pruner.plan`` on the encoded views) is timed against (a)'s median.
Targets: (b) / (a) <= 1.05 in time and <= 1.10 in peak memory; planning < 1% of (a).

Results: ``encode.json`` + ``encode.md`` (suffixed ``-bfloat16`` / ``-cuda`` / ``-<tower>`` when those are
chosen). They go to ``./hero-bench-results``, or ``--out DIR``; ``--write-results`` updates the checkout's
tracked ``benchmarks/results`` and ``benchmarks/README.md`` instead.

Usage: ``hero bench encode [--tower all|clip-l14-336|internvit-300m|siglip-so400m] [--device auto|cpu|cuda]
[--dtype float32|bfloat16] [--repeats 3] [--write-results | --out DIR]``
   or: ``python benchmarks/bench_encode.py [...]``
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hero_core import HeroError, Pruner, presets

from .._progress import progress
from ._common import (
    VIT_L14_336,
    HelpFormatter,
    Parser,
    add_output_options,
    machine,
    median_seconds,
    now,
    output_folder,
    pick_device,
    sync,
    write_results,
)

_LOG = logging.getLogger(__name__)

MODES = ("a_host", "b_hero", "c_eager")
KEEP_RATIO = 0.2
TIME_TARGET = 1.05  # (b) / (a) median time
MEMORY_TARGET = 1.10  # (b) / (a) peak memory
PLAN_TARGET = 0.01  # planning alone / (a)
GIB = 2.0**30

#: InternViT-300M (InternVL 2.5 / 3), as transformers ``InternVLVisionConfig`` fields.
INTERNVIT_300M: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": [448, 448],
    "patch_size": [14, 14],
    "hidden_act": "gelu",
    "norm_type": "layer_norm",
    "use_qk_norm": False,
}
#: SigLIP-so400m (LLaVA-OneVision), as transformers ``SiglipVisionConfig`` fields.
SIGLIP_SO400M: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "vision_use_head": False,
}
#: The tiny LLM behind every real-size tower (the bench times the vision path only).
TINY_LLM: dict[str, Any] = {"text_width": 64, "text_layers": 1, "text_heads": 2}
#: Test-size towers (``--tiny``): the same code path in seconds; the real tower's depth (``Tower.layers``), so
#: the preset's layers are the real run's.
TINY_VISION: dict[str, int] = {"vision_width": 32, "vision_heads": 2, "vision_mlp": 64}


@dataclass(frozen=True)
class Tower:
    """One benchmarked vision tower and the host it runs in."""

    name: str
    title: str
    host: str
    tile: int  # view side in pixels (real size)
    tiny_tile: int  # ... with --tiny
    spec: dict[str, Any]  # vision_config fields the real-size build must have
    layers_note: str
    host_spec: tuple[tuple[str, Any], ...] = ()  # model.config fields the build must have (any size)

    @property
    def layers(self) -> int:
        """The encoder's depth (tiny builds keep it, so HERO's layers are the same)."""
        return int(self.spec["num_hidden_layers"])

    @property
    def has_cls(self) -> bool:
        """False for SigLIP: no CLS token; HERO records the mean-token stand-in query."""
        return self.host != "LLaVA-OneVision"


TOWERS: dict[str, Tower] = {
    tower.name: tower
    for tower in (
        Tower(
            "clip-l14-336",
            "CLIP ViT-L/14-336",
            "LLaVA-NeXT",
            336,
            56,
            VIT_L14_336,
            "the paper's layers for CLIP-L",
        ),
        Tower(
            "internvit-300m",
            "InternViT-300M-shaped",
            "InternVL",
            448,
            56,
            INTERNVIT_300M,
            "CLIP-L's default layers applied to a 24-layer tower",
        ),
        Tower(
            "siglip-so400m",
            "SigLIP-so400m",
            "LLaVA-OneVision",
            384,
            56,
            SIGLIP_SO400M,
            "the paper's layers scaled to 27 layers by hero_core.presets.scale_layers "
            "(round(l * 26 / 23)); mean-token stand-in query, SigLIP has no CLS",
            (("vision_feature_layer", -1), ("vision_feature_select_strategy", "full")),
        ),
    )
}


#: The most CPU threads ``--threads`` takes (torch accepts more and then crashes in its first matmul).
MAX_THREADS = 1024


def _threads(text: str) -> int:
    """``--threads``: an int in [1, MAX_THREADS]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"{text} is not a thread count in [1, {MAX_THREADS}]")
    return value


def build_host(tower: Tower, tiny: bool) -> Any:
    """The tower's host (``BuiltHost``), real vision size and a tiny LLM, or everything tiny; seeded."""
    from ..testing import LLAVA_NEXT_7B_PINPOINTS, build_internvl, build_llava_next, build_llava_onevision

    vision: dict[str, Any] = {"vision_layers": tower.layers, **TINY_VISION}
    if not tiny:
        vision = {
            "vision_layers": tower.layers,
            "vision_width": int(tower.spec["hidden_size"]),
            "vision_heads": int(tower.spec["num_attention_heads"]),
            "vision_mlp": int(tower.spec["intermediate_size"]),
        }
    tile = tower.tiny_tile if tiny else tower.tile
    if tower.name == "clip-l14-336":
        pinpoints = [[tile * p // 336 for p in pin] for pin in LLAVA_NEXT_7B_PINPOINTS]
        built = build_llava_next(tile_pixels=tile, patch_size=14, pinpoints=pinpoints, **vision, **TINY_LLM, seed=0)
    elif tower.name == "siglip-so400m":  # the builder's pinpoints: multiples of the tile up to 3 x 3
        built = build_llava_onevision(tile_pixels=tile, patch_size=14, **vision, **TINY_LLM, seed=0)
    else:
        built = build_internvl(tile_pixels=tile, patch_size=14, use_qk_norm=False, **vision, **TINY_LLM, seed=0)
    if not tiny:
        _check_spec(tower, built.model.config.vision_config)
    _check_host(tower, built.model.config)
    return built


def _check_spec(tower: Tower, config: Any) -> None:
    """The built tower has exactly the real tower's geometry (guards against a builder change)."""
    wrong = {
        key: getattr(config, key, None)
        for key, value in tower.spec.items()
        if _plain(getattr(config, key, None)) != _plain(value)
    }
    if wrong:
        raise HeroError.field(f"{tower.name} vision_config", wrong, f"the real tower's fields {tower.spec}")


def _check_host(tower: Tower, config: Any) -> None:
    """The host's own fields the bench relies on (e.g. LLaVA-OneVision's feature layer and strategy)."""
    wrong = {key: getattr(config, key, None) for key, value in tower.host_spec if getattr(config, key, None) != value}
    if wrong:
        raise HeroError.field(f"{tower.name} config", wrong, f"the host's fields {dict(tower.host_spec)}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def image_size(views: int, tile: int) -> tuple[int, int]:
    """(height, width) of an image both hosts cut into ``views`` views: 1 x 2, 1 x 3 or 2 x 2 tiles + one."""
    rows, cols = {3: (1, 2), 4: (1, 3), 5: (2, 2)}[views]
    return rows * tile, cols * tile


@dataclass
class Case:
    """A built host, its adapter and pruner, and the inputs of the three modes."""

    tower: Tower
    model: Any
    adapter: Any
    pruner: Pruner
    host_inputs: dict[str, Tensor]  # what the host's get_image_features takes
    hero_inputs: dict[str, Tensor]  # what adapter.encode takes (processor outputs + image_inputs)
    runs: list[int] | None
    relevance: Tensor  # (V,) stand-in for the text scorer's output


def make_case(tower: Tower, args: argparse.Namespace, attn: str) -> Case:
    """Build ``tower``'s host on ``args.device`` / ``args.dtype`` with attention ``attn`` and V views of pixels."""
    from .. import get_adapter

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    built = build_host(tower, args.tiny)
    model = built.model
    if attn != model.config._attn_implementation:
        model.set_attn_implementation(attn)
    model = model.to(device=device, dtype=dtype).eval()
    tile, views = built.tile_pixels, args.views
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(views, 3, tile, tile, generator=generator).to(device=device, dtype=dtype)
    sizes = torch.tensor([image_size(views, tile)], dtype=torch.long, device=device)
    if tower.host in ("LLaVA-NeXT", "LLaVA-OneVision"):
        host_inputs = {"pixel_values": pixels[None], "image_sizes": sizes}  # (I, T, 3, h, w), as the processor
        hero_inputs, runs, thumbnail = dict(host_inputs), None, 0
    else:
        vision = model.config.vision_config
        side = int(tile // _pair(vision.patch_size)[0] * model.config.downsample_ratio)
        host_inputs = {"pixel_values": pixels}  # (sum T, 3, 448, 448), as the processor
        hero_inputs = {"pixel_values": pixels, "image_sizes": sizes}  # + adapter.image_inputs' image_sizes
        runs, thumbnail = [views * side * side], views - 1
    adapter = get_adapter(model, processor=built.processor)
    relevance = torch.linspace(0.1, 0.3, views, device=device)
    relevance[thumbnail] = 0.0
    pruner = presets.hero(KEEP_RATIO, depth=tower.layers)
    return Case(tower, model, adapter, pruner, host_inputs, hero_inputs, runs, relevance)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


# ------------------------------------------------------------------------------------------------ modes
def host_call(case: Case) -> Any:
    """(a) The host's own image-feature call."""
    return case.model.model.get_image_features(**case.host_inputs, return_dict=True)


def hero_call(case: Case) -> tuple[list[Any], list[Any]]:
    """(b) The library's path: ``adapter.encode`` (host call under HERO's hooks), then a plan per image."""
    images = case.adapter.encode(case.hero_inputs, case.pruner.layers, runs=case.runs)
    plans = [case.pruner.plan(image.tiles, case.relevance) for image in images]
    return images, plans


def eager_call(case: Case) -> Any:
    """(c) The peers' route: the host call (eager attention) with every layer's attention map."""
    return case.model.model.get_image_features(**case.host_inputs, return_dict=True, output_attentions=True)


def runner(mode: str) -> Callable[[Case], Any]:
    return {"a_host": host_call, "b_hero": hero_call, "c_eager": eager_call}[mode]


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
    """Size of the attention maps ``output_attentions=True`` keeps: L x V x H x (P + 1)^2 values (P^2: SigLIP)."""
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


def memory_in_subprocess(tower: Tower, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "hero_adapters.bench.encode",
        "--memory-mode",
        mode,
        "--tower",
        tower.name,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--views",
        str(args.views),
        "--threads",
        str(args.threads),
        *(["--tiny"] if args.tiny else []),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise HeroError.field(
            f"memory subprocess ({tower.name}, {mode})", done.returncode, "exit code 0", done.stderr[-2000:]
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


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
    return {"seconds": seconds, "plan_s": plan_s, "checks": checks, "geometry": geometry}


# ------------------------------------------------------------------------------------------------ main
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog="hero bench encode", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--tower", default="all", choices=[*TOWERS, "all"], help="vision tower(s) to time")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the three modes (median)")
    parser.add_argument("--plan-repeats", type=int, default=50, help="repeats of planning alone (median)")
    parser.add_argument("--views", type=int, default=5, choices=[3, 4, 5], help="views of the one image")
    parser.add_argument(
        "--threads", type=_threads, default=torch.get_num_threads(), help=f"torch CPU threads (1 to {MAX_THREADS})"
    )
    parser.add_argument(
        "--eager",
        default="auto",
        choices=["auto", "on", "off"],
        help="mode (c): auto = only if its attention maps fit in the free memory",
    )
    add_output_options(parser)
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-size towers (CI)
    parser.add_argument("--memory-mode", choices=MODES, help=argparse.SUPPRESS)  # internal: one subprocess
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.plan_repeats < 1:
        parser.error("--repeats and --plan-repeats must be >= 1")
    if args.memory_mode and args.tower == "all":
        parser.error("--memory-mode needs one --tower")
    args.device = pick_device(args.device).type
    return args


def _eager_decision(tower: Tower, args: argparse.Namespace) -> tuple[bool, str]:
    maps = eager_maps_bytes(tower, args)
    if args.eager != "auto":
        return args.eager == "on", f"--eager {args.eager}"
    free = available_bytes(torch.device(args.device))
    layers = tower.layers
    # the kept maps, plus a few layers' worth of scratch (logits before the softmax), plus the two hosts
    need = maps * (layers + 3) // layers + (0 if args.tiny else 4 * int(GIB))
    fits = need < free
    verdict = "measured" if fits else "skipped"
    return fits, f"{verdict}: maps {maps / GIB:.1f} GiB, needs ~{need / GIB:.1f} GiB, {free / GIB:.1f} GiB free"


def run_tower(tower: Tower, args: argparse.Namespace) -> dict[str, Any]:
    eager, eager_note = _eager_decision(tower, args)
    modes = MODES if eager else MODES[:2]
    _LOG.info("%s in %s: modes %s (eager %s)", tower.title, tower.host, ", ".join(modes), eager_note)
    timing = measure_time(tower, args, modes)
    memory = {
        mode: memory_in_subprocess(tower, mode, args)
        for mode in progress(modes, desc=f"bench encode: {tower.name} memory")
    }
    results = {
        mode: {
            "seconds": [round(s, 4) for s in timing["seconds"][mode]],
            "median_s": statistics.median(timing["seconds"][mode]),
            "min_s": min(timing["seconds"][mode]),
            **memory[mode],
        }
        for mode in modes
    }

    def ratio(mode: str, key: str) -> float | None:
        """``mode`` over (a); None where (a)'s value is 0 (an extra-memory of 0 bytes, seen in-process)."""
        base = float(results["a_host"][key])
        return float(results[mode][key]) / base if base > 0 else None

    ratios = {
        f"{mode[0]}/a_{name}": ratio(mode, key)
        for mode in modes[1:]
        for name, key in (
            ("time", "median_s"),
            ("time_min", "min_s"),
            ("peak_memory", "peak_bytes"),
            ("extra_memory", "extra_bytes"),
        )
    }
    host_ms = results["a_host"]["median_s"] * 1e3
    plan = {
        "plan_ms": timing["plan_s"] * 1e3,
        "a_host_ms": host_ms,
        "plan/a_host": timing["plan_s"] * 1e3 / host_ms,
        "what": "Pruner.plan on the encoded views (EncodedTiles validation + budgets + selection), median of "
        f"{args.plan_repeats}, against the median of (a) over the same views",
    }
    time_ratio, peak_ratio = ratios["b/a_time"], ratios["b/a_peak_memory"]  # (a)'s time and peak are > 0
    met = {
        "b/a_time": time_ratio is not None and time_ratio <= TIME_TARGET,
        "b/a_peak_memory": peak_ratio is not None and peak_ratio <= MEMORY_TARGET,
        "plan/a_host": plan["plan/a_host"] < PLAN_TARGET,
    }
    geometry = timing["geometry"]
    return {
        "tower": tower.title,
        "host": tower.host,
        "vision_config": "tiny test tower" if args.tiny else tower.spec,
        "image_size": list(image_size(args.views, tower.tiny_tile if args.tiny else tower.tile)),
        **geometry,
        "layers_note": tower.layers_note,
        "eager": eager_note,
        "modes": results,
        "ratios": ratios,
        "plan": plan,
        "met": met,
        "meets_targets": all(met.values()),
        "checks": timing["checks"],
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _yes(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table_lines(towers: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for record in towers.values():
        modes = record["modes"]
        layers = ", ".join(str(x) for x in record["hooked_layers"])
        lines += [
            f"#### {record['tower']} in {record['host']}: {record['views']} views x {record['tokens_per_view']} tokens",
            "",
            f"Hooked layers {layers} ({record['layers_note']}); eager (c): {record['eager']}.",
            "",
            "| mode | median (s) | min (s) | peak (GiB) | time / (a) | peak / (a) |",
            "|---|---|---|---|---|---|",
        ]
        for mode, m in modes.items():
            time_ratio = m["median_s"] / modes["a_host"]["median_s"]
            peak_ratio = m["peak_bytes"] / modes["a_host"]["peak_bytes"]
            lines.append(
                f"| {mode} | {m['median_s']:.2f} | {m['min_s']:.2f} | {m['peak_bytes'] / GIB:.2f} | "
                f"{time_ratio:.3f} | {peak_ratio:.3f} |"
            )
        ratios, met = record["ratios"], record["met"]
        lines += [
            "",
            f"(b) / (a): time {ratios['b/a_time']:.3f} (target <= {TIME_TARGET}: {_yes(met['b/a_time'])}), "
            f"peak memory {ratios['b/a_peak_memory']:.3f} (target <= {MEMORY_TARGET}: "
            f"{_yes(met['b/a_peak_memory'])}).",
            "",
        ]
    lines += [
        "#### Planning alone against the host's image-feature call (a)",
        "",
        "| tower | V x N | plan (ms) | (a) (ms) | plan / (a) | target < 1% |",
        "|---|---|---|---|---|---|",
    ]
    for record in towers.values():
        plan = record["plan"]
        lines.append(
            f"| {record['tower']} | {record['views']} x {record['tokens_per_view']} | {plan['plan_ms']:.2f} | "
            f"{plan['a_host_ms']:.0f} | {100 * plan['plan/a_host']:.3f}% | {_yes(record['met']['plan/a_host'])} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.memory_mode:
        print(json.dumps(measure_memory(TOWERS[args.tower], args.memory_mode, args)))
        return 0
    folder = output_folder(args.out, args.write_results)  # checked before any host is built
    torch.set_num_threads(args.threads)
    chosen = list(TOWERS.values()) if args.tower == "all" else [TOWERS[args.tower]]
    size = "tiny test towers" if args.tiny else "real-size towers, random weights"
    _LOG.info(
        "bench encode: %s (%s), %d views, %s on %s, %d threads, %d repeats",
        ", ".join(t.name for t in chosen),
        size,
        args.views,
        args.dtype,
        args.device,
        args.threads,
        args.repeats,
    )
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    towers = {tower.name: run_tower(tower, args) for tower in progress(chosen, desc="bench encode")}
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    names = " and ".join(f"{r['tower']} ({r['host']})" for r in towers.values())
    record = {
        "benchmark": "bench_encode",
        "what": f"{names} ({size}), {args.views} views, {args.dtype}: (a) host get_image_features, "
        "(b) adapter.encode + Pruner.plan, (c) eager output_attentions=True; medians",
        "machine": {
            **machine(torch.device(args.device)),
            "dtype": args.dtype,
            "load_average_1_5_15_min": {"before": load_before, "after": load_after},
        },
        "measured_at": now(),
        "setup": {
            "towers": [tower.name for tower in chosen],
            "views": args.views,
            "repeats": args.repeats,
            "plan_repeats": args.plan_repeats,
            "hosts": "built by hero_adapters.testing (build_llava_next / build_internvl / build_llava_onevision): "
            "real-size vision "
            f"tower, tiny LLM {TINY_LLM}, random weights, seed 0",
            "timing": "one process per run, modes round-robin after one warm-up each; median and min of the repeats",
            "hero_preset": f"presets.hero({KEEP_RATIO}, depth=<the tower's layers>) (24 layers: the paper's "
            "layers; 27: scaled by hero_core.presets.scale_layers); "
            "relevance: a fixed vector standing in for the text scorer",
            "memory": "one subprocess per mode; peak = process high-water mark (CPU) or max allocated (CUDA); "
            "extra = peak minus the footprint after building the host",
        },
        "towers": towers,
        "targets": {"b/a_time": TIME_TARGET, "b/a_peak_memory": MEMORY_TARGET, "plan/a_host": PLAN_TARGET},
        "meets_targets": all(r["meets_targets"] for r in towers.values()),
    }
    name = "encode" if args.dtype == "float32" else f"encode-{args.dtype}"
    name = name if args.device == "cpu" else f"{name}-{args.device}"
    name = name if args.tower == "all" else f"{name}-{args.tower}"
    name = f"{name}-tiny" if args.tiny else name
    path = write_results(name, record, table_lines(towers), folder)
    for result in towers.values():
        print(f"  {result['tower']} in {result['host']} ({result['views']} x {result['tokens_per_view']} tokens):")
        for mode, m in result["modes"].items():
            print(
                f"    {mode:8s} median {m['median_s']:7.3f} s   peak {m['peak_bytes'] / GIB:6.2f} GiB   "
                f"extra {m['extra_bytes'] / GIB:6.2f} GiB"
            )
        ratios, met, plan = result["ratios"], result["met"], result["plan"]
        print(
            f"    (b)/(a): time {ratios['b/a_time']:.3f} ({_yes(met['b/a_time'])}, <= {TIME_TARGET})  "
            f"peak memory {ratios['b/a_peak_memory']:.3f} ({_yes(met['b/a_peak_memory'])}, <= {MEMORY_TARGET})  "
            f"extra memory {_fmt(ratios['b/a_extra_memory'])}"
        )
        if "c/a_time" in ratios:
            print(
                f"    (c)/(a): time {ratios['c/a_time']:.3f}  peak memory {ratios['c/a_peak_memory']:.3f}  "
                f"extra memory {_fmt(ratios['c/a_extra_memory'])}"
            )
        print(
            f"    plan alone {plan['plan_ms']:.2f} ms = {100 * plan['plan/a_host']:.3f}% of (a) "
            f"({_yes(met['plan/a_host'])}, < 1%); checks {result['checks']}"
        )
    print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
