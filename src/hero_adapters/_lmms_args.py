"""The lmms-eval plugin's model_args, checked before any weights load: the preset and its ``set_*`` overrides
(named as the user typed them), the checkpoint folders or hub ids (in our words when missing), the model type
that both lmms-eval's ``llava_hf`` and a HERO adapter serve, and the CLIP checkpoint relevance needs. Only
configs are read here; ``clip_scorer`` alone loads weights (CLIP's, on the CPU)."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hero_core import HeroError, presets

from ._paths import check_folder, check_path, exists
from ._scoring import reads_query
from .evaluate import hub_offline

__all__ = [
    "SET",
    "check_source",
    "checked_model_type",
    "checked_options",
    "checked_pruner",
    "clip_config",
    "clip_scorer",
    "override",
    "pretrained_config",
    "relevance_presets",
]

#: The prefix of a model_arg that overrides a preset field (``set_alpha=0.7``).
SET = "set_"
#: The model types lmms-eval 0.7.3's llava_hf loads (where its module does not say).
_LLAVA_HF_TYPES = ("llava", "llava_next", "llava_onevision")


def _llava_hf_types(cls: Any) -> list[str]:
    """The ``config.model_type`` values llava_hf loads: its module's ``model_map`` (else the 0.7.3 list)."""
    for klass in getattr(cls, "__mro__", ()):
        found = getattr(sys.modules.get(klass.__module__), "model_map", None)
        if isinstance(found, dict) and found:
            return sorted(found)
    return list(_LLAVA_HF_TYPES)


def relevance_presets() -> list[str]:
    """The presets that read a text relevance (``Pruner.uses_relevance``, or per token: ``needs_token_relevance``)."""
    return [name for name in sorted(presets.PRESETS) if reads_query(presets.get(name, 1.0))]


def checked_pruner(
    preset: str, keep_ratio: Any, overrides: dict[str, Any], typed: dict[str, str], depth: int | None
) -> Any:
    """The preset with its overrides, or a HeroError naming the argument as typed (``set_alpah``, not ``alpah``):
    the preset and keep ratio first, then each override alone (its name, then its value), then all together."""
    base = presets.get(preset, keep_ratio) if depth is None else presets.get(preset, keep_ratio, depth=depth)
    parts: tuple[Any, ...] = (base.allocator, base.selector)
    fields = sorted({f.name for part in parts if dataclasses.is_dataclass(part) for f in dataclasses.fields(part)})
    depth_kw = {} if depth is None else {"depth": depth}
    for name, value in overrides.items():
        key = typed[name]
        if name not in fields:
            raise HeroError.field(
                key,
                value,
                f"a field of preset {preset}, one of {[SET + field for field in fields]}",
                "Check the spelling.",
            )
        try:
            presets.get(preset, keep_ratio, **depth_kw, **{name: value})
        except HeroError as error:
            raise _as_typed(error, name, key) from error
    try:
        return presets.get(preset, keep_ratio, **depth_kw, **overrides)
    except HeroError as error:
        shown = ", ".join(f"{typed[name]}={value!r}" for name, value in overrides.items())
        raise HeroError(f"{shown}: {error}") from error


def _as_typed(error: HeroError, name: str, key: str) -> HeroError:
    """``error`` about the preset field ``name``, worded with the model_arg ``key`` the user typed."""
    message = str(error)
    if message.startswith(f"{name}="):
        return HeroError(key + message[len(name) :])
    return HeroError(f"{key}: {message}")


#: A hub id's shape (``name`` or ``owner/name``); anything else that is not a folder is a path that does not exist.
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(?:/[A-Za-z0-9_][\w.-]*)?")


def check_source(argument: str, source: str) -> bool:
    """Whether ``source`` is a local checkpoint folder (True) or left to the hub as an id (False).

    Raises:
        HeroError: naming ``argument`` as typed: a file, a folder without config.json, or a path that is neither a
            folder nor shaped like a hub id ("no such folder", in our words rather than the hub's).
    """
    path = Path(source)
    if exists(path):
        if not path.is_dir():
            raise HeroError.field(argument, source, "a checkpoint folder or a hub id", "It is a file, not a folder.")
        if not (path / "config.json").is_file():
            raise HeroError.field(argument, source, "a checkpoint folder with a config.json")
        return True
    if not _HUB_ID.fullmatch(source) or ".." in source:
        raise HeroError.field(argument, source, "a checkpoint folder or a hub id", "There is no such folder.")
    return False


