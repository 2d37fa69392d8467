"""What the plugin's architectures share besides planning (vLLM-free): the per-request fields' integer encoding,
the refusal of ``image_embeds``, and the record of what was kept (``HERO_VLLM_RECORD``).

Per-request options travel from the API server's processor to the worker's ``embed_multimodal`` as per-image
int64 tensors: vLLM may cast floating-point multimodal fields to the model's dtype (a keep ratio of 0.2 in
bfloat16 is 0.2002, and the kept count would change), and integers are never cast. The keep ratio travels as the
bits of its float64, the question as its UTF-8 bytes after a presence flag.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from hero_core import HeroError

from .._scoring import reads_query

_LOG = logging.getLogger("hero_adapters.vllm_plugin")

__all__ = [
    "EMBEDS_REFUSED",
    "RECORD_ENV",
    "UNCONDITIONED",
    "Relevance",
    "decode_query",
    "decode_ratio",
    "encode_query",
    "encode_ratio",
    "per_image",
    "record",
    "same_on_every_rank",
    "settled",
    "warm_scorer",
]

EMBEDS_REFUSED = (
    "image_embeds inputs bypass the vision encoder, so HERO cannot plan them: send images (pixels), or serve "
    "the stock architecture for precomputed embeddings."
)

#: Environment variable: a file path; when set, every planned image appends one JSON line (views, tokens per view,
#: tile grid, keep ratio, question, and the kept token indices of each view): what was kept, for inspection and
#: for the cross-engine tests.
RECORD_ENV = "HERO_VLLM_RECORD"


def encode_ratio(ratio: float) -> int:
    """The float64 bits of ``ratio`` as an int64."""
    return int(struct.unpack("<q", struct.pack("<d", float(ratio)))[0])


def decode_ratio(bits: Tensor | int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", int(bits)))[0])


def encode_query(query: str | None) -> list[int]:
    """``[0]`` for no question, else ``[1, *utf8 bytes]``."""
    return [0] if query is None else [1, *query.encode("utf-8")]


def decode_query(row: Tensor) -> str | None:
    values = [int(x) for x in row.tolist()]
    return None if not values or values[0] == 0 else bytes(values[1:]).decode("utf-8")


def per_image(value: object, count: int) -> list[Tensor] | None:
    """A batched per-image field as ``count`` tensors (vLLM stacks equal shapes and lists the rest), or None."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else list(torch.as_tensor(value).unbind(0))
    if len(items) != count:
        raise HeroError.field(
            "HERO per-image fields",
            f"{len(items)} entries",
            f"{count}, one per image",
            "The processor and the model disagree: serve the model with the plugin's own processor (its architecture).",
        )
    return items


UNCONDITIONED = "uniform: no hero_query, so the DPP weighs diversity alone"
_warned: list[bool] = []  # one warning per process for an unconditioned cdpruner request


def record(
    entries: Sequence[Mapping[str, Any]],
    keeps: Sequence[Tensor],
    unconditioned: Sequence[bool] | None = None,
    profiling: bool = False,
) -> None:
    """Append one JSON line per image (``entries`` plus its kept indices per view) to ``$HERO_VLLM_RECORD``.

    An image a preset conditioned on the instruction (cdpruner) planned without one (``unconditioned``) says so in
    its line (``"token_relevance"``), and the first such request outside vLLM's profiling run (``profiling``:
    dummy images, which never carry a question) logs one warning per process: never a silent change of method.
    """
    flags = list(unconditioned) if unconditioned is not None else [False] * len(entries)
    if any(flags) and not profiling and not _warned:
        _warned.append(True)
        _LOG.warning(
            "hero: a request without hero_query under a preset conditioned on the instruction: its token relevance "
            "is %s (pass mm_processor_kwargs={'hero_query': ...}); $%s records it per image",
            UNCONDITIONED,
            RECORD_ENV,
        )
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    lines = [
        json.dumps(
            {
                **entry,
                **({"token_relevance": UNCONDITIONED} if flag else {}),
                "kept": [row.nonzero().flatten().tolist() for row in keep.cpu()],
            }
        )
        for entry, keep, flag in zip(entries, keeps, flags, strict=True)
    ]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def same_on_every_rank(plans: Sequence[Any]) -> list[tuple[Tensor, Tensor | None]]:
    """(keep, merge_into) per plan, the same on every rank. Under tensor parallelism every rank plans (its own CLIP
    scorer and planner); rank 0's keep masks (and VisionZip's merges) are sent to the others, so no float
    difference between ranks near a tie can make them keep different tokens (the counts would agree and nothing
    would fail: the rows would silently differ). One broadcast per tensor; none on one rank."""
    from vllm.distributed import get_tensor_model_parallel_world_size, get_tp_group

    pairs = [(plan.keep, getattr(plan, "merge_into", None)) for plan in plans]
    if get_tensor_model_parallel_world_size() <= 1:
        return pairs
    group = get_tp_group()
    out = []
    for keep, into in pairs:
        keep = group.broadcast(keep.to(torch.uint8).contiguous(), src=0).bool()
        out.append((keep, None if into is None else group.broadcast(into.contiguous(), src=0)))
    return out


