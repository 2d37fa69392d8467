"""Model-agnostic surgery on token sequences: find each image's placeholder run, shrink it, re-pad, splice.

Shapes: B prompts, S tokens per (padded) prompt, I images over the whole batch (in prompt order).
All index arithmetic runs on CPU copies of the (small) id tensors; results go back to the ids' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hero_core import HeroError, to_device

__all__ = [
    "IGNORE_INDEX",
    "Rebuilt",
    "Span",
    "check_prompt",
    "check_unpadded",
    "padding_side",
    "placeholder_runs",
    "placeholder_spans",
    "queries_per_image",
    "rebuild",
    "splice",
]

IGNORE_INDEX = -100  # the label value losses skip (PyTorch / transformers convention)


@dataclass(frozen=True)
class Span:
    """The placeholder tokens of one image: ``input_ids[row, start:stop]``."""

    image: int
    row: int
    start: int
    stop: int


@dataclass(frozen=True)
class Rebuilt:
    """Left-padded prompts after every image's run was shrunk to its kept count.

    Attributes:
        input_ids: (B, S') int64.
        attention_mask: (B, S') int64, 0 on the left padding.
        position_ids: (B, S') int64 or None (None: the host derives contiguous positions from the mask).
        labels: (B, S') int64 or None; padding and image runs are ``IGNORE_INDEX`` unless the caller's
            run held another single value.
        lengths: real (unpadded) length of each rebuilt prompt.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor | None
    labels: Tensor | None
    lengths: tuple[int, ...]


def check_prompt(
    input_ids: object, attention_mask: object, *, vocab_size: int | None = None, image_token_id: int | None = None
) -> tuple[Tensor, Tensor]:
    """Validate ``input_ids`` (B, S) integer and ``attention_mask`` (B, S) of 0/1; default mask all ones.

    With ``vocab_size`` (the host's embedding rows), every id other than ``image_token_id`` must lie in
    ``[0, vocab_size)``: the host's embedding would otherwise fail with an IndexError half way through the call
    (the placeholder is exempt: some models replace it before embedding, e.g. LLaVA's original -200).

    Returns:
        ``(input_ids, attention_mask)`` on the CPU, read in one host-device transfer: the bookkeeping
        (spans, padding, rebuild) runs on these host copies.

    Raises:
        HeroError: on a wrong rank, dtype or shape, ids outside the vocabulary, or mask values other than 0 and 1.
    """
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise HeroError.field(
            "input_ids", input_ids, "a (B, S) integer tensor", "Pass the processor's output with return_tensors='pt'."
        )
    if attention_mask is not None and (
        not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape
    ):
        raise HeroError.field(
            "attention_mask", attention_mask, f"None or a tensor of the shape of input_ids {tuple(input_ids.shape)}"
        )
    mask_dtype = attention_mask.dtype if attention_mask is not None else input_ids.dtype
    if attention_mask is None or attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        host_ids = input_ids.detach().cpu()  # the one host sync (a float mask is read separately, exactly)
        host_mask = attention_mask.detach().cpu() if attention_mask is not None else torch.ones_like(host_ids)
    else:  # one transfer for both
        both = torch.stack([input_ids.detach().long(), attention_mask.detach().to(input_ids.device).long()]).cpu()
        host_ids, host_mask = both[0].to(input_ids.dtype), both[1]
    ids = host_ids
    text = ids if image_token_id is None else ids[ids != image_token_id]
    if vocab_size is not None and text.numel():
        low, high = int(text.min()), int(text.max())
        if low < 0 or high >= vocab_size:
            raise HeroError.field(
                "input_ids",
                f"ids in [{low}, {high}]",
                f"token ids in [0, {vocab_size - 1}] (the model's embedding has {vocab_size} rows)",
                "Tokenize with the model's own processor; a tokenizer with added tokens needs "
                "model.resize_token_embeddings(len(tokenizer)).",
            )
    if attention_mask is not None and bool(((host_mask != 0) & (host_mask != 1)).any()):
        raise HeroError.field("attention_mask", attention_mask, "only 0 (padding) and 1 (token) values")
    return ids, host_mask.to(mask_dtype)


def padding_side(mask: Tensor) -> str | None:
    """``"left"`` if every row is 0...0 1...1, else ``"right"`` if every row is 1...1 0...0, else None (holes).

    A row without padding counts as both; a batch without padding is ``"left"``.
    """
    m = mask.detach().cpu().bool()
    left = not bool((m.cummax(dim=1).values & ~m).any())  # no 0 after a 1
    if left:
        return "left"
    right = not bool((m.flip(1).cummax(dim=1).values & ~m.flip(1)).any())  # no 0 before a 1
    return "right" if right else None


def check_unpadded(input_ids: Tensor, attention_mask: Tensor, token_id: int) -> None:
    """HeroError naming the padding if any image placeholder lies under ``attention_mask == 0``."""
    padded = (input_ids.detach().cpu() == token_id) & ~attention_mask.detach().cpu().bool()
    if bool(padded.any()):
        rows = padded.any(dim=1).nonzero().flatten().tolist()
        raise HeroError.field(
            "attention_mask",
            f"{int(padded.sum())} image placeholder tokens under attention_mask 0 (prompt rows {rows})",
            "image placeholders only where attention_mask is 1: padding never holds an image",
            "Check the attention_mask and the padding side; pass input_ids and attention_mask from one processor call.",
        )


def placeholder_runs(input_ids: Tensor, attention_mask: Tensor, token_id: int) -> list[int]:
    """Lengths of the contiguous runs of ``token_id`` under mask 1, in prompt order (row-major)."""
    is_image = (input_ids.detach().cpu() == token_id) & attention_mask.detach().cpu().bool()
    edges = torch.diff(is_image.to(torch.int8), dim=1, prepend=torch.zeros(is_image.shape[0], 1, dtype=torch.int8))
    edges = torch.cat([edges, -is_image[:, -1:].to(torch.int8)], dim=1)
    starts = (edges == 1).nonzero()[:, 1]
    stops = (edges == -1).nonzero()[:, 1]
    return (stops - starts).tolist()


def placeholder_spans(input_ids: Tensor, attention_mask: Tensor, token_id: int, counts: Sequence[int]) -> list[Span]:
    """Assign consecutive placeholder tokens to the images, in prompt order, one image at a time.

    Two ``<image>`` tags written next to each other expand into ONE run, so a run is split by each
    image's own count (``counts[i]``, what the unpruned host sends for image i), never assumed to be
    one image. The host only checks the total; this checks every image.

    Args:
        input_ids: (B, S) integer.
        attention_mask: (B, S) 0/1; placeholders under padding are an error.
        token_id: the image placeholder id.
        counts: (I,) placeholder tokens each image needs, images in batch order.

    Returns:
        One ``Span`` per image, in image order.

    Raises:
        HeroError: if the placeholders do not add up to the images' counts, or a run cannot be split
            exactly into whole images.
    """
    ids = input_ids.detach().cpu()
    mask = attention_mask.detach().cpu().bool()
    is_image = ids == token_id
    check_unpadded(ids, mask, token_id)
    total, needed = int(is_image.sum()), int(sum(counts))
    if total != needed:
        raise HeroError.field(
            "input_ids",
            f"{total} image placeholder tokens (per prompt {is_image.sum(-1).tolist()})",
            f"{needed} = the sum over the {len(counts)} images of their tokens {list(counts)}, none under padding",
            "Pass exactly one image per <image> in the text, prompts and images from the same processor call.",
        )
    # Run boundaries: +1 where a run starts, -1 just after it ends.
    edges = torch.diff(is_image.to(torch.int8), dim=1, prepend=torch.zeros(ids.shape[0], 1, dtype=torch.int8))
    edges = torch.cat([edges, -is_image[:, -1:].to(torch.int8)], dim=1)
    starts = (edges == 1).nonzero().tolist()  # row-major: prompt order
    stops = (edges == -1).nonzero().tolist()
    spans: list[Span] = []
    image = 0
    for (row, start), (_, stop) in zip(starts, stops, strict=True):
        cursor = start
        while cursor < stop:
            if image >= len(counts) or cursor + counts[image] > stop:
                expected = counts[image] if image < len(counts) else 0
                raise HeroError.field(
                    f"placeholder run of prompt {row} at tokens [{start}, {stop})",
                    f"{stop - start} tokens",
                    f"whole images: image {image} alone needs {expected} of the {stop - cursor} left in this run "
                    f"(image token counts {list(counts)})",
                    "Each image's run must have the length its processor gave it; do not edit the <image> runs.",
                )
            spans.append(Span(image=image, row=row, start=cursor, stop=cursor + counts[image]))
            cursor += counts[image]
            image += 1
    return spans


def queries_per_image(query: object, spans: Sequence[Span], num_prompts: int) -> list[str | None]:
    """One query text per image: ``None``, one string for all prompts, or one string per prompt.

    Raises:
        HeroError: on a list of the wrong length or a non-string entry.
    """
    if query is None:
        return [None] * len(spans)
    if isinstance(query, str):
        return [query] * len(spans)
    if (
        not isinstance(query, (list, tuple))
        or len(query) != num_prompts
        or not all(isinstance(q, str) or q is None for q in query)
    ):
        raise HeroError.field(
            "query",
            query,
            f"None, a str, or a list of {num_prompts} str (one per prompt, in the order of input_ids)",
            "Give one question per prompt row.",
        )
    return [query[span.row] for span in spans]


def rebuild(
    input_ids: Tensor,
    attention_mask: Tensor,
    spans: Sequence[Span],
    kept: Sequence[int],
    *,
    token_id: int,
    pad_id: int,
    side: str = "left",
    labels: Tensor | None = None,
    offsets: Sequence[Tensor] | None = None,
    layout_lengths: Sequence[int] | None = None,
    device: torch.device | None = None,
) -> Rebuilt:
    """Shrink every image's run to ``kept[i]`` placeholders, drop the padding, re-pad on ``side``.

    The batch keeps the caller's shared padding columns (``S - max real length``: ``pad_to_multiple_of``
    leaves some in every row), so at keep ratio 1 the rebuilt prompt is the caller's own, column for column.

    Args:
        input_ids: (B, S) integer. Tokens under ``attention_mask == 0`` are padding and are dropped.
        attention_mask: (B, S) 0/1.
        spans: one ``Span`` per image (``placeholder_spans``).
        kept: (I,) tokens each image now sends.
        token_id: the image placeholder id.
        pad_id: the id written into the new padding.
        side: ``"left"`` (generation) or ``"right"``.
        labels: (B, S) or None; shrunk the same way (an image's run takes its single label value).
        offsets: per image, (kept[i],) int64: position of each sent token inside the image's full layout
            sequence. With ``layout_lengths`` it turns on original position ids.
        layout_lengths: per image, the length of its unpruned layout sequence.
        device: where the rebuilt tensors go (default: ``input_ids``'s device; the bookkeeping runs on the CPU).

    Raises:
        HeroError: if an image run's labels hold more than one value.
    """
    ids = input_ids.detach().cpu()
    mask = attention_mask.detach().cpu().bool()
    labs = labels.detach().cpu() if labels is not None else None
    original = offsets is not None and layout_lengths is not None
    offsets_cpu = [o.detach().cpu().long() for o in offsets] if original and offsets is not None else []
    by_row: list[list[Span]] = [[] for _ in range(ids.shape[0])]
    for item in spans:
        by_row[item.row].append(item)

    rows: list[tuple[Tensor, Tensor | None, Tensor]] = []
    for row, row_spans in enumerate(by_row):
        parts_ids: list[Tensor] = []
        parts_lab: list[Tensor] = []
        parts_pos: list[Tensor] = []
        cursor, position = 0, 0
        pending: list[Span | None] = [*row_spans, None]  # None: the text after the last run
        for span in pending:
            stop = span.start if span is not None else ids.shape[1]
            keep = mask[row, cursor:stop]  # text between runs, padding dropped
            parts_ids.append(ids[row, cursor:stop][keep])
            if labs is not None:
                parts_lab.append(labs[row, cursor:stop][keep])
            count = int(keep.sum())
            parts_pos.append(torch.arange(position, position + count))
            position += count
            if span is None:
                break
            count = kept[span.image]
            parts_ids.append(torch.full((count,), token_id, dtype=ids.dtype))
            if labs is not None:
                run = labs[row, span.start : span.stop]
                if bool((run != run[0]).any()):
                    raise HeroError.field(
                        f"labels of image {span.image}",
                        run,
                        "one value over the image's placeholder run (normally -100)",
                        "Set the labels under image tokens to -100.",
                    )
                parts_lab.append(run[:1].expand(count))
            if original:
                parts_pos.append(position + offsets_cpu[span.image])
                position += int(layout_lengths[span.image])  # type: ignore[index]
            else:
                parts_pos.append(torch.arange(position, position + count))
                position += count
            cursor = span.stop
        rows.append((torch.cat(parts_ids), torch.cat(parts_lab) if labs is not None else None, torch.cat(parts_pos)))

    lengths = tuple(int(r[0].numel()) for r in rows)
    shared = ids.shape[1] - int(mask.sum(dim=1).max()) if ids.shape[0] else 0
    width = max(lengths) + shared
    new_ids = torch.full((len(rows), width), pad_id, dtype=ids.dtype)
    new_mask = torch.zeros((len(rows), width), dtype=attention_mask.dtype)
    # Under padding, what transformers 5's generate writes there (_prepare_position_ids_for_generation: 0).
    new_pos = torch.zeros((len(rows), width), dtype=torch.long)
    new_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=labs.dtype) if labs is not None else None
    for row, (row_ids, row_labels, row_pos) in enumerate(rows):
        n = row_ids.numel()
        if n == 0:
            continue
        where = slice(width - n, width) if side == "left" else slice(0, n)
        new_ids[row, where] = row_ids
        new_mask[row, where] = 1
        new_pos[row, where] = row_pos
        if new_labels is not None and row_labels is not None:
            new_labels[row, where] = row_labels
    device = input_ids.device if device is None else device
    return Rebuilt(  # pinned, non-blocking copies: no host sync
        input_ids=to_device(new_ids, device, new_ids.dtype),
        attention_mask=to_device(new_mask, device, new_mask.dtype),
        position_ids=to_device(new_pos, device, torch.long) if original else None,
        labels=to_device(new_labels, device, new_labels.dtype) if new_labels is not None else None,
        lengths=lengths,
    )


def splice(original_ids: Tensor, generated: Tensor, prompt_length: int) -> Tensor:
    """The generated tokens after ``prompt_length`` put back behind the caller's own prompt.

    ``generated`` has ``B * n`` rows (``n`` = beams kept / ``num_return_sequences``), ordered as
    ``repeat_interleave`` orders them.
    """
    batch = original_ids.shape[0]
    if generated.shape[0] % batch:
        raise HeroError.field("generated sequences", generated, f"a multiple of the batch size {batch} rows")
    prompt = to_device(original_ids, generated.device, original_ids.dtype)
    prompt = prompt.repeat_interleave(generated.shape[0] // batch, dim=0)
    return torch.cat([prompt, generated[:, prompt_length:]], dim=1)
