"""Host adapters, one file per host family; importing this package registers them all.

A new host is its file here (which registers itself with ``@register_adapter``), its tiny builder in
``hero_adapters.testing.builders`` and its row in the shared host test matrix.
"""

from __future__ import annotations

from .internvl import InternVLAdapter
from .llava_next import LlavaNextAdapter

__all__ = ["InternVLAdapter", "LlavaNextAdapter"]
