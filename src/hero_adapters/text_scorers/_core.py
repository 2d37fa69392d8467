"""The scorer core both CLIP backends share: input checks, pixel preparation, the scoring itself, repr.

A backend subclasses :class:`ClipScorer` as a frozen dataclass with the fields ``model``, ``tokenizer``,
``mean``, ``std``, ``resize_mode`` and ``graphs``, checks its host in ``__post_init__`` (with
:func:`check_tokenizer`, :func:`check_graphs` and :meth:`ClipScorer._set_preprocessing`), and implements
:attr:`ClipScorer.image_size`, ``_tokens``, ``_embed_image`` (through :meth:`ClipScorer._run_image_tower`, which
replays captured CUDA graphs: ``_graphs``), ``_embed_patches`` (eager, for :meth:`ClipScorer.score_tokens`) and
``_embed_text``. Nothing here imports transformers or open_clip.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hero_core import HeroError

from ..pixels import check_channels
from . import _graphs

__all__ = [
    "MIN_PLAUSIBLE_VOCAB",
    "RESIZE_MODES",
    "TEXT_CACHE_SIZE",
    "ClipScorer",
    "check_graphs",
    "check_tokenizer",
    "implausible_vocab_size",
    "no_patch_grid",
    "param_dtype_device",
    "to_hw",
    "vocab_size",
]

RESIZE_MODES: tuple[str, ...] = ("shortest", "squash", "longest")
#: Text embeddings each scorer keeps (one per distinct query), least recently used dropped first.
TEXT_CACHE_SIZE = 256
_CACHE_LOCK = threading.Lock()

# A real text vocabulary has tens of thousands of entries; an offline `CLIPTokenizer.from_pretrained(hub_id)`
# without vocab files silently returns one with 2 or 3, that maps every word to the same id.
MIN_PLAUSIBLE_VOCAB = 1000
# Tolerance on the [0, 1] range of the views, for rounding in upstream resizes.
_RANGE_SLACK = 0.01

TokensT = TypeVar("TokensT")


class ClipScorer(ABC, Generic[TokensT]):
    """What both CLIP text scorers share: ``__call__``, ``preprocess``, ``tokenize`` and ``repr``.

    ``TokensT`` is what the backend's text encoder takes (a dict of tensors, or one tensor).
    """

    model: nn.Module
    tokenizer: Any
    # Set (never None) by every backend's __post_init__, through _set_preprocessing.
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    resize_mode: str | None
    graphs: bool  # run the image tower under captured CUDA graphs on CUDA (``_graphs``)
    _fill: float = 0.0  # the padding value of resize_mode="longest", in [0, 1]

    @property
    @abstractmethod
    def image_size(self) -> tuple[int, int]:
        """The model's input resolution (height, width)."""

    @abstractmethod
    def _tokens(self, text: str) -> TokensT:
        """``text`` (already checked) as the text encoder takes it, on the model's device."""

    @abstractmethod
    def _embed_image(self, pixels: Tensor) -> Tensor:
        """(V, 3, S_h, S_w) pixels -> (V, E) image embeddings, not normalised."""

    @abstractmethod
    def _embed_patches(self, pixels: Tensor) -> Tensor:
        """(V, 3, S_h, S_w) pixels -> (V, gh, gw, E): the last layer's patch tokens (class token dropped) through the
        tower's final layer norm and visual projection, in raster order, not normalised; eager. HeroError
        (:func:`no_patch_grid`) for a tower without a patch grid."""

    @abstractmethod
    def _embed_text(self, tokens: TokensT) -> Tensor:
        """Tokens of one query -> (1, E) text embedding, not normalised."""

    def _run_image_tower(self, tower: Callable[[Tensor], Tensor], pixels: Tensor) -> Tensor:
        """``tower(pixels)``, (V, 3, S_h, S_w) -> (V, E): replayed from a captured CUDA graph when ``graphs`` is
        on and :func:`_graphs.graphs_apply` holds (CUDA, eval mode, autograd off), else eager. The graphs are kept
        per scorer, per input shape, dtype and device, and dropped when the model's state changes (the text
        cache's check, dtype and device, plus every weight's and buffer's storage)."""
        if not self.graphs or not _graphs.graphs_apply(self.model, pixels):
            return tower(pixels)
        with _CACHE_LOCK:
            table: _graphs.ImageGraphs | None = getattr(self, "_image_graphs", None)
            if table is None:
                table = _graphs.ImageGraphs(type(self).__name__)
                object.__setattr__(self, "_image_graphs", table)
        return table.run(tower, pixels, _model_state(self.model))

    @property
    def _host(self) -> Any:
        """The model, untyped: its interface was checked in ``__post_init__``."""
        return self.model

    def __call__(self, views: Tensor, text: str, /) -> Tensor:
        """Cosine between each view and the text (HERO Eq. 2's raw CLIP score, no logit scale).

        Both embeddings are L2-normalised in float32 (float64 for a float64 model) and their dot product
        is returned, NOT multiplied by CLIP's logit scale (HERO divides the raw cosine by its own
        temperature).

        Args:
            views: (V, 3, h, w) float RGB in [0, 1] (not CLIP-normalised), any device.
            text: the query, a non-empty string; truncated to the model's context (77 tokens for CLIP:
                start token, 75 text tokens, end token). A caller with no query should not call the
                scorer at all (``HeroVLM.generate(..., query=None)`` skips the text relevance).

        Returns:
            (V,) float32 on ``views.device``, each in [-1, 1].

        Raises:
            HeroError: on views that are not (V, 3, h, w) floats in [0, 1], or text that is not a
                non-empty string.
        """
        _check_views(views)
        _check_text(text)
        with torch.inference_mode():
            image = self._embed_image(self._pixels(views))  # (V, E); normalised in float32 by _cosine
            scores = _cosine(image, self._text_embedding(text))  # (V,)
        return scores.to(views.device).clone()  # a normal tensor, usable outside inference mode

    def score_batch(self, views: Sequence[Tensor], texts: Sequence[str], /) -> list[Tensor]:
        """``[self(v, t) for v, t in zip(views, texts)]`` with ONE image-tower call over every image's views
        (concatenated after the resize) and one text embedding per distinct text (cached: ``_text_embedding``).

        Args:
            views: per image, (K_i, 3, h_i, w_i) float RGB in [0, 1] (sizes may differ between images).
            texts: per image, its query (non-empty strings; repeated queries are embedded once).

        Returns:
            Per image, (K_i,) float32 cosines on that image's views' device, equal to the single call's
            within float rounding (the tower sees a larger batch).

        Raises:
            HeroError: on views or texts as ``__call__`` refuses them, or lists of different lengths.
        """
        _check_batch(views, texts)
        if not views:
            return []
        with torch.inference_mode():
            image = self._embed_image(torch.cat([self._pixels(item) for item in views]))  # (sum K_i, E)
            queries = {text: self._text_embedding(text) for text in dict.fromkeys(texts)}
            out, start = [], 0
            for item, text in zip(views, texts, strict=True):
                count = int(item.shape[0])
                out.append(_cosine(image[start : start + count], queries[text]))
                start += count
        # Outside inference mode: normal tensors, usable anywhere (as __call__'s).
        return [score.to(item.device).clone() for score, item in zip(out, views, strict=True)]

    def score_tokens(self, views: Sequence[Tensor], texts: Sequence[str], /) -> list[Tensor]:
        """Per patch token, the cosine between its CLIP joint-space embedding and the image's text (CDPruner's
        relevance: Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
        Pruning in MLLMs", arXiv 2506.10967).

        As CDPruner's LLaVA code: the vision tower's LAST layer output, class token dropped, through the tower's
        final layer norm (transformers' ``post_layernorm``, open_clip's ``ln_post``) and the visual projection
        (``visual_projection``, ``visual.proj``) gives each patch token's embedding in the joint image-text space;
        it and the text embedding of ``texts[i]`` (the one :meth:`__call__` uses) are L2-normalised in float32
        (float64 for a float64 model) and their dot product is returned, NOT multiplied by CLIP's logit scale.
        ONE image-tower call runs over every image's views (resized as :meth:`score_batch` does, concatenated);
        each distinct text is embedded once (cached: ``_text_embedding``). The tower runs eagerly (no captured
        CUDA graphs: the graph table, keyed by input shape, holds the pooled tower), in the model's dtype, on its
        device, under inference mode.

        Args:
            views: per image, (V_i, 3, h_i, w_i) float RGB in [0, 1] (sizes may differ between images).
            texts: per image, its query (non-empty strings; repeated queries are embedded once).

        Returns:
            Per image, (V_i, gh, gw) float32 cosines on that image's views' device, each in [-1, 1]: the tower's
            patch grid ``(gh, gw) = image_size // patch size``, tokens in raster order (row by row).

        Raises:
            HeroError: on views or texts as :meth:`score_batch` refuses them, or a model whose image tower has no
                patch grid (per-token scores need a ViT CLIP tower).
        """
        _check_batch(views, texts)
        if not views:
            return []
        with torch.inference_mode():
            patches = self._embed_patches(torch.cat([self._pixels(item) for item in views]))  # (sum V_i, gh, gw, E)
            queries = {text: self._text_embedding(text) for text in dict.fromkeys(texts)}
            scores, start = [], 0
            for item, text in zip(views, texts, strict=True):
                count = int(item.shape[0])
                scores.append(_cosine(patches[start : start + count], queries[text]))  # (V_i, gh, gw)
                start += count
        # Outside inference mode: normal tensors, usable anywhere (as __call__'s).
        return [score.to(item.device).clone() for score, item in zip(scores, views, strict=True)]

    def _text_embedding(self, text: str) -> Tensor:
        """(1, E) embedding of ``text`` (checked), tokenised and embedded once per text while the model keeps its
        device and dtype: a bounded cache (``TEXT_CACHE_SIZE`` texts, least recently used dropped), shared by
        threads under a lock, emptied when the model's device or dtype changes. Call under inference mode."""
        state = param_dtype_device(self.model)
        with _CACHE_LOCK:
            held: dict[str, Tensor] | None = getattr(self, "_texts", None)
            if held is None or getattr(self, "_texts_state", None) != state:
                held = {}
                object.__setattr__(self, "_texts", held)
                object.__setattr__(self, "_texts_state", state)
            cache: dict[str, Tensor] = held
            found = cache.pop(text, None)
            if found is not None:
                cache[text] = found  # most recently used last
                return found
        embedding = self._embed_text(self._tokens(text))  # outside the lock: threads embed in parallel
        with _CACHE_LOCK:
            if getattr(self, "_texts_state", None) == state and getattr(self, "_texts", None) is cache:
                cache[text] = embedding
                while len(cache) > TEXT_CACHE_SIZE:
                    cache.pop(next(iter(cache)))
        return embedding

    def clear_text_cache(self) -> None:
        """Forget every cached text embedding (e.g. after loading other weights into the model in place)."""
        with _CACHE_LOCK:
            object.__setattr__(self, "_texts", None)

    def preprocess(self, views: Tensor) -> Tensor:
        """Resize and normalise views the way this scorer does before the image encoder.

        The views are resized on the model's device with bicubic interpolation (antialiased, as PIL does
        when shrinking) and clamped back to [0, 1] (PIL works on uint8, which clamps bicubic overshoot).
        ``resize_mode="shortest"`` is CLIP's own preprocessing: the shortest side goes to the model's input
        size (the other side keeps the aspect ratio, truncated to an int like
        ``torchvision.transforms.Resize``), then a center crop. ``"squash"`` resizes straight to the input
        size (no crop, aspect ratio not kept); ``"longest"`` fits the longest side and pads the rest with
        black (open_clip's ``resize_mode="longest"``). A view that already has the input size is not
        resampled. Finally ``(x - mean) / std`` per channel.

        Args:
            views: (V, 3, h, w) float RGB in [0, 1].

        Returns:
            (V, 3, S_h, S_w) pixel values in the model's dtype, on the model's device.
        """
        _check_views(views)
        return self._pixels(views)

    def tokenize(self, text: str) -> TokensT:
        """The query as the model's text encoder takes it, truncated to the model's context.

        Args:
            text: the query, a non-empty string.

        Returns:
            On the model's device: ``{"input_ids": (1, T) int64, "attention_mask": (1, T)}`` for
            transformers (T at most ``max_text_tokens``), a (1, context_length) int64 tensor for open_clip.
        """
        _check_text(text)
        return self._tokens(text)

    def __repr__(self) -> str:
        """Short repr: class names of the model and tokenizer instead of the whole module tree."""
        size = vocab_size(self.tokenizer)
        tokenizer = type(self.tokenizer).__name__ + ("" if size is None else f"(vocab={size})")
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, tokenizer={tokenizer}, "
            f"image_size={self.image_size}, mean={self.mean}, std={self.std}, resize_mode={self.resize_mode!r}, "
            f"graphs={self.graphs})"
        )

    def _set_preprocessing(self, mean: Any, std: Any, resize_mode: Any) -> None:
        """Check and store (on the frozen dataclass) the normalisation and the resize mode."""
        object.__setattr__(self, "mean", check_channels("mean", mean, positive=False))
        object.__setattr__(self, "std", check_channels("std", std, positive=True))
        if resize_mode not in RESIZE_MODES:
            raise HeroError.field(
                "resize_mode",
                resize_mode,
                f"one of {RESIZE_MODES}",
                "CLIP's own preprocessing is 'shortest' (then center crop).",
            )
        object.__setattr__(self, "resize_mode", resize_mode)

    def _pixels(self, views: Tensor) -> Tensor:
        """:meth:`preprocess` without the check: (V, 3, h, w) in [0, 1] -> normalised, in the model's dtype.

        The arithmetic runs in float32 (float64 for a float64 model), whatever the input dtype, so float32
        and float64 views with the same values give the same pixels.
        """
        dtype, device = param_dtype_device(self.model)
        mean = cast("tuple[float, float, float]", self.mean)
        std = cast("tuple[float, float, float]", self.std)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        x = views.detach().to(device=device, dtype=work)
        x = _resize(x, self.image_size, cast(str, self.resize_mode), self._fill)
        mean_t = torch.tensor(mean, dtype=work, device=device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=work, device=device).view(1, 3, 1, 1)
        return ((x - mean_t) / std_t).to(dtype)


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def check_tokenizer(tokenizer: Any, kind: str, fix: str, vocab_fix: str) -> None:
    """HeroError unless ``tokenizer`` is callable (else ``fix``) with a plausible vocabulary (else ``vocab_fix``).

    ``kind`` names the host library in the message ("transformers", "open_clip").
    """
    if not callable(tokenizer):
        raise HeroError.field("tokenizer", type(tokenizer).__name__, f"a callable {kind} tokenizer", fix)
    size = implausible_vocab_size(tokenizer)
    if size is not None:
        raise HeroError.field(
            "len(tokenizer)",
            size,
            f"a real text vocabulary (>= {MIN_PLAUSIBLE_VOCAB} tokens; CLIP has 49408)",
            f"The tokenizer ({type(tokenizer).__name__}) is degenerate. {vocab_fix}",
        )


