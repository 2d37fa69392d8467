"""What the Qwen-VL hosts share (Qwen2.5-VL, Qwen3-VL in transformers 5.2x): one view per image, M-RoPE positions.

Views (HOSTS.md, "Round 3"): no tiles, no thumbnail, no CLS. The processor resizes each image to a multiple of
two patches per side and flattens it into ``t h w`` patches (``image_grid_thw``), ordered so that every 4
consecutive patches form one 2 x 2 merge group and the groups run in raster order over the (h/2, w/2) grid;
the tower's merger turns each group into one LLM token. So an image is ONE view of N = h w / 4 tokens in
raster order, the LLM receives them in that order, and ``vanilla`` (the host's own sequence) is the only layout.

The query row is the stand-in (the mean of a layer's rotated queries, ``towers``' Qwen recipes), recorded on
the packed sequence and summed over each merge group, as InternVL sums its pixel-shuffle groups. On
Qwen2.5-VL's window-attention blocks a row covers only its window; the tower's full-attention blocks
(``EncoderFacts.full_attention``) see the whole image, and the presets' default layers snap to them.

Positions: the LLM's rotary positions are 3-D (M-RoPE), derived by the host's ``get_rope_index`` from the
unpruned image grid. ``prompt_inputs`` computes them on the caller's (unpruned) prompt, keeps each kept
token's own position and every text token's position, passes them as ``position_ids`` and sets the model's
``rope_deltas`` so decoding continues exactly where the unpruned prompt would: pruned generation is the
unpruned model with the dropped tokens taken out of the sequence.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from hero_core import EncodedTiles, HeroError, to_device

from ..adapter import AssembledImage, EncodedImage, EncoderFacts, PrunedPrompt
from ..extras import require
from ..pixels import unnormalise
from ..towers import cls_attention_hooks
from ._shared import TransformersHost, assemble_source, check_finite, meet_tower, per_image_features

__all__ = ["QwenHost"]

_VIDEO = "Videos are not pruned by HeroVLM (out of scope); call model.generate directly for videos."


@dataclass(frozen=True, eq=False)
class QwenHost(TransformersHost):
    """The Qwen-VL adapters' common part; a host file sets the class facts (and Qwen3-VL its DeepStack levels).

    Args:
        model: ``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration`` (the base model works
            for ``HeroVLM.plan``).
        layout: ``"vanilla"`` (the only one).
        processor: optional host processor; its image processor's mean / std undo the normalisation.
        image_mean: per-channel mean override.
        image_std: per-channel std override.
    """

    layouts: ClassVar[tuple[str, ...]] = ("vanilla",)
    input_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_grid_thw")
    encoder_keys: ClassVar[tuple[str, ...]] = ("mm_token_type_ids",)
    refused_keys: ClassVar[Mapping[str, str]] = {
        "pixel_values_videos": _VIDEO,
        "video_grid_thw": _VIDEO,
        "second_per_grid_ts": f"It times video frames. {_VIDEO}",
        "rope_deltas": "HeroVLM derives the M-RoPE positions and rope_deltas from the unpruned prompt itself.",
    }
    query_source: ClassVar[str] = "mean-token"
    #: ``HeroVLM`` lets this adapter's ``prompt_inputs`` set the positions (only "original" positions are right).
    owns_positions: ClassVar[bool] = True
    required: ClassVar[tuple[str, ...]] = ("get_image_features", "get_rope_index", "visual")

    @property
    def vision_tower(self) -> Any:
        """The host's vision transformer (``model.visual``), whose attention modules the stand-in hooks record."""
        return self.base.visual

    @property
    def encoder(self) -> EncoderFacts:
        """The encoder's facts; ``feature_layer`` is the last block (the merger reads it)."""
        facts = super().encoder
        return dataclasses.replace(facts, feature_layer=-1)

    @property
    def _merge(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    # ------------------------------------------------------------------------------------------------ encode
    def image_inputs(self, images: Sequence[Any]) -> dict[str, Any]:
        """Nothing: the processor's ``image_grid_thw`` tells every image's grid."""
        return {}

    def encode(
        self, inputs: Mapping[str, Any], layers: tuple[int, ...], *, runs: Sequence[int] | None = None
    ) -> list[EncodedImage]:
        """Run the host's vision path once over every image (packed, as the host does) and describe each one.

        Args:
            inputs: ``pixel_values`` (sum t h w, C * 2 * p * p) and ``image_grid_thw`` (I, 3) as the processor
                returns them.
            layers: 0-based tower blocks whose stand-in rows the planner needs.
            runs: the placeholder run lengths of the prompt, one per image (None without a prompt).

        Raises:
            HeroError: on a grid that is not an image's (t != 1), grids that disagree with the pixels or the
                placeholder runs, or non-finite outputs.
        """
        given = inputs.get("image_grid_thw")
        grid = self._grid(given)  # one read of the grids; the host reads them again itself
        sizes = [h * w for _, h, w in grid]
        merge = self._merge**2
        tokens = [size // merge for size in sizes]
        pixel_values = inputs.get("pixel_values")
        vision = self.config.vision_config
        width = int(vision.in_channels) * int(vision.temporal_patch_size) * int(vision.patch_size) ** 2
        if (
            not isinstance(pixel_values, Tensor)
            or not pixel_values.dtype.is_floating_point
            or tuple(pixel_values.shape) != (sum(sizes), width)
        ):
            raise HeroError.field(
                "pixel_values",
                pixel_values,
                f"a float tensor ({sum(sizes)}, {width}): the patches of the grids image_grid_thw gives",
                "Pass pixel_values and image_grid_thw from the same processor call.",
            )
        if runs is not None and list(runs) != tokens:
            raise HeroError.field(
                "image_grid_thw",
                grid,
                f"grids whose h * w / {merge} tokens equal the prompt's placeholder runs {list(runs)}",
                "Pass input_ids, pixel_values and image_grid_thw from the same processor call; do not edit the runs.",
            )
        tower = self.vision_tower
        pixels = meet_tower(pixel_values, tower)
        with cls_attention_hooks(tower, layers, query="mean") as record:
            output = self.base.get_image_features(pixel_values=pixels, image_grid_thw=given, return_dict=True)
        order = self._tower_order(grid, pixels.device)  # (S,) tower position of each patch in processor order
        hidden = output.last_hidden_state
        hidden = (hidden if order is None else hidden.index_select(0, order)).float()  # (S, D_vision)
        total = int(hidden.shape[0])
        heads = int(self.config.vision_config.num_heads)
        if record.layers:
            rows = record.stacked()[:, 0]  # (L, H, S): one packed tower call
            rows = rows if order is None else rows.index_select(-1, order)
            attention = rows.reshape(len(record.layers), heads, total // merge, merge).sum(-1)  # per merged token
        else:
            attention = hidden.new_zeros((0, heads, total // merge))
        per_token = hidden.reshape(total // merge, merge, -1).mean(1)  # (S / 4, D_vision) stand-in embeddings
        features = self._features(output, tokens)
        check_finite(features, per_token, pixel_values)
        views = self._views(pixel_values, grid)
        images: list[EncodedImage] = []
        start = 0
        for i, ((_, h, w), count) in enumerate(zip(grid, tokens, strict=True)):
            rows_i = (h // self._merge, w // self._merge)
            embeddings = per_token[start : start + count]
            tiles = EncodedTiles(
                cls_tokens=embeddings.mean(0, keepdim=True),
                cls_attention=attention[:, None, :, start : start + count].to(embeddings.device),
                attention_layers=record.layers,
                valid_mask=torch.ones(1, count, dtype=torch.bool, device=embeddings.device),
                thumbnail_index=0,
                grid=rows_i,
                query_source=self.query_source,
                token_features=embeddings[None],
            )
            images.append(
                EncodedImage(
                    tiles=tiles,
                    features=features[i],
                    source=torch.arange(count, device=features[i].device),
                    views=views[i],
                    image_size=None,
                    view_boxes=((0.0, 0.0, 1.0, 1.0),),
                )
            )
            start += count
        return images

    def _grid(self, value: object) -> list[tuple[int, int, int]]:
        """``image_grid_thw`` as (t, h, w) per image, read once (t = 1; h and w multiples of the merge)."""
        merge = self._merge
        ok = (
            isinstance(value, Tensor) and value.dim() == 2 and value.shape[1] == 3 and not value.dtype.is_floating_point
        )
        grid = [(int(t), int(h), int(w)) for t, h, w in value.tolist()] if isinstance(value, Tensor) and ok else None
        if not grid or any(h % merge or w % merge or min(t, h, w) <= 0 for t, h, w in grid):
            raise HeroError.field(
                "image_grid_thw",
                value,
                f"an (I, 3) integer tensor of (t, h, w) patch grids, h and w multiples of {merge}",
                "Pass the processor's image_grid_thw with its pixel_values.",
            )
        if any(t != 1 for t, _, _ in grid):
            raise HeroError.field(
                "image_grid_thw",
                grid,
                "t = 1 for every image (a grid with t > 1 is a video's)",
                f"Pass images only; {_VIDEO}",
            )
        return grid

    def _tower_order(self, grid: Sequence[tuple[int, int, int]], device: torch.device) -> Tensor | None:
        """(S,) on ``device``: where each patch of the processor's order sits in the tower's sequence (None: the
        same order). Computed on the host from the grids and uploaded without a sync."""
        return None

    def _features(self, output: Any, tokens: Sequence[int]) -> list[Tensor]:
        """Per image, the (N_i, D) rows the LLM receives for it (Qwen3-VL: its DeepStack levels beside them)."""
        return [part for part in output.pooler_output]

    def _views(self, pixel_values: Tensor, grid: Sequence[tuple[int, int, int]]) -> list[Tensor]:
        """Per image, (1, 3, h p, w p) RGB in [0, 1]: the processor's resized image, rebuilt from its patches
        (first temporal copy) and un-normalised, for text scorers and the picture."""
        vision = self.config.vision_config
        patch, merge, frames = int(vision.patch_size), self._merge, int(vision.temporal_patch_size)
        channels = int(pixel_values.shape[1]) // (frames * patch * patch)
        views: list[Tensor] = []
        for part, (_, h, w) in zip(torch.split(pixel_values, [h * w for _, h, w in grid]), grid, strict=True):
            blocks = part.reshape(h // merge, w // merge, merge, merge, channels, frames, patch, patch)[..., 0, :, :]
            image = blocks.permute(4, 0, 2, 5, 1, 3, 6).reshape(channels, h * patch, w * patch)
            views.append(unnormalise(image[None], self.mean_std))
        return views

    # ---------------------------------------------------------------------------------------------- assemble
    def assemble_read(self, image: EncodedImage, keep: Tensor, copies: tuple[Tensor, Tensor]) -> AssembledImage:
        """The host's order; the offsets stay on the host (``prompt_inputs`` reads them without a device read)."""
        out = assemble_source(image, keep, copies)
        flat, source = copies
        return dataclasses.replace(out, offsets=flat[source].nonzero().squeeze(1))

    def feature_inputs(self, assembled: Sequence[AssembledImage]) -> dict[str, Any]:
        """``mm_encoder_outputs`` with one (k_i, D) tensor per image, as the host's feature function splits them."""
        return per_image_features(assembled)

    # --------------------------------------------------------------------------------------------- positions
    def check_call(
        self, input_ids: Tensor, attention_mask: Tensor, inputs: Mapping[str, Any], *, generate: bool
    ) -> dict[str, Any]:
        """The checks of a prompt with images before anything runs (``HeroVLM`` calls it first): the caller's
        ``mm_token_type_ids`` (read once; the returned inputs carry the host copy) and, for ``generate``, text
        after the last image (the decode positions continue from the prompt's last token).

        Raises:
            HeroError: without ``mm_token_type_ids``, when they disagree with the placeholders or mark video,
                or when a prompt to generate from ends inside an image run.
        """
        types = self._token_types(inputs.get("mm_token_type_ids"), input_ids, attention_mask)
        if generate and input_ids.numel():
            ends = attention_mask.shape[1] - 1 - attention_mask.long().flip(1).argmax(1)
            if bool((input_ids[torch.arange(input_ids.shape[0]), ends] == self.image_token_id).any()):
                raise HeroError.field(
                    "input_ids",
                    "a prompt that ends with an image placeholder",
                    "text after every image (the chat template's <|vision_end|>)",
                    "Build the prompt with the processor's chat template: decoding continues after the prompt's "
                    "last token.",
                )
        return {**inputs, "mm_token_type_ids": types}

    def prompt_inputs(self, prompt: PrunedPrompt) -> dict[str, Any]:
        """``position_ids`` for the pruned prompt and its ``mm_token_type_ids``; the model's ``rope_deltas`` are left
        in ``prompt.state`` for ``after_host_call``.

        The host's ``get_rope_index`` runs on the caller's unpruned prompt; every column the pruned prompt keeps
        takes its own (t, h, w) position. For ``generate`` the rows are the host's four ([text; t; h; w], the text
        row over the pruned mask, as the host's generate builds it), for ``forward`` its three. ``rope_deltas``
        (B, 1) become "the unpruned next position minus the pruned length", what the host's decode step adds.

        Raises:
            HeroError: without ``mm_token_type_ids`` or when they disagree with the placeholders (``check_call``
                refuses these first). Nothing on the model changes here.
        """
        ids, mask = prompt.input_ids, prompt.attention_mask
        types = self._token_types(prompt.inputs.get("mm_token_type_ids"), ids, mask)
        merge = self._merge  # the grids encode read, from the images' token grids: no second read
        grid = torch.tensor([(1, h * merge, w * merge) for h, w in (image.tiles.grid for image in prompt.encoded)])
        positions, _ = self.base.get_rope_index(
            ids, mm_token_type_ids=types, image_grid_thw=grid, attention_mask=mask
        )  # (3, B, S) unpruned
        rebuilt = prompt.rebuilt
        width = int(rebuilt.input_ids.shape[1])
        kept = torch.zeros(3, ids.shape[0], width, dtype=torch.long)
        for row in range(ids.shape[0]):
            columns = self._kept_columns(prompt, row)
            length = int(rebuilt.lengths[row])
            if int(columns.numel()) != length:  # pragma: no cover - rebuild and assemble disagree
                raise HeroError.field(
                    "pruned prompt", f"row {row}: {length} tokens", f"{int(columns.numel())} kept columns"
                )
            where = slice(width - length, width) if prompt.side == "left" else slice(0, length)
            kept[:, row, where] = positions[:, row, columns]
        # the host's delta for the unpruned row (max position + 1 - length) plus what pruning removed from it
        last = positions.masked_fill(~mask.bool()[None], -1).amax(dim=(0, 2))  # (B,) -1 for an empty row
        deltas = ((last + 1).clamp(min=0) - torch.tensor(rebuilt.lengths, dtype=torch.long))[:, None]
        device = rebuilt.input_ids.device
        position_ids = to_device(kept, device, torch.long)
        if prompt.generate:
            mixin = require("transformers.generation").GenerationMixin
            text = mixin._prepare_position_ids_for_generation(
                self.model, rebuilt.input_ids, {"attention_mask": rebuilt.attention_mask}
            )
            position_ids = torch.cat([text[None].to(device, torch.long), position_ids], dim=0)
        new_types = (rebuilt.input_ids == self.image_token_id).to(types.dtype)
        prompt.state["rope_deltas"] = to_device(deltas, device, torch.long)
        return {"position_ids": position_ids, "mm_token_type_ids": new_types}

    def after_host_call(self, prompt: PrunedPrompt) -> None:
        """Once the host's call succeeded: the model's ``rope_deltas``, as the host's own call leaves them (its
        cache-based decode, ``model(..., past_key_values=...)`` without positions, then continues right)."""
        deltas = prompt.state.get("rope_deltas")
        if deltas is not None:
            self.base.rope_deltas = deltas

    def _token_types(self, value: object, ids: Tensor, mask: Tensor) -> Tensor:
        """The caller's ``mm_token_type_ids`` on the host, checked against the placeholders (text 0, image 1)."""
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(ids.shape) or value.dtype.is_floating_point:
            raise HeroError.field(
                "mm_token_type_ids",
                value,
                f"an integer tensor of the shape of input_ids {tuple(ids.shape)} (text 0, image 1)",
                "Pass the processor's output whole (**inputs): the host's M-RoPE positions need it.",
            )
        types = value.detach().cpu()
        live = mask.bool()
        if bool(((types != 0) & (types != 1) & live).any()):
            raise HeroError.field(
                "mm_token_type_ids", sorted(set(types[live].tolist())), "0 (text) or 1 (image)", _VIDEO
            )
        if bool(((types == 1) != (ids == self.image_token_id))[live].any()):
            raise HeroError.field(
                "mm_token_type_ids",
                "image marks that differ from the image placeholders",
                "1 exactly where input_ids hold the image token",
                "Pass input_ids and mm_token_type_ids from the same processor call.",
            )
        return types

    @staticmethod
    def _kept_columns(prompt: PrunedPrompt, row: int) -> Tensor:
        """The caller's columns of ``row`` that the pruned prompt keeps, in order: text, and each run's kept tokens."""
        keep = prompt.attention_mask[row].bool().clone()
        for span in prompt.spans:
            if span.row != row:
                continue
            keep[span.start : span.stop] = False
            keep[span.start + prompt.assembled[span.image].offsets.cpu()] = True
        return keep.nonzero().squeeze(1)


def host_module(model: Any) -> Any:
    """The transformers modelling module the model's class comes from (its helper functions live there)."""
    return sys.modules[type(model).__module__]
