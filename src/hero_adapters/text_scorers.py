"""CLIP text scorers: the raw cosine between every view and the instruction (HERO Eq. 2's relevance).

Both scorers implement ``hero_core.TextScorer``: ``scorer(views, text) -> (V,)`` where ``views`` is
(V, 3, h, w) un-normalised RGB in [0, 1]. Each scorer resizes and normalises the views itself, embeds
them and the text with a CLIP model, L2-normalises both embeddings and returns their dot product, NOT
multiplied by CLIP's logit scale (HERO divides the raw cosine by its own temperature).

- :class:`HFClipTextScorer` holds a transformers ``CLIPModel`` and its tokenizer.
- :class:`OpenClipTextScorer` holds an open_clip model and its tokenizer.
- :func:`clip_tokenizer_from_open_clip` builds the OpenAI CLIP tokenizer as a transformers
  ``CLIPTokenizer`` in memory, from the BPE file that ships inside the open_clip wheel. Use it when a
  checkpoint directory lacks ``vocab.json``/``merges.txt``.

Image preprocessing (both scorers, shared): the views are resized on the model's device with bicubic
interpolation (antialiased, as PIL does when shrinking) and clamped back to [0, 1] (PIL works on uint8,
which clamps bicubic overshoot). The default ``resize_mode="shortest"`` is CLIP's own preprocessing:
the shortest side goes to the model's input size (the other side keeps the aspect ratio, truncated to
an int like ``torchvision.transforms.Resize``), then a center crop. ``"squash"`` resizes straight to
the input size (no crop, aspect ratio not kept); ``"longest"`` fits the longest side and pads the rest
with black (open_clip's ``resize_mode="longest"``). A view that already has the input size is not
resampled. Finally ``(x - mean) / std`` per channel.

Text: truncated to the model's context (77 tokens for CLIP: start token, 75 text tokens, end token).
An empty or blank query is refused: a caller with no query should not call the scorer at all
(``HeroVLM.generate(..., query=None)`` skips the text relevance).

Tokenizer note: open_clip cleans the text (``ftfy.fix_text``, HTML unescaping) before its BPE; the
transformers CLIP tokenizer (from the hub or from :func:`clip_tokenizer_from_open_clip`) does not. The
ids are identical for ordinary text, punctuation and unicode, and differ only where that cleaning
changes the text (HTML entities, curly quotes, ligatures, full-width characters, mojibake).

Importing this module does not import transformers or open_clip; they are imported when a scorer is
built from a name or a path.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hero_core import HeroError

from ._clip_bpe import clip_vocab_and_merges
from ._optional import require
from ._pixels import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, check_channels

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "RESIZE_MODES",
    "HFClipTextScorer",
    "OpenClipTextScorer",
    "clip_tokenizer_from_open_clip",
]

RESIZE_MODES: tuple[str, ...] = ("shortest", "squash", "longest")

# A real text vocabulary has tens of thousands of entries; an offline `CLIPTokenizer.from_pretrained(hub_id)`
# without vocab files silently returns one with 2 or 3, that maps every word to the same id.
_MIN_PLAUSIBLE_VOCAB = 1000
# Tolerance on the [0, 1] range of the views, for rounding in upstream resizes.
_RANGE_SLACK = 0.01

_TOKENIZER_FIX = (
    "Load the tokenizer from a local checkpoint directory that contains vocab.json and merges.txt (or "
    "tokenizer.json), e.g. `CLIPTokenizer.from_pretrained('/path/to/clip-vit-large-patch14-336')`, or build the "
    "OpenAI CLIP tokenizer offline with `hero_adapters.text_scorers.clip_tokenizer_from_open_clip()`. "
    "(Offline, `CLIPTokenizer.from_pretrained('<hub id>')` silently returns a 2-token tokenizer.)"
)
_OPENCLIP_TOKENIZER_FIX = "Use the model's own tokenizer: `open_clip.get_tokenizer(model_name)`."


# --------------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------------


def clip_tokenizer_from_open_clip(bpe_path: str | os.PathLike[str] | None = None, *, model_max_length: int = 77) -> Any:
    """The OpenAI CLIP tokenizer as a transformers ``CLIPTokenizer``, built in memory (no download).

    The vocabulary (49408 tokens) and the 48894 merge rules come from ``bpe_simple_vocab_16e6.txt.gz``,
    which ships inside the open_clip_torch wheel (found without importing open_clip). The ids equal
    those of ``open_clip.get_tokenizer("ViT-L-14-336")`` and of the hub's ``openai/clip-vit-*``
    tokenizers; see the module docstring for open_clip's extra text cleaning.

    Args:
        bpe_path: the merges file; None uses the one inside the installed open_clip package.
        model_max_length: the tokenizer's default maximum length (77, CLIP's context).

    Returns:
        A ``transformers.CLIPTokenizer`` with ``len(tokenizer) == 49408``.

    Raises:
        HeroError: if transformers is missing, or the BPE file cannot be found or read.
    """
    transformers = require("transformers")
    vocab, merges = clip_vocab_and_merges(None if bpe_path is None else os.fspath(bpe_path))
    return transformers.CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


# --------------------------------------------------------------------------------------------------
# transformers CLIPModel
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class HFClipTextScorer:
    """HERO's text relevance with a transformers ``CLIPModel``: cosine(view embedding, text embedding).

    Implements ``hero_core.TextScorer``. The model is used as given (device, dtype, eval mode): views
    are moved and cast to the model's parameters; the result comes back as float32 on the views'
    device.

    Attributes:
        model: a ``transformers.CLIPModel`` (anything with ``get_image_features``, ``get_text_features``
            and a ``config`` with ``vision_config.image_size`` and ``text_config.max_position_embeddings``).
        tokenizer: its tokenizer (``CLIPTokenizer``/``CLIPTokenizerFast`` or any transformers tokenizer).
        mean: per-channel mean of the normalisation (OpenAI CLIP's by default).
        std: per-channel standard deviation of the normalisation (OpenAI CLIP's by default).
        resize_mode: ``"shortest"`` (CLIP: shortest side then center crop), ``"squash"`` or ``"longest"``;
            see the module docstring.

    Raises:
        HeroError: on construction, if the model lacks the CLIP interface, the tokenizer's vocabulary is
            implausibly small (< 1000 tokens: the offline hub-id trap), or mean/std/resize_mode are bad.
    """

    model: nn.Module
    tokenizer: Any
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        model = self.model
        config = getattr(model, "config", None)
        image_size = getattr(getattr(config, "vision_config", None), "image_size", None)
        max_positions = getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
        if (
            not isinstance(model, nn.Module)
            or not callable(getattr(model, "get_image_features", None))
            or not callable(getattr(model, "get_text_features", None))
            or image_size is None
            or not isinstance(max_positions, int)
        ):
            raise HeroError.field(
                "model",
                type(model).__name__,
                "a transformers CLIPModel (get_image_features, get_text_features, config.vision_config.image_size, "
                "config.text_config.max_position_embeddings)",
                "Pass the dual-encoder `CLIPModel`, not `CLIPVisionModel`/`CLIPTextModel`, or use "
                "`HFClipTextScorer.from_pretrained(path)`.",
            )
        _to_hw("model.config.vision_config.image_size", image_size)
        if not callable(self.tokenizer):
            raise HeroError.field("tokenizer", type(self.tokenizer).__name__, "a callable transformers tokenizer")
        _check_vocab(self.tokenizer, _TOKENIZER_FIX)
        object.__setattr__(self, "mean", check_channels("mean", self.mean, positive=False))
        object.__setattr__(self, "std", check_channels("std", self.std, positive=True))
        _check_resize_mode(self.resize_mode)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        tokenizer: Any = None,
    ) -> HFClipTextScorer:
        """Load ``CLIPModel`` and its tokenizer from a checkpoint (a local directory, or a hub id in the cache).

        A local directory is read with ``local_files_only=True`` (nothing is downloaded); a hub id
        follows ``HF_HUB_OFFLINE``. If the directory has a ``preprocessor_config.json``, its
        ``image_mean``/``image_std`` are used for the normalisation.

        Args:
            path_or_id: checkpoint directory (``config.json``, weights, tokenizer files) or hub id.
            device: where to put the model (default: where transformers loads it, the CPU).
            dtype: the model's dtype (default: the checkpoint's / float32).
            tokenizer: a tokenizer to use instead of loading one, e.g. ``clip_tokenizer_from_open_clip()``
                for a directory without tokenizer files.

        Returns:
            The scorer, with the model in eval mode.

        Raises:
            HeroError: if transformers is missing, the checkpoint cannot be loaded, or the loaded
                tokenizer is degenerate (no vocabulary files found).
        """
        transformers = require("transformers")
        local = Path(path_or_id).is_dir()
        source = os.fspath(path_or_id)
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
        fix = (
            "Pass a local checkpoint directory (config.json + model weights)."
            if local or offline
            else "Check the id, or download the checkpoint and pass its directory."
        )
        try:
            config = transformers.AutoConfig.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError) as exc:
            raise HeroError.field(
                "path_or_id", source, "a CLIPModel checkpoint (directory or cached hub id)", f"{fix} ({exc})"
            ) from exc
        if getattr(config, "model_type", None) != "clip":
            raise HeroError.field(
                "path_or_id model_type",
                getattr(config, "model_type", None),
                "'clip': a full CLIP checkpoint with a text tower, e.g. openai/clip-vit-large-patch14-336",
                f"{source} is not one; a VLM's own vision tower has no text tower, pass a separate CLIP checkpoint.",
            )
        try:
            dtype_kwargs = {} if dtype is None else {"dtype": dtype}
            model, info = transformers.CLIPModel.from_pretrained(
                source, config=config, local_files_only=local, output_loading_info=True, **dtype_kwargs
            )
        except (OSError, ValueError) as exc:
            raise HeroError.field(
                "path_or_id", source, "a CLIPModel checkpoint (directory or cached hub id)", f"{fix} ({exc})"
            ) from exc
        missing = list(info.get("missing_keys", []))
        if missing:
            raise HeroError.field(
                "path_or_id",
                source,
                "a checkpoint holding every CLIPModel weight",
                f"{len(missing)} weights are missing (e.g. {missing[:3]}); a partial checkpoint would score with "
                "random weights.",
            )
        if tokenizer is None:
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local)
            except (OSError, ValueError, TypeError) as exc:
                raise HeroError.field(
                    "path_or_id", source, "a checkpoint with tokenizer files", f"{_TOKENIZER_FIX} ({exc})"
                ) from exc
            size = _vocab_size(tokenizer)
            if size is not None and size < _MIN_PLAUSIBLE_VOCAB:
                raise HeroError.field(
                    "path_or_id",
                    source,
                    "a checkpoint with tokenizer files (vocab.json + merges.txt, or tokenizer.json)",
                    f"Its tokenizer loaded with only {size} tokens, so the files are missing. Copy them into the "
                    "directory, or pass `tokenizer=clip_tokenizer_from_open_clip()` (the OpenAI CLIP tokenizer, "
                    "built offline).",
                )
        if device is not None:
            model = model.to(device)
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        preprocessor = Path(source) / "preprocessor_config.json"
        if local and preprocessor.is_file():
            mean, std = _mean_std_from_preprocessor(preprocessor, mean, std)
        return cls(model=model.eval(), tokenizer=tokenizer, mean=mean, std=std)

    def __repr__(self) -> str:
        return _repr(self)

    @property
    def _host(self) -> Any:
        """The model, untyped: its interface was checked in ``__post_init__``."""
        return self.model

    @property
    def image_size(self) -> tuple[int, int]:
        """The model's input resolution (height, width)."""
        return _to_hw("image_size", self._host.config.vision_config.image_size)

    @property
    def max_text_tokens(self) -> int:
        """How many tokens of the query reach the text encoder, start and end tokens included (77 for CLIP)."""
        limit = int(self._host.config.text_config.max_position_embeddings)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 2 <= tokenizer_limit < limit:
            limit = tokenizer_limit
        return limit

    def preprocess(self, views: Tensor) -> Tensor:
        """Resize and normalise views the way this scorer does before the image encoder.

        Args:
            views: (V, 3, h, w) float RGB in [0, 1].

        Returns:
            (V, 3, S_h, S_w) pixel values in the model's dtype, on the model's device.
        """
        _check_views(views)
        return self._pixels(views)

    def _pixels(self, views: Tensor) -> Tensor:
        dtype, device = _param_dtype_device(self.model)
        return _prepare_pixels(views, self.image_size, self.mean, self.std, self.resize_mode, 0.0, dtype, device)

    def tokenize(self, text: str) -> dict[str, Tensor]:
        """Token ids (and attention mask) of the query, truncated to :attr:`max_text_tokens`.

        Args:
            text: the query.

        Returns:
            ``{"input_ids": (1, T) int64, "attention_mask": (1, T)}`` on the model's device.
        """
        _check_text(text)
        return self._tokens(text)

    def _tokens(self, text: str) -> dict[str, Tensor]:
        encoded = self.tokenizer(text, truncation=True, max_length=self.max_text_tokens, return_tensors="pt")
        input_ids = encoded["input_ids"]
        text_config = self._host.config.text_config
        vocab_size = int(text_config.vocab_size)
        if input_ids.numel() == 0 or int(input_ids.max()) >= vocab_size or int(input_ids.min()) < 0:
            raise HeroError.field(
                "tokenizer",
                type(self.tokenizer).__name__,
                f"ids in [0, {vocab_size}) (the model's text vocabulary), at least one token",
                "The tokenizer does not belong to this model: load both from the same checkpoint.",
            )
        eos = getattr(text_config, "eos_token_id", None)
        # CLIP pools the text at the first end-of-text token (legacy configs with eos_token_id == 2 use argmax).
        if isinstance(eos, int) and eos != 2 and not bool((input_ids == eos).any()):
            raise HeroError.field(
                "tokenizer",
                type(self.tokenizer).__name__,
                f"a tokenizer that appends the model's end-of-text token (id {eos})",
                "CLIP reads the text embedding at that token. " + _TOKENIZER_FIX,
            )
        _, device = _param_dtype_device(self.model)
        out = {"input_ids": input_ids.to(device)}
        mask = encoded.get("attention_mask")
        if mask is not None:
            out["attention_mask"] = mask.to(device)
        return out

    def __call__(self, views: Tensor, text: str, /) -> Tensor:
        """Cosine between each view and the text (HERO Eq. 2's raw CLIP score, no logit scale).

        Args:
            views: (V, 3, h, w) float RGB in [0, 1] (not CLIP-normalised), any device.
            text: the query, a non-empty string; truncated to the model's context.

        Returns:
            (V,) float32 on ``views.device``, each in [-1, 1].

        Raises:
            HeroError: on views that are not (V, 3, h, w) floats in [0, 1], or text that is not a
                non-empty string.
        """
        return _score(views, text, self._pixels, self._tokens, self._embed_image, self._embed_text)

    def _embed_image(self, pixels: Tensor) -> Tensor:
        return _embedding(self._host.get_image_features(pixel_values=pixels))  # (V, E)

    def _embed_text(self, tokens: dict[str, Tensor]) -> Tensor:
        return _embedding(self._host.get_text_features(**tokens))  # (1, E)


# --------------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class OpenClipTextScorer:
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
        resize_mode: None reads ``preprocess_cfg["resize_mode"]`` (``"shortest"`` if absent).

    Raises:
        HeroError: on construction, if the model lacks the open_clip interface, or the fields are bad.
    """

    model: nn.Module
    tokenizer: Callable[..., Tensor]
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    resize_mode: str | None = None
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
        if not callable(self.tokenizer):
            raise HeroError.field(
                "tokenizer",
                type(self.tokenizer).__name__,
                "a callable open_clip tokenizer",
                "Use open_clip.get_tokenizer.",
            )
        _check_vocab(self.tokenizer, _OPENCLIP_TOKENIZER_FIX)
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        size = cfg.get("size", getattr(visual, "image_size", None))
        if size is None:
            raise HeroError.field(
                "model.visual",
                type(visual).__name__,
                "a vision tower with an image_size or preprocess_cfg['size']",
                "Set it with open_clip.set_model_preprocess_cfg(model, cfg).",
            )
        object.__setattr__(self, "_size", _to_hw("model.visual.image_size", size))
        mean = self.mean if self.mean is not None else cfg.get("mean", getattr(visual, "image_mean", None))
        std = self.std if self.std is not None else cfg.get("std", getattr(visual, "image_std", None))
        object.__setattr__(self, "mean", check_channels("mean", mean or OPENAI_CLIP_MEAN, positive=False))
        object.__setattr__(self, "std", check_channels("std", std or OPENAI_CLIP_STD, positive=True))
        resize_mode = self.resize_mode if self.resize_mode is not None else cfg.get("resize_mode", "shortest")
        _check_resize_mode(resize_mode)
        object.__setattr__(self, "resize_mode", resize_mode)
        fill = cfg.get("fill_color", 0)
        object.__setattr__(self, "_fill", float(fill) / 255.0 if isinstance(fill, (int, float)) else 0.0)

    @classmethod
    def create(
        cls,
        model_name: str = "ViT-L-14-336",
        pretrained: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> OpenClipTextScorer:
        """Build an open_clip model and its tokenizer by name.

        Args:
            model_name: an open_clip architecture (``open_clip.list_models()``), or a ``local-dir:``/``hf-hub:`` name.
            pretrained: None for random weights (enough for speed benchmarks, meaningless scores), a local
                checkpoint file, or a pretrained tag (e.g. ``"openai"``; downloads unless cached).
            device: where to build the model (default CPU).
            dtype: the model's dtype (default float32).

        Returns:
            The scorer, with the model in eval mode.

        Raises:
            HeroError: if open_clip is missing, the name is unknown, or the weights cannot be loaded.
        """
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
        try:
            model = open_clip.create_model(model_name, pretrained=source, device=device or "cpu")
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
        return cls(model=model.eval(), tokenizer=tokenizer)

    def __repr__(self) -> str:
        return _repr(self)

    @property
    def _host(self) -> Any:
        """The model, untyped: its interface was checked in ``__post_init__``."""
        return self.model

    @property
    def image_size(self) -> tuple[int, int]:
        """The model's input resolution (height, width)."""
        return self._size

    def preprocess(self, views: Tensor) -> Tensor:
        """Resize and normalise views the way this scorer does before ``encode_image``.

        Args:
            views: (V, 3, h, w) float RGB in [0, 1].

        Returns:
            (V, 3, S_h, S_w) pixel values in the model's dtype, on the model's device.
        """
        _check_views(views)
        return self._pixels(views)

    def _pixels(self, views: Tensor) -> Tensor:
        dtype, device = _param_dtype_device(self.model)
        # mean, std and resize_mode are never None after __post_init__.
        mean = cast("tuple[float, float, float]", self.mean)
        std = cast("tuple[float, float, float]", self.std)
        return _prepare_pixels(views, self._size, mean, std, cast(str, self.resize_mode), self._fill, dtype, device)

    def tokenize(self, text: str) -> Tensor:
        """Token ids of the query, as the model's text tower takes them.

        Args:
            text: the query; the open_clip tokenizer truncates it to its context length.

        Returns:
            (1, context_length) int64 on the model's device.
        """
        _check_text(text)
        return self._tokens(text)

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
        _, device = _param_dtype_device(self.model)
        return tokens.to(device)

    def __call__(self, views: Tensor, text: str, /) -> Tensor:
        """Cosine between each view and the text (HERO Eq. 2's raw CLIP score, no logit scale).

        Args:
            views: (V, 3, h, w) float RGB in [0, 1] (not CLIP-normalised), any device.
            text: the query, a non-empty string; truncated to the model's context.

        Returns:
            (V,) float32 on ``views.device``, each in [-1, 1].

        Raises:
            HeroError: on views that are not (V, 3, h, w) floats in [0, 1], or text that is not a
                non-empty string.
        """
        return _score(views, text, self._pixels, self._tokens, self._host.encode_image, self._host.encode_text)


# --------------------------------------------------------------------------------------------------
# Shared internals
# --------------------------------------------------------------------------------------------------


def _score(
    views: Tensor,
    text: str,
    pixels: Callable[[Tensor], Tensor],
    tokens: Callable[[str], Any],
    embed_image: Callable[[Tensor], Tensor],
    embed_text: Callable[[Any], Tensor],
) -> Tensor:
    """The scoring both scorers share: check, preprocess, embed, cosine. (V,) float32 on ``views.device``."""
    _check_views(views)
    _check_text(text)
    with torch.inference_mode():
        image = embed_image(pixels(views))  # (V, E); normalised in float32 by _cosine
        query = embed_text(tokens(text))  # (1, E)
        scores = _cosine(image, query)  # (V,)
    return scores.to(views.device).clone()  # a normal tensor, usable outside inference mode


def _check_views(views: Any) -> None:
    if not isinstance(views, Tensor) or views.dim() != 4 or views.shape[1] != 3 or min(views.shape) < 1:
        raise HeroError.field(
            "views",
            views,
            "a (V, 3, h, w) tensor with V >= 1: RGB views, channels first",
            "Stack the views (tiles and thumbnail) of one image; move channels first with .permute(0, 3, 1, 2).",
        )
    if not views.dtype.is_floating_point:
        raise HeroError.field(
            "views", views, "a floating-point tensor in [0, 1]", "Convert uint8 images with `views.float() / 255`."
        )
    low, high = (float(x) for x in torch.aminmax(views.detach().float()))
    if not (low >= -_RANGE_SLACK and high <= 1.0 + _RANGE_SLACK):  # also catches NaN
        raise HeroError.field(
            "views",
            f"<tensor shape={tuple(views.shape)} min={low:.4g} max={high:.4g}>",
            "values in [0, 1]",
            "Pass un-normalised RGB in [0, 1]: divide 0..255 images by 255 and do not apply the CLIP mean/std "
            "(the scorer normalises itself).",
        )


def _check_text(text: Any) -> None:
    if not isinstance(text, str):
        raise HeroError.field("text", text, "a str (the query)", "Score one query at a time.")
    if not text.strip():
        raise HeroError.field(
            "text",
            text,
            "a non-empty query",
            "With no query there is no text relevance: pass query=None (the allocator then uses the visual "
            "score alone) instead of an empty string.",
        )


def _vocab_size(tokenizer: Any) -> int | None:
    for candidate in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        if candidate is None:
            continue
        if hasattr(candidate, "__len__"):
            try:
                return len(candidate)
            except TypeError:
                pass
        size = getattr(candidate, "vocab_size", None)
        if isinstance(size, int):
            return size
    return None


def _check_vocab(tokenizer: Any, fix: str) -> None:
    size = _vocab_size(tokenizer)
    if size is not None and size < _MIN_PLAUSIBLE_VOCAB:
        raise HeroError.field(
            "len(tokenizer)",
            size,
            f"a real text vocabulary (>= {_MIN_PLAUSIBLE_VOCAB} tokens; CLIP has 49408)",
            f"The tokenizer ({type(tokenizer).__name__}) is degenerate. {fix}",
        )


def _check_resize_mode(mode: Any) -> None:
    if mode not in RESIZE_MODES:
        raise HeroError.field(
            "resize_mode", mode, f"one of {RESIZE_MODES}", "CLIP's own preprocessing is 'shortest' (then center crop)."
        )


def _to_hw(name: str, size: Any) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)
    ):
        raise HeroError.field(name, size, "a positive int or an (height, width) pair of positive ints")
    return int(size[0]), int(size[1])


