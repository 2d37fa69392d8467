"""InternVL (transformers ``InternVLForConditionalGeneration``: InternVL 2.5 / 3 in HF format) adapter.

Views (HOSTS.md, "Round 2"): the processor cuts the image, resized to ``cols x rows`` tiles of 448 px, into
tiles in raster order and appends the whole image as a thumbnail LAST (none for a 1 x 1 grid: the single
view then plays the thumbnail). InternViT keeps its CLS token at index 0; the ``default`` strategy drops it
and ``pixel_shuffle(0.5)`` merges every 2 x 2 patch block into one LLM token (N = 256 per 448-px view).

Planning counts LLM tokens: the CLS attention of the patches is summed onto the tokens the LLM receives,
by running the host's own ``pixel_shuffle`` on an index map, so budgets and kept counts are counts of what
the LLM gets. The processor returns no image sizes: the tile count of image i is its placeholder run
length divided by N. ``vanilla`` is the only layout (there are no newline tokens): the host's sequence with
pruned tokens removed, identical to the host at R = 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor

from hero_core import EncodedTiles, HeroError

from ..adapter import AssembledImage, Box, EncodedImage, register_adapter
from ..extras import require
from ..pixels import IMAGENET_MEAN, IMAGENET_STD
from ..sequence import placeholder_runs
from ..towers import cls_attention_hooks
from ._shared import TransformersHost, check_finite, check_pixels, meet_tower, unnormalise

__all__ = ["InternVLAdapter"]


@register_adapter("internvl")
@dataclass(frozen=True, eq=False)
class InternVLAdapter(TransformersHost):
    """Binds ``hero_core`` to a transformers InternVL model (V = K tiles + 1 thumbnail last, N = 256 LLM tokens).

    Args:
        model: ``InternVLForConditionalGeneration`` (``InternVLModel`` works for ``HeroVLM.plan``).
        layout: ``"vanilla"`` (the only one).
        processor: optional ``InternVLProcessor``; its image processor's mean / std undo the normalisation and
            its tiling settings (``min_patches``, ``max_patches``, tile size) give each image's tile grid when
            ``image_sizes`` are passed (``image_inputs`` makes them from the PIL images).
        image_mean: per-channel mean override (default: the processor's, else ImageNet's, as InternVL uses).
        image_std: per-channel std override (default: the processor's, else ImageNet's).

    Raises:
        HeroError: on an unknown layout, bad mean/std, or a model without InternVL's methods.
    """

    layouts: ClassVar[tuple[str, ...]] = ("vanilla",)
    input_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes")
    encoder_keys: ClassVar[tuple[str, ...]] = ("vision_feature_layer", "vision_feature_select_strategy")
    refused_keys: ClassVar[Mapping[str, str]] = {
        "pixel_values_videos": "Video frames are not pruned by HeroVLM; call model.generate directly for videos.",
    }
    default_normalisation = (IMAGENET_MEAN, IMAGENET_STD)
    family: ClassVar[str] = "InternVL"
    model_class: ClassVar[str] = "InternVLForConditionalGeneration"
    required: ClassVar[tuple[str, ...]] = ("get_image_features", "pixel_shuffle", "vision_tower")

    @property
    def _view(self) -> tuple[int, int, int]:
        vision = self.config.vision_config
        height, width = _pair(vision.image_size)
        return int(vision.num_channels), height, width

    @cached_property
    def _token_groups(self) -> Tensor:
        """(N, r) int64: the patches each LLM token of a view merges (r = 4 for a 2 x 2 shuffle), learned by
        running the host's ``pixel_shuffle`` on an index map shaped like the CLS-free patch features."""
        vision = self.config.vision_config
        rows, cols = (a // b for a, b in zip(_pair(vision.image_size), _pair(vision.patch_size), strict=True))
        index = torch.arange(rows * cols, dtype=torch.float64).view(1, rows, cols, 1)
        shuffled = self.base.pixel_shuffle(index, scale_factor=self.config.downsample_ratio)  # (1, s', s', r)
        groups = shuffled.reshape(-1, shuffled.shape[-1]).round().long()
        if sorted(groups.flatten().tolist()) != list(range(rows * cols)):  # pragma: no cover - a host change
            raise HeroError.field("pixel_shuffle", "index map", "every patch in exactly one LLM token")
        return groups  # type: ignore[no-any-return]

    @property
    def _token_grid(self) -> tuple[int, int]:
        tokens = int(self._token_groups.shape[0])
        side = round(tokens**0.5)
        return (side, side) if side * side == tokens else (1, tokens)

    def image_inputs(self, images: Sequence[Any]) -> dict[str, Any]:
        """``image_sizes`` (I, 2) (height, width) of the PIL images: the processor returns none, and the tile
        grids of the picture need them."""
        sizes = [(int(image.size[1]), int(image.size[0])) for image in images]
        return {"image_sizes": torch.tensor(sizes, dtype=torch.long)}

    def feature_inputs(self, assembled: Sequence[AssembledImage]) -> dict[str, Any]:
        """``mm_encoder_outputs`` with a (sum k_i, 1, D) tensor: the host calls ``.to`` on it (a list fails), and
        one entry per token is what ``generate``'s beam expansion groups correctly per prompt (HOSTS.md:
        a (1, N, D) tensor runs but mixes prompts' features across beams)."""
        outputs = require("transformers.modeling_outputs")
        kept = torch.cat([out.features for out in assembled], dim=0)[:, None, :]
        return {"mm_encoder_outputs": {"image": outputs.BaseModelOutputWithPooling(pooler_output=kept)}}

    # ----------------------------------------------------------------------------------------------- encode
    def encode(
        self, inputs: Mapping[str, Any], layers: tuple[int, ...], *, runs: Sequence[int] | None = None
    ) -> list[EncodedImage]:
        """Run the host's vision path once and describe every image.

        Args:
            inputs: ``pixel_values`` (sum T_i, 3, 448, 448) as the processor returns them; optionally
                ``image_sizes`` (I, 2) original (height, width) for the tile grids, and
                ``vision_feature_layer`` / ``vision_feature_select_strategy``.
            layers: 0-based encoder layers whose CLS attention the planner needs.
            runs: the placeholder run lengths of the prompt, one per image. Without them, ``input_ids`` in
                ``inputs`` give them, else ``image_sizes`` with the processor's tiling; a single tile is one image.

        Raises:
            HeroError: on a run that is not a whole number of views, tiles that disagree with the runs,
                a strategy other than ``"default"``, or non-finite outputs.
        """
        view = self._view
        pixel_values = check_pixels(inputs.get("pixel_values"), view, "Pass the InternVL processor's pixel_values.")
        if pixel_values.dim() == 5:
            pixel_values = pixel_values.flatten(0, 1)
        n = int(self._token_groups.shape[0])
        total = int(pixel_values.shape[0])
        if runs is None and isinstance(inputs.get("input_ids"), Tensor):  # a prompt in the inputs tells the runs
            mask = inputs.get("attention_mask")
            ids = inputs["input_ids"]
            runs = placeholder_runs(
                ids, mask if isinstance(mask, Tensor) else torch.ones_like(ids), self.image_token_id
            )
        if runs is None:
            runs = self._runs_from_sizes(inputs.get("image_sizes"), total, n)
        tiles_per_image = self._tiles_per_image(runs, total, n)
        strategy = inputs.get("vision_feature_select_strategy") or self.config.vision_feature_select_strategy
        if strategy != "default":
            raise HeroError.field(
                "vision_feature_select_strategy", strategy, "'default' (the CLS token dropped, as InternVL does)"
            )
        grids = self._tile_grids(inputs.get("image_sizes"), tiles_per_image)
        encoder_kwargs = {key: inputs[key] for key in self.encoder_keys if key in inputs}
        pixels = meet_tower(pixel_values, self.vision_tower)
        with cls_attention_hooks(self.vision_tower, layers) as record:
            output = self.base.get_image_features(pixel_values=pixels, return_dict=True, **encoder_kwargs)
        features = output.pooler_output  # (sum T, N, D)
        cls_all = output.last_hidden_state[:, 0].float()  # (sum T, D_vision)
        heads = int(self.config.vision_config.num_attention_heads)
        if record.layers:
            patches = record.patch_attention()  # (L, sum T, H, P) patch keys, CLS key dropped
            groups = self._token_groups.to(patches.device)
            attention = patches[..., groups].sum(-1)  # (L, sum T, H, N): each LLM token's patches summed
        else:
            attention = cls_all.new_zeros((0, total, heads, n))
        if tuple(features.shape[:2]) != (total, n) or attention.shape[1:] != (total, heads, n):
            raise HeroError.field(
                "vision outputs",
                f"features {tuple(features.shape)}, attention {tuple(attention.shape)}",
                f"features ({total}, {n}, D) and attention (L, {total}, {heads}, {n})",
                "The model does not look like a stock InternVL; check vision_config and downsample_ratio.",
            )
        check_finite([features], cls_all, pixel_values)
        images: list[EncodedImage] = []
        start = 0
        for i, count in enumerate(tiles_per_image):
            thumbnail = count - 1 if count > 1 else 0
            tiles = EncodedTiles(
                cls_tokens=cls_all[start : start + count],
                cls_attention=attention[:, start : start + count].to(cls_all.device),
                attention_layers=record.layers,
                valid_mask=torch.ones(count, n, dtype=torch.bool, device=cls_all.device),
                thumbnail_index=thumbnail,
                grid=self._token_grid,
                tile_grid=grids[i],
            )
            images.append(
                EncodedImage(
                    tiles=tiles,
                    features=features[start : start + count].reshape(count * n, -1),
                    source=torch.arange(count * n, device=features.device),
                    views=unnormalise(pixel_values[start : start + count], self.mean_std),
                    image_size=None,
                    view_boxes=_view_boxes(count, grids[i]),
                )
            )
            start += count
        return images

    def _runs_from_sizes(self, image_sizes: Any, total: int, n: int) -> list[int]:
        """Without a prompt: the tile counts the processor's tiling gives each image size (one tile: one image)."""
        if total == 1:
            return [n]
        if image_sizes is None or self.processor is None:
            raise HeroError.field(
                "input_ids",
                None,
                f"the prompt (its placeholder runs tell how the {total} tiles split into images)",
                "Pass input_ids, or image_sizes (adapter.image_inputs(images)) with HeroVLM(..., processor=...).",
            )
        image_processor = getattr(self.processor, "image_processor", self.processor)
        sizes = image_sizes.tolist() if isinstance(image_sizes, Tensor) else list(image_sizes)
        counts = [int(image_processor.get_number_of_image_patches(int(h), int(w))) for h, w in sizes]
        return [count * n for count in counts]

    def _tiles_per_image(self, runs: Sequence[int], total: int, n: int) -> list[int]:
        bad = [length for length in runs if length % n or length == 0]
        if bad:
            raise HeroError.field(
                "input_ids",
                f"image placeholder runs of {list(runs)} tokens",
                f"runs of a whole number of views: multiples of {n} tokens per {self._view[1]}-px view",
                "Pass input_ids and pixel_values from the same InternVL processor call; do not edit the runs.",
            )
        counts = [length // n for length in runs]
        if sum(counts) != total:
            raise HeroError.field(
                "pixel_values",
                f"{total} tiles",
                f"{sum(counts)} tiles, as the placeholder runs {list(runs)} give ({n} tokens per tile)",
                "Pass pixel_values and input_ids from the same processor call (one <image> per image).",
            )
        return counts

    def _tile_grids(self, image_sizes: Any, tiles_per_image: list[int]) -> list[tuple[int, int] | None]:
        """(rows, cols) of each image's local tiles, from its size and the processor's tiling; None if unknown."""
        if image_sizes is None or self.processor is None:
            return [None] * len(tiles_per_image)
        sizes = image_sizes.tolist() if isinstance(image_sizes, Tensor) else list(image_sizes)
        if len(sizes) != len(tiles_per_image) or not all(len(size) == 2 for size in sizes):
            raise HeroError.field(
                "image_sizes", image_sizes, f"({len(tiles_per_image)}, 2) (height, width), one row per image"
            )
        canvas = require("transformers.models.got_ocr2.image_processing_got_ocr2").get_optimal_tiled_canvas
        image_processor = getattr(self.processor, "image_processor", self.processor)
        size = getattr(image_processor, "size", None)
        tile = (self._view[1], self._view[2])
        if isinstance(size, Mapping) or hasattr(size, "height"):
            tile = (int(_get(size, "height")), int(_get(size, "width")))
        low, high = int(getattr(image_processor, "min_patches", 1)), int(getattr(image_processor, "max_patches", 12))
        grids: list[tuple[int, int] | None] = []
        for (height, width), count in zip(sizes, tiles_per_image, strict=True):
            if count == 1:
                grids.append(None)
                continue
            cols, rows = canvas((int(height), int(width)), tile, low, high)  # GotOcr2 returns (cols, rows)
            if rows * cols != count - 1:
                raise HeroError.field(
                    "image_sizes",
                    [int(height), int(width)],
                    f"a size the processor tiles into the image's {count - 1} tiles + thumbnail "
                    f"(this size gives {rows} x {cols})",
                    "Pass the original sizes of the images, in order, and the processor that made pixel_values.",
                )
            grids.append((int(rows), int(cols)))
        return grids


def _pair(value: Any) -> tuple[int, int]:
    """InternVL configs hold sizes as ints or (height, width) pairs."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _get(size: Any, name: str) -> Any:
    return size[name] if isinstance(size, Mapping) else getattr(size, name)


def _view_boxes(count: int, grid: tuple[int, int] | None) -> tuple[Box, ...] | None:
    """Tiles partition the whole image (the processor resizes it onto the grid, aspect not kept); the
    thumbnail, last, is the whole image."""
    if count == 1:
        return ((0.0, 0.0, 1.0, 1.0),)
    if grid is None:
        return None
    rows, cols = grid
    boxes: list[Box] = [(c / cols, r / rows, (c + 1) / cols, (r + 1) / rows) for r in range(rows) for c in range(cols)]
    return (*boxes, (0.0, 0.0, 1.0, 1.0))