def check_graphs(graphs: Any) -> None:
    """HeroError unless ``graphs`` (the scorer's CUDA-graph switch) is a bool."""
    if not isinstance(graphs, bool):
        raise HeroError.field(
            "graphs",
            graphs,
            "True or False",
            "graphs=True runs the CLIP image tower under captured CUDA graphs on CUDA; graphs=False keeps it eager.",
        )


def no_patch_grid(scorer: object, name: str, value: Any, reason: str) -> HeroError:
    """The HeroError of ``score_tokens`` on a tower without a patch grid: ``name=value`` (the tower part that is
    missing or unfit), ``reason`` saying why, and the scorer's class named."""
    return HeroError.field(
        name,
        value,
        "a ViT CLIP image tower: per-token scores need a ViT CLIP tower (a patch grid with a class token, a final "
        "layer norm and a visual projection applied per token)",
        f"{type(scorer).__name__}.score_tokens cannot score patch tokens: {reason}. Use a ViT CLIP model, or the "
        "per-view scores (__call__, score_batch).",
    )


def vocab_size(tokenizer: Any) -> int | None:
    """``len(tokenizer)`` or its ``vocab_size`` (or those of its ``.tokenizer``); None if it has neither."""
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


def implausible_vocab_size(tokenizer: Any) -> int | None:
    """The vocabulary size when it is known and below ``MIN_PLAUSIBLE_VOCAB``, else None."""
    size = vocab_size(tokenizer)
    return size if size is not None and size < MIN_PLAUSIBLE_VOCAB else None


