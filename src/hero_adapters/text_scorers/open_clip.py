"""The open_clip backend: :class:`OpenClipTextScorer`.

open_clip is imported by :meth:`OpenClipTextScorer.create` (``require("open_clip")``, an absolute import
of the real package, which this module's name does not shadow), not with this module.
"""

from __future__ import annotations

import difflib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from hero_core import HeroError

from ..extras import require
from ..pixels import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ._core import ClipScorer, check_graphs, check_tokenizer, no_patch_grid, param_dtype_device, to_hw

__all__ = ["OpenClipTextScorer"]


@dataclass(frozen=True, eq=False, repr=False)
class OpenClipTextScorer(ClipScorer[Tensor]):
    """HERO's text relevance with an open_clip model: cosine(view embedding, text embedding).

    Implements ``hero_core.TextScorer``. The model is used as given (device, dtype, eval mode).
    Preprocessing follows the model's ``visual.preprocess_cfg`` (size, mean, std, resize mode) unless
    the fields below override it.

    Attributes:
        model: an open_clip model (``encode_image``, ``encode_text``, ``visual``), e.g. ``open_clip.CLIP``.
        tokenizer: its open_clip tokenizer (``open_clip.get_tokenizer(model_name)``): a callable
            ``list[str] -> (B, context_length) int64`` that truncates by itself.
        mean: per-channel mean; None reads ``preprocess_cfg["mean"]`` (OpenAI CLIP's if absent).
        std: per-channel std; None reads ``preprocess_cfg["std"]`` (OpenAI CLIP's if absent).
        resize_mode: None reads ``preprocess_cfg["resize_mode"]`` (``"shortest"`` if absent); see
            :meth:`preprocess`.
        graphs: on CUDA, run the image tower under CUDA graphs captured per input shape (eval mode, autograd
            off; eager otherwise, and from the first failure on). False keeps it eager.

    Raises:
        HeroError: on construction, if the model lacks the open_clip interface, or the fields are bad.
    """

    model: nn.Module
    tokenizer: Callable[..., Tensor]
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    resize_mode: str | None = None
    graphs: bool = True
    _size: tuple[int, int] = field(init=False, repr=False, default=(0, 0))
    _fill: float = field(init=False, repr=False, default=0.0)

    def __post_init__(self) -> None:
        model = self.model
        visual = getattr(model, "visual", None)
        if (
            not isinstance(model, nn.Module)
            or not callable(getattr(model, "encode_image", None))
            or not callable(getattr(model, "encode_text", None))
            or not isinstance(visual, nn.Module)
        ):
            raise HeroError.field(
                "model",
                type(model).__name__,
                "an open_clip model with encode_image, encode_text and a .visual tower",
                "Build it with `OpenClipTextScorer.create(model_name)` or `open_clip.create_model(...)`.",
            )
        check_tokenizer(
            self.tokenizer,
            "open_clip",
            "Use open_clip.get_tokenizer.",
            "Use the model's own tokenizer: `open_clip.get_tokenizer(model_name)`.",
        )
        check_graphs(self.graphs)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        size = cfg.get("size", getattr(visual, "image_size", None))
        if size is None:
            raise HeroError.field(
                "model.visual",
                type(visual).__name__,
                "a vision tower with an image_size or preprocess_cfg['size']",
                "Set it with open_clip.set_model_preprocess_cfg(model, cfg).",
            )
        object.__setattr__(self, "_size", to_hw("model.visual.image_size", size))
        mean = self.mean if self.mean is not None else cfg.get("mean", getattr(visual, "image_mean", None))
        std = self.std if self.std is not None else cfg.get("std", getattr(visual, "image_std", None))
        resize_mode = self.resize_mode if self.resize_mode is not None else cfg.get("resize_mode", "shortest")
        self._set_preprocessing(mean or OPENAI_CLIP_MEAN, std or OPENAI_CLIP_STD, resize_mode)
        fill = cfg.get("fill_color", 0)
        object.__setattr__(self, "_fill", float(fill) / 255.0 if isinstance(fill, (int, float)) else 0.0)

    @classmethod
    def create(
        cls,
        model_name: str = "ViT-L-14-336",
        pretrained: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        graphs: bool = True,
    ) -> OpenClipTextScorer:
        """Build an open_clip model and its tokenizer by name.

        Args:
            model_name: an open_clip architecture (``open_clip.list_models()``), or a ``local-dir:``/``hf-hub:`` name.
            pretrained: None for random weights (enough for speed benchmarks, meaningless scores), a local
                checkpoint file, or a pretrained tag (e.g. ``"openai"``; downloads unless cached).
            device: where to build the model (default CPU).
            dtype: the model's dtype (default float32).
            graphs: the scorer's ``graphs`` (CUDA graphs of the image tower on CUDA; False: eager).

        Returns:
            The scorer, with the model in eval mode.

        Raises:
            HeroError: if open_clip is missing, the name is unknown, or the weights cannot be loaded (pickled
                weights holding objects other than tensors are refused, never unpickled).
        """
        check_graphs(graphs)  # before building anything
        open_clip = require("open_clip")
        has_schema = model_name.startswith(("hf-hub:", "local-dir:"))
        if not has_schema and model_name not in open_clip.list_models():
            known = difflib.get_close_matches(model_name, open_clip.list_models(), n=8, cutoff=0.6)
            raise HeroError.field(
                "model_name",
                model_name,
                "an open_clip architecture name",
                f"Similar names: {known}. See open_clip.list_models()." if known else "See open_clip.list_models().",
            )
        source = None if pretrained is None else os.fspath(pretrained)
        try:  # a pickled checkpoint only through torch.load(weights_only=True): no object in it runs
            model = open_clip.create_model(model_name, pretrained=source, device=device or "cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            from ..evaluate import refused_checkpoint

            local = model_name.removeprefix("local-dir:") if source is None else source
            flag, value = ("model_name", model_name) if source is None else ("pretrained", source)
            refused = refused_checkpoint(flag, value, exc, files=local)
            if refused is None:  # pragma: no cover - an UnpicklingError always has its message
                raise
            raise refused from exc
        except RuntimeError as exc:
            if source is None:
                raise
            raise HeroError.field(
                "pretrained",
                source,
                "None (random weights), a local checkpoint file, or a tag whose weights are cached",
                f"open_clip could not load it: {exc}",
            ) from exc
        if dtype is not None:
            model = model.to(dtype=dtype)
        tokenizer = open_clip.get_tokenizer(model_name)
        return cls(model=model.eval(), tokenizer=tokenizer, graphs=graphs)

    @property
    def image_size(self) -> tuple[int, int]:
        """The model's input resolution (height, width)."""
        return self._size

    def _tokens(self, text: str) -> Tensor:
        tokens = self.tokenizer([text])
        context = getattr(self.model, "context_length", None)
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.shape[0] != 1:
            raise HeroError.field(
                "tokenizer", type(self.tokenizer).__name__, "a tokenizer returning a (1, context_length) tensor"
            )
        if isinstance(context, int) and tokens.shape[1] != context:
            raise HeroError.field(
                "tokenizer",
                type(self.tokenizer).__name__,
                f"tokens padded to the model's context_length={context} (got {tokens.shape[1]})",
                "Use open_clip.get_tokenizer(<the model's name>).",
            )
        _, device = param_dtype_device(self.model)
        return tokens.to(device)

    def _embed_image(self, pixels: Tensor) -> Tensor:
        return self._run_image_tower(self._encode_image, pixels)  # (V, E)

    def _encode_image(self, pixels: Tensor) -> Tensor:
        """The eager image tower: (V, 3, S_h, S_w) -> (V, E)."""
        return cast(Tensor, self._host.encode_image(pixels))

    def _embed_patches(self, pixels: Tensor) -> Tensor:
        """The eager tower's patch tokens in the joint space: (V, 3, S_h, S_w) -> (V, gh, gw, E).

        ``visual.forward_intermediates(indices=1, intermediates_only=True, output_fmt="NLC")`` gives the last
        block's output with the class token split off and NO ``ln_post`` (``normalize_intermediates`` is off);
        ``ln_post`` and ``@ proj`` are applied here. Not ``output_tokens``: what it returns depends on the
        version and the pooling (ln_post'ed tokens in open_clip 3.x's default path, raw ones with
        ``final_ln_after_pool`` and in early 2.x), and it is never projected.
        """
        visual = self._host.visual
        gap = _patch_grid_gap(visual)
        if gap is not None:
            raise no_patch_grid(self, "model.visual", type(visual).__name__, gap)
        patch_h, patch_w = to_hw("model.visual.patch_size", visual.patch_size)
        grid_h, grid_w = pixels.shape[-2] // patch_h, pixels.shape[-1] // patch_w
        out = visual.forward_intermediates(pixels, indices=1, intermediates_only=True, output_fmt="NLC")
        hidden = out["image_intermediates"][-1]  # (V, N, D): the last block, class token dropped
        if hidden.dim() != 3 or hidden.shape[1] != grid_h * grid_w:
            raise no_patch_grid(
                self,
                "model.visual output",
                hidden,
                f"expected {grid_h} x {grid_w} patch tokens (patch dropout is active in training mode: use eval())",
            )
        tokens = visual.ln_post(hidden) @ visual.proj  # (V, N, E), N in raster order
        return cast(Tensor, tokens).reshape(tokens.shape[0], grid_h, grid_w, -1)

    def _embed_text(self, tokens: Tensor) -> Tensor:
        return cast(Tensor, self._host.encode_text(tokens))  # (1, E)


def _patch_grid_gap(visual: nn.Module) -> str | None:
    """Why ``visual`` cannot give per-token joint-space embeddings (None if it can): it must be open_clip's ViT
    (``VisionTransformer``: ``forward_intermediates``, ``patch_size``, a class token), with ``ln_post`` and a ``proj``
    matrix over the token width, and no attentional pooler (there ``ln_post`` and ``proj`` act on pooled queries)."""
    if getattr(visual, "attn_pool", None) is not None:
        return "its tower pools with attention (ln_post and proj act on the pooled queries, not on patch tokens)"
    if not callable(getattr(visual, "forward_intermediates", None)) or getattr(visual, "patch_size", None) is None:
        return f"{type(visual).__name__} is not a ViT tower with a patch grid"
    if getattr(visual, "class_embedding", None) is None:
        return "its tower has no class token"
    norm, proj = getattr(visual, "ln_post", None), getattr(visual, "proj", None)
    if not isinstance(norm, nn.Module) or not isinstance(proj, Tensor) or proj.dim() != 2:
        return "its tower has no ln_post and proj matrix (pruned, or a timm trunk)"
    return None
