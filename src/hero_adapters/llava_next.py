"""LLaVA-NeXT (transformers ``LlavaNextForConditionalGeneration``) adapter.

Encoding goes through the host's own ``get_image_features`` (its attention kernel untouched) under scoped
CLS-attention hooks. Geometry is learned from the host: its ``pack_image_features`` is run on an index
tensor, which tells, for every position of the sequence the host sends to the LLM, which view and patch
it comes from (or that it is a newline). Layouts (HERO_SPEC.md, step 4):

- ``"vanilla"``: the host's sequence with pruned tokens removed (thumbnail first, then the unpadded
  stitched grid in raster order, every unpadded row keeping its newline). Identical to the host at R = 1.
- ``"reference"``: the authors' code: the stitched grid is not unpadded and every one of its ``s * n_h``
  rows, padding rows included, ends with a newline; padding positions are never kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hero_core import EncodedTiles, HeroError

from ._hooks import cls_attention_hooks
from ._optional import require
from ._pixels import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, check_channels
from ._registry import register_adapter
from ._types import AssembledImage, EncodedImage

__all__ = ["LAYOUTS", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "LlavaNextAdapter"]

LAYOUTS = ("vanilla", "reference")


@register_adapter("llava_next")
@dataclass(frozen=True, eq=False)
class LlavaNextAdapter:
    """Binds ``hero_core`` to a transformers LLaVA-NeXT model (V = 1 thumbnail + K tiles, N = s * s patches).

    Args:
        model: ``LlavaNextForConditionalGeneration`` (``LlavaNextModel`` works for ``encode`` / ``assemble`` and
            ``HeroVLM.plan``, not for generation).
        layout: ``"vanilla"`` (default) or ``"reference"``.
        image_mean: per-channel mean the processor normalised with; default OpenAI CLIP's.
        image_std: per-channel std the processor normalised with; default OpenAI CLIP's.

    Raises:
        HeroError: on an unknown layout, bad mean/std, or a model without LLaVA-NeXT's methods.
    """

    model: nn.Module = field(repr=False)
    layout: str = "vanilla"
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise HeroError.field("layout", self.layout, f"one of {LAYOUTS}")
        base = getattr(self.model, "base_model", None)
        needed = ("get_image_features", "pack_image_features", "vision_tower")
        if base is None or not all(hasattr(base, name) for name in needed):
            raise HeroError.field(
                "model",
                type(self.model).__name__,
                f"a transformers LLaVA-NeXT model whose base model has {list(needed)}",
                "Load it with LlavaNextForConditionalGeneration.from_pretrained(...).",
            )
        mean, std = self.image_mean or OPENAI_CLIP_MEAN, self.image_std or OPENAI_CLIP_STD
        object.__setattr__(self, "image_mean", check_channels("image_mean", mean, positive=False))
        object.__setattr__(self, "image_std", check_channels("image_std", std, positive=True))

    # ----------------------------------------------------------------------------------------- host facts
    @property
    def base(self) -> Any:
        """``LlavaNextModel``: owns the vision tower, the projector, packing and the language model."""
        return self.model.base_model

    @property
    def config(self) -> Any:
        return self.model.config

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
        for source in (getattr(self.model, "generation_config", None), self.config.text_config, self.config):
            for name in ("pad_token_id", "eos_token_id"):
                value = getattr(source, name, None)
                if isinstance(value, (list, tuple)):
                    value = value[0] if value else None
                if isinstance(value, int):
                    return value
        return 0

    @property
    def _side(self) -> int:
        vision = self.config.vision_config
        return int(vision.image_size // vision.patch_size)

    def _host(self) -> Any:
        return require("transformers.models.llava_next.modeling_llava_next")

    # ----------------------------------------------------------------------------------------------- encode
    def encode(
        self, pixel_values: Tensor, image_sizes: Tensor, layers: tuple[int, ...], **encoder_kwargs: Any
    ) -> list[EncodedImage]:
        """Run the host's vision path once and describe every image.

        Args:
            pixel_values: (I, T_max, 3, h, w) as the processor returns it (tile axis zero-padded), or the
                tiles of all images concatenated, (sum T_i, 3, h, w).
            image_sizes: (I, 2) original (height, width) of each image.
            layers: 0-based encoder layers whose CLS attention the planner needs.
            encoder_kwargs: ``vision_feature_layer`` / ``vision_feature_select_strategy`` overrides, passed to
                ``get_image_features`` as the host's forward would.

        Returns:
            One ``EncodedImage`` per image, in order.

        Raises:
            HeroError: on malformed inputs, a layer the encoder does not have, a strategy other than
                ``"default"``, or non-finite encoder outputs.
        """
        host = self._host()
        sizes = _check_image_sizes(image_sizes)
        tiles_per_image = [
            int(
                host.image_size_to_num_patches(
                    image_size=size,
                    grid_pinpoints=self.config.image_grid_pinpoints,
                    patch_size=self.config.vision_config.image_size,
                )
            )
            for size in sizes
        ]
        vision = self.config.vision_config
        views = _split_tiles(pixel_values, tiles_per_image, (vision.num_channels, vision.image_size, vision.image_size))
        strategy = encoder_kwargs.get("vision_feature_select_strategy") or self.config.vision_feature_select_strategy
        if strategy != "default":
            raise HeroError.field(
                "vision_feature_select_strategy",
                strategy,
                "'default' (the CLS token dropped, as every LLaVA-NeXT checkpoint does)",
            )
        # The processor returns float32 pixels on the CPU; meet the tower where it is (what a user of a bf16 /
        # CUDA model forgets most often), instead of failing inside the first convolution.
        weight = next(self.base.vision_tower.parameters())
        pixel_values = pixel_values.to(device=weight.device, dtype=weight.dtype)
        with cls_attention_hooks(self.base.vision_tower, layers) as record:
            output = self.base.get_image_features(
                pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True, **encoder_kwargs
            )
        packed = list(output.pooler_output)  # I x (T_i, D)
        cls_all = output.last_hidden_state[:, 0].float()  # (sum T, D_vision), last layer, before post-LN
        heads = int(self.config.vision_config.num_attention_heads)
        total, n = sum(tiles_per_image), self._side**2
        # (L, sum T, H, N): the CLS key dropped; no layers hooked for selectors that read no attention
        attention = record.stacked()[..., 1:] if record.layers else cls_all.new_zeros((0, total, heads, n))
        if len(packed) != len(sizes) or cls_all.shape[0] != total or attention.shape[1:] != (total, heads, n):
            raise HeroError.field(
                "vision outputs",
                f"{len(packed)} images, {cls_all.shape[0]} tiles, attention {tuple(attention.shape)}",
                f"{len(sizes)} images, {total} tiles and attention (L, {total}, {heads}, {n})",
                "The model does not look like a stock LLaVA-NeXT; check vision_config.",
            )
        finite = torch.stack([torch.isfinite(f).all() for f in packed] + [torch.isfinite(cls_all).all()]).tolist()
        if not all(finite):
            bad = [i for i, ok in enumerate(finite[:-1]) if not ok] or "CLS tokens"
            raise HeroError.field(
                "pixel_values",
                pixel_values,
                f"pixels that encode to finite features (image(s) {bad} gave NaN/inf)",
                "Check the images for NaN/inf and the model's dtype (fp16 can overflow; try bf16 or fp32).",
            )
        sources = self._source_maps(tiles_per_image, image_sizes)
        images: list[EncodedImage] = []
        start = 0
        for i, count in enumerate(tiles_per_image):
            source = sources[i].to(packed[i].device)
            if source.shape[0] != packed[i].shape[0]:
                raise HeroError.field(
                    f"packed features of image {i}",
                    packed[i],
                    f"{source.shape[0]} tokens, as the host's packing of an index map gives",
                )
            valid = torch.zeros(count * n, dtype=torch.bool, device=source.device)
            valid[source[source >= 0]] = True
            grid = host.get_anyres_image_grid_shape(
                sizes[i], self.config.image_grid_pinpoints, self.config.vision_config.image_size
            )
            tile_grid = (int(grid[0]), int(grid[1])) if count > 1 else None
            tiles = EncodedTiles(
                cls_tokens=cls_all[start : start + count],
                cls_attention=attention[:, start : start + count].to(cls_all.device),
                attention_layers=record.layers,
                valid_mask=valid.view(count, n).to(cls_all.device),
                thumbnail_index=0,
                grid=(self._side, self._side),
                tile_grid=tile_grid,
            )
            images.append(
                EncodedImage(
                    tiles=tiles,
                    features=packed[i],
                    source=source,
                    views=self._unnormalise(views[i]),
                    image_size=sizes[i],
                )
            )
            start += count
        return images

    def _source_maps(self, tiles_per_image: list[int], image_sizes: Tensor) -> list[Tensor]:
        """(T_i,) int64 per image: which ``view * N + patch`` each packed position holds, -1 for a newline.

        The host's own ``pack_image_features`` is run on ``arange`` "features" of width 1, so unpadding,
        stitching and newline placement are exactly the host's (HOSTS.md, section 1.4).
        """
        n = self._side**2
        index = [torch.arange(t * n, dtype=torch.float64).view(t, n, 1) for t in tiles_per_image]
        newline = torch.tensor([-1.0], dtype=torch.float64)
        maps, _ = self.base.pack_image_features(index, image_sizes, "default", image_newline=newline)
        return [m[:, 0].round().long() for m in maps]

    def _unnormalise(self, tiles: Tensor) -> Tensor:
        """(V, 3, h, w) normalised pixels -> RGB in [0, 1], float32."""
        mean = torch.tensor(self.image_mean, device=tiles.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=tiles.device).view(1, 3, 1, 1)
        return (tiles.float() * std + mean).clamp_(0.0, 1.0)

    # --------------------------------------------------------------------------------------------- assemble
    def assemble(self, image: EncodedImage, keep: Tensor) -> AssembledImage:
        """The kept tokens of one image in this adapter's layout.

        Args:
            image: what ``encode`` returned for the image.
            keep: (V, N) bool, the plan's keep mask (only valid positions may be True).

        Returns:
            The features sent to the LLM, with their offsets in the unpruned layout sequence.
        """
        n = image.tiles.num_tokens
        flat = keep.reshape(-1).to(image.source.device)  # (V * N,)
        if self.layout == "vanilla" or image.tiles.tile_grid is None:
            layout = image.source  # (T,)
            gather = None
        else:
            layout = self._reference_source(image.tiles.tile_grid, n).to(image.source.device)
            gather = torch.full((flat.shape[0],), -1, dtype=torch.long, device=flat.device)
            where = (image.source >= 0).nonzero().squeeze(1)
            gather[image.source[where]] = where  # packed position of each valid (view, patch)
        is_newline = layout < 0
        sent = is_newline | flat[layout.clamp(min=0)]  # (T_layout,)
        offsets = sent.nonzero().squeeze(1)  # one host sync: the kept count
        features = image.features
        if gather is None:
            rows = offsets
        else:
            # the learned newline token, appended as row T (the host's own sequence may hold none: a very
            # wide image unpads to zero rows)
            newline = self.base.image_newline.to(features.device, features.dtype)
            features = torch.cat([features, newline[None]], dim=0)
            ids = layout[offsets]
            rows = torch.where(ids < 0, image.features.shape[0], gather[ids.clamp(min=0)])
        newlines = int(is_newline.sum())
        return AssembledImage(
            features=features.index_select(0, rows.to(features.device)),
            offsets=offsets,
            layout_length=int(layout.shape[0]),
            kept_patch_tokens=int(offsets.shape[0]) - newlines,
            newline_tokens=newlines,
        )

    def _reference_source(self, tile_grid: tuple[int, int], n: int) -> Tensor:
        """The reference layout as ``view * N + patch`` ids (-1 = newline): thumbnail raster, then every row
        of the (s n_h, s n_w) stitched map, padding included, followed by a newline."""
        side = self._side
        rows, cols = tile_grid
        r = torch.arange(side * rows)[:, None]
        c = torch.arange(side * cols)[None, :]
        view = 1 + (r // side) * cols + c // side  # local tiles in raster order, after the thumbnail
        ids = view * n + (r % side) * side + c % side  # (s n_h, s n_w)
        ids = torch.cat([ids, torch.full((side * rows, 1), -1)], dim=1)
        return torch.cat([torch.arange(n), ids.flatten()])


def _check_image_sizes(image_sizes: object) -> list[tuple[int, int]]:
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


def _split_tiles(pixel_values: object, tiles_per_image: list[int], view: tuple[int, int, int]) -> list[Tensor]:
    """Per image, its (T_i, 3, h, w) tiles (thumbnail first); ``view`` is the encoder's (3, h, w)."""
    if (
        not isinstance(pixel_values, Tensor)
        or not pixel_values.dtype.is_floating_point
        or pixel_values.dim() not in (4, 5)
        or tuple(pixel_values.shape[-3:]) != view
    ):
        raise HeroError.field(
            "pixel_values",
            pixel_values,
            f"a float tensor (I, T, {view[0]}, {view[1]}, {view[2]}) of views the vision tower takes",
            "Pass the processor's pixel_values (its crop size must match vision_config.image_size).",
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