def to_hw(name: str, size: Any) -> tuple[int, int]:
    """An int or an (height, width) pair of positive ints, as (height, width); HeroError naming ``name``."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in size)
    ):
        raise HeroError.field(name, size, "a positive int or an (height, width) pair of positive ints")
    return int(size[0]), int(size[1])


def param_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the module's first parameter (float32 on the CPU if it has none)."""
    for param in module.parameters():
        return param.dtype, param.device
    return torch.float32, torch.device("cpu")


def _model_state(module: nn.Module) -> tuple[Any, ...]:
    """``param_dtype_device`` and every parameter's and buffer's storage address: captured graphs read the weights
    there, so replacing or casting any part (the vision tower alone included) drops them."""
    dtype, device = param_dtype_device(module)
    return (dtype, device, *(t.data_ptr() for t in module.parameters()), *(t.data_ptr() for t in module.buffers()))


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


def _check_batch(views: Sequence[Tensor], texts: Sequence[str]) -> None:
    """The checks of ``score_batch`` and ``score_tokens``: one text per image, each image's views and text valid."""
    if len(views) != len(texts):
        raise HeroError.field("texts", len(texts), f"one text per image ({len(views)} images of views)")
    for item in views:
        _check_views(item)
    for text in texts:
        _check_text(text)


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


# --------------------------------------------------------------------------------------------------
# Pixels and scores
# --------------------------------------------------------------------------------------------------


def _resize(x: Tensor, size: tuple[int, int], mode: str, fill: float) -> Tensor:
    """Resize (V, 3, h, w) to (V, 3, *size) per ``mode`` (``ClipScorer.preprocess``); bicubic, antialiased, clamped."""
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


def _cosine(image: Tensor, query: Tensor) -> Tensor:
    """(..., E) and (1, E) -> (...) cosine, e.g. (V, E) -> (V,) or (V, gh, gw, E) -> (V, gh, gw); computed in
    float32 (float64 stays float64 until the end)."""
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    image = F.normalize(image.to(work), dim=-1)
    query = F.normalize(query.to(work), dim=-1)
    return (image @ query.reshape(-1, 1)).squeeze(-1).to(torch.float32)