def settled(
    plans: Sequence[Any],
    entries: Sequence[Mapping[str, Any]],
    unconditioned: Sequence[bool],
    profiling: bool,
) -> list[tuple[Tensor, Tensor | None]]:
    """The batch's plans as (keep, merge_into) the same on every rank (``same_on_every_rank``), recorded
    (``record``)."""
    pairs = same_on_every_rank(plans)
    record(entries, [keep for keep, _ in pairs], unconditioned, profiling)
    return pairs


def warm_scorer(scorer: Any, views: Sequence[Tensor], *, tokens: bool = False) -> None:
    """One scorer call on ``views`` with a stand-in question, its answer discarded (``score_tokens`` with
    ``tokens``: cdpruner's per-token relevance over every view). Run in the engine's first encoder call, which is
    vLLM's memory-profiling run on dummy images without a question: the scorer's weights and activations are then
    part of the memory vLLM measures before it sizes the KV cache, instead of arriving with the first real
    question."""
    chosen = [item for item in views if item.shape[0] > 0]
    if chosen:
        with torch.inference_mode():
            call = scorer.score_tokens if tokens else scorer.score_batch
            call(chosen, ["a photo"] * len(chosen))


class Relevance:
    """What both architectures need for relevance, loaded once per worker: the CLIP scorer (on the vision tower's
    device, in ``clip_dtype``) and the processor's normalisation (to hand the scorer RGB tiles). A model class mixes
    it in and sets ``default_mean_std`` (used where the image processor names none)."""

    default_mean_std: ClassVar[tuple[Sequence[float], Sequence[float]]]
    hero_options: Any
    vision_tower: Any
    _hero_model_config: Any
    _hero_scorer: Any = None
    _hero_warmed: bool = False
    _hero_mean_std: tuple[Sequence[float], Sequence[float]] | None = None

    def _scorer(self) -> Any:
        """The relevance scorer (None without ``clip``, or for a preset that reads no relevance, of tiles or of
        tokens)."""
        options = self.hero_options
        if options.clip is None or not reads_query(options.pruner()):
            return None
        if self._hero_scorer is None:
            from ..text_scorers import HFClipTextScorer

            device = next(self.vision_tower.parameters()).device
            self._hero_scorer = HFClipTextScorer.from_pretrained(
                options.clip, device=device, dtype=getattr(torch, options.clip_dtype)
            )
        return self._hero_scorer

    def _hero_first(self, scorer: Any, local: Callable[[], list[Tensor]], every: Callable[[], list[Tensor]]) -> bool:
        """True in the engine's first encoder call (vLLM's profiling run: dummy images, no question), where the
        scorer is run once (``warm_scorer``) on the local tiles, or on every view (``every``) for a preset that
        reads each token's relevance (cdpruner)."""
        first, self._hero_warmed = not self._hero_warmed, True
        if scorer is not None and first:
            tokens = bool(self.hero_options.pruner().needs_token_relevance)
            warm_scorer(scorer, every() if tokens else local(), tokens=tokens)
        return first

    def _mean_std(self) -> tuple[Sequence[float], Sequence[float]]:
        if self._hero_mean_std is None:
            from vllm.transformers_utils.processor import cached_image_processor_from_config

            processor = cached_image_processor_from_config(self._hero_model_config)
            mean = getattr(processor, "image_mean", None) or self.default_mean_std[0]
            std = getattr(processor, "image_std", None) or self.default_mean_std[1]
            self._hero_mean_std = (tuple(mean), tuple(std))
        return self._hero_mean_std
