"""HERO in vLLM's InternVL (transformers-format checkpoints, architecture ``InternVLForConditionalGeneration``,
which vLLM serves with ``InternS1ForConditionalGeneration``): ``HeroInternVLForConditionalGeneration`` with its own
processing info, processor and dummy inputs (imported by vLLM from the registry's lazy string).

- Placeholders: ``<img>`` + ``kept`` context tokens + ``</img>`` per image, ``kept = pruner.kept_count(
  tiled_counts(views, N))`` (``views`` = the tiles plus the thumbnail as the processor cut them, N = tokens per
  view after the 2 x 2 pixel shuffle): fixed before any tensor work, as vLLM requires.
- Per request: ``mm_processor_kwargs={"hero_query": str, "hero_keep_ratio": float}`` (part of vLLM's multimodal
  cache key). vLLM's InternS1 processor calls the HF processor image by image inside ``_apply_hf_processor_main``:
  the HERO keys are popped there and come back as integer tensors per image that reach ``embed_multimodal``.
- Encoder step: vLLM's own InternS1 tower (the full depth it builds) run once, with forward pre-hooks on the
  needed layers' attention kernels: their inputs are the queries and keys after the optional qk-norm, exactly as
  the transformers recipe computes them. The tower's attention is not tensor-parallel (plain ``nn.Linear``
  projections), so every rank holds every head and plans the same. Rows are summed per 2 x 2 merge group (learned
  from the model's own ``pixel_shuffle``), the thumbnail is the LAST view; then ``pipeline_tiled.plan_tiled`` and
  ``pipeline_tiled.assemble_tiled`` (the kept features in view order, checked against the count fixed in advance).
- Video is out of scope: a request with a video fails alone with a ``HeroError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformers import BatchFeature
from vllm.model_executor.models.interns1 import (
    InternS1DummyInputsBuilder,
    InternS1ForConditionalGeneration,
    InternS1MultiModalProcessor,
    InternS1ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems, ImageSize
from vllm.multimodal.processing import PromptReplacement, PromptUpdateDetails, cached_encode

from hero_core import HeroError
from hero_core.counts import tiled_counts

from ..pixels import IMAGENET_MEAN, IMAGENET_STD, unnormalise
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
from .pipeline import cls_rows_from_qk, unconditioned
from .pipeline_tiled import TiledImage, assemble_tiled, merge_groups, merge_rows, plan_tiled

__all__ = [
    "HeroInternVLDummyInputsBuilder",
    "HeroInternVLForConditionalGeneration",
    "HeroInternVLMultiModalProcessor",
    "HeroInternVLProcessingInfo",
]

_VIDEO_REFUSED = (
    "HERO's InternVL plugin prunes images only: send images, or serve the stock architecture "
    "(InternVLForConditionalGeneration) for videos."
)


def _options(config: Any) -> HeroOptions:
    """The engine's checked options (cached on the config object: every process parses them once)."""
    cached = getattr(config, "_hero_options", None)
    if isinstance(cached, HeroOptions):
        return cached
    layer = getattr(config, "vision_feature_layer", -1)
    if layer != -1:  # vLLM's InternS1 always reads the last layer; transformers would read this one
        raise HeroError.field(
            "vision_feature_layer", layer, "-1 (vLLM's InternS1 always projects the tower's last layer)"
        )
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise HeroError.field("vision_feature_select_strategy", strategy, "'default' (the CLS token dropped)")
    options = parse_options(getattr(config, "hero", None), depth=int(config.vision_config.num_hidden_layers))
    object.__setattr__(config, "_hero_options", options)
    return options


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _patch_grid(config: Any) -> tuple[int, int]:
    """(rows, cols) of patches per view."""
    vision = config.vision_config
    (height, width), (patch_h, patch_w) = _pair(vision.image_size), _pair(vision.patch_size)
    return height // patch_h, width // patch_w


def _tokens_per_view(config: Any) -> int:
    """N: the LLM tokens of one view after the pixel shuffle (InternVL3: 1024 patches -> 256 tokens)."""
    rows, cols = _patch_grid(config)
    return round(rows * cols * float(config.downsample_ratio) ** 2)


def _without_hero(kwargs: Mapping[str, object]) -> dict[str, object]:
    return {key: value for key, value in kwargs.items() if not str(key).startswith("hero_")}


