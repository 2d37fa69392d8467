"""Where the CLS (or stand-in) attention of every encoder layer goes, and which layers HERO could read.

HERO's finding 2 (paper section 3.2 and appendix D): in CLIP ViT-L/14 the CLS attention shows a two-stage
pattern across layers 0-11 and 12-23. In the first stage it begins on edges and textures and gradually
shifts toward the foreground objects; in the second it is "narrowly concentrated on a small subset of
background patches" (the artifact tokens), and stays on them, with a mild diffusion in layers 21-23. The
paper reads tiles from layers 5-8 (early-middle, first stage) and the thumbnail from layer 21 (second
stage). Other towers have other depths and the paper did not measure them; this module measures the
pattern on your encoder and images.

Per encoder layer, from the head-mean attention row of every view (what HERO's selectors rank, Eq. 5-6),
over the view's valid tokens only (padding excluded) and renormalised over them:

- **entropy**: ``-sum p log p / log n`` (1 = spread evenly over the n valid tokens, 0 = on one token);
- **top-k overlap**: Jaccard overlap ``|A & B| / |A | B|`` of the top-k tokens of this layer and of the next,
  ``k = max(1, floor(0.1 n))`` (the paper's section 3.3 keeps the top 10% most-attended tokens); ties go to
  the lower position, as in the selectors;
- **high-norm share**: the attention mass on the view's high-norm tokens. A token is high-norm when the
  norm of the feature the host sends its LLM for it (``EncodedImage.features``, mapped back through
  ``EncodedImage.source``: the encoder's feature layer after the projector, the one per-token state every
  adapter returns) is an outlier of its view: above the median by more than 3 scaled MADs
  (``median + 3 * 1.4826 * MAD``, a standard robust outlier rule). Tokens the host does not send (unpadding)
  are never high-norm. A view may have none; its share is then 0.

Each statistic is averaged over the views of an image, then over the images. ``profile_attention`` takes
(L, V, H, N) attention directly, so the analysis runs without a model; ``layer_profile`` runs a host.

``suggest_layers`` is a heuristic read of finding 2, not a result of the paper: the boundary of the two
stages is the change point of the entropy curve (``two_stage_boundary``), and the paper's CLIP-L choice is
transferred stage by stage (see ``suggest_layers``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hero_core import FunctionAwareSelector, HeroError, presets

__all__ = [
    "PAPER_BOUNDARY",
    "TOP_K_FRACTION",
    "LayerProfile",
    "high_norm_tokens",
    "layer_profile",
    "profile_attention",
    "suggest_layers",
    "two_stage_boundary",
]

#: Share of a view's valid tokens in the top-k sets (paper section 3.3: "the top 10% most-attended tokens").
TOP_K_FRACTION = 0.1
#: First layer of the paper's second stage in 24-layer CLIP ViT-L/14 (stages 0-11 and 12-23, section 3.2).
PAPER_BOUNDARY = 12
#: A token's feature norm is an outlier above ``median + OUTLIER_MADS * 1.4826 * MAD`` of its view.
OUTLIER_MADS = 3.0
_PAPER_LOW = FunctionAwareSelector().low_layers  # (5, 6, 7, 8): offsets 5-8 of the 12-layer first stage
_PAPER_HIGH = FunctionAwareSelector().high_layers  # (21,): offset 9 of the 12-layer second stage


@dataclass(frozen=True)
class LayerProfile:
    """Per-layer statistics of the CLS (or stand-in) attention, averaged over views and images.

    Attributes:
        layers: the encoder layers, ``0 .. L-1``.
        entropy: (L,) normalised entropy of the attention row, in [0, 1].
        overlap: (L-1,) Jaccard overlap of the top-k tokens of layer ``l`` and ``l + 1``.
        high_norm_share: (L,) attention mass on high-norm tokens, or None without feature norms.
        high_norm_tokens: mean number of high-norm tokens per view, or None without feature norms.
        num_images: images profiled.
        num_views: views profiled (all images).
        num_tokens: N, tokens per view.
        query_source: ``"cls"`` or the stand-in the tower uses (e.g. ``"mean-token"``).
        top_k_fraction: the share of valid tokens in a top-k set.
    """

    layers: tuple[int, ...]
    entropy: tuple[float, ...]
    overlap: tuple[float, ...]
    high_norm_share: tuple[float, ...] | None
    high_norm_tokens: float | None
    num_images: int
    num_views: int
    num_tokens: int
    query_source: str = "cls"
    top_k_fraction: float = TOP_K_FRACTION

    @property
    def depth(self) -> int:
        """L, the number of encoder layers profiled."""
        return len(self.layers)

    @property
    def boundary(self) -> int | None:
        """First layer of the second (concentrated) stage, or None (see ``two_stage_boundary``)."""
        return two_stage_boundary(self.entropy)

    @property
    def stage_entropy(self) -> tuple[float, float] | None:
        """Mean entropy before the boundary and from it on (how sharp the two stages are), or None."""
        b = self.boundary
        return None if b is None else (_mean(self.entropy[:b]), _mean(self.entropy[b:]))

    def suggest(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``suggest_layers(self)``: (low_layers, high_layers)."""
        return suggest_layers(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every statistic per layer, the boundary and the suggested layers."""
        low, high = self.suggest()
        rows = []
        for i, layer in enumerate(self.layers):
            rows.append(
                {
                    "layer": layer,
                    "entropy": self.entropy[i],
                    "topk_overlap_next": self.overlap[i] if i < len(self.overlap) else None,
                    "high_norm_share": self.high_norm_share[i] if self.high_norm_share is not None else None,
                }
            )
        return {
            "depth": self.depth,
            "query_source": self.query_source,
            "num_images": self.num_images,
            "num_views": self.num_views,
            "num_tokens": self.num_tokens,
            "top_k_fraction": self.top_k_fraction,
            "high_norm_tokens_per_view": self.high_norm_tokens,
            "layers": rows,
            "boundary": self.boundary,
            "stage_entropy": list(self.stage_entropy) if self.stage_entropy is not None else None,
            "suggested": {"low_layers": list(low), "high_layers": list(high)},
        }

    def table(self) -> str:
        """A text table: layer, entropy, top-k overlap with the next layer, high-norm share; then the suggestion."""
        lines = [f"{'layer':>5} {'entropy':>8} {'top-k overlap (next)':>21} {'high-norm share':>16}"]
        for i, layer in enumerate(self.layers):
            overlap = f"{self.overlap[i]:.3f}" if i < len(self.overlap) else "-"
            share = f"{self.high_norm_share[i]:.3f}" if self.high_norm_share is not None else "-"
            mark = "  <- second stage" if layer == self.boundary else ""
            lines.append(f"{layer:>5} {self.entropy[i]:>8.3f} {overlap:>21} {share:>16}{mark}")
        return "\n".join(lines)


def high_norm_tokens(norms: Tensor, valid: Tensor | None = None) -> Tensor:
    """(V, N) bool: the tokens whose norm is an outlier of its view (``median + 3 * 1.4826 * MAD``, strict).

    Args:
        norms: (V, N) per-token feature norms; NaN marks a token without a feature (never high-norm).
        valid: optional (V, N) bool; invalid tokens are never high-norm and do not enter the median.
    """
    values = norms.detach().float()
    ok = torch.isfinite(values)
    if valid is not None:
        ok &= valid.to(values.device)
    masked = torch.where(ok, values, torch.full_like(values, math.nan))
    median = masked.nanmedian(dim=-1, keepdim=True).values
    mad = (masked - median).abs().nanmedian(dim=-1, keepdim=True).values
    threshold = median + OUTLIER_MADS * 1.4826 * mad
    return ok & (values > threshold)


def profile_attention(
    attention: Tensor | Sequence[Tensor],
    *,
    valid: Tensor | Sequence[Tensor | None] | None = None,
    norms: Tensor | Sequence[Tensor | None] | None = None,
    top_k_fraction: float = TOP_K_FRACTION,
    query_source: str = "cls",
) -> LayerProfile:
    """The ``LayerProfile`` of CLS attention given directly: one (L, V, H, N) tensor per image.

    Args:
        attention: (L, V, H, N) attention of the query row on the N tokens of every view (a tensor for one
            image, or a list, one per image; every image must have the same L and N). Rows need not sum to 1
            (the CLS key's column is usually dropped): each row is renormalised over the valid tokens.
        valid: (V, N) bool per image (None: every token valid).
        norms: (V, N) per-token feature norms per image, NaN where none (None: no high-norm share).
        top_k_fraction: share of the valid tokens in a top-k set, in (0, 1].
        query_source: what the query row is (reports show it).

    Raises:
        HeroError: on shapes that disagree, fewer than 2 layers, non-finite or negative attention, or
            norms given for some images only.
    """
    rows = [attention] if isinstance(attention, Tensor) else list(attention)
    if not rows:
        raise HeroError.field("attention", attention, "one (L, V, H, N) tensor per image, at least one image")
    valids = _per_image("valid", valid, len(rows))
    norm_list = _per_image("norms", norms, len(rows))
    if any(n is None for n in norm_list) and any(n is not None for n in norm_list):
        raise HeroError.field("norms", "given for some images only", "norms for every image or for none")
    if isinstance(top_k_fraction, bool) or not isinstance(top_k_fraction, (int, float)):
        raise HeroError.field("top_k_fraction", top_k_fraction, "a float in (0, 1]")
    if not 0.0 < float(top_k_fraction) <= 1.0:
        raise HeroError.field("top_k_fraction", top_k_fraction, "a float in (0, 1]")
    depth, tokens = _shape(rows[0], 0)
    entropy, overlap, share, counts, views = [], [], [], [], 0
    for i, (attn, mask, norm) in enumerate(zip(rows, valids, norm_list, strict=True)):
        if _shape(attn, i) != (depth, tokens):
            raise HeroError.field(
                f"attention of image {i}", attn, f"(L={depth}, V, H, N={tokens}) like image 0's, the same encoder"
            )
        num_views = int(attn.shape[1])
        mask = _view_mask(mask, (num_views, tokens), f"valid of image {i}", attn.device)
        stats = _image_statistics(attn, mask, norm, float(top_k_fraction), i)
        entropy.append(stats[0])
        overlap.append(stats[1])
        if stats[2] is not None and stats[3] is not None:
            share.append(stats[2])
            counts.append(stats[3])
        views += num_views
    return LayerProfile(
        layers=tuple(range(depth)),
        entropy=_floats(torch.stack(entropy).mean(0)),
        overlap=_floats(torch.stack(overlap).mean(0)),
        high_norm_share=_floats(torch.stack(share).mean(0)) if share else None,
        high_norm_tokens=float(torch.stack(counts).mean()) if counts else None,
        num_images=len(rows),
        num_views=views,
        num_tokens=tokens,
        query_source=query_source,
        top_k_fraction=float(top_k_fraction),
    )


def two_stage_boundary(entropy: Sequence[float]) -> int | None:
    """The first layer of the concentrated stage: the change point of the entropy curve, or None.

    Rule: the split ``b`` in ``[1, L-1]`` that minimises the within-segment variance (the sum of squared
    deviations of ``entropy[:b]`` and ``entropy[b:]`` from their own means; ties go to the earlier split),
    kept only when the second segment's mean entropy is lower (attention concentrates, as in finding 2).
    None when no split lowers the entropy or there are fewer than two layers.
    """
    values = [float(x) for x in entropy]
    if len(values) < 2 or not all(math.isfinite(x) for x in values):
        return None
    best, best_cost = None, math.inf
    for b in range(1, len(values)):
        first, second = values[:b], values[b:]
        cost = _sse(first) + _sse(second)
        if cost < best_cost - 1e-12:
            best, best_cost = b, cost
    if best is None or _mean(values[best:]) >= _mean(values[:best]):
        return None
    return best


def suggest_layers(profile: LayerProfile) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(low_layers, high_layers) for HERO on this encoder, read from its two-stage pattern.

    Rule (a heuristic from the paper's finding 2): with the boundary ``b`` (``two_stage_boundary``; in the
    paper's CLIP-L, stages 0-11 and 12-23, so ``b = 12``), the paper's choice is carried over stage by stage
    with ``presets.scale_layers``: the low layers sit at offsets 5-8 of the 12-layer first stage, so they map
    onto the ``b`` layers ``0 .. b-1``; the high layer sits at offset 9 of the 12-layer second stage, so it
    maps onto the ``L - b`` layers ``b .. L-1``. For ``L = 24`` and ``b = 12`` this gives the paper's
    ``(5, 6, 7, 8)`` and ``(21,)``. Low layers always precede the boundary, the high layer follows it.
    Without a boundary (no entropy drop) it returns the paper's layers scaled to the depth
    (``presets.hero(r, depth=L)``).
    """
    depth = profile.depth
    boundary = profile.boundary
    if boundary is None:
        return presets.scale_layers(_PAPER_LOW, depth), presets.scale_layers(_PAPER_HIGH, depth)
    stage = PAPER_BOUNDARY  # both paper stages have 12 layers
    low = presets.scale_layers(_PAPER_LOW, boundary, reference_depth=stage) if boundary >= 2 else (0,)
    second = depth - boundary
    offsets = tuple(layer - stage for layer in _PAPER_HIGH)
    high = presets.scale_layers(offsets, second, reference_depth=stage) if second >= 2 else (0,)
    return low, tuple(boundary + offset for offset in high)


def layer_profile(
    vlm_or_adapter: Any,
    inputs: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    top_k_fraction: float = TOP_K_FRACTION,
) -> LayerProfile:
    """Run the host's vision path with every encoder layer hooked and profile its CLS (or stand-in) attention.

    Args:
        vlm_or_adapter: a ``HeroVLM`` (its adapter is used) or a ``HostAdapter``.
        inputs: processor outputs (one mapping, or an iterable of them, consumed one at a time); each is passed
            to ``adapter.encode`` with ``tuple(range(adapter.num_layers))`` (only the adapter's ``input_keys`` /
            ``encoder_keys`` are read; with ``input_ids`` the placeholder runs map the views to images).
        top_k_fraction: share of valid tokens in a top-k set.

    Returns:
        The profile over every image of every mapping.

    Raises:
        HeroError: on an object that is not an adapter, no images in the inputs, or any error of ``encode``.
    """
    from .adapter import check_host_adapter
    from .sequence import check_prompt, placeholder_runs

    adapter = check_host_adapter(getattr(vlm_or_adapter, "adapter", vlm_or_adapter))
    batches: Iterable[Any] = [inputs] if isinstance(inputs, Mapping) else inputs
    layers = tuple(range(int(adapter.num_layers)))
    keys = (*adapter.input_keys, *adapter.encoder_keys)
    attention: list[Tensor] = []
    valid: list[Tensor | None] = []
    norms: list[Tensor | None] = []
    source = str(getattr(adapter, "query_source", "cls"))
    for batch in batches:
        if not isinstance(batch, Mapping):
            raise HeroError.field("inputs", batch, "processor outputs (a mapping), or a list of them")
        picked = {key: batch[key] for key in keys if batch.get(key) is not None}
        if adapter.input_keys[0] not in picked:
            raise HeroError.field(
                adapter.input_keys[0], None, "images in every processor output profiled", "Pass the images' inputs."
            )
        runs = None
        if batch.get("input_ids") is not None:
            ids, mask = check_prompt(batch["input_ids"], batch.get("attention_mask"))
            runs = placeholder_runs(ids, mask, adapter.image_token_id)
        with torch.inference_mode():
            images = adapter.encode(picked, layers, runs=runs)
            for image in images:
                tiles = image.tiles
                attention.append(tiles.cls_attention.float())
                valid.append(tiles.valid_mask)
                norms.append(_feature_norms(image.features, image.source, tiles.num_views, tiles.num_tokens))
                source = tiles.query_source
    if not attention:
        raise HeroError.field("inputs", "no images", "at least one image to profile")
    return profile_attention(attention, valid=valid, norms=norms, top_k_fraction=top_k_fraction, query_source=source)


# ----------------------------------------------------------------------------------------------- internals
def _image_statistics(
    attention: Tensor, valid: Tensor, norms: Tensor | None, fraction: float, index: int
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """(L,) entropy, (L-1,) overlap, (L,) high-norm share and () high-norm count, each a mean over views."""
    attn = attention.detach().float()
    if not bool(torch.isfinite(attn).all()) or bool((attn < 0).any()):
        raise HeroError.field(f"attention of image {index}", attn, "finite, non-negative attention probabilities")
    row = attn.mean(dim=2) * valid  # (L, V, N): the head mean (the selectors' "mean"), padding zeroed
    count = valid.sum(-1).clamp_min(1)  # (V,)
    total = row.sum(-1, keepdim=True)
    uniform = valid.float() / count[:, None]  # a row with no mass on the valid tokens: no preference
    p = torch.where(total > 0, row / total.clamp_min(torch.finfo(row.dtype).tiny), uniform.expand_as(row))
    plogp = torch.where(p > 0, p * p.clamp_min(torch.finfo(p.dtype).tiny).log(), torch.zeros_like(p))
    log_n = count.float().log()  # (V,)
    entropy = torch.where(log_n > 0, -plogp.sum(-1) / log_n.clamp_min(1e-12), torch.zeros_like(log_n))
    k = (fraction * count.float()).floor().clamp_min(1).long()  # (V,)
    scores = p.masked_fill(~valid, -math.inf)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # ties: lower position first
    positions = torch.arange(scores.shape[-1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    top = (rank < k[None, :, None]) & valid  # (L, V, N)
    inter = (top[:-1] & top[1:]).sum(-1).float()
    union = (top[:-1] | top[1:]).sum(-1).float().clamp_min(1)
    overlap = (inter / union).mean(-1)
    share = high = None
    if norms is not None:
        norms = _view_values(norms, tuple(valid.shape), f"norms of image {index}", valid.device)
        outliers = high_norm_tokens(norms, valid)
        share = (p * outliers).sum(-1).mean(-1)
        high = outliers.sum(-1).float().mean()
    return entropy.mean(-1), overlap, share, high


def _feature_norms(features: Tensor, source: Tensor, num_views: int, num_tokens: int) -> Tensor:
    """(V, N) norm of the LLM-side feature of every token (NaN where the host sends none)."""
    norms = torch.full((num_views * num_tokens,), math.nan, dtype=torch.float32, device=features.device)
    src = source.to(features.device)
    sent = src >= 0
    norms[src[sent]] = features[sent].float().norm(dim=-1)
    return norms.view(num_views, num_tokens)


def _shape(attention: object, index: int) -> tuple[int, int]:
    if not isinstance(attention, Tensor) or attention.dim() != 4 or not attention.dtype.is_floating_point:
        raise HeroError.field(f"attention of image {index}", attention, "a float (L, V, H, N) tensor")
    depth, views, heads, tokens = (int(x) for x in attention.shape)
    if depth < 2 or views < 1 or heads < 1 or tokens < 1:
        raise HeroError.field(
            f"attention of image {index}", attention, "at least 2 layers, 1 view, 1 head and 1 token", ""
        )
    return depth, tokens


def _per_image(name: str, value: Any, count: int) -> list[Tensor | None]:
    if value is None:
        return [None] * count
    if isinstance(value, Tensor):
        values: list[Tensor | None] = [value]
    else:
        values = list(value)
    if len(values) != count:
        raise HeroError.field(name, value, f"one entry per image ({count}), or None")
    return values


def _view_mask(mask: Tensor | None, shape: tuple[int, int], name: str, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
        raise HeroError.field(name, mask, f"None or a {shape} bool tensor")
    if not bool(mask.any(-1).all()):
        raise HeroError.field(name, mask, "at least one valid token in every view")
    return mask.to(device)


def _view_values(values: Tensor, shape: tuple[int, ...], name: str, device: torch.device) -> Tensor:
    if not isinstance(values, Tensor) or not values.dtype.is_floating_point or tuple(values.shape) != shape:
        raise HeroError.field(name, values, f"a float {shape} tensor (NaN where a token has no feature)")
    return values.to(device)


def _floats(tensor: Tensor) -> tuple[float, ...]:
    return tuple(float(x) for x in tensor.detach().cpu().tolist())


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _sse(values: Sequence[float]) -> float:
    mean = _mean(values)
    return sum((x - mean) ** 2 for x in values)
