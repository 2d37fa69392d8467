"""Loading a host for ``evaluate``: the checkpoint's config checked, its processor and weights loaded, and the
refusals (code shipped with a checkpoint, pickles holding more than tensors) named in one line."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hero_core import HeroError

from .._paths import exists

__all__ = [
    "PICKLE_SUFFIXES",
    "Host",
    "config_depth",
    "device_dtype",
    "host_config",
    "hub_offline",
    "load_host",
    "refused_checkpoint",
    "weight_errors",
]


def device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``device`` ``auto`` | ``cpu`` | ``cuda`` and ``dtype`` ``auto`` | ``float32`` | ``bfloat16`` | ``float16``;
    ``auto`` is CUDA when present, and bfloat16 there, float32 on the CPU."""
    from ..bench import pick_device

    chosen = pick_device(device)
    if dtype == "auto":
        return chosen, torch.bfloat16 if chosen.type == "cuda" else torch.float32
    return chosen, getattr(torch, dtype)


#: The pickled weight files ``torch.load`` reads (transformers' ``pytorch_model*.bin``, open_clip's ``.pt``/``.pth``).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def config_depth(config: Any) -> int | None:
    """The vision encoder's depth as the checkpoint's config gives it (``vision_config.num_hidden_layers``)."""
    depth = getattr(getattr(config, "vision_config", None), "num_hidden_layers", None)
    return depth if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 2 else None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (a hub id is then read from the local cache only)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def weight_errors() -> tuple[type[BaseException], ...]:
    """What a weight load raises for a checkpoint that cannot load: OS and value errors, a pickle torch refuses,
    and safetensors' own error (an empty or cut-short ``*.safetensors`` file, as an interrupted download leaves
    one), which is none of the others."""
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, pickle.UnpicklingError)
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - the hf extra brings safetensors
        return errors
    return (*errors, SafetensorError)


def refused_checkpoint(
    flag: str, source: str, error: BaseException, *, files: str | Path | None = None
) -> HeroError | None:
    """The message for a checkpoint that hero refuses on purpose, or None for any other loading error.

    hero never runs code that comes with a checkpoint: every transformers loader it calls gets
    ``trust_remote_code=False`` (there is no option to turn it on), and weights load through safetensors or
    ``torch.load(weights_only=True)``. So a checkpoint that needs classes of its own (``auto_map`` in its
    configs) and pickled weights holding objects other than tensors fail to load; this names the refusal and
    the fix instead of transformers' advice to pass ``trust_remote_code=True`` / ``weights_only=False``.

    Args:
        flag: the flag or argument that named the checkpoint.
        source: its value, as given.
        error: what loading it raised.
        files: where its files are, when ``source`` is not their path (default: ``source``).
    """
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
        # torch's weights_only unpickler met an object that is not a tensor (a corrupt file says otherwise)
        local = Path(source if files is None else files)
        try:
            names = sorted(p.name for p in local.iterdir() if p.suffix in PICKLE_SUFFIXES) if local.is_dir() else []
            if local.is_file():
                names = [local.name]
        except OSError:  # a folder that may be entered but not listed
            names = []
        where = ", ".join(names) if names else "Its pickled weights file"
        return HeroError.field(
            flag,
            source,
            "weights that load without running code (safetensors, or a pickled file holding tensors only)",
            f"{where} holds pickled objects other than tensors, and hero never unpickles those "
            "(torch.load(weights_only=True)). Use the checkpoint's safetensors weights, or convert this file to "
            "safetensors yourself if you trust where it came from.",
        )
    if isinstance(error, ValueError) and _needs_own_code(source, error):
        return HeroError.field(
            flag,
            source,
            "a checkpoint whose classes transformers itself implements",
            "Its configs name code of their own (auto_map) that would have to be imported and run; hero never "
            "runs code shipped with a checkpoint (trust_remote_code is always off). Use a release of the model "
            "in transformers' own classes (the '-hf' checkpoints, e.g. llava-hf/llava-v1.6-vicuna-7b-hf).",
        )
    return None


def _needs_own_code(source: str, error: BaseException) -> bool:
    """transformers refused custom code (its message names trust_remote_code), or the local config.json maps a
    model type transformers lacks to classes of its own."""
    if "trust_remote_code" in str(error).replace(source, ""):  # transformers' advice, not the echoed path
        return True
    try:
        config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    from ..extras import require

    known = require("transformers").models.auto.configuration_auto.CONFIG_MAPPING
    return isinstance(config, dict) and "auto_map" in config and config.get("model_type") not in known


