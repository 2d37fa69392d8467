"""Helpers every host file uses: token ids, pixel normalisation, casting, finiteness and container checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from hero_core import HeroError, to_device

from ..adapter import AssembledImage, Box, EncodedImage, EncoderFacts
from ..extras import require
from ..pixels import check_channels, unnormalise
from ..towers import attention_modules, full_attention_layers, tower_recipe

__all__ = [
    "TransformersHost",
    "assemble_source",
    "canvas_boxes",
    "check_finite",
    "check_image_sizes",
    "check_pixels",
    "meet_tower",
    "normalisation",
    "pad_token_id",
    "per_image_features",
    "split_tiles",
    "unnormalise",
]

Channels = tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class TransformersHost:
    """The fields and host facts every transformers host adapter shares; a host file sets the class facts.

    Args:
        model: the host's ``...ForConditionalGeneration`` (its base model works for ``HeroVLM.plan``).
        layout: one of the subclass's ``layouts``.
        processor: optional host processor; its image processor's ``image_mean`` / ``image_std`` undo the
            pixel normalisation (and hosts may read more of it).
        image_mean: per-channel mean override (default: the processor's, else the family's ``normalisation``).
        image_std: per-channel std override (default: the processor's, else the family's).

    Raises:
        HeroError: on an unknown layout, bad mean/std, or a model whose base model lacks the family's methods.
    """

    family: ClassVar[str] = "transformers"
    model_class: ClassVar[str] = "AutoModelForImageTextToText"
    required: ClassVar[tuple[str, ...]] = ("get_image_features", "vision_tower")
    default_normalisation: ClassVar[tuple[Channels, Channels]]
    layouts: ClassVar[tuple[str, ...]] = ("vanilla",)
    input_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    encoder_keys: ClassVar[tuple[str, ...]] = ()
    refused_keys: ClassVar[Mapping[str, str]] = {}
    query_source: ClassVar[str] = "cls"

    model: nn.Module = field(repr=False)
    layout: str = "vanilla"
    processor: Any = field(default=None, repr=False)
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.layout not in self.layouts:
            raise HeroError.field("layout", self.layout, f"one of {self.layouts} ({self.family})")
        base = getattr(self.model, "base_model", None)
        if base is None or not all(hasattr(base, name) for name in self.required):
            raise HeroError.field(
                "model",
                type(self.model).__name__,
                f"a transformers {self.family} model whose base model has {list(self.required)}",
                f"Load it with {self.model_class}.from_pretrained(...).",
            )
        mean, std = normalisation(self.processor, self.image_mean, self.image_std, self.default_normalisation)
        object.__setattr__(self, "image_mean", mean)
        object.__setattr__(self, "image_std", std)

    @property
    def base(self) -> Any:
        """The host's base model: owns the vision tower, the projector and the language model."""
        return self.model.base_model

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def vision_tower(self) -> nn.Module:
        """The host's vision encoder, which the CLS-attention hooks record."""
        return self.base.vision_tower  # type: ignore[no-any-return]

    @property
    def image_token_id(self) -> int:
        """The placeholder id the processor writes for every image token."""
        token = getattr(self.config, "image_token_id", None)
        if token is None:
            token = self.config.image_token_index
        return int(token)

    @property
    def pad_token_id(self) -> int:
        """The id written into new padding: generation config, then text config, then eos, then 0."""
        return pad_token_id(self.model)

    @cached_property
    def num_layers(self) -> int:
        """Depth of the vision tower (its attention modules, found by the tower recipe)."""
        return len(attention_modules(self.vision_tower)[0])

    @property
    def encoder(self) -> EncoderFacts:
        """The encoder's facts as data: depth, CLS position, query source, feature layer, tower recipe, and the
        full-attention layers of a tower that mixes them with window attention."""
        recipe = tower_recipe(self.vision_tower)
        layer = getattr(self.config, "vision_feature_layer", -1)
        return EncoderFacts(
            depth=self.num_layers,
            cls_position=recipe.cls_position,
            query_source=self.query_source,
            feature_layer=tuple(int(x) for x in layer) if isinstance(layer, (list, tuple)) else int(layer),
            tower=recipe.name,
            full_attention=full_attention_layers(self.vision_tower),
        )

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) the processor normalised pixels with."""
        return tuple(self.image_mean or ()), tuple(self.image_std or ())

    def assemble(self, image: EncodedImage, keep: Tensor) -> AssembledImage:
        """The kept tokens of one image (``keep`` (V, N) bool) in the layout's order: one host read."""
        return self.assemble_read(image, keep, host_copies(keep.reshape(-1), image.source))

    def assemble_batch(self, images: Sequence[EncodedImage], keeps: Sequence[Tensor]) -> list[AssembledImage]:
        """``assemble`` for every image of a call, every keep mask and source map read in ONE host-device transfer
        (the optional batched seam ``HeroVLM`` uses when an adapter has it). A subclass that overrides ``assemble``
        gets its own ``assemble`` called image by image."""
        if type(self).assemble is not TransformersHost.assemble:
            return [self.assemble(image, keep) for image, keep in zip(images, keeps, strict=True)]
        pairs = [(keep.reshape(-1), image.source) for image, keep in zip(images, keeps, strict=True)]
        copies = host_copies_many(pairs)
        return [self.assemble_read(image, keep, copy) for image, keep, copy in zip(images, keeps, copies, strict=True)]

    def assemble_read(self, image: EncodedImage, keep: Tensor, copies: tuple[Tensor, Tensor]) -> AssembledImage:
        """``assemble`` once the flat keep mask and the source map are on the host (``copies``). Default: the host's
        own order (``assemble_source``)."""
        return assemble_source(image, keep, copies)


