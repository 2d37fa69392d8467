"""The host seam: the ``HostAdapter`` Protocol, what an adapter hands to ``HeroVLM``, and the adapter registry.

``HeroVLM`` knows no host: every host fact (which processor outputs are read, how the vision path runs,
the layout of the LLM-side sequence, the feature container the host's ``generate`` expects, token ids)
lives in an adapter. Adapters for a ``config.model_type`` register with ``@register_adapter(...)``; a
model without a registered type is wrapped by passing an adapter instance: ``HeroVLM(model, pruner,
adapter=MyAdapter(model))``. ``hero_adapters.testing.check_adapter`` tests an adapter against its host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from torch import Tensor

from hero_core import EncodedTiles, HeroError

__all__ = [
    "AssembledImage",
    "Box",
    "EncodedImage",
    "EncoderFacts",
    "HostAdapter",
    "PrunedPrompt",
    "all_layouts",
    "check_host_adapter",
    "get_adapter",
    "list_adapters",
    "preset_options",
    "register_adapter",
]

#: (x0, y0, x1, y1) of a view on the original image, as fractions of its width and height (a view of a
#: padded canvas may reach outside [0, 1]).
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class EncodedImage:
    """One image after the host's own vision encoder (V views, N tokens per view, T = tokens_in).

    Attributes:
        tiles: the planner's input (CLS tokens, CLS attention, valid mask, grids). N counts the tokens
            the LLM receives per view (InternVL: one per 2 x 2 patch block).
        features: (T, D) the host's unpruned LLM-side sequence for this image, newlines included.
        source: (T,) int64: ``view * N + token`` that each position of ``features`` comes from, -1 for a
            newline token. Learned by running the host's own packing on an index tensor.
        views: (V, 3, h, w) float32 RGB in [0, 1] (the host's normalisation undone), for text scorers.
        image_size: (height, width) of the original image, or None where the host's inputs do not tell.
        view_boxes: where each view lies on the original image (``Box`` per view), or None if unknown.
    """

    tiles: EncodedTiles
    features: Tensor
    source: Tensor
    views: Tensor
    image_size: tuple[int, int] | None = None
    view_boxes: tuple[Box, ...] | None = None

    @property
    def tokens_in(self) -> int:
        """What the unpruned host sends to the LLM for this image (newlines included)."""
        return int(self.features.shape[0])


@dataclass(frozen=True)
class AssembledImage:
    """The kept tokens of one image, in the order the LLM receives them (k = tokens_out).

    Attributes:
        features: (k, D) kept features and newline tokens in the layout's order.
        offsets: (k,) int64 position of each token inside the layout's unpruned sequence
            (for ``positions="original"``).
        layout_length: length of the layout's unpruned sequence (vanilla: ``tokens_in``).
        kept_patch_tokens: patch tokens in ``features``.
        newline_tokens: newline tokens in ``features``.
    """

    features: Tensor
    offsets: Tensor
    layout_length: int
    kept_patch_tokens: int
    newline_tokens: int

    @property
    def tokens_out(self) -> int:
        """Tokens sent to the LLM for this image."""
        return self.kept_patch_tokens + self.newline_tokens


@dataclass(frozen=True)
class EncoderFacts:
    """What a host's vision encoder is, as data (``TransformersHost.encoder`` gives them for the library's hosts).

    Attributes:
        depth: encoder layers (selector layers must lie in ``[0, depth)``; ``presets.hero(r, depth=depth)``
            scales the paper's layers to it).
        cls_position: where the tower's CLS token sits: ``"first"``, ``"last"`` or ``"none"`` (its tower recipe).
        query_source: what the query row is: ``"cls"`` or a stand-in (``"mean-token"``).
        feature_layer: the encoder layer(s) whose output the host sends on to the LLM (``vision_feature_layer``).
        tower: the tower recipe's name.
        full_attention: the layers that attend over the whole image in a tower that mixes them with window
            attention (Qwen2.5-VL's ``fullatt_block_indexes``), or None (every layer does). Presets take it
            (``presets.get(name, r, depth=..., full_attention=...)``) and snap their default layers to it.
    """

    depth: int
    cls_position: str
    query_source: str
    feature_layer: int | tuple[int, ...]
    tower: str
    full_attention: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PrunedPrompt:
    """One call's prompt before and after pruning, for adapters that set the LLM's positions themselves.

    ``HeroVLM`` hands it to an adapter's optional ``prompt_inputs(prompt) -> dict`` method (hosts whose
    positions the host derives from the image grid, such as Qwen-VL's M-RoPE); what it returns is added to
    the host's ``generate`` / ``forward`` inputs.

    Attributes:
        input_ids: (B, S) the caller's prompt, on the host.
        attention_mask: (B, S) its mask, on the host.
        spans: where each image's placeholder run lies in it (``sequence.Span``, in image order).
        encoded: per image, what the adapter's ``encode`` described (its ``tiles.grid`` ...).
        assembled: per image, the kept tokens (``AssembledImage.offsets``: each kept token's place in its run).
        rebuilt: the pruned prompt (``sequence.Rebuilt``: ids, mask, real lengths), on the caller's device.
        inputs: the adapter's image inputs and encoder options of this call (``input_keys``, ``encoder_keys``).
        side: the padding side of ``rebuilt`` (``"left"`` or ``"right"``).
        generate: True for ``generate``, False for one ``forward``.
        state: what ``prompt_inputs`` leaves for the adapter's optional ``after_host_call(prompt)``, which
            ``HeroVLM`` calls once the host's call succeeded (model state the host's own call would set).
    """

    input_ids: Tensor
    attention_mask: Tensor
    spans: Sequence[Any]
    encoded: Sequence[EncodedImage]
    assembled: Sequence[AssembledImage]
    rebuilt: Any
    inputs: Mapping[str, Any]
    side: str
    generate: bool
    state: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class HostAdapter(Protocol):
    """Everything host-specific that ``HeroVLM`` needs (docs/adapters.md walks through one).

    Attributes:
        model: the host model.
        vision_tower: the host's vision encoder (the module ``cls_attention_hooks`` hooks).
        layout: the chosen layout, one of ``layouts``; ``"vanilla"`` = the host's own sequence at R = 1.
        layouts: the layouts this adapter can assemble.
        input_keys: processor outputs ``encode`` reads (e.g. ``("pixel_values", "image_sizes")``); the first
            is the one whose presence means "there are images".
        encoder_keys: host keywords that belong to the vision path (``vision_feature_layer``, ...); taken out of
            ``generate`` / ``forward`` keywords and given to ``encode``.
        refused_keys: inputs this adapter cannot prune correctly, each with what to do instead.
        image_token_id: the placeholder id of image tokens in ``input_ids``.
        pad_token_id: the id written into new padding.
        num_layers: the vision encoder's depth (selector layers must lie in ``[0, num_layers)``).
        query_source: ``"cls"`` or the stand-in the tower uses (``EncodedTiles.query_source``).
    """

    model: Any
    vision_tower: Any
    layout: str
    layouts: tuple[str, ...]
    input_keys: tuple[str, ...]
    encoder_keys: tuple[str, ...]
    refused_keys: Mapping[str, str]
    image_token_id: int
    pad_token_id: int
    num_layers: int
    query_source: str

    def encode(
        self, inputs: Mapping[str, Any], layers: tuple[int, ...], *, runs: Sequence[int] | None = None
    ) -> list[EncodedImage]:
        """Run the host's vision path once (under ``cls_attention_hooks``) and describe every image.

        ``inputs`` holds the ``input_keys`` given and the ``encoder_keys`` options; ``runs`` are the lengths
        of the image-placeholder runs of the prompt in order (None without a prompt).
        """
        ...

    def assemble(self, image: EncodedImage, keep: Tensor) -> AssembledImage:
        """The kept tokens of one image (``keep`` (V, N) bool) in ``layout``'s order."""
        ...

    def feature_inputs(self, assembled: Sequence[AssembledImage]) -> dict[str, Any]:
        """What the host's ``generate`` / ``forward`` must receive for these kept features (the container)."""
        ...

    def image_inputs(self, images: Sequence[Any]) -> dict[str, Any]:
        """Inputs the processor does not return but ``encode`` can use, from the original PIL images (may be {})."""
        ...


_METHODS = ("encode", "assemble", "feature_inputs", "image_inputs")
_MEMBERS = (*HostAdapter.__annotations__, *_METHODS)


def check_host_adapter(adapter: object) -> HostAdapter:
    """``adapter`` if it satisfies ``HostAdapter`` (every attribute and method present, layout known).

    Raises:
        HeroError: naming the members it lacks.
    """
    missing = [name for name in _MEMBERS if not hasattr(adapter, name)]
    not_callable = [
        name
        for name in ("encode", "assemble", "feature_inputs", "image_inputs")
        if not callable(getattr(adapter, name, None))
    ]
    if missing or not_callable:
        raise HeroError.field(
            "adapter",
            type(adapter).__name__,
            "an object satisfying hero_adapters.HostAdapter",
            f"It lacks {sorted(set(missing + not_callable))}; see docs/adapters.md for the members and an example.",
        )
    layouts = getattr(adapter, "layouts", ())
    if not isinstance(layouts, tuple) or getattr(adapter, "layout", None) not in layouts:
        raise HeroError.field("adapter.layout", getattr(adapter, "layout", None), f"one of adapter.layouts {layouts}")
    return adapter  # type: ignore[return-value]


_ADAPTERS: dict[str, type[Any]] = {}
_LOCK = threading.Lock()
T = TypeVar("T", bound=type[Any])


def register_adapter(*model_types: str) -> Callable[[T], T]:
    """Class decorator: serve the models whose ``config.model_type`` is one of ``model_types``.

    Examples:
        >>> @register_adapter("llava_next")                 # doctest: +SKIP
        ... class LlavaNextAdapter: ...

    Raises:
        HeroError: on no model type, a non-string one, or one that already has an adapter.
    """
    if not model_types or not all(isinstance(name, str) and name for name in model_types):
        raise HeroError.field("model_types", model_types, "one or more non-empty config.model_type strings")

    def decorate(cls: T) -> T:
        with _LOCK:
            taken = {name: _ADAPTERS[name].__name__ for name in model_types if name in _ADAPTERS}
            if taken:
                raise HeroError.field(
                    "model_types", model_types, "model types without an adapter yet", f"Already registered: {taken}."
                )
            for name in model_types:
                _ADAPTERS[name] = cls
        return cls

    return decorate


def list_adapters() -> list[str]:
    """The ``config.model_type`` values that have an adapter, sorted."""
    return sorted(_ADAPTERS)


def all_layouts() -> tuple[str, ...]:
    """Every layout some registered adapter offers (``vanilla`` first), for command-line choices."""
    names: list[str] = ["vanilla"]
    for cls in _ADAPTERS.values():
        names += [name for name in getattr(cls, "layouts", ()) if name not in names]
    return tuple(names)


def get_adapter(model: Any, **options: Any) -> Any:
    """The adapter for ``model``, chosen by ``model.config.model_type`` and built as ``Adapter(model, **options)``.

    Raises:
        HeroError: if the model has no config or its type has no adapter (the message lists the supported ones
            and how to pass an adapter instance instead).
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    cls = _ADAPTERS.get(model_type) if isinstance(model_type, str) else None
    if cls is None:
        raise HeroError.field(
            "model.config.model_type",
            model_type,
            f"one of the supported model types {list_adapters()}",
            "Use a supported model, pass an adapter instance (HeroVLM(model, pruner, adapter=MyAdapter(model))), "
            "or register one with @register_adapter(<model_type>).",
        )
    return cls(model, **options)


def preset_options(adapter: Any) -> dict[str, Any]:
    """``depth`` and ``full_attention`` of an adapter's encoder, for ``presets.get(name, r, **options)``: the
    presets' default layers for this encoder (the paper's scaled to its depth, snapped to its full-attention
    layers where it also has window attention). An adapter without ``encoder`` facts gives its depth only."""
    facts = getattr(adapter, "encoder", None)
    return {"depth": int(adapter.num_layers), "full_attention": getattr(facts, "full_attention", None)}