class HeroInternVLProcessingInfo(InternS1ProcessingInfo):
    """Exact placeholder counts under HERO; images only."""

    def hero_options(self) -> HeroOptions:
        return _options(self.get_hf_config())

    def get_hf_processor(self, **kwargs: object) -> Any:
        return super().get_hf_processor(**_without_hero(kwargs))

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def validate_num_items(self, modality: str, num_items: int) -> None:
        if modality == "video" and num_items > 0:
            raise HeroError.field("video", f"{num_items} video(s)", "images only", _VIDEO_REFUSED)
        super().validate_num_items(modality, num_items)

    def kept_tokens(self, views: int, keep_ratio: float | None = None) -> int:
        """Context tokens of an image of ``views`` views at ``keep_ratio`` (default: the engine's)."""
        counts = tiled_counts(views, _tokens_per_view(self.get_hf_config()))
        return self.hero_options().pruner(keep_ratio).kept_count(counts)

    def get_num_image_tokens(
        self,
        *,
        image_width: int,
        image_height: int,
        processor: Any = None,
        mm_kwargs: Mapping[str, object] | None = None,
        keep_ratio: float | None = None,
    ) -> int:
        kwargs = dict(mm_kwargs or {})
        if keep_ratio is None:
            _, keep_ratio = request_options(kwargs, self.hero_options())
        processor = self.get_hf_processor() if processor is None else processor
        tokens = _tokens_per_view(self.get_hf_config())
        if int(processor.image_seq_length) != tokens:
            raise HeroError.field(
                "image_seq_length", int(processor.image_seq_length), f"{tokens}, the tokens of one view after the merge"
            )
        views = processor.image_processor.get_number_of_image_patches(
            image_height, image_width, self.ctx.get_merged_mm_kwargs(_without_hero(kwargs))
        )
        return self.kept_tokens(int(views), keep_ratio)

    def get_image_size_with_most_features(self) -> ImageSize:
        """The stock search, over unpruned counts (a request may ask for keep ratio 1)."""
        processor = self.get_hf_processor()
        base_height, base_width = _pair(self.get_hf_config().vision_config.image_size)
        best, most = ImageSize(width=base_width, height=base_height), 0
        for wr, hr in self.resolve_target_ratios():
            width, height = base_width * wr, base_height * hr
            count = self.get_num_image_tokens(
                image_width=width, image_height=height, processor=processor, mm_kwargs={}, keep_ratio=1.0
            )
            if count > most:
                best, most = ImageSize(width=width, height=height), count
        return best

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        """vLLM sizes its encoder cache from this (else from a dummy request at the engine's default keep ratio,
        which would refuse later requests asking for more): the unpruned maximum."""
        return {"image": self.get_max_image_tokens()}

    def get_max_image_tokens(self) -> int:
        """The unpruned maximum: a request may ask for keep ratio 1, and memory profiling must cover it."""
        width, height = self.get_image_size_with_most_features()
        return self.get_num_image_tokens(image_width=width, image_height=height, mm_kwargs={}, keep_ratio=1.0)

    def tile_grid(self, size: ImageSize, views: int) -> tuple[int, int]:
        """(rows, cols) of the image's local tiles as the processor's tiling gives them; (0, 0) for a single view
        or a grid that does not match the views (e.g. a request overriding the tiling)."""
        if views <= 1:
            return (0, 0)
        from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

        image_processor = self.get_hf_processor().image_processor
        tile = image_processor.size
        tile_hw = (int(tile["height"]), int(tile["width"])) if isinstance(tile, Mapping) else _tile_hw(tile)
        low, high = int(image_processor.min_patches), int(image_processor.max_patches)
        cols, rows = get_optimal_tiled_canvas((int(size.height), int(size.width)), tile_hw, low, high)
        return (int(rows), int(cols)) if rows * cols == views - 1 else (0, 0)


def _tile_hw(size: Any) -> tuple[int, int]:
    return int(size.height), int(size.width)


class HeroInternVLDummyInputsBuilder(InternS1DummyInputsBuilder):
    """Profiling inputs: images only (the largest tiling), no videos."""

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any) -> Any:
        width, height = self.info.get_image_size_with_most_features()
        return {
            "image": self._get_dummy_images(
                width=width,
                height=height,
                num_images=mm_counts.get("image", 0),
                overrides=mm_options.get("image") if mm_options else None,
            )
        }