def pad_token_id(model: Any) -> int:
    """The id written into new padding: generation config, then text config, then the config; pad, then eos, then 0."""
    config = model.config
    for source in (getattr(model, "generation_config", None), getattr(config, "text_config", None), config):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(source, name, None)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if isinstance(value, int):
                return value
    return 0


def normalisation(
    processor: Any,
    image_mean: Sequence[float] | None,
    image_std: Sequence[float] | None,
    default: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) the processor normalised with: explicit values, else the processor's, else ``default``."""
    image_processor = getattr(processor, "image_processor", processor)
    mean = image_mean if image_mean is not None else getattr(image_processor, "image_mean", None)
    std = image_std if image_std is not None else getattr(image_processor, "image_std", None)
    return (
        check_channels("image_mean", mean if mean is not None else default[0], positive=False),
        check_channels("image_std", std if std is not None else default[1], positive=True),
    )


def meet_tower(pixel_values: Tensor, tower: nn.Module) -> Tensor:
    """The processor returns float32 CPU pixels; move them to the tower's device and dtype (what a user of a
    bf16 / CUDA model forgets most often) instead of failing inside the first convolution."""
    weight = next(tower.parameters())
    return pixel_values.to(device=weight.device, dtype=weight.dtype)


def check_finite(features: Sequence[Tensor], cls_tokens: Tensor, pixel_values: Tensor) -> None:
    """HeroError naming the images whose features (or the CLS tokens) hold NaN/inf; one host sync."""
    finite = torch.stack([torch.isfinite(f).all() for f in features] + [torch.isfinite(cls_tokens).all()]).tolist()
    if not all(finite):
        bad = [i for i, ok in enumerate(finite[:-1]) if not ok] or "CLS tokens"
        raise HeroError.field(
            "pixel_values",
            pixel_values,
            f"pixels that encode to finite features (image(s) {bad} gave NaN/inf)",
            "Check the images for NaN/inf and the model's dtype (fp16 can overflow; try bf16 or fp32).",
        )


def check_pixels(pixel_values: object, view: tuple[int, int, int], fix: str) -> Tensor:
    """``pixel_values`` as a float tensor whose last three dims are the encoder's (3, h, w) view."""
    if (
        not isinstance(pixel_values, Tensor)
        or not pixel_values.dtype.is_floating_point
        or pixel_values.dim() not in (4, 5)
        or tuple(pixel_values.shape[-3:]) != view
    ):
        raise HeroError.field(
            "pixel_values",
            pixel_values,
            f"a float tensor (..., {view[0]}, {view[1]}, {view[2]}) of views the vision tower takes",
            fix,
        )
    return pixel_values


def check_image_sizes(image_sizes: object) -> list[tuple[int, int]]:
    """(height, width) per image from an (I, 2) integer tensor or a list of pairs; HeroError otherwise."""
    if isinstance(image_sizes, Tensor):
        ok = image_sizes.dim() == 2 and image_sizes.shape[1] == 2 and not image_sizes.dtype.is_floating_point
        values = image_sizes.tolist() if ok else None
    elif isinstance(image_sizes, (list, tuple)):
        values = [list(size) for size in image_sizes if isinstance(size, (list, tuple))]
        ok = len(values) == len(image_sizes) and all(len(v) == 2 for v in values)
    else:
        ok, values = False, None
    if not ok or values is None or not all(isinstance(x, int) and x > 0 for v in values for x in v):
        raise HeroError.field(
            "image_sizes", image_sizes, "an (I, 2) integer tensor of (height, width), one row per image"
        )
    return [(int(h), int(w)) for h, w in values]


