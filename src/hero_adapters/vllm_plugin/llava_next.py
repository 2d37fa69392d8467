"""HERO in vLLM's LLaVA-NeXT: ``HeroLlavaNextForConditionalGeneration`` with its own processing info, processor
and dummy inputs (imported by vLLM from the registry's lazy string, never at plugin registration).

- Placeholders: ``get_num_image_tokens`` = ``counts.tokens_out(pruner.kept_count(counts))`` with the counts of
  ``hero_core.counts.anyres_counts``: fixed from the image size and the request's keep ratio before any tensor
  work, as vLLM requires.
- Per request: ``mm_processor_kwargs={"hero_query": str, "hero_keep_ratio": float}`` (part of vLLM's
  multimodal cache key, so two questions on one image are planned separately). The processor turns them into
  integer tensors per image (no dtype cast can touch them) that reach ``embed_multimodal``.
- Encoder step: the CLIP tower rebuilt at full depth (HERO's saliency reads the last layer's CLS) and run with
  vLLM's own modules layer by layer; the CLS rows come from each needed layer's fused ``qkv_proj`` output
  (any attention backend), gathered across tensor-parallel ranks so every rank plans the same; relevance from
  the library's CLIP scorer (one batched call, loaded once per worker); the projected patch features are computed
  before planning, so presets that compare token features (divprune, dart, visionzip, cdpruner) read them; then
  ``pipeline.plan_images`` and ``pipeline.assemble_vanilla`` (VisionZip's merges applied), which checks the rows
  against the count fixed in advance.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformers import BatchFeature, CLIPVisionConfig
from vllm.model_executor.models.clip import CLIPVisionModel
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.model_executor.models.utils import maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems
from vllm.multimodal.processing import PromptReplacement

from hero_core import HeroError, ImageCounts
from hero_core.counts import anyres_counts, anyres_grid, anyres_layout

from ..pixels import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, unnormalise
from .fields import (
    EMBEDS_REFUSED,
    Relevance,
    decode_query,
    decode_ratio,
    encode_query,
    encode_ratio,
    per_image,
    settled,
)
from .options import HeroOptions, parse_options, request_options
from .pipeline import AnyresImage, assemble_vanilla, cls_rows_from_qkv, plan_images, unconditioned

__all__ = [
    "HeroLlavaNextForConditionalGeneration",
    "HeroLlavaNextMultiModalProcessor",
    "HeroLlavaNextProcessingInfo",
]


def _options(config: Any) -> HeroOptions:
    """The engine's checked options (cached on the config object: every process parses them once)."""
    cached = getattr(config, "_hero_options", None)
    if isinstance(cached, HeroOptions):
        return cached
    vision = config.vision_config
    if not isinstance(config.vision_feature_layer, int):
        raise HeroError.field(
            "vision_feature_layer", config.vision_feature_layer, "one int layer (HERO's LLaVA-NeXT plugin)"
        )
    if config.vision_feature_select_strategy != "default":
        raise HeroError.field("vision_feature_select_strategy", config.vision_feature_select_strategy, "'default'")
    options = parse_options(getattr(config, "hero", None), depth=int(vision.num_hidden_layers))
    object.__setattr__(config, "_hero_options", options)
    return options


def _counts(config: Any, height: int, width: int) -> ImageCounts:
    vision = config.vision_config
    return anyres_counts((height, width), config.image_grid_pinpoints, vision.image_size, vision.patch_size)


class HeroLlavaNextProcessingInfo(LlavaNextProcessingInfo):
    """Exact placeholder counts under HERO."""

    def hero_options(self) -> HeroOptions:
        return _options(self.get_hf_config())

    def get_num_image_tokens(self, *, image_width: int, image_height: int, keep_ratio: float | None = None) -> int:
        counts = _counts(self.get_hf_config(), image_height, image_width)
        return counts.tokens_out(self.hero_options().pruner(keep_ratio).kept_count(counts))

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        """vLLM sizes its encoder cache from this (else from a dummy request at the engine's default keep ratio,
        which would refuse later requests asking for more): the unpruned maximum."""
        return {"image": self.get_max_image_tokens()}

    def get_max_image_tokens(self) -> int:
        """The unpruned maximum: a request may ask for keep ratio 1, and memory profiling must cover it."""
        config = self.get_hf_config()
        return max(_counts(config, int(h), int(w)).tokens_in for h, w in config.image_grid_pinpoints)