@dataclass(frozen=True)
class Host:
    """A loaded host model and its processor (``load_host``), or your own: ``Host(source, model, processor, ...)``.

    Attributes:
        source: the checkpoint directory or hub id (for reports).
        model: the ``...ForConditionalGeneration`` model, in eval mode on ``device``.
        processor: its processor; batches are padded on the left.
        device: where the model and its inputs live.
        dtype: the model's dtype.
    """

    source: str
    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype

    def text(self, prompt: str) -> str:
        """One user turn with one image and ``prompt``, in the processor's chat template (if it has one)."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
            if text is not None:
                return str(text)
        tag = getattr(self.processor, "image_token", None) or "<image>"
        return f"USER: {tag}\n{prompt} ASSISTANT:"

    def inputs(self, prompts: Sequence[str], images: Sequence[Any]) -> dict[str, Any]:
        """The processor's tensors for one image per prompt, padded on the left, on ``device``."""
        texts = [self.text(prompt) for prompt in prompts]
        inputs = self.processor(images=list(images), text=texts, return_tensors="pt", padding=True)
        return {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in inputs.items()}


def host_config(source: str | Path) -> Any:
    """The checkpoint's ``transformers`` config, checked (a ``config.json``, a model type with an adapter); cheap:
    only the config is read, so the command line calls it before anything loads.

    Raises:
        HeroError: on a path without ``config.json``, an unreadable config, a config that needs code of its own
            (``auto_map``; never run) or a model type without an adapter (each names ``--model``).
    """
    from .. import hosts  # noqa: F401  (registers the host adapters)
    from ..adapter import list_adapters
    from ..extras import require

    transformers = require("transformers")
    text = str(source)
    local = Path(text)
    if exists(local) and not (local / "config.json").is_file():
        raise HeroError.field("--model", text, "a checkpoint directory with a config.json")
    try:
        config = transformers.AutoConfig.from_pretrained(text, trust_remote_code=False)
    except (OSError, ValueError) as error:
        refused = refused_checkpoint("--model", text, error)
        raise refused or HeroError.field(
            "--model", text, "a checkpoint directory or a cached hub id", str(error)
        ) from error
    if config.model_type not in list_adapters():
        raise HeroError.field(
            "--model model_type",
            config.model_type,
            f"a model type with an adapter, one of {list_adapters()}",
            f"{text} is not a supported checkpoint.",
        )
    return config


def load_host(
    source: str | Path,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    steps: Any = None,
    check_processor: Callable[[Any], None] | None = None,
) -> Host:
    """Load a supported checkpoint and its processor (checked: config, model type, processor files, weights).

    Args:
        source: checkpoint directory or cached hub id.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        dtype: ``"auto"``, a dtype name or a ``torch.dtype``.
        steps: optional progress object (``set_description`` / ``update``), advanced once for the processor
            and once for the model.
        check_processor: optional check of the loaded processor, called before the weights load (the command
            line refuses prompts with the processor's own image placeholder there).

    Raises:
        HeroError: on a path without ``config.json``, a model type without an adapter, missing processor
            files, weights that do not load, a checkpoint that needs code of its own or pickled weights holding
            more than tensors (both refused: nothing from the checkpoint runs; each names ``--model``), or from
            ``check_processor``.
    """
    from ..extras import require

    transformers = require("transformers")
    if not isinstance(device, torch.device):
        device = device_dtype(device, "auto")[0]
    if not isinstance(dtype, torch.dtype):
        dtype = device_dtype(device.type, dtype)[1]
    text = str(source)
    host_config(text)
    if steps is not None:
        steps.set_description("loading processor")
    try:
        processor = transformers.AutoProcessor.from_pretrained(text, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as error:
        raise refused_checkpoint("--model", text, error) or HeroError.field(
            "--model", text, "a checkpoint with its processor files (preprocessor/tokenizer configs)", str(error)
        ) from error
    if check_processor is not None:
        check_processor(processor)
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # batches for generate: decoder-only LLMs generate after the prompt
    if steps is not None:
        steps.update()
        steps.set_description("loading model")
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            text, dtype=dtype, trust_remote_code=False, weights_only=True
        )
    except weight_errors() as error:
        refused = refused_checkpoint("--model", text, error)
        raise refused or HeroError.field("--model", text, "loadable weights", str(error)) from error
    if steps is not None:
        steps.update()
    return Host(source=text, model=model.to(device).eval(), processor=processor, device=device, dtype=dtype)