def split_tiles(pixel_values: object, tiles_per_image: list[int], view: tuple[int, int, int]) -> list[Tensor]:
    """Per image, its (T_i, 3, h, w) tiles (thumbnail first); ``view`` is the encoder's (3, h, w)."""
    pixel_values = check_pixels(
        pixel_values, view, "Pass the processor's pixel_values (its crop size must match vision_config.image_size)."
    )
    if not tiles_per_image:
        raise HeroError.field("image_sizes", [], "at least one image")
    if pixel_values.dim() == 5:
        if pixel_values.shape[0] != len(tiles_per_image) or pixel_values.shape[1] < max(tiles_per_image):
            raise HeroError.field(
                "pixel_values",
                pixel_values,
                f"{len(tiles_per_image)} images (one per row of image_sizes) with at least {max(tiles_per_image)} "
                "tiles each",
                "Pass pixel_values and image_sizes from the same processor call.",
            )
        return [pixel_values[i, :t] for i, t in enumerate(tiles_per_image)]
    if pixel_values.dim() == 4 and pixel_values.shape[0] == sum(tiles_per_image):
        return list(torch.split(pixel_values, tiles_per_image))
    raise HeroError.field(
        "pixel_values",
        pixel_values,
        f"(I, T, 3, h, w) or ({sum(tiles_per_image)}, 3, h, w) for the tiles of the {len(tiles_per_image)} images",
        "Pass pixel_values and image_sizes from the same processor call.",
    )


def host_copies(mask: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """A bool ``mask`` and an int64 ``index`` (1-d, any devices) on the CPU, read in one host-device transfer."""
    return host_copies_many([(mask, index)])[0]


def host_copies_many(pairs: Sequence[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """``host_copies`` of every (mask, index) pair, in ONE host-device transfer per device for all of them."""
    groups: dict[torch.device, list[int]] = {}
    for i, (_, index) in enumerate(pairs):
        groups.setdefault(index.device, []).append(i)
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(pairs)
    for members in groups.values():
        chunks = [torch.cat([pairs[i][0].to(pairs[i][1].device, torch.long), pairs[i][1].long()]) for i in members]
        both = torch.cat(chunks).cpu()  # the one host sync of this device
        for i, part in zip(members, torch.split(both, [chunk.numel() for chunk in chunks]), strict=True):
            size = pairs[i][0].numel()
            out[i] = (part[:size].bool(), part[size:])
    return [item for item in out if item is not None]


def assemble_source(image: EncodedImage, keep: Tensor, copies: tuple[Tensor, Tensor]) -> AssembledImage:
    """The kept tokens of one image in the host's own order: every position of ``image.source`` whose
    (view, token) is kept (``keep`` (V, N) bool), and every newline (-1). ``copies``: the flat keep mask and
    the source map, already on the host (``TransformersHost.assemble`` / ``assemble_batch`` read them)."""
    flat, source = copies  # (V * N,) bool, (T,)
    is_newline = source < 0
    sent = is_newline | flat[source.clamp(min=0)]  # (T,)
    offsets = sent.nonzero().squeeze(1)
    newlines = int(is_newline.sum())
    return AssembledImage(
        features=image.features.index_select(0, to_device(offsets, image.features.device, torch.long)),
        offsets=to_device(offsets, image.source.device, torch.long),
        layout_length=int(image.source.shape[0]),
        kept_patch_tokens=int(offsets.shape[0]) - newlines,
        newline_tokens=newlines,
    )


def canvas_boxes(size: tuple[int, int], tile_grid: tuple[int, int] | None) -> tuple[Box, ...]:
    """AnyRes view boxes: the base view (first) is the whole image; tile (r, c) is its crop of the pinpoint
    canvas, onto which the processor resized the image with its aspect kept and centred it (padding lies
    outside [0, 1])."""
    boxes: list[Box] = [(0.0, 0.0, 1.0, 1.0)]
    if tile_grid is None:
        return tuple(boxes)
    height, width = size
    rows, cols = tile_grid
    fit = min(cols / width, rows / height)  # canvas tile units per image pixel
    pad_x, pad_y = (cols - width * fit) / 2, (rows - height * fit) / 2
    for r in range(rows):
        for c in range(cols):
            x0, y0 = (c - pad_x) / (width * fit), (r - pad_y) / (height * fit)
            boxes.append((x0, y0, x0 + 1 / (width * fit), y0 + 1 / (height * fit)))
    return tuple(boxes)


def per_image_features(assembled: Sequence[AssembledImage]) -> dict[str, Any]:
    """``mm_encoder_outputs`` with one (k_i, D) tensor per image: the container of the LLaVA family, whose
    forward concatenates the list and whose ``generate`` expands it for beams image by image."""
    outputs = require("transformers.modeling_outputs")
    kept = [out.features for out in assembled]
    return {"mm_encoder_outputs": {"image": outputs.BaseModelOutputWithPooling(pooler_output=kept)}}