class HeroLlavaNextMultiModalProcessor(LlavaNextMultiModalProcessor[HeroLlavaNextProcessingInfo]):
    """Takes ``hero_query`` / ``hero_keep_ratio`` out of the HF processor's kwargs and into per-image fields."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        kwargs = dict(hf_kwargs)
        hero = {key: kwargs.pop(key) for key in list(kwargs) if str(key).startswith("hero_")}  # checked below
        query, ratio = request_options(hero, self.info.hero_options())
        out: BatchFeature = super()._call_hf_processor(hf_data, kwargs)
        sizes = out.get("image_sizes")
        if sizes is not None:
            count = len(sizes)
            encoded = encode_query(query)
            out["hero_keep_ratio"] = torch.full((count,), encode_ratio(ratio), dtype=torch.int64)
            out["hero_query"] = torch.tensor([encoded] * count, dtype=torch.int64)
        return out

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        fields["hero_keep_ratio"] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        fields["hero_query"] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(
        self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs: Any
    ) -> Sequence[PromptReplacement]:
        config = self.info.get_hf_config()
        _, ratio = request_options(hf_processor_mm_kwargs, self.info.hero_options())

        def replacement(item_idx: int) -> list[int]:
            images = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
            if isinstance(images, ImageEmbeddingItems):
                raise HeroError.field("image_embeds", "given", "images as pixels", EMBEDS_REFUSED)
            size = images.get_image_size(item_idx)
            count = self.info.get_num_image_tokens(image_width=size.width, image_height=size.height, keep_ratio=ratio)
            return [config.image_token_index] * count

        return [PromptReplacement(modality="image", target=[config.image_token_index], replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(
    HeroLlavaNextMultiModalProcessor, info=HeroLlavaNextProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class HeroLlavaNextForConditionalGeneration(Relevance, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT with HERO's pruning in its encoder step (select it with
    ``hf_overrides={"architectures": ["HeroLlavaNextForConditionalGeneration"], "hero": {...}}``)."""

    # the connector's LoRA token arithmetic assumes unpruned tiles
    supports_tower_connector_lora = False
    default_mean_std = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        options = _options(config)  # refuse bad options before building anything
        if not isinstance(config.vision_config, CLIPVisionConfig):
            raise HeroError.field(
                "vision_config", type(config.vision_config).__name__, "a CLIP vision tower (HERO reads its CLS)"
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.hero_options = options
        with self._mark_tower_model(vllm_config, "image"):  # every layer: HERO reads the last layer's CLS
            self.vision_tower = CLIPVisionModel(
                config.vision_config,
                quant_config=vllm_config.quant_config,
                num_hidden_layers_override=None,
                require_post_norm=False,
                prefix=maybe_prefix(prefix, "vision_tower"),
            )
        self._hero_model_config = vllm_config.model_config
        self._hero_scorer = None
        self._hero_warmed = False
        self._hero_mean_std = None

    # ------------------------------------------------------------------------------------------- encoder step
    def embed_multimodal(self, **kwargs: object) -> Any:
        if kwargs.get("image_embeds") is not None:
            raise HeroError.field("image_embeds", "given", "images as pixels", EMBEDS_REFUSED)
        image_input = self._parse_and_validate_image_input(
            pixel_values=kwargs.get("pixel_values"), image_sizes=kwargs.get("image_sizes")
        )
        if image_input is None:
            return []
        pixel_values = image_input["pixel_values"]
        sizes = [tuple(int(x) for x in size) for size in image_input["image_sizes"].tolist()]
        count = len(sizes)
        ratios = per_image(kwargs.get("hero_keep_ratio"), count)
        queries = per_image(kwargs.get("hero_query"), count)
        config = self.config
        vision = config.vision_config
        images = [
            AnyresImage(
                counts=_counts(config, h, w),
                layout=anyres_layout((h, w), config.image_grid_pinpoints, vision.image_size, vision.patch_size),
                tile_grid=anyres_grid((h, w), config.image_grid_pinpoints, vision.image_size),
                keep_ratio=self.hero_options.keep_ratio if ratios is None else decode_ratio(ratios[i]),
                query=None if queries is None else decode_query(queries[i]),
            )
            for i, (h, w) in enumerate(sizes)
        ]
        views = [pixel_values[i][: image.counts.views] for i, image in enumerate(images)]
        pruners = {ratio: self.hero_options.pruner(ratio) for ratio in {image.keep_ratio for image in images}}
        everything = all(pruner.keeps_all() for pruner in pruners.values())
        layers = () if everything else tuple(sorted({layer for p in pruners.values() for layer in p.layers}))
        stacked = torch.cat(views).to(dtype=self.vision_tower.dtype)
        features, last, rows = self._hero_tower(stacked, layers)
        patches = self.multi_modal_projector(features[:, 1:])  # the 'default' strategy drops the CLS
        counts = [image.counts.views for image in images]
        split_last, split_rows = torch.split(last[:, 0], counts), torch.split(rows, counts, dim=1)
        scorer = self._scorer()  # loaded in the first call (vLLM's profiling run): its memory is profiled
        mean_std = self._mean_std() if scorer is not None else None

        def tiles_of(i: int) -> Tensor:
            assert mean_std is not None
            return unnormalise(views[i][1:], mean_std)

        def views_of(i: int) -> Tensor:
            assert mean_std is not None
            return unnormalise(views[i], mean_std)

        tiled = [i for i, image in enumerate(images) if image.counts.views > 1]
        first = self._hero_first(scorer, lambda: [tiles_of(i) for i in tiled], lambda: [views_of(i) for i in tiled])
        active = None if everything else scorer
        plans = plan_images(
            images, list(split_last), list(split_rows), layers, pruners.__getitem__, active, tiles_of,
            features=list(patches.split(counts)), all_views=views_of,
        )  # fmt: skip
        pairs = settled(plans, [_entry(image) for image in images], unconditioned(images, pruners.__getitem__), first)
        out = []
        for image, (keep, into), feats in zip(images, pairs, patches.split(counts), strict=True):
            out.append(
                assemble_vanilla(image, keep, feats.flatten(0, 1), self.image_newline, pruners[image.keep_ratio], into)
            )
        return out

    def _hero_tower(self, pixel_values: Tensor, layers: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
        """(features at ``vision_feature_layer``, last layer's states, CLS rows (L, B, H, T)) in one pass of
        vLLM's own layers."""
        model = self.vision_tower.vision_model
        depth = len(model.encoder.layers)
        feature = self.config.vision_feature_layer
        feature_index = feature if feature >= 0 else depth + 1 + feature  # index into [embeddings, layer 0, ...]
        found: dict[int, Tensor] = {}
        with _qkv_rows(model.encoder.layers, layers, found):
            hidden = model.pre_layrnorm(model.embeddings(pixel_values))
            features = hidden if feature_index == 0 else None
            for index, layer in enumerate(model.encoder.layers):
                hidden = layer(hidden)
                if index + 1 == feature_index:
                    features = hidden
        assert features is not None
        heads = int(self.config.vision_config.num_attention_heads)
        if layers:
            rows = torch.stack([found[layer] for layer in layers])
        else:
            rows = hidden.new_zeros((0, hidden.shape[0], heads, hidden.shape[1]), dtype=torch.float32)
        return features, hidden, rows


@contextmanager
def _qkv_rows(layers: Sequence[Any], wanted: tuple[int, ...], found: dict[int, Tensor]) -> Iterator[None]:
    """Forward hooks on the wanted layers' fused ``qkv_proj``: each stores (B, H, T) CLS rows, gathered across
    tensor-parallel ranks (rank r holds heads [r H / tp, (r + 1) H / tp))."""
    handles = []

    def hook_for(index: int, attention: Any) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            qkv = output[0] if isinstance(output, tuple) else output
            rows = cls_rows_from_qkv(qkv, int(attention.num_heads_per_partition), float(attention.scale))
            if int(getattr(attention, "tp_size", 1)) > 1:
                from vllm.distributed import tensor_model_parallel_all_gather

                rows = tensor_model_parallel_all_gather(rows.contiguous(), dim=1)
            found[index] = rows  # (B, H, T)

        return hook

    try:
        for index in wanted:
            attention = layers[index].self_attn
            handles.append(attention.qkv_proj.register_forward_hook(hook_for(index, attention)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _entry(image: AnyresImage) -> dict[str, Any]:
    """What the record says of an image besides its kept indices."""
    return {
        "views": image.counts.views,
        "tokens_per_view": image.counts.tokens_per_view,
        "tile_grid": None if image.tile_grid is None else list(image.tile_grid),
        "keep_ratio": image.keep_ratio,
        "query": image.query,
    }
