"""hero_core: training-free early dropping of visual tokens for high-resolution VLMs (HERO and baselines).

Pure algorithms on torch tensors; never imports transformers, open_clip or timm. Adapters for host
models live in ``hero_adapters``.
"""

from . import counts, presets
from ._device import to_device
from ._errors import HeroError
from .allocators import HeroAllocator, ThumbnailAttentionAllocator, UniformAllocator
from .counts import ImageCounts
from .efficiency import VICUNA_7B, VICUNA_13B, ModelShape, kv_cache_bytes, prefill_flops
from .native import HeroNativePruner, NativePlan, RegionAllocator
from .plan import Allocation, PrunePlan, Pruner
from .protocols import BudgetAllocator, TextScorer, TileEncoderOutputs, TokenSelector
from .selectors import (
    CDPrunerSelector,
    ClsAttentionSelector,
    DartSelector,
    DivPruneSelector,
    FunctionAwareSelector,
    RandomSelector,
    StridedSelector,
    VisionZipSelector,
)
from .tiles import EncodedTiles

__version__ = "0.1.0"

__all__ = [
    "VICUNA_7B",
    "VICUNA_13B",
    "Allocation",
    "BudgetAllocator",
    "CDPrunerSelector",
    "ClsAttentionSelector",
    "DartSelector",
    "DivPruneSelector",
    "EncodedTiles",
    "FunctionAwareSelector",
    "HeroAllocator",
    "HeroError",
    "HeroNativePruner",
    "ImageCounts",
    "ModelShape",
    "NativePlan",
    "PrunePlan",
    "Pruner",
    "RandomSelector",
    "RegionAllocator",
    "StridedSelector",
    "TextScorer",
    "ThumbnailAttentionAllocator",
    "TileEncoderOutputs",
    "TokenSelector",
    "UniformAllocator",
    "VisionZipSelector",
    "counts",
    "kv_cache_bytes",
    "prefill_flops",
    "presets",
    "to_device",
]
