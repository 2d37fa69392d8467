"""What the host's own ``generate`` would do with a call's options, asked of the host's own code where it has it:
the attention mask it infers, and the lengths it applies to the caller's prompt (``HeroVLM.generate`` hands
the shortened prompt the same number of new tokens)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hero_core import HeroError

__all__ = ["check_not_empty", "host_attention_mask", "relative_lengths", "unleft_rows", "vocab_size"]


def _generation_config(model: Any, kwargs: dict[str, Any]) -> Any:
    """The generation config the host's ``generate`` would build from these keywords (the host's own code)."""
    prepare = getattr(model, "_prepare_generation_config", None)
    if prepare is None:  # pragma: no cover - a host without transformers' GenerationMixin
        return None
    rest = {key: value for key, value in kwargs.items() if key != "generation_config"}
    config, _ = prepare(kwargs.get("generation_config"), **rest)
    return config


def host_attention_mask(model: Any, ids: Tensor, kwargs: dict[str, Any]) -> Tensor:
    """The mask the host's ``generate`` infers when none is given: its own ``_prepare_special_tokens`` and
    ``_prepare_attention_mask_for_generation`` (0 on ``pad_token_id`` when pad differs from eos; else all ones)."""
    config = _generation_config(model, kwargs)
    if config is None:  # pragma: no cover
        return torch.ones_like(ids)
    model._prepare_special_tokens(config, False, device=ids.device, batch_size=ids.shape[0])
    mask: Tensor = model._prepare_attention_mask_for_generation(ids, config, {})
    return mask.to(ids.dtype)


def relative_lengths(model: Any, kwargs: dict[str, Any], prompt_length: int) -> dict[str, Any]:
    """``kwargs`` with the length limits the host would apply to the caller's prompt, as ``max_new_tokens`` /
    ``min_new_tokens`` (the shortened prompt would otherwise get other limits).

    The host's own rule (transformers' ``generate``: ``has_default_max_length`` and ``_prepare_generated_length``):
    ``max_new_tokens`` wins; else a ``max_length`` set anywhere (keyword, a passed ``generation_config`` or the
    model's ``generation_config``) is a total that counts the caller's prompt; else, nothing set, the library's
    default ``max_length`` counts NEW tokens (20 with today's transformers), the total capped at the model
    config's ``max_position_embeddings`` when it has one. A ``min_length`` is a total (``min_new_tokens`` wins).
    """
    config = _generation_config(model, kwargs)
    if config is None:  # pragma: no cover
        return kwargs
    out = {key: value for key, value in kwargs.items() if key not in ("max_length", "min_length")}
    if config.max_new_tokens is None and config.max_length is not None:
        if _default_max_length(model, kwargs):
            total = int(config.max_length) + prompt_length
            limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
            if isinstance(limit, int):
                total = min(total, limit)
            new = total - prompt_length
            if new <= 0:
                raise HeroError.field(
                    "max_position_embeddings",
                    limit,
                    f"more than the prompt length {prompt_length} (the host's cap on its default max_length)",
                    "Pass max_new_tokens (the number of tokens to generate) or a shorter prompt.",
                )
        else:
            new = int(config.max_length) - prompt_length
            if new <= 0:
                raise HeroError.field(
                    "max_length",
                    int(config.max_length),
                    f"more than the prompt length {prompt_length}",
                    "Pass max_new_tokens (the number of tokens to generate).",
                )
        out["max_new_tokens"] = new
    if config.min_new_tokens is None and config.min_length:
        out["min_new_tokens"] = max(int(config.min_length) - prompt_length, 0)
    return out


def _default_max_length(model: Any, kwargs: dict[str, Any]) -> bool:
    """Whether no ``max_length`` was set anywhere: the host's ``has_default_max_length`` (transformers 5), under
    which its default ``max_length`` counts new tokens, not the whole sequence."""
    passed = kwargs.get("generation_config")
    own = getattr(model, "generation_config", None)
    return (
        kwargs.get("max_length") is None
        and getattr(passed, "max_length", None) is None
        and getattr(own, "max_length", None) is None
    )


def check_not_empty(ids: Tensor) -> None:
    """The host's language model needs at least one prompt of at least one token (a (B, 0) prompt fails
    inside its attention with a RuntimeError)."""
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise HeroError.field(
            "input_ids",
            ids,
            "at least one prompt of at least one token",
            "An empty text still needs the tokenizer's special tokens (e.g. BOS) or a chat template.",
        )


def vocab_size(model: nn.Module) -> int | None:
    """Rows of the host's input embedding (the ids it can embed), or None when it does not say."""
    embeddings = getattr(model, "get_input_embeddings", None)
    try:
        table = embeddings() if callable(embeddings) else None
    except (NotImplementedError, AttributeError):  # a model without a plain input embedding
        return None
    rows = getattr(table, "num_embeddings", None)
    return rows if isinstance(rows, int) else None


def unleft_rows(mask: Tensor) -> list[int]:
    """Rows whose padding is not all on the left (a 0 after a 1)."""
    after = (mask.cummax(dim=1).values > mask).any(dim=1)
    return after.nonzero().flatten().tolist()
