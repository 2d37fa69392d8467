"""The plugin's engine options (``hf_overrides={"hero": {...}}``) and per-request options
(``mm_processor_kwargs={"hero_query": ..., "hero_keep_ratio": ...}``), checked without importing vLLM.

Every check raises ``HeroError`` (a ``ValueError``) naming the key, the value and the fix: at engine start this
stops the engine with that line; per request vLLM answers the one request with a 400 and keeps serving.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hero_core import HeroError, HeroNativePruner, Pruner, presets

__all__ = ["ENGINE_KEYS", "REQUEST_KEYS", "HeroOptions", "parse_options", "request_options"]

#: Keys of ``hf_overrides["hero"]`` besides the preset's own fields (any field of its allocator or selector,
#: e.g. ``alpha``, ``low_layers``, ``high_layers``, ``tau_v``, ``layer``).
ENGINE_KEYS = ("preset", "keep_ratio", "clip", "clip_dtype")
#: Keys a request may pass in ``mm_processor_kwargs``.
REQUEST_KEYS = ("hero_query", "hero_keep_ratio")
_CLIP_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class HeroOptions:
    """What an engine was started with.

    Attributes:
        preset: the preset's name (``presets.PRESETS``); only presets whose kept count is known in advance
            (``Pruner.count_known``) can serve, because placeholders are counted before the encoder runs.
        keep_ratio: the default keep ratio, for requests that name none (and vLLM's dummy profiling requests).
        clip: a local ``CLIPModel`` directory for the relevance scorer, or None (then the preset must read no
            relevance: e.g. ``alpha=1.0``, ``cls-attention``).
        clip_dtype: the scorer's dtype (default float32).
        overrides: the preset's own fields, as given.
        depth: the host's vision encoder depth (the paper's layers are scaled to it, as in ``presets``).
    """

    preset: str
    keep_ratio: float
    clip: str | None
    clip_dtype: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    depth: int | None = None

    def pruner(self, keep_ratio: float | None = None) -> Pruner:
        """The preset at ``keep_ratio`` (default: the engine's)."""
        ratio = self.keep_ratio if keep_ratio is None else keep_ratio
        return presets.get(self.preset, ratio, depth=self.depth, **dict(self.overrides))


def parse_options(raw: Any, *, depth: int) -> HeroOptions:
    """Check ``hf_overrides["hero"]`` once, at engine start, in every process that builds the model.

    Args:
        raw: the ``hero`` entry of the model's config (a mapping).
        depth: the vision encoder's number of layers.

    Raises:
        HeroError: on a missing entry, an unknown preset or key, a keep ratio outside (0, 1], a preset whose
            count depends on content (``hero-reference``), a preset that reads relevance (of tiles or of tokens)
            without ``clip``, or a ``clip`` path that is not a local CLIP checkpoint.
    """
    if not isinstance(raw, Mapping):
        raise HeroError.field(
            "hf_overrides['hero']",
            raw,
            "a dict of HERO's engine options, e.g. {'preset': 'hero', 'keep_ratio': 0.2, 'clip': '/path/to/clip'}",
            "Start the engine with hf_overrides={'architectures': [...], 'hero': {...}}.",
        )
    options = dict(raw)
    name = options.pop("preset", "hero")
    if not isinstance(name, str) or name.replace("_", "-") not in presets.PRESETS:
        raise HeroError.field("hero.preset", name, f"one of {sorted(presets.PRESETS)}")
    name = name.replace("_", "-")
    if "keep_ratio" not in options:
        raise HeroError.field(
            "hero.keep_ratio", None, "the engine's default keep ratio, a float in (0, 1]", "E.g. 'keep_ratio': 0.2."
        )
    ratio = _ratio("hero.keep_ratio", options.pop("keep_ratio"))
    for reserved, why in (
        ("depth", "it is the model's vision tower depth"),
        ("name", "the preset is named by 'preset'"),
    ):
        if reserved in options:
            raise HeroError.field(
                f"hero.{reserved}", options[reserved], "no such engine option", f"Leave it out: {why}."
            )
    clip = options.pop("clip", None)
    dtype = options.pop("clip_dtype", "float32")
    if dtype not in _CLIP_DTYPES:
        raise HeroError.field("hero.clip_dtype", dtype, f"one of {list(_CLIP_DTYPES)}")
    try:
        pruner = presets.get(name, ratio, depth=depth, **options)
    except HeroError as error:  # an unknown key: name it as the engine option it was given as
        raise HeroError(f"hero.{error}") from None
    if isinstance(pruner, HeroNativePruner):
        raise HeroError.field(
            "hero.preset",
            name,
            "a preset for tiled hosts",
            "hero-native plans hosts without tiles (Qwen-VL), which the plugin does not serve yet; use 'hero'.",
        )
    if not pruner.count_known:
        raise HeroError.field(
            "hero.preset",
            name,
            "a preset whose kept count follows from the image size (Pruner.count_known)",
            "vLLM counts an image's placeholders before its encoder runs; hero-reference's floors keep a "
            "content-dependent number of tokens. Use 'hero' (the paper's exact budgets).",
        )
    if clip is not None:
        clip = _clip_path(clip)
    elif pruner.needs_token_relevance:
        raise HeroError.field(
            "hero.clip",
            None,
            f"a local CLIP checkpoint directory: preset {name!r} weighs each token by its CLIP cosine to the question",
            "Pass 'clip': '/path/to/clip-vit-large-patch14-336', or a preset that needs no text (divprune, dart).",
        )
    elif pruner.uses_relevance:
        raise HeroError.field(
            "hero.clip",
            None,
            f"a local CLIP checkpoint directory: preset {name!r} reads the question's relevance",
            "Pass 'clip': '/path/to/clip-vit-large-patch14-336', or 'alpha': 1.0 for saliency alone.",
        )
    return HeroOptions(preset=name, keep_ratio=ratio, clip=clip, clip_dtype=dtype, overrides=options, depth=depth)


def request_options(kwargs: Mapping[str, Any], options: HeroOptions) -> tuple[str | None, float]:
    """The (query, keep ratio) of one request's ``mm_processor_kwargs`` (defaults: no query, the engine's ratio).

    Raises:
        HeroError: on a query that is not a non-blank string, a keep ratio outside (0, 1], or another ``hero_*`` key (a
            misspelt option would otherwise be ignored); the request fails alone.
    """
    unknown = sorted(
        key for key in kwargs if isinstance(key, str) and key.startswith("hero_") and key not in REQUEST_KEYS
    )
    if unknown:
        raise HeroError.field(
            unknown[0], kwargs[unknown[0]], f"one of {list(REQUEST_KEYS)}", "Check the spelling of the request option."
        )
    query = kwargs.get("hero_query")
    if query is not None and (not isinstance(query, str) or not query.strip()):  # a blank one would reach the
        # scorer, which refuses it inside the engine's step instead of failing this request alone
        raise HeroError.field(
            "hero_query", query, "a non-blank string (the question the relevance is scored against) or null"
        )
    ratio = kwargs.get("hero_keep_ratio")
    return query, options.keep_ratio if ratio is None else _ratio("hero_keep_ratio", ratio)


def _ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise HeroError.field(name, value, "a float in (0, 1]", "The fraction of patch tokens KEPT, e.g. 0.2.")
    if not 0.0 < float(value) <= 1.0:
        raise HeroError.field(name, value, "a float in (0, 1]", "The fraction of patch tokens KEPT, e.g. 0.2.")
    return float(value)


def _clip_path(value: Any) -> str:
    fix = "Pass the directory of a transformers CLIPModel checkpoint (config.json with model_type 'clip')."
    if not isinstance(value, str) or not value:
        raise HeroError.field("hero.clip", value, "a local directory path (a string)", fix)
    config = Path(value) / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise HeroError.field("hero.clip", value, "a directory holding a readable config.json", fix) from None
    if model_type != "clip":
        raise HeroError.field("hero.clip", value, f"a CLIP checkpoint (its config.json says {model_type!r})", fix)
    return str(Path(value).resolve())