def _missing(argument: str, source: str, local: bool, error: BaseException) -> HeroError:
    """A config that did not load: a local folder's error in one line, or a hub id found nowhere, in our words."""
    if local:
        return HeroError.field(argument, source, "a checkpoint folder with a readable config.json", _one_line(error))
    where = "in the local hub cache (HF_HUB_OFFLINE is set)" if hub_offline() else "on the hub or in its local cache"
    return HeroError.field(
        argument,
        source,
        "a checkpoint folder or a hub id",
        f"There is no such folder, and no model {source!r} {where}.",
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def pretrained_config(pretrained: str, llava_hf: Any) -> Any:
    """The checkpoint's config, if both llava_hf and a HERO adapter serve its model type (before any weight loads)."""
    from . import hosts  # noqa: F401  (registers the host adapters)
    from .adapter import list_adapters
    from .extras import require

    transformers = require("transformers")
    local = check_source("pretrained", pretrained)
    try:  # hero's own read never runs checkpoint code (llava_hf follows model_args' trust_remote_code)
        config = transformers.AutoConfig.from_pretrained(pretrained, trust_remote_code=False)
    except (OSError, ValueError) as error:
        from .evaluate import refused_checkpoint

        raise refused_checkpoint("pretrained", pretrained, error) or _missing(
            "pretrained", pretrained, local, error
        ) from error
    model_type = getattr(config, "model_type", None)
    loadable = _llava_hf_types(llava_hf)
    supported = [name for name in list_adapters() if name in loadable]
    if model_type not in supported:
        raise HeroError.field(
            "pretrained model_type",
            model_type,
            f"one of {supported}: a tiled (AnyRes) model that lmms-eval's llava_hf loads ({loadable}) and HERO has "
            f"an adapter for ({list_adapters()})",
            "LLaVA-1.5 ('llava') has no tiles to prune; for InternVL, Qwen2.5-VL or Qwen3-VL (which llava_hf does "
            "not load) use HeroVLM(...).attach() around lmms-eval's own model for it in Python (docs/evaluate.md).",
        )
    return config


def checked_model_type(pretrained: str, llava_hf: Any) -> str:
    """The checkpoint's ``model_type``, if both llava_hf and a HERO adapter serve it (before any weight loads)."""
    return str(pretrained_config(pretrained, llava_hf).model_type)


def clip_config(clip: str) -> Any:
    """``clip``'s config, checked to be a full CLIP model's (read only: nothing runs, no weights load)."""
    from .extras import require

    transformers = require("transformers")
    local = check_source("clip", clip)
    try:
        config = transformers.AutoConfig.from_pretrained(clip, local_files_only=local, trust_remote_code=False)
    except (OSError, ValueError) as error:
        from .evaluate import refused_checkpoint

        raise refused_checkpoint("clip", clip, error) or _missing("clip", clip, local, error) from error
    from .text_scorers.transformers import check_clip_config

    check_clip_config(config, "clip", f"{clip} is not one.")
    return config


def clip_scorer(clip: str) -> Any:
    """``HFClipTextScorer.from_pretrained(clip)`` on the CPU (moved to the model's device and dtype once that has
    loaded); its refusals name ``clip``, as typed, instead of the loader's ``path_or_id``."""
    from .text_scorers import HFClipTextScorer

    clip_config(clip)
    try:
        return HFClipTextScorer.from_pretrained(clip)
    except HeroError as error:
        message = str(error)
        if message.startswith("path_or_id"):
            raise HeroError("clip" + message[len("path_or_id") :]) from error
        raise


def override(key: str, value: Any) -> Any:
    """A ``set_<field>`` value: layer lists (``[5,6,7,8]``, ``5:6:7:8``, one int) become int tuples."""
    name = key[len(SET) :]
    if not name.endswith("layers"):
        return value
    if isinstance(value, bool):
        raise HeroError.field(key, value, "layer indices, e.g. [5,6,7,8]")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple)):
        parts: Iterable[Any] = value
    elif isinstance(value, str):
        parts = value.strip().strip("[]()").replace(":", ",").split(",")
    else:
        raise HeroError.field(key, value, "layer indices, e.g. [5,6,7,8]")
    try:
        return tuple(int(str(part).strip()) for part in parts if str(part).strip())
    except ValueError:
        raise HeroError.field(key, value, "layer indices, e.g. [5,6,7,8] or 5:6:7:8") from None


def checked_options(model_type: str, layout: str | None, positions: str, reports: str | None) -> None:
    """``layout`` (one the host's adapter offers), ``positions`` and ``reports`` (a file path whose folder hero may
    write in), before any weights load.

    Raises:
        HeroError: naming the argument as typed.
    """
    from .adapter import _ADAPTERS
    from .vlm import POSITIONS

    if positions not in POSITIONS:
        raise HeroError.field("positions", positions, f"one of {POSITIONS}")
    layouts = tuple(getattr(_ADAPTERS.get(model_type), "layouts", ()))
    if layout is not None and layout not in layouts:
        raise HeroError.field("layout", layout, f"one of {layouts} (the {model_type} adapter's layouts)")
    if reports is not None:
        if not isinstance(reports, str) or not reports:
            raise HeroError.field("reports", reports, "a file path for one JSON line per request")
        path = Path(reports)
        check_path("reports", path)
        if exists(path) and path.is_dir():
            raise HeroError.field("reports", reports, "a file path for one JSON line per request", "It is a folder.")
        check_folder("reports", path.parent)
