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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from hero_core import EncodedTiles, HeroError, to_device

from ..adapter import AssembledImage, EncodedImage, register_adapter
from ..extras import require
from ..pixels import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ..towers import cls_attention_hooks
from ._shared import (
    TransformersHost,
    canvas_boxes,
    check_finite,
    check_image_sizes,
    meet_tower,
    per_image_features,
    split_tiles,
    unnormalise,
)

__all__ = ["LlavaNextAdapter"]


@register_adapter("llava_next")
@dataclass(frozen=True, eq=False)
class LlavaNextAdapter(TransformersHost):
    """Binds ``hero_core`` to a transformers LLaVA-NeXT model (V = 1 thumbnail + K tiles, N = s * s patches).

    Args:
        model: ``LlavaNextForConditionalGeneration`` (``LlavaNextModel`` works for ``encode`` / ``assemble`` and
            ``HeroVLM.plan``, not for generation).
        layout: ``"vanilla"`` (default) or ``"reference"``.
        processor: optional ``LlavaNextProcessor``; its ``image_mean`` / ``image_std`` undo the normalisation.
        image_mean: per-channel mean the processor normalised with; default the processor's, else OpenAI CLIP's.
        image_std: per-channel std the processor normalised with; default the processor's, else OpenAI CLIP's.

    Raises:
        HeroError: on an unknown layout, bad mean/std, or a model without LLaVA-NeXT's methods.
    """

    layouts: ClassVar[tuple[str, ...]] = ("vanilla", "reference")
    input_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes")
    encoder_keys: ClassVar[tuple[str, ...]] = ("vision_feature_layer", "vision_feature_select_strategy")
    refused_keys: ClassVar[Mapping[str, str]] = {}
    default_normalisation = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    family: ClassVar[str] = "LLaVA-NeXT"
    model_class: ClassVar[str] = "LlavaNextForConditionalGeneration"
    required: ClassVar[tuple[str, ...]] = ("get_image_features", "pack_image_features", "vision_tower")

    @property
    def _side(self) -> int:
        vision = self.config.vision_config
        return int(vision.image_size // vision.patch_size)

    def _host(self) -> Any:
        return require("transformers.models.llava_next.modeling_llava_next")

    def image_inputs(self, images: Sequence[Any]) -> dict[str, Any]:
        """Nothing: the processor already returns ``image_sizes``."""
        return {}

    def feature_inputs(self, assembled: Sequence[AssembledImage]) -> dict[str, Any]:
        """``mm_encoder_outputs`` with one (k_i, D) tensor per image, as ``LlavaNextModel.forward`` concatenates
        them and ``generate`` expands them for beams by image."""
        return per_image_features(assembled)

    # ----------------------------------------------------------------------------------------------- encode
    def encode(
        self, inputs: Mapping[str, Any], layers: tuple[int, ...], *, runs: Sequence[int] | None = None
    ) -> list[EncodedImage]:
        """Run the host's vision path once and describe every image.

        Args:
            inputs: ``pixel_values`` (I, T_max, 3, h, w) as the processor returns it (tile axis zero-padded),
                or the tiles of all images concatenated, (sum T_i, 3, h, w); ``image_sizes`` (I, 2) original
                (height, width) of each image; optionally ``vision_feature_layer`` /
                ``vision_feature_select_strategy``, passed to ``get_image_features`` as the host's forward would.
            layers: 0-based encoder layers whose CLS attention the planner needs.
            runs: not needed (the tile counts follow from ``image_sizes``).

        Returns:
            One ``EncodedImage`` per image, in order.

        Raises:
            HeroError: on malformed inputs, a layer the encoder does not have, a strategy other than
                ``"default"``, or non-finite encoder outputs.
        """
        host = self._host()
        pixel_values, image_sizes = inputs.get("pixel_values"), inputs.get("image_sizes")
        encoder_kwargs = {key: inputs[key] for key in self.encoder_keys if key in inputs}
        if image_sizes is None:
            raise HeroError.field(
                "image_sizes",
                None,
                "an (I, 2) tensor of each image's original (height, width) whenever pixel_values is given",
                "Pass the processor's image_sizes along with pixel_values (**inputs).",
            )
        sizes = check_image_sizes(image_sizes)  # the one read of image_sizes
        image_sizes = torch.tensor(sizes, dtype=torch.long)  # on the CPU: the host's own reads of it cost no sync
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
        views = split_tiles(pixel_values, tiles_per_image, (vision.num_channels, vision.image_size, vision.image_size))
        strategy = encoder_kwargs.get("vision_feature_select_strategy") or self.config.vision_feature_select_strategy
        if strategy != "default":
            raise HeroError.field(
                "vision_feature_select_strategy",
                strategy,
                "'default' (the CLS token dropped, as every LLaVA-NeXT checkpoint does)",
            )
        pixel_values = meet_tower(inputs["pixel_values"], self.vision_tower)  # checked by _split_tiles
        with cls_attention_hooks(self.vision_tower, layers) as record:
            output = self.base.get_image_features(
                pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True, **encoder_kwargs
            )
        packed = list(output.pooler_output)  # I x (T_i, D)
        cls_all = output.last_hidden_state[:, 0].float()  # (sum T, D_vision), last layer, before post-LN
        heads = int(self.config.vision_config.num_attention_heads)
        total, n = sum(tiles_per_image), self._side**2
        # (L, sum T, H, N): the CLS key dropped; no layers hooked for selectors that read no attention
        attention = record.patch_attention() if record.layers else cls_all.new_zeros((0, total, heads, n))
        if len(packed) != len(sizes) or cls_all.shape[0] != total or attention.shape[1:] != (total, heads, n):
            raise HeroError.field(
                "vision outputs",
                f"{len(packed)} images, {cls_all.shape[0]} tiles, attention {tuple(attention.shape)}",
                f"{len(sizes)} images, {total} tiles and attention (L, {total}, {heads}, {n})",
                "The model does not look like a stock LLaVA-NeXT; check vision_config.",
            )
        check_finite(packed, cls_all, pixel_values)
        sources = self._source_maps(tiles_per_image, image_sizes)
        images: list[EncodedImage] = []
        start = 0
        for i, count in enumerate(tiles_per_image):
            source = to_device(sources[i], packed[i].device, torch.long)  # built on the CPU (no sync)
            if source.shape[0] != packed[i].shape[0]:
                raise HeroError.field(
                    f"packed features of image {i}",
                    packed[i],
                    f"{source.shape[0]} tokens, as the host's packing of an index map gives",
                )
            # on the host, from the host's index map: slot 0 takes the newlines (-1 + 1)
            valid = torch.zeros(count * n + 1, dtype=torch.bool).index_fill_(0, sources[i] + 1, True)[1:]
            grid = host.get_anyres_image_grid_shape(
                sizes[i], self.config.image_grid_pinpoints, self.config.vision_config.image_size
            )
            tile_grid = (int(grid[0]), int(grid[1])) if count > 1 else None
            tiles = EncodedTiles(
                cls_tokens=cls_all[start : start + count],
                cls_attention=attention[:, start : start + count].to(cls_all.device),
                attention_layers=record.layers,
                valid_mask=to_device(valid.view(count, n), cls_all.device, torch.bool),
                thumbnail_index=0,
                grid=(self._side, self._side),
                tile_grid=tile_grid,
            )
            images.append(
                EncodedImage(
                    tiles=tiles,
                    features=packed[i],
                    source=source,
                    views=unnormalise(views[i], self.mean_std),
                    image_size=sizes[i],
                    view_boxes=canvas_boxes(sizes[i], tile_grid),
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

    # --------------------------------------------------------------------------------------------- assemble
    def assemble_read(self, image: EncodedImage, keep: Tensor, copies: tuple[Tensor, Tensor]) -> AssembledImage:
        """The kept tokens of one image in this adapter's layout (``assemble`` / ``assemble_batch``).

        Args:
            image: what ``encode`` returned for the image.
            keep: (V, N) bool, the plan's keep mask (only valid positions may be True).
            copies: the flat keep mask (V * N,) and ``image.source`` (T,), on the host.

        Returns:
            The features sent to the LLM, with their offsets in the unpruned layout sequence.
        """
        n = image.tiles.num_tokens
        flat, source = copies
        if self.layout == "vanilla" or image.tiles.tile_grid is None:
            layout = source  # (T,)
            gather = None
        else:
            layout = self._reference_source(image.tiles.tile_grid, n)
            gather = torch.full((flat.shape[0],), -1, dtype=torch.long)
            where = (source >= 0).nonzero().squeeze(1)
            gather[source[where]] = where  # packed position of each valid (view, patch)
        is_newline = layout < 0
        sent = is_newline | flat[layout.clamp(min=0)]  # (T_layout,)
        offsets = sent.nonzero().squeeze(1)
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
            features=features.index_select(0, to_device(rows, features.device, torch.long)),
            offsets=to_device(offsets, image.source.device, torch.long),
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
