"""Let vLLM's LLaVA import chain run in a CPU environment without torchvision.

Installed by ``tools/vllm_env/setup.sh`` into the vLLM virtual environment's site-packages, so Python runs it at
start-up in every process vLLM spawns (API server, engine core, workers).

Why: the CPU build of torch (2.13.0+cpu) has no matching torchvision on PyPI (PyPI's is CUDA-linked and fails with
"operator torchvision::nms does not exist"), so the environment has none. But vLLM's ``models/llava.py`` imports
``models/pixtral.py``, which does ``from transformers.models.pixtral.image_processing_pixtral import
_num_image_tokens``, and that transformers module hard-imports ``torchvision.transforms.v2`` at top level. A
torchvision *stub* does not help (transformers then believes torchvision is present and imports ``torchvision.io``).

What: when torchvision is not installed, pre-seed ``sys.modules`` with a small stand-in for that one transformers
module, carrying the pure-Python ``_num_image_tokens`` (copied from transformers 5.19) that vLLM needs. Anything else
asked of it raises ImportError naming torchvision, as the real import would have. Nothing is imported here (not even
transformers), so start-up stays cheap. When torchvision IS installed this file does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
import types

_NAME = "transformers.models.pixtral.image_processing_pixtral"


def _num_image_tokens(image_size: tuple[int, int], patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """Pixtral's (rows, cols) of patch tokens for an image of ``(height, width)`` (as in transformers 5.19)."""
    height, width = image_size
    patch_height, patch_width = patch_size if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
    return (height - 1) // patch_height + 1, (width - 1) // patch_width + 1


def _missing(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"{_NAME}.{name} needs torchvision, which this environment does not have "
        "(tools/vllm_env/sitecustomize.py stands in for that module with `_num_image_tokens` only)"
    )


def _install() -> None:
    if _NAME in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return
    module = types.ModuleType(_NAME, "Stand-in from tools/vllm_env/sitecustomize.py (no torchvision here).")
    module._num_image_tokens = _num_image_tokens  # type: ignore[attr-defined]
    module.__getattr__ = _missing  # type: ignore[method-assign]
    module.__file__ = __file__
    sys.modules[_NAME] = module


_install()