class HeroInternVLMultiModalProcessor(InternS1MultiModalProcessor):
    """Takes ``hero_query`` / ``hero_keep_ratio`` out of the HF processor's kwargs and into per-image fields."""

    def _apply_hf_processor_main(self, mm_items: Any, hf_kwargs: Mapping[str, object]) -> BatchFeature:
        kwargs = dict(hf_kwargs)
        hero = {key: kwargs.pop(key) for key in list(kwargs) if str(key).startswith("hero_")}  # checked below
        query, ratio = request_options(hero, self.info.hero_options())
        videos = mm_items.get_count("video", strict=False)
        if videos:
            raise HeroError.field("video", f"{videos} video(s)", "images only", _VIDEO_REFUSED)
        out: BatchFeature = super()._apply_hf_processor_main(mm_items, kwargs)
        patches = out.get("image_num_patches")
        if patches is not None:
            views = [int(v) for v in patches.tolist()]
            images = mm_items.get_items("image", ImageProcessorItems)
            grids = [self.info.tile_grid(images.get_image_size(i), v) for i, v in enumerate(views)]
            encoded = encode_query(query)
            out["hero_keep_ratio"] = torch.full((len(views),), encode_ratio(ratio), dtype=torch.int64)
            out["hero_query"] = torch.tensor([encoded] * len(views), dtype=torch.int64)
            out["hero_tile_grid"] = torch.tensor(grids, dtype=torch.int64).view(len(views), 2)
        return out

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, _without_hero(hf_processor_mm_kwargs)))
        for key in ("hero_keep_ratio", "hero_query", "hero_tile_grid"):
            fields[key] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(
        self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs: Any
    ) -> Sequence[PromptReplacement]:
        _, ratio = request_options(hf_processor_mm_kwargs, self.info.hero_options())
        hf_processor = self.info.get_hf_processor(**_without_hero(hf_processor_mm_kwargs))
        context, context_id = hf_processor.image_token, hf_processor.image_token_id
        start, end = hf_processor.start_image_token, hf_processor.end_image_token
        tokenizer = self.info.get_tokenizer()
        data = out_mm_kwargs.get_data()
        views = [int(v) for v in data["image_num_patches"].tolist()] if "image_num_patches" in data else []

        def replacement(item_idx: int) -> Any:
            images = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
            if isinstance(images, ImageEmbeddingItems):
                raise HeroError.field("image_embeds", "given", "images as pixels", EMBEDS_REFUSED)
            kept = self.info.kept_tokens(views[item_idx], ratio)
            ids = cached_encode(tokenizer, start + context * kept + end, add_special_tokens=False)
            return PromptUpdateDetails.select_token_id(ids, context_id)

        return [PromptReplacement(modality="image", target=[context_id], replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(
    HeroInternVLMultiModalProcessor, info=HeroInternVLProcessingInfo, dummy_inputs=HeroInternVLDummyInputsBuilder
)
class HeroInternVLForConditionalGeneration(Relevance, InternS1ForConditionalGeneration):
    """vLLM's InternVL with HERO's pruning in its encoder step (select it with
    ``hf_overrides={"architectures": ["HeroInternVLForConditionalGeneration"], "hero": {...}}``)."""

    # the connector's LoRA token arithmetic assumes unpruned tiles
    supports_tower_connector_lora = False
    default_mean_std = (IMAGENET_MEAN, IMAGENET_STD)

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        options = _options(config)  # refuse bad options before building anything
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.hero_options = options
        depth = int(config.vision_config.num_hidden_layers)
        if len(self.vision_tower.encoder.layer) != depth:
            raise HeroError.field(
                "vision tower layers", len(self.vision_tower.encoder.layer), f"{depth} (HERO reads the last layer)"
            )
        with torch.device("cpu"):
            groups = merge_groups(
                _patch_grid(config), lambda x: self.pixel_shuffle(x, scale_factor=self.downsample_ratio)
            )
        if int(groups.shape[0]) != _tokens_per_view(config):
            raise HeroError.field(
                "pixel_shuffle", f"{int(groups.shape[0])} tokens per view", f"{_tokens_per_view(config)}"
            )
        self._hero_groups = groups
        self._hero_model_config = vllm_config.model_config
        self._hero_scorer = None
        self._hero_warmed = False
        self._hero_mean_std = None

    # ------------------------------------------------------------------------------------------- encoder step
    def embed_multimodal(self, **kwargs: object) -> Any:
        for key in ("pixel_values_videos", "video_embeds"):
            if kwargs.get(key) is not None:
                raise HeroError.field(key, "given", "images only", _VIDEO_REFUSED)
        if kwargs.get("image_embeds") is not None:
            raise HeroError.field("image_embeds", "given", "images as pixels", EMBEDS_REFUSED)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        pixel_values = image_input["pixel_values"]
        views = [int(v) for v in torch.as_tensor(image_input["num_patches"]).flatten().tolist()]
        if sum(views) != int(pixel_values.shape[0]):
            raise HeroError.field("pixel_values", f"{int(pixel_values.shape[0])} views", f"{sum(views)} = {views}")
        count = len(views)
        ratios = per_image(kwargs.get("hero_keep_ratio"), count)
        queries = per_image(kwargs.get("hero_query"), count)
        grids = per_image(kwargs.get("hero_tile_grid"), count)
        n = int(self._hero_groups.shape[0])
        images = [
            TiledImage(
                counts=tiled_counts(v, n),
                tile_grid=None if grids is None else _grid(grids[i], v),
                keep_ratio=self.hero_options.keep_ratio if ratios is None else decode_ratio(ratios[i]),
                query=None if queries is None else decode_query(queries[i]),
            )
            for i, v in enumerate(views)
        ]
        pruners = {ratio: self.hero_options.pruner(ratio) for ratio in {image.keep_ratio for image in images}}
        everything = all(pruner.keeps_all() for pruner in pruners.values())
        layers = () if everything else tuple(sorted({layer for p in pruners.values() for layer in p.layers}))
        last, rows = self._hero_tower(pixel_values, layers)
        features = self._hero_project(last)  # (sum V, N, D) as the stock extract_feature
        merged = merge_rows(rows, self._hero_groups)  # (L, sum V, H, N)
        scorer = self._scorer()  # loaded in the first call (vLLM's profiling run): its memory is profiled
        mean_std = self._mean_std() if scorer is not None else None
        split_views = torch.split(pixel_values, views)

        def views_of(i: int) -> Tensor:
            assert mean_std is not None
            return unnormalise(split_views[i], mean_std)

        every = lambda: [views_of(i) for i in range(len(images))]  # noqa: E731  (the tiles ride with the thumbnail)
        first = self._hero_first(scorer, every, every)
        plans = plan_tiled(
            images,
            list(torch.split(last[:, 0], views)),
            list(torch.split(merged, views, dim=1)),
            layers,
            pruners.__getitem__,
            None if everything else scorer,
            views_of,
            features=list(torch.split(features, views)),
        )
        pairs = settled(plans, [_entry(image) for image in images], unconditioned(images, pruners.__getitem__), first)
        return [
            assemble_tiled(image, keep, feats.flatten(0, 1), pruners[image.keep_ratio], into)
            for image, (keep, into), feats in zip(images, pairs, torch.split(features, views), strict=True)
        ]

    def _hero_tower(self, pixel_values: Tensor, layers: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """(the tower's output (B, 1 + P, D) after its final norm, CLS rows (L, B, H, 1 + P)) in one pass of
        vLLM's own tower, layer by layer."""
        tower = self.vision_tower
        found: dict[int, Tensor] = {}
        with _attention_rows(tower.encoder.layer, layers, found):
            last = tower(pixel_values=pixel_values)
        heads = int(self.config.vision_config.num_attention_heads)
        if layers:
            rows = torch.stack([found[layer] for layer in layers])
        else:
            rows = last.new_zeros((0, last.shape[0], heads, last.shape[1]), dtype=torch.float32)
        return last, rows

    def _hero_project(self, last: Tensor) -> Tensor:
        """The stock ``extract_feature`` after the tower: CLS dropped, pixel shuffle, projector."""
        vit_embeds = last[:, 1:, :]
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.multi_modal_projector(vit_embeds)  # type: ignore[no-any-return]


def _grid(value: Tensor, views: int) -> tuple[int, int] | None:
    rows, cols = (int(x) for x in value.tolist())
    return (rows, cols) if views > 1 and rows * cols == views - 1 else None


@contextmanager
def _attention_rows(layers: Sequence[Any], wanted: tuple[int, ...], found: dict[int, Tensor]) -> Iterator[None]:
    """Forward pre-hooks on the wanted layers' attention kernels (``InternSdpaAttention.attn``): their inputs are
    the queries and keys after the qk-norm; each hook stores (B, H, T) CLS rows. The projections are plain
    ``nn.Linear`` (every rank holds every head), so no tensor-parallel gather is needed."""
    handles = []

    def hook_for(index: int, attention: Any) -> Any:
        heads, dim = int(attention.num_heads), int(attention.head_dim)

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            query = kwargs.get("query", args[0] if args else None)
            key = kwargs.get("key", args[1] if len(args) > 1 else None)
            if not isinstance(query, Tensor) or not isinstance(key, Tensor) or query.shape[-1] != heads * dim:
                raise HeroError.field(
                    f"queries of vision layer {index}",
                    None if not isinstance(query, Tensor) else tuple(query.shape),
                    f"(B, T, {heads} * {dim}): every head on this rank",
                )
            found[index] = cls_rows_from_qk(query, key, heads, float(attention.scale))

        return hook

    try:
        for index in wanted:
            attention = layers[index].attention
            handles.append(attention.attn.register_forward_pre_hook(hook_for(index, attention), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _entry(image: TiledImage) -> dict[str, Any]:
    """What the record says of an image besides its kept indices."""
    return {
        "views": image.counts.views,
        "tokens_per_view": image.counts.tokens_per_view,
        "tile_grid": None if image.tile_grid is None else list(image.tile_grid),
        "keep_ratio": image.keep_ratio,
        "query": image.query,
    }
