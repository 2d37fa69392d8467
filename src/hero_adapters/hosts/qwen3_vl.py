"""Qwen3-VL (transformers ``Qwen3VLForConditionalGeneration``) adapter.

One view per image at native resolution, N = h w / 4 merged tokens (``hosts._qwen``, HOSTS.md "Round 3"). The
tower is full attention in every block. DeepStack: the tower also returns merged features of the blocks in
``deepstack_visual_indexes``, which the LLM adds to its first layers' hidden states at the image positions.
The adapter keeps them beside each image's LLM rows (``EncodedImage.features`` is (N, D (1 + levels)): the
LLM rows, then each level), so assembling selects exactly the same tokens in every level, and hands them to
the host through its ``mm_encoder_outputs`` route (``deepstack_features``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..adapter import AssembledImage, register_adapter
from ..pixels import SIGLIP_MEAN, SIGLIP_STD
from ._qwen import QwenHost, host_module

__all__ = ["Qwen3VLAdapter"]


@register_adapter("qwen3_vl")
@dataclass(frozen=True, eq=False)
class Qwen3VLAdapter(QwenHost):
    """Binds ``hero_core`` to a transformers Qwen3-VL model (V = 1 view of h w / 4 tokens per image, DeepStack kept
    at the same tokens).

    Args: as ``QwenHost`` (model, layout ``"vanilla"``, processor, image_mean, image_std).

    Raises:
        HeroError: on an unknown layout, bad mean/std, or a model without Qwen3-VL's methods.
    """

    default_normalisation = (SIGLIP_MEAN, SIGLIP_STD)
    family: ClassVar[str] = "Qwen3-VL"
    model_class: ClassVar[str] = "Qwen3VLForConditionalGeneration"

    @property
    def _width(self) -> int:
        return int(self.config.text_config.hidden_size)

    def _features(self, output: Any, tokens: Sequence[int]) -> list[Tensor]:
        """Per image, its LLM rows and then each DeepStack level's rows, side by side: (N_i, D (1 + levels))."""
        levels = list(output.deepstack_features or [])
        return [
            torch.cat([main, *(level[i] for level in levels)], dim=-1) for i, main in enumerate(output.pooler_output)
        ]

    def feature_inputs(self, assembled: Sequence[AssembledImage]) -> dict[str, Any]:
        """``mm_encoder_outputs`` with the kept LLM rows per image and the same rows of every DeepStack level."""
        width = self._width
        levels = int(assembled[0].features.shape[1]) // width - 1
        kept = [out.features[:, :width] for out in assembled]
        deep = [
            [out.features[:, width * (1 + level) : width * (2 + level)] for out in assembled] for level in range(levels)
        ]
        container = host_module(self.model).BaseModelOutputWithDeepstackFeatures
        return {"mm_encoder_outputs": {"image": container(pooler_output=kept, deepstack_features=deep)}}
