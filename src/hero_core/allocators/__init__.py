"""Budget allocators: how many tokens each view keeps.

``exact_split`` and ``tile_views`` are the building blocks for custom allocators: give
``exact_split`` one weight per local tile and it returns budgets with the paper's exact total.
"""

from ._split import exact_split, tile_views
from .hero import HeroAllocator
from .thumbnail_attention import ThumbnailAttentionAllocator
from .uniform import UniformAllocator

__all__ = ["HeroAllocator", "ThumbnailAttentionAllocator", "UniformAllocator", "exact_split", "tile_views"]
