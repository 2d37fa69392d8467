"""Host adapters, one file per host family; importing this package imports every file, which registers itself.

A new host is its file here (decorated with ``@register_adapter(<model_type>)``), its tiny builder in
``hero_adapters.testing.builders`` and its row in the shared host test matrix (``tests/adapters/hosts.py``).
"""

from __future__ import annotations

import importlib
import pkgutil

from .internvl import InternVLAdapter
from .llava_next import LlavaNextAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen3_vl import Qwen3VLAdapter

__all__ = ["InternVLAdapter", "LlavaNextAdapter", "LlavaOnevisionAdapter", "Qwen2_5_VLAdapter", "Qwen3VLAdapter"]

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
