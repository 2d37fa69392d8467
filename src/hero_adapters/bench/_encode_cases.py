"""``hero bench encode``'s towers and the three modes it times on them (see ``hero_adapters.bench.encode``): the
real towers' geometry, the hosts built around them, and one ``Case`` of pixels per tower and attention."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hero_core import HeroError, Pruner, presets

from ._common import VIT_L14_336

MODES = ("a_host", "b_hero", "c_eager")
KEEP_RATIO = 0.2

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
#: Qwen2.5-VL-7B's vision tower (Qwen2.5-VL 3B / 7B / 72B share it), as transformers ``Qwen2_5_VLVisionConfig`` fields:
#: 32 blocks of width 1280, 16 heads, a gated MLP of 3420; window attention in 112-px windows (8 x 8 patches) except
#: the full-attention blocks 7, 15, 23, 31; 2 x 2 patches merged into one LLM token.
QWEN2_5_VL_7B_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "num_heads": 16,
    "intermediate_size": 3420,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "window_size": 112,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
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
    #: native-resolution hosts (one view per image): the image's (height, width) in pixels, real size / --tiny;
    #: None for the tiled hosts, whose image is ``image_size(--views, tile)``
    image: tuple[int, int] | None = None
    tiny_image: tuple[int, int] | None = None
    #: why mode (c) cannot run on this host ("" where it can)
    no_eager: str = ""

    @property
    def layers(self) -> int:
        """The encoder's depth (tiny builds keep it, so HERO's layers are the same)."""
        return int(self.spec.get("num_hidden_layers", self.spec.get("depth", 0)))

    @property
    def has_cls(self) -> bool:
        """False for SigLIP and Qwen: no CLS token; HERO records the mean-token stand-in query."""
        return self.host not in ("LLaVA-OneVision", "Qwen2.5-VL")

    @property
    def native(self) -> bool:
        """One view per image at native resolution (Qwen2.5-VL): ``presets.hero_native``, not ``presets.hero``."""
        return self.image is not None

    def image_of(self, views: int, tiny: bool) -> tuple[int, int]:
        """(height, width) of the one image the modes encode."""
        if self.image is not None and self.tiny_image is not None:
            return self.tiny_image if tiny else self.image
        return image_size(views, self.tiny_tile if tiny else self.tile)


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
        Tower(
            "qwen2.5-vl",
            "Qwen2.5-VL-7B vision tower",
            "Qwen2.5-VL",
            28,  # one merged token's side in pixels (2 x 2 patches of 14)
            28,
            QWEN2_5_VL_7B_VISION,
            "presets.hero_native(0.2, **preset_options(adapter)): the paper's layers scaled to 32 and snapped to "
            "the full-attention blocks (7, 15, 23, 31); mean-token stand-in query, no CLS",
            image=(672, 1008),  # the processor's grid: 48 x 72 patches, 24 x 36 = 864 merged tokens
            tiny_image=(112, 168),  # 8 x 12 patches, 4 x 6 = 24 merged tokens; 2 windows of 8 x 8 patches
            no_eager="not applicable: Qwen2.5-VL's vision attention returns no attention maps "
            "(output_attentions records nothing)",
        ),
    )
}


def build_host(tower: Tower, tiny: bool) -> Any:
    """The tower's host (``BuiltHost``), real vision size and a tiny LLM, or everything tiny; seeded."""
    from ..testing import (
        LLAVA_NEXT_7B_PINPOINTS,
        build_internvl,
        build_llava_next,
        build_llava_onevision,
        build_qwen2_5_vl,
    )

    if tower.name == "qwen2.5-vl":
        spec = tower.spec
        size: dict[str, int] = dict(TINY_VISION)
        if not tiny:
            size = {"vision_width": spec["hidden_size"], "vision_heads": spec["num_heads"]}
            size["vision_mlp"] = spec["intermediate_size"]
        built = build_qwen2_5_vl(
            vision_layers=tower.layers,
            fullatt_block_indexes=tuple(spec["fullatt_block_indexes"]),
            window_size=int(spec["window_size"]),
            patch_size=int(spec["patch_size"]),
            vision_width=size["vision_width"],
            vision_heads=size["vision_heads"],
            vision_mlp=size["vision_mlp"],
            **TINY_LLM,
            seed=0,
        )
        if not tiny:
            check_spec(tower, built.model.config.vision_config)
        return built

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
        check_spec(tower, built.model.config.vision_config)
    check_host(tower, built.model.config)
    return built


def check_spec(tower: Tower, config: Any) -> None:
    """The built tower has exactly the real tower's geometry (guards against a builder change)."""
    wrong = {
        key: getattr(config, key, None)
        for key, value in tower.spec.items()
        if _plain(getattr(config, key, None)) != _plain(value)
    }
    if wrong:
        raise HeroError.field(f"{tower.name} vision_config", wrong, f"the real tower's fields {tower.spec}")


def check_host(tower: Tower, config: Any) -> None:
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
    relevance: Tensor  # (V,) stand-in for the text scorer's output; native hosts: (R,), one per region


def make_case(tower: Tower, args: argparse.Namespace, attn: str) -> Case:
    """Build ``tower``'s host on ``args.device`` / ``args.dtype`` with attention ``attn`` and V views of pixels."""
    from .. import get_adapter

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    with torch.device(device):  # on CUDA the random weights are made there (a CPU build of a real tower is slow)
        built = build_host(tower, args.tiny)
    model = built.model
    if attn != model.config._attn_implementation:
        model.set_attn_implementation(attn)
    model = model.to(device=device, dtype=dtype).eval()
    tile, views = built.tile_pixels, args.views
    if tower.native:
        return _native_case(tower, built, model, args, device, dtype)
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


def _native_case(
    tower: Tower, built: Any, model: Any, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> Case:
    """Qwen2.5-VL: one image of ``tower.image_of`` pixels through the host's own image processor (its grid, its
    patch layout), ``presets.hero_native`` at the adapter's depth and full-attention blocks, and one relevance value
    per region of the image's token grid."""
    from .. import get_adapter
    from ..adapter import preset_options

    height, width = tower.image_of(args.views, args.tiny)
    generator = torch.Generator().manual_seed(1)
    picture = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
    raw = built.processor.image_processor(images=[picture], return_tensors="pt")
    grid = raw["image_grid_thw"]
    if [int(v) for v in grid[0]] != [1, height // built.patch_size, width // built.patch_size]:
        raise HeroError.field(f"{tower.name} image_grid_thw", grid.tolist(), f"the {height} x {width} image's patches")
    host_inputs = {
        "pixel_values": raw["pixel_values"].to(device=device, dtype=dtype),
        "image_grid_thw": grid.to(device),
    }
    adapter = get_adapter(model, processor=built.processor)
    pruner = presets.hero_native(KEEP_RATIO, **preset_options(adapter))
    merge = int(model.config.vision_config.spatial_merge_size)
    regions = pruner.allocator.regions((int(grid[0, 1]) // merge, int(grid[0, 2]) // merge))
    relevance = torch.linspace(0.1, 0.3, len(regions), device=device)  # (R,) one CLIP score per region
    return Case(tower, model, adapter, pruner, host_inputs, dict(host_inputs), None, relevance)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


# ------------------------------------------------------------------------------------------------ the three modes
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
