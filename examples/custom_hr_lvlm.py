"""Bring your own HR-LVLM: a small AnyRes model of our own, its adapter, a pruned run and ``check_adapter``.

The model (random weights, built in-process; nothing is downloaded):

* a timm ``VisionTransformer`` tower (56-px views of 14-px patches, so N = 16 tokens per view, a class
  token first, 4 layers);
* its own tiler: every image is resized onto a 1 x 2, 2 x 1 or 2 x 2 grid of 56-px tiles (chosen by its
  aspect) and cut into tiles in raster order, with the whole image resized to one more view, the
  thumbnail, FIRST;
* a two-layer MLP projector from the tower's patch tokens to the LLM width;
* a small transformers ``LlamaForCausalLM``; the projected patch tokens replace the image placeholders of
  the prompt (16 per view, in view order) in ``inputs_embeds``.

It is a transformers ``PreTrainedModel`` with ``GenerationMixin``, so its ``generate`` is transformers' own
(greedy, beams, ``output_logits`` ...): ``get_image_features`` encodes the pixels before generation, and
precomputed features arrive as ``mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=
[one (k_i, D) tensor per image])}``, the container transformers' generate groups per prompt for beams.

The adapter, ``AnyResAdapter``, implements every member of ``hero_adapters.HostAdapter`` using only public
names; it is the part you write for your own model. Run::

    python examples/custom_hr_lvlm.py

Needs the ``hf`` and ``timm`` extras. It prints the pruned run and the ``check_adapter`` report, and exits
non-zero if a check fails.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from transformers import GenerationMixin, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hero_adapters import AssembledImage, EncodedImage, HeroVLM
from hero_adapters.testing import check_adapter
from hero_adapters.towers import attention_modules, cls_attention_hooks
from hero_core import EncodedTiles, HeroError, presets

TILE, PATCH = 56, 14
GRID = (TILE // PATCH, TILE // PATCH)  # 4 x 4 patch tokens per view
N = GRID[0] * GRID[1]
PAD, BOS, EOS, IMAGE = 0, 1, 2, 3  # token ids of the word tokenizer below
VOCAB = 96


# ------------------------------------------------------------------------------------------ the host model
class AnyResVLM(PreTrainedModel, GenerationMixin):
    """A tiny AnyRes VLM: timm ViT tower -> MLP projector -> Llama, image features in placeholder tokens."""

    config_class = LlamaConfig
    base_model_prefix = ""  # the model is its own base: generate calls self.get_image_features
    input_modalities = ("image", "text")
    _supports_sdpa = True

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.vision_tower = VisionTransformer(
            img_size=TILE,
            patch_size=PATCH,
            embed_dim=48,
            depth=4,
            num_heads=4,
            mlp_ratio=2.0,
            num_classes=0,
            global_pool="",  # the tower's call returns every token: (V, 1 + N, 48), its class token first
        )
        width = config.hidden_size
        self.projector = nn.Sequential(nn.Linear(48, width), nn.GELU(), nn.Linear(width, width))
        self.language_model = LlamaForCausalLM(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_image_features(
        self, pixel_values: Tensor, image_grids: Tensor, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        """Tower tokens (sum V, 1 + N, 48) as ``last_hidden_state``; per image its (V_i * N, D) projected
        patch tokens, views in order, as ``pooler_output`` (a list)."""
        tokens = self.vision_tower(pixel_values)  # called as a module, so hooks on the tower see the call
        features = self.projector(tokens[:, 1:])  # the class token is not sent to the LLM
        views = (image_grids.prod(-1) + 1).tolist()  # tiles + the thumbnail
        per_image = [f.flatten(0, 1) for f in torch.split(features, views)]
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=per_image)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_grids: Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        labels: Tensor | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs: Any,
    ) -> Any:
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        image = (mm_encoder_outputs or {}).get("image")
        if image is None and pixel_values is not None and image_grids is not None:
            image = self.get_image_features(pixel_values, image_grids)
        if image is not None and input_ids is not None:
            features = torch.cat(list(image.pooler_output)).to(inputs_embeds)
            slots = input_ids == self.config.image_token_id
            if int(slots.sum()) != features.shape[0]:
                raise ValueError(f"{int(slots.sum())} image placeholders for {features.shape[0]} image features")
            inputs_embeds = inputs_embeds.masked_scatter(slots[..., None], features)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


def build_model(seed: int = 0) -> AnyResVLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.2,  # large enough that the generated tokens depend on the image features
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        image_token_id=IMAGE,
    )
    return AnyResVLM(config).eval()


# --------------------------------------------------------------------------------- its tiler and processor
def tile(image: Image.Image) -> tuple[Tensor, tuple[int, int]]:
    """(V, 3, 56, 56) normalised views (thumbnail first, then the tiles in raster order) and (rows, cols)."""
    width, height = image.size
    rows, cols = (1, 2) if width >= 1.5 * height else (2, 1) if height >= 1.5 * width else (2, 2)
    canvas = image.convert("RGB").resize((cols * TILE, rows * TILE), Image.Resampling.BICUBIC)
    views = [image.convert("RGB").resize((TILE, TILE), Image.Resampling.BICUBIC)]
    views += [
        canvas.crop((c * TILE, r * TILE, (c + 1) * TILE, (r + 1) * TILE)) for r in range(rows) for c in range(cols)
    ]
    pixels = torch.from_numpy(np.stack([np.asarray(v, dtype=np.float32) / 255.0 for v in views]))
    return (pixels.permute(0, 3, 1, 2) - 0.5) / 0.5, (rows, cols)


def word_id(word: str) -> int:
    return 4 + zlib.crc32(word.encode()) % (VOCAB - 4)


def process(texts: Sequence[str], images: Sequence[Image.Image]) -> dict[str, Any]:
    """Tokenise (``<image>`` becomes 16 placeholders per view of the next image), pad on the left, tile."""
    pending = list(images)
    rows: list[list[int]] = []
    pixels: list[Tensor] = []
    grids: list[tuple[int, int]] = []
    for text in texts:
        ids = [BOS]
        for word in text.split():
            if word == "<image>":
                views, grid = tile(pending.pop(0))
                pixels.append(views)
                grids.append(grid)
                ids += [IMAGE] * (views.shape[0] * N)
            else:
                ids.append(word_id(word))
        rows.append(ids)
    if pending:
        raise ValueError(f"{len(pending)} images without an <image> in the texts")
    width = max(len(ids) for ids in rows)
    out: dict[str, Any] = {
        "input_ids": torch.tensor([[PAD] * (width - len(ids)) + ids for ids in rows]),
        "attention_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows]),
    }
    if pixels:
        out["pixel_values"] = torch.cat(pixels)  # (sum V, 3, 56, 56)
        out["image_grids"] = torch.tensor(grids)  # (I, 2): (rows, cols) of each image's tiles
    return out


# ----------------------------------------------------------------------------- the adapter: what you write
# AnyResAdapter: 72 lines (from `class AnyResAdapter` to the end of `assemble`), public names only.
class AnyResAdapter:
    """``HostAdapter`` for ``AnyResVLM``: V = 1 thumbnail (first) + K tiles, N = 16 LLM tokens per view."""

    layouts = ("vanilla",)
    input_keys = ("pixel_values", "image_grids")  # the first one present means "there are images"
    encoder_keys: tuple[str, ...] = ()
    refused_keys: Mapping[str, str] = {}
    query_source = "cls"

    def __init__(self, model: AnyResVLM, layout: str = "vanilla") -> None:
        if layout not in self.layouts:
            raise HeroError.field("layout", layout, f"one of {self.layouts}")
        self.model, self.layout, self.vision_tower = model, layout, model.vision_tower
        self.image_token_id, self.pad_token_id = int(model.config.image_token_id), int(model.config.pad_token_id)
        self.num_layers = len(attention_modules(self.vision_tower)[0])

    def image_inputs(self, images: Sequence[Any]) -> dict[str, Any]:
        return {}  # the processor already returns everything encode reads

    def feature_inputs(self, assembled: Sequence[AssembledImage]) -> dict[str, Any]:
        kept = [image.features for image in assembled]  # one entry per image: beams group them per prompt
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=kept)}}

    def encode(
        self, inputs: Mapping[str, Any], layers: tuple[int, ...], *, runs: Sequence[int] | None = None
    ) -> list[EncodedImage]:
        pixels, grids = inputs["pixel_values"], inputs.get("image_grids")
        if not isinstance(grids, Tensor) or grids.dim() != 2 or grids.shape[1] != 2:
            raise HeroError.field("image_grids", grids, "an (I, 2) tensor of tile rows and cols, from process()")
        views = (grids.prod(-1) + 1).tolist()  # tiles + the thumbnail, per image
        if sum(views) != len(pixels):
            raise HeroError.field("pixel_values", pixels, f"{sum(views)} views, as image_grids {grids.tolist()} give")
        if runs is not None and list(runs) != [v * N for v in views]:
            raise HeroError.field("input_ids", list(runs), f"image runs of {[v * N for v in views]} placeholders")
        with cls_attention_hooks(self.vision_tower, layers) as record:
            output = self.model.get_image_features(pixel_values=pixels, image_grids=grids)
        cls = output.last_hidden_state[:, 0].float()  # (sum V, 48)
        attention = record.patch_attention() if layers else cls.new_zeros(0, len(cls), 1, N)  # (L, sum V, H, N)
        images, start = [], 0
        for (rows, cols), count, features in zip(grids.tolist(), views, output.pooler_output, strict=True):
            part = slice(start, start + count)
            tiles = EncodedTiles(
                cls_tokens=cls[part],
                cls_attention=attention[:, part],
                attention_layers=record.layers,
                valid_mask=torch.ones(count, N, dtype=torch.bool),
                thumbnail_index=0,
                grid=GRID,
                tile_grid=(rows, cols),
            )
            boxes = [(c / cols, r / rows, (c + 1) / cols, (r + 1) / rows) for r in range(rows) for c in range(cols)]
            images.append(
                EncodedImage(
                    tiles=tiles,
                    features=features,  # (V N, D) in the host's order: view by view
                    source=torch.arange(count * N),  # position p holds token p % N of view p // N
                    views=(pixels[part].float() * 0.5 + 0.5).clamp(0, 1),
                    view_boxes=((0.0, 0.0, 1.0, 1.0), *boxes),
                )
            )
            start += count
        return images

    def assemble(self, image: EncodedImage, keep: Tensor) -> AssembledImage:
        offsets = keep.reshape(-1).nonzero().squeeze(1)  # kept positions, in the host's order
        return AssembledImage(
            features=image.features[offsets],
            offsets=offsets,
            layout_length=image.tokens_in,
            kept_patch_tokens=int(offsets.numel()),
            newline_tokens=0,
        )


# ---------------------------------------------------------------------------------------------- the run
def picture(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


PROMPTS = [
    ("user: <image> describe the image assistant:", [picture(40, 100, 0)]),  # 1 x 2 tiles + thumbnail
    ("user: compare <image> and <image> assistant:", [picture(90, 60, 1), picture(64, 64, 2)]),  # 2 x 1, 2 x 2
    ("user: a b c assistant:", []),  # a prompt without an image
]


def pruner(keep_ratio: float) -> Any:
    return presets.hero(keep_ratio, low_layers=(1,), high_layers=(3,))  # layers the 4-layer tower has


def main() -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small run fastest on one thread
    try:
        return run()
    finally:
        torch.set_num_threads(threads)


def run() -> int:
    model = build_model()
    texts = [text for text, _ in PROMPTS]
    images = [image for _, group in PROMPTS for image in group]
    inputs = process(texts, images)
    vlm = HeroVLM(model, pruner(0.25), adapter=AnyResAdapter(model))
    out = vlm.generate(**inputs, max_new_tokens=4, do_sample=False)
    report = vlm.last_report
    assert report is not None
    print(f"pruned at keep ratio 0.25: {report.tokens_out} of {report.tokens_in} image tokens to the LLM")
    for row, text in enumerate(texts):
        print(f"  {text!r}: new tokens {out[row, inputs['input_ids'].shape[1] :].tolist()}")
    print("check_adapter:")
    print(check_adapter(model, process, PROMPTS, pruner, adapter=AnyResAdapter(model)))  # raises if a check fails
    return 0


if __name__ == "__main__":
    sys.exit(main())
