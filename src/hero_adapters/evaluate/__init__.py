"""Pruned against unpruned on a data file: agreement, accuracy, image tokens and the prefill speed-up.

The loop behind ``hero eval``, usable from Python::

    from hero_adapters.evaluate import evaluate, load_host
    from hero_adapters.rows import read_rows

    host = load_host("./llava-v1.6-vicuna-7b-hf")
    result = evaluate(host, read_rows("rows.jsonl"), presets=("hero", "uniform-random"), keep_ratios=(1, 0.4, 0.2))
    print(result.table())

For every batch of rows (left-padded, prompts in the processor's chat template) the unpruned model runs
first (``model.generate``, greedy), then every (preset, keep ratio) through ``HeroVLM.generate`` with the
same options. Prefill time is the time to first token: from the start of a ``generate`` call to the first
call of a ``LogitsProcessor``, which sees the scores of the prefill forward; for the pruned path it includes
HERO's encode, score and plan. Both paths are timed in the same run, on the same rows.
"""

from __future__ import annotations

from .budget import TokenBudget, budget_ratio
from .loading import (
    PICKLE_SUFFIXES,
    Host,
    config_depth,
    device_dtype,
    host_config,
    hub_offline,
    load_host,
    refused_checkpoint,
    weight_errors,
)
from .metrics import Answer, Evaluation, EvaluationError, SettingResult, normalize_answer, setting_key
from .runner import TOKENS_NOTE, TOKENS_NOTE_COUNTED, check_options, check_tokens, evaluate, route_overrides

__all__ = [
    "PICKLE_SUFFIXES",
    "TOKENS_NOTE",
    "TOKENS_NOTE_COUNTED",
    "Answer",
    "Evaluation",
    "EvaluationError",
    "Host",
    "SettingResult",
    "TokenBudget",
    "budget_ratio",
    "check_options",
    "check_tokens",
    "config_depth",
    "device_dtype",
    "evaluate",
    "host_config",
    "hub_offline",
    "load_host",
    "normalize_answer",
    "refused_checkpoint",
    "route_overrides",
    "setting_key",
    "weight_errors",
]