def _mean_std_from_preprocessor(
    path: Path, mean: tuple[float, float, float], std: tuple[float, float, float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    import json

    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HeroError.field("preprocessor_config.json", str(path), "a readable JSON file", str(exc)) from exc
    if not isinstance(cfg, dict):
        return mean, std
    image_mean, image_std = cfg.get("image_mean"), cfg.get("image_std")
    return (
        check_channels("image_mean", image_mean, positive=False) if image_mean is not None else mean,
        check_channels("image_std", image_std, positive=True) if image_std is not None else std,
    )


def _param_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for param in module.parameters():
        return param.dtype, param.device
    return torch.float32, torch.device("cpu")


def _prepare_pixels(
    views: Tensor,
    size: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    resize_mode: str,
    fill: float,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    """(V, 3, h, w) in [0, 1] -> (V, 3, S_h, S_w) normalised, in ``dtype`` on ``device``.

    The arithmetic runs in float32 (float64 for a float64 model), whatever the input dtype, so float32
    and float64 views with the same values give the same pixels.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    x = views.detach().to(device=device, dtype=work)
    x = _resize(x, size, resize_mode, fill)
    mean_t = torch.tensor(mean, dtype=work, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=work, device=device).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).to(dtype)


def _resize(x: Tensor, size: tuple[int, int], mode: str, fill: float) -> Tensor:
    """Resize (V, 3, h, w) to (V, 3, *size) per ``mode`` (module docstring); bicubic, antialiased, clamped."""
    target_h, target_w = size
    h, w = x.shape[-2:]
    if (h, w) == size:
        return x
    if mode == "squash":
        return _bicubic(x, target_h, target_w)
    # Which side limits: h / target_h <= w / target_w, compared without division.
    height_is_short = h * target_w <= w * target_h
    if mode == "shortest":
        if height_is_short:
            new_h, new_w = target_h, max(target_w, int(w * target_h / h))
        else:
            new_h, new_w = max(target_h, int(h * target_w / w)), target_w
        x = _bicubic(x, new_h, new_w) if (new_h, new_w) != (h, w) else x
        top = round((new_h - target_h) / 2.0)  # as torchvision's center_crop
        left = round((new_w - target_w) / 2.0)
        return x[..., top : top + target_h, left : left + target_w]
    # "longest": fit inside the target, then pad (centered) with the fill colour.
    if height_is_short:
        new_h, new_w = max(1, min(target_h, round(h * target_w / w))), target_w
    else:
        new_h, new_w = target_h, max(1, min(target_w, round(w * target_h / h)))
    x = _bicubic(x, new_h, new_w) if (new_h, new_w) != (h, w) else x
    pad_h, pad_w = target_h - new_h, target_w - new_w
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)


def _bicubic(x: Tensor, height: int, width: int) -> Tensor:
    out = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def _embedding(output: Any) -> Tensor:
    """The projected embedding from ``get_*_features``: a tensor (transformers 4.x) or ``.pooler_output`` (5.x)."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return pooled
    raise HeroError.field(
        "model output",
        type(output).__name__,
        "a tensor or an output with a tensor .pooler_output (the projected CLIP embedding)",
        "Pass a transformers CLIPModel.",
    )


def _cosine(image: Tensor, query: Tensor) -> Tensor:
    """(V, E) and (1, E) -> (V,) cosine, computed in float32 (float64 stays float64 until the end)."""
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    image = F.normalize(image.to(work), dim=-1)
    query = F.normalize(query.to(work), dim=-1)
    return (image @ query.reshape(-1, 1)).reshape(-1).to(torch.float32)


def _repr(scorer: HFClipTextScorer | OpenClipTextScorer) -> str:
    """Short repr: class names of the model and tokenizer instead of the whole module tree."""
    size = _vocab_size(scorer.tokenizer)
    tokenizer = type(scorer.tokenizer).__name__ + ("" if size is None else f"(vocab={size})")
    return (
        f"{type(scorer).__name__}(model={type(scorer.model).__name__}, tokenizer={tokenizer}, "
        f"image_size={scorer.image_size}, mean={scorer.mean}, std={scorer.std}, resize_mode={scorer.resize_mode!r})"
    )
