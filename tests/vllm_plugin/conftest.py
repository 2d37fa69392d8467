"""The vLLM tests are collected only where vLLM imports: its own virtual environment (tools/vllm_env/setup.sh builds
it, about 3.5 GB, with transformers < 5.20), so the default ``pytest`` run in ``.venv`` never collects them.

The folder is not named ``vllm``: pytest puts ``tests/`` on ``sys.path``, and ``import vllm`` would then find the
folder as an empty namespace package where vLLM is not installed (and ruff would sort ``vllm`` as first-party). The
check still asks for a regular package first.
"""

from __future__ import annotations

import importlib.util
import os


def _vllm_imports() -> bool:
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:  # absent, or only this folder as a namespace package
        return False
    try:
        import vllm  # noqa: F401
    except Exception:  # installed but broken (e.g. a CUDA build without CUDA): nothing here can run
        return False
    return True


if _vllm_imports():
    collect_ignore_glob: list[str] = []
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
else:
    collect_ignore_glob = ["test_*.py"]
