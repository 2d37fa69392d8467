"""LLaVA-OneVision (transformers ``LlavaOnevisionForConditionalGeneration``) adapter.

Views (HOSTS.md, "Round 2"): the base view FIRST, then 384-px tiles of the best-fit pinpoint; images of
multi-image prompts (``batch_num_images > 1``) are not tiled (one view each, planned as a thumbnail
alone). SigLIP has no CLS token: the query row is the mean-token stand-in (HERO_SPEC.md), recorded in the
hooked layers like a CLS row, and a view's embedding for saliency is the mean of its last encoder layer's
tokens before ``post_layernorm`` (SigLIP's ``last_hidden_state`` is after it).

With ``anyres_max_N`` the host bilinearly shrinks the stitched grid when it exceeds N tiles' worth: the
LLM's tokens are then blends of patches. Planning counts what the LLM gets: score maps (the recorded
attention, a patch indicator, each token's tile and its position inside the tile) are carried through
the host's own ``pack_image_features``, so every packed token is assigned to one view, and budgets and
kept counts are counts of LLM tokens. ``vanilla`` (the host's sequence with pruned tokens removed) is the
only layout. Video inputs are refused with what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

from hero_core import EncodedTiles, HeroError, to_device

from ..adapter import AssembledImage, EncodedImage, register_adapter
from ..extras import require
from ..pixels import SIGLIP_MEAN, SIGLIP_STD
from ..towers import cls_attention_hooks, tower_recipe
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

__all__ = ["LlavaOnevisionAdapter"]

_VIDEO = "Video inputs are not pruned by HeroVLM; call model.generate directly for videos."


@register_adapter("llava_onevision")
@dataclass(frozen=True, eq=False)
class LlavaOnevisionAdapter(TransformersHost):
    """Binds ``hero_core`` to a transformers LLaVA-OneVision model (V = 1 base view + K tiles, SigLIP stand-in).

    Args:
        model: ``LlavaOnevisionForConditionalGeneration`` (``LlavaOnevisionModel`` works for ``HeroVLM.plan``).
        layout: ``"vanilla"`` (the only one).
        processor: optional ``LlavaOnevisionProcessor``; its mean / std undo the normalisation.
        image_mean: per-channel mean override (default: the processor's, else SigLIP's 0.5).
        image_std: per-channel std override (default: the processor's, else SigLIP's 0.5).
    """

    input_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes", "batch_num_images")
    encoder_keys: ClassVar[tuple[str, ...]] = (
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "vision_aspect_ratio",
    )
    refused_keys: ClassVar[Mapping[str, str]] = {"pixel_values_videos": _VIDEO, "image_sizes_videos": _VIDEO}
    query_source: ClassVar[str] = "mean-token"
    default_normalisation = (SIGLIP_MEAN, SIGLIP_STD)
    family: ClassVar[str] = "LLaVA-OneVision"
    model_class: ClassVar[str] = "LlavaOnevisionForConditionalGeneration"
    required: ClassVar[tuple[str, ...]] = ("get_image_features", "pack_image_features", "vision_tower")

    @property
    def _side(self) -> int:
        vision = self.config.vision_config
        return int(vision.image_size // vision.patch_size)

    @cached_property
    def _query(self) -> str:
        """``"cls"`` where the tower has one, else the mean-token stand-in (SigLIP); the tower walk runs once."""
        return "mean" if tower_recipe(self.vision_tower).cls_position == "none" else "cls"

    def image_inputs(self, images: Sequence[Any]) -> dict[str, Any]:
        """Nothing: the processor already returns ``image_sizes`` and ``batch_num_images``."""
        return {}

    def feature_inputs(self, assembled: Sequence[AssembledImage]) -> dict[str, Any]:
        """``mm_encoder_outputs`` with one (k_i, D) tensor per image (the host concatenates them)."""
        return per_image_features(assembled)

    # ----------------------------------------------------------------------------------------------- encode
    def encode(
        self, inputs: Mapping[str, Any], layers: tuple[int, ...], *, runs: Sequence[int] | None = None
    ) -> list[EncodedImage]:
        """Run the host's vision path once and describe every image, on the tokens the LLM receives.

        Args:
            inputs: ``pixel_values`` (I, T_max, 3, 384, 384), ``image_sizes`` (I, 2) and, for multi-image
                prompts, ``batch_num_images`` (B,); optionally ``vision_feature_layer``,
                ``vision_feature_select_strategy``, ``vision_aspect_ratio``.
            layers: 0-based encoder layers whose query rows the planner needs.
            runs: not needed.

        Raises:
            HeroError: on sizes, image counts or pixels that disagree, a strategy other than ``"full"``, or
                non-finite outputs.
        """
        host = require("transformers.models.llava_onevision.modeling_llava_onevision")
        image_sizes = inputs.get("image_sizes")
        if image_sizes is None:
            raise HeroError.field(
                "image_sizes", None, "an (I, 2) tensor of (height, width) with pixel_values", "Pass **inputs."
            )
        sizes = check_image_sizes(image_sizes)  # the one read of image_sizes
        image_sizes = torch.tensor(sizes, dtype=torch.long)  # on the CPU: the host's own reads of it cost no sync
        tiled = _tiled(inputs.get("batch_num_images"), len(sizes))
        pinpoints, tile = self.config.image_grid_pinpoints, int(self.config.vision_config.image_size)
        tiles_per_image = [
            int(host.image_size_to_num_patches(image_size=size, grid_pinpoints=pinpoints, patch_size=tile)) if t else 1
            for size, t in zip(sizes, tiled, strict=True)
        ]
        vision = self.config.vision_config
        views = split_tiles(inputs.get("pixel_values"), tiles_per_image, (vision.num_channels, tile, tile))
        strategy = inputs.get("vision_feature_select_strategy") or self.config.vision_feature_select_strategy
        if strategy != "full":
            raise HeroError.field("vision_feature_select_strategy", strategy, "'full' (SigLIP has no CLS to drop)")
        aspect = inputs.get("vision_aspect_ratio") or self.config.vision_aspect_ratio
        encoder_kwargs = {key: inputs[key] for key in self.encoder_keys if key in inputs}
        if "batch_num_images" in inputs:
            encoder_kwargs["batch_num_images"] = inputs["batch_num_images"]
        pixel_values = meet_tower(inputs["pixel_values"], self.vision_tower)  # checked by split_tiles
        with cls_attention_hooks(self.vision_tower, layers, query=self._query) as record:
            output = self.base.get_image_features(
                pixel_values=pixel_values, image_sizes=image_sizes, return_dict=True, **encoder_kwargs
            )
        packed = list(output.pooler_output)  # I x (T_i, D), base view first, newlines included
        last = output.hidden_states[-1] if output.hidden_states is not None else None
        if last is None:  # the host kept another feature layer only; last_hidden_state is after post_layernorm
            raise HeroError.field(
                "vision_feature_layer",
                inputs.get("vision_feature_layer", self.config.vision_feature_layer),
                "-1 (LLaVA-OneVision's): the saliency embedding is the mean of the last layer before post_layernorm",
                "Use the checkpoint's vision_feature_layer; another layer is not supported by this adapter yet.",
            )
        embeddings = last.float().mean(dim=1)  # (sum T, D_vision): the mean token of each view
        total, n = sum(tiles_per_image), self._side**2
        heads = int(vision.num_attention_heads)
        attention = record.patch_attention() if record.layers else embeddings.new_zeros((0, total, heads, n))
        if len(packed) != len(sizes) or attention.shape[1:] != (total, heads, n):
            raise HeroError.field(
                "vision outputs",
                f"{len(packed)} images, attention {tuple(attention.shape)}",
                f"{len(sizes)} images and attention (L, {total}, {heads}, {n})",
                "The model does not look like a stock LLaVA-OneVision; check vision_config.",
            )
        check_finite(packed, embeddings, pixel_values)
        images: list[EncodedImage] = []
        start = 0
        for i, count in enumerate(tiles_per_image):
            scores = attention[:, start : start + count]  # (L, T_i, H, n)
            mapping = self._pack_scores(scores, image_sizes[i : i + 1], count, aspect)
            if mapping.source.shape[0] != packed[i].shape[0]:
                raise HeroError.field(
                    f"packed features of image {i}",
                    packed[i],
                    f"{mapping.source.shape[0]} tokens, as the host's packing of the score maps gives",
                )
            grid = host.get_anyres_image_grid_shape(sizes[i], pinpoints, tile) if count > 1 else None
            tile_grid = (int(grid[0]), int(grid[1])) if grid is not None else None
            device = embeddings.device
            tiles = EncodedTiles(
                cls_tokens=embeddings[start : start + count],
                cls_attention=to_device(mapping.attention, device, mapping.attention.dtype),
                attention_layers=record.layers,
                valid_mask=to_device(mapping.valid, device, torch.bool),
                thumbnail_index=0,
                grid=(self._side, self._side),
                tile_grid=tile_grid,
                query_source="mean-token" if self._query == "mean" else "cls",
            )
            images.append(
                EncodedImage(
                    tiles=tiles,
                    features=packed[i],
                    source=to_device(mapping.source, packed[i].device, torch.long),
                    views=unnormalise(views[i], self.mean_std),
                    image_size=sizes[i],
                    view_boxes=canvas_boxes(sizes[i], tile_grid),
                )
            )
            start += count
        return images

    def _pack_scores(self, scores: Tensor, image_size: Tensor, count: int, aspect: str) -> _Mapping:
        """Carry one image's score maps through the host's ``pack_image_features``.

        Channels per patch: a patch indicator (newlines get 0), the patch's row and column inside its view,
        a one-hot of its view, then the L * H attention values. After packing (unpad, maybe bilinear
        downsampling, newline columns), each LLM token is assigned to the view with the largest share and
        to the slot of the patch nearest its position; the attention it carries is the host's own blend.
        Counts are exact either way; when blended tokens round onto one patch, the view's slots are assigned
        in packed order instead, so slot positions (the picture, spatial selectors) are approximate there.
        """
        layers, _, heads, n = scores.shape
        side = self._side
        rows = torch.arange(side, dtype=torch.float64).repeat_interleave(side)  # (n,)
        cols = torch.arange(side, dtype=torch.float64).repeat(side)
        channels = [
            torch.ones(count, n, 1, dtype=torch.float64),
            rows.expand(count, n)[..., None],
            cols.expand(count, n)[..., None],
            torch.eye(count, dtype=torch.float64)[:, None, :].expand(count, n, count),
            scores.permute(1, 3, 0, 2).reshape(count, n, layers * heads).double().cpu(),  # (T, n, L H)
        ]
        maps = torch.cat(channels, dim=-1)  # (T, n, C)
        newline = torch.zeros(maps.shape[-1], dtype=torch.float64)
        packed, _ = self.base.pack_image_features([maps], image_size, image_newline=newline, vision_aspect_ratio=aspect)
        packed = packed[0]  # (P, C)
        is_patch = packed[:, 0] > 0.5
        view = packed[:, 3 : 3 + count].argmax(dim=1)
        slot = packed[:, 1].round().clamp(0, side - 1).long() * side + packed[:, 2].round().clamp(0, side - 1).long()
        source = torch.where(is_patch, view * n + slot, torch.full_like(slot, -1))
        per_view = torch.bincount(view[is_patch], minlength=count)
        if bool((per_view > n).any()):  # pragma: no cover - bilinear shrinking never adds tokens
            raise HeroError.field("packed score maps", per_view.tolist(), f"at most {n} LLM tokens per view")
        for v in range(count):  # blended tokens rounding onto one patch: that view's slots in packed order
            mine = is_patch & (view == v)
            if len(set(source[mine].tolist())) != int(mine.sum()):
                source[mine] = v * n + torch.arange(int(mine.sum()))
        valid = torch.zeros(count * n, dtype=torch.bool)
        valid[source[is_patch]] = True
        attention = torch.zeros(count * n, layers * heads, dtype=torch.float64)
        attention[source[is_patch]] = packed[is_patch, 3 + count :]
        attention = attention.view(count, n, layers, heads).permute(2, 0, 3, 1).float()  # (L, V, H, n)
        return _Mapping(source=source, valid=valid.view(count, n), attention=attention.contiguous())


@dataclass(frozen=True)
class _Mapping:
    source: Tensor  # (P,) view * n + slot per packed token, -1 for a newline
    valid: Tensor  # (V, n) bool: slots that hold an LLM token
    attention: Tensor  # (L, V, H, n) float32: the packed attention of each slot


def _tiled(batch_num_images: Any, images: int) -> list[bool]:
    """Which images the host tiles: all without ``batch_num_images``, else those alone in their prompt."""
    if batch_num_images is None:
        return [True] * images
    counts = batch_num_images.tolist() if isinstance(batch_num_images, Tensor) else list(batch_num_images)
    if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != images:
        raise HeroError.field(
            "batch_num_images",
            batch_num_images,
            f"images per prompt adding up to the {images} rows of image_sizes",
            "Pass batch_num_images, image_sizes and pixel_values from the same processor call.",
        )
    return [c == 1 for c in counts for _ in range(c)]
