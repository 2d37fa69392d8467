"""Budget allocators: how many tokens each view keeps."""

from .hero import HeroAllocator
from .thumbnail_attention import ThumbnailAttentionAllocator
from .uniform import UniformAllocator

__all__ = ["HeroAllocator", "ThumbnailAttentionAllocator", "UniformAllocator"]
