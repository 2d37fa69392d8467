"""Hand-made mutation testing for ``hero_core`` and the adapters' critical paths (``make mutants``).

Each mutant is a (file, exact original snippet, replacement) triple: a realistic one-line slip. The tree
(``src/``, ``tests/``, ``examples/``, ``pyproject.toml``) is copied to a temporary directory once; every
mutant is applied to that copy alone (the working tree is never modified), the fast test files that guard
the mutated code run against it (``PYTHONPATH`` puts the copy's ``src`` first; ``-x`` stops at the first
failure), and the file is restored before the next mutant. A mutant is *killed* when the tests fail (or
time out) and *survives* when they pass.

Hypothesis runs under the fixed ``ci`` profile (``derandomize=True``, no example database), so a kill does
not depend on one random draw nor on what an earlier mutant left in a database.

A mutant may carry ``survives``: the reason it is expected to survive (an equivalent mutant). The run
fails when an unexplained mutant survives, or when an explained one is killed (the explanation is stale),
or when a snippet is no longer found exactly once (the list is stale).

Usage::

    .venv/bin/python tools/mutants.py              # every mutant (several minutes)
    .venv/bin/python tools/mutants.py --list       # the table, without running
    .venv/bin/python tools/mutants.py --only C01 A03 --json mutants.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    """One hand-made mutant: ``original`` (found exactly once in ``src/<file>``) becomes ``replacement``."""

    id: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    what: str
    survives: str = ""  # why it survives (equivalent mutant); empty: it must be killed


# The fast test files that guard each area (the default-run tests; none is marked slow).
GAPS_CORE = "tests/core/test_mutant_gaps.py"
GAPS_ADAPTERS = "tests/adapters/test_mutant_gaps.py"
SELECTORS = (GAPS_CORE, "tests/core/test_selectors.py", "tests/core/test_pruner.py")
ALLOCATORS = (GAPS_CORE, "tests/core/test_allocators.py", "tests/core/test_pruner.py")
CORE_ALL = (
    GAPS_CORE,
    "tests/core/test_selectors.py",
    "tests/core/test_allocators.py",
    "tests/core/test_pruner.py",
    "tests/core/test_bad_input.py",
    "tests/core/test_presets_depth.py",
)
HOOKS = (GAPS_ADAPTERS, "tests/adapters/test_cls_hooks.py")
SEQUENCE = (
    GAPS_ADAPTERS,
    "tests/adapters/test_llava_next_layout.py",
    "tests/adapters/test_vlm_generate.py",
    "tests/adapters/test_vlm_bad_input.py",
    "tests/adapters/test_host_matrix.py",
)
HOSTS = ("tests/adapters/test_host_matrix.py", "tests/adapters/test_llava_next_layout.py")
SCORERS = (GAPS_ADAPTERS, "tests/adapters/test_text_scorers.py")
SAFETY = ("tests/adapters/test_safety.py",)
SYNCS = ("tests/core/test_syncs.py", "tests/adapters/test_syncs.py")
THREADS = (
    "tests/adapters/test_safety.py::test_two_threads_record_only_their_own_tower_calls",
    "tests/adapters/test_attach.py::test_reports_from_two_threads_are_each_their_own",
    "tests/adapters/test_attach.py::test_an_attached_wrapper_and_another_wrapper_in_threads_each_get_their_single_"
    "thread_result",
    "tests/adapters/test_host_matrix.py::test_two_wrappers_in_two_threads_each_get_their_own_result",
)

RANK = "hero_core/selectors/_rank.py"
FUNCTION_AWARE = "hero_core/selectors/function_aware.py"
THUMB = "hero_core/allocators/thumbnail_attention.py"
HERO = "hero_core/allocators/hero.py"
SPLIT = "hero_core/allocators/_split.py"
ARITH = "hero_core/_arith.py"
HOOKS_PY = "hero_adapters/towers/hooks.py"
SEQUENCE_PY = "hero_adapters/sequence.py"
SCORER_PY = "hero_adapters/text_scorers/_core.py"
EVALUATE_PY = "hero_adapters/evaluate/loading.py"
CLI_CHECKS_PY = "hero_adapters/cli/_checks.py"
CLI_SHOW_PY = "hero_adapters/cli/show.py"
HF_CLIP_PY = "hero_adapters/text_scorers/transformers.py"

MUTANTS: tuple[Mutant, ...] = (
    # ----------------------------------------------------------------------------------------- hero_core
    Mutant(
        "C01",
        RANK,
        "attention = torch.softmax(attention, dim=-1)",
        "attention = torch.softmax(attention, dim=-2)",
        SELECTORS,
        "softmax_mean: the re-softmax over the head axis instead of the N positions (every score ties)",
    ),
    Mutant(
        "C02",
        RANK,
        "return attention.mean(dim=-2)",
        "return attention.amax(dim=-2)",
        SELECTORS,
        "the paper selector's mean over heads replaced by a max",
    ),
    Mutant(
        "C03",
        "hero_core/presets.py",
        'dataclasses.replace(_function_aware(depth, full_attention), head_reduction="softmax_mean")',
        'dataclasses.replace(_function_aware(depth, full_attention), head_reduction="mean")',
        (GAPS_CORE, "tests/core/test_pruner.py", "tests/core/test_presets_depth.py"),
        "presets.hero_reference builds the plain head mean",
    ),
    Mutant(
        "C04",
        THUMB,
        "owner = (tile_r[:, None] * tile_cols + tile_c[None, :])",
        "owner = (tile_r[:, None] * tile_rows + tile_c[None, :])",
        ALLOCATORS,
        "thumbnail-attention region map: the row stride is the tile rows, not the tile columns",
    ),
    Mutant(
        "C05",
        THUMB,
        "centre_r = (torch.arange(rows, device=device, dtype=torch.float64) + 0.5) / rows",
        "centre_r = (torch.arange(rows, device=device, dtype=torch.float64) + 0.5) / cols",
        ALLOCATORS,
        "thumbnail-attention region map: row centres divided by the column count",
    ),
    Mutant(
        "C06",
        THUMB,
        "thumb = attention[0, tiles.thumbnail_index].mean(dim=0)",
        "thumb = attention[0, 0].mean(dim=0)",
        ALLOCATORS,
        "thumbnail-attention reads view 0 instead of the thumbnail",
    ),
    Mutant(
        "C07",
        THUMB,
        "tile_r = (centre_r * tile_rows).floor().long().clamp_(max=tile_rows - 1)",
        "tile_r = (centre_r * tile_cols).floor().long().clamp_(max=tile_rows - 1)",
        ALLOCATORS,
        "thumbnail-attention region map: row centres scaled by the tile columns",
    ),
    Mutant(
        "C08",
        RANK,
        "order = torch.sort(masked, dim=-1, descending=True, stable=True).indices",
        "order = torch.sort(masked, dim=-1, descending=False, stable=True).indices",
        SELECTORS,
        "keep_top keeps the lowest scores",
    ),
    Mutant(
        "C09",
        RANK,
        "return (rank < budgets.to(scores.device)[:, None]) & valid",
        "return rank < budgets.to(scores.device)[:, None]",
        SELECTORS,
        "keep_top without the final valid mask",
        survives="equivalent: invalid positions are scored -inf and sort after every valid one, and a budget "
        "never exceeds the valid count (Pruner checks it), so the mask is redundant (a safety net)",
    ),
    Mutant(
        "C10",
        RANK,
        "return (rank < budgets.to(scores.device)[:, None]) & valid",
        "return (rank <= budgets.to(scores.device)[:, None]) & valid",
        SELECTORS,
        "keep_top keeps one token too many",
    ),
    Mutant(
        "C11",
        FUNCTION_AWARE,
        ").mean(0)  # (V, N)",
        ").amax(0)  # (V, N)",
        SELECTORS,
        "function-aware tile score: max over the low layers instead of their mean (Eq. 6)",
    ),
    Mutant(
        "C12",
        FUNCTION_AWARE,
        "scores = torch.where(is_thumb[:, None], high[None, :], low)",
        "scores = torch.where(is_thumb[:, None], low, high[None, :])",
        SELECTORS,
        "function-aware: thumbnail and tiles swap their layers",
    ),
    Mutant(
        "C13",
        FUNCTION_AWARE,
        "[:, thumb],",
        "[:, 0],",
        SELECTORS,
        "function-aware thumbnail score read from view 0 instead of the thumbnail",
    ),
    Mutant(
        "C14",
        SPLIT,
        "budgets[thumb] = min(thumb_budget + pool - sum(tile_capacity), capacity[thumb])",
        "budgets[thumb] = thumb_budget + pool - sum(tile_capacity)",
        ALLOCATORS,
        "exact split: the thumbnail's surplus not capped at its valid count",
    ),
    Mutant(
        "C15",
        SPLIT,
        "thumb_budget = min(floor_ratio(keep_ratio, num_tokens), capacity[thumb])",
        "thumb_budget = min(floor_ratio(keep_ratio, num_views * num_tokens), capacity[thumb])",
        ALLOCATORS,
        "exact split: the thumbnail quota uses the whole image's token count",
    ),
    Mutant(
        "C16",
        ARITH,
        "return math.floor(Fraction(repr(float(keep_ratio))) * count)",
        "return math.floor(float(keep_ratio) * count)",
        ALLOCATORS,
        "floor_ratio in floats (0.29 * 100 -> 28)",
    ),
    Mutant(
        "C17",
        ARITH,
        "by_remainder = sorted(open_, key=lambda i: quota[i] - floors[i], reverse=True)",
        "by_remainder = sorted(open_, key=lambda i: quota[i] - floors[i], reverse=False)",
        ALLOCATORS,
        "largest remainder gives the leftover units to the smallest remainders",
    ),
    Mutant(
        "C18",
        ARITH,
        "saturated = [i for i in open_ if quota[i] >= caps[i]]",
        "saturated = [i for i in open_ if quota[i] > caps[i] + 1]",
        ALLOCATORS,
        "apportion: a quota just above its cap is not saturated (the share exceeds the cap)",
    ),
    Mutant(
        "C19",
        HERO,
        "saliency_part, relevance_part = self.alpha * saliency, (1.0 - self.alpha) * task  # Eq. 3",
        "saliency_part, relevance_part = (1.0 - self.alpha) * saliency, self.alpha * task  # Eq. 3",
        ALLOCATORS,
        "Eq. 3 with alpha on the wrong term",
    ),
    Mutant(
        "C20",
        HERO,
        "saliency = torch.softmax(cosine / self.tau_v, dim=0)  # Eq. 1",
        "saliency = torch.softmax(cosine * self.tau_v, dim=0)  # Eq. 1",
        ALLOCATORS,
        "Eq. 1 multiplies by the temperature",
    ),
    Mutant(
        "C21",
        HERO,
        "cls[tiles.thumbnail_index].unsqueeze(0)",
        "cls[0].unsqueeze(0)",
        ALLOCATORS,
        "saliency against view 0 instead of the thumbnail",
    ),
    Mutant(
        "C22",
        HERO,
        "density = count / (count.sum() + 1e-6)",
        "density = count",
        ALLOCATORS,
        "padding-density prior not normalised",
    ),
    Mutant(
        "C23",
        HERO,
        "budgets = [min(math.floor(scores[v] * pool), capacity[v]) for v in range(tiles.num_views)]",
        "budgets = [min(round(scores[v] * pool), capacity[v]) for v in range(tiles.num_views)]",
        ALLOCATORS,
        "reference budgets rounded instead of floored",
    ),
    Mutant(
        "C24",
        "hero_core/tiles.py",
        "index = to_device([self.attention_layers.index(layer) for layer in layers], self.device, torch.long)",
        "index = to_device(list(range(len(layers))), self.device, torch.long)",
        CORE_ALL,
        "layer_attention reads the first recorded layers, not the requested ones",
    ),
    Mutant(
        "C25",
        "hero_core/plan.py",
        "if bool(outside | (keep.sum(-1) != budgets).any()):",
        "if bool(outside):",
        CORE_ALL,
        "Pruner no longer checks a custom selector's keep counts",
    ),
    Mutant(
        "C26",
        "hero_core/selectors/strided.py",
        "torch.cat([4 * bayer, 4 * bayer + 2], 1)",
        "torch.cat([4 * bayer, 4 * bayer + 1], 1)",
        SELECTORS,
        "strided selector: a wrong Bayer matrix (no longer an even grid)",
    ),
    # ------------------------------------------------------------------------------- hooks (towers)
    Mutant(
        "A01",
        HOOKS_PY,
        "if not isinstance(mask, Tensor) or not mask.dtype.is_floating_point:\n        return 0.0",
        "if True:\n        return 0.0",
        HOOKS,
        "hooks: an additive mask's values ignored (only its blocked keys kept)",
    ),
    Mutant(
        "A02",
        HOOKS_PY,
        'return mask[:, :, 0 if position == "first" else -1, :].float()',
        "return mask[:, :, -1, :].float()",
        HOOKS,
        "hooks: the additive row read from the last query row instead of the CLS row",
    ),
    Mutant(
        "A03",
        HOOKS_PY,
        "allowed = mask > torch.finfo(mask.dtype).min / 2",
        "allowed = mask >= 0",
        HOOKS,
        "hooks: every key with a negative bias treated as blocked",
    ),
    Mutant(
        "A04",
        HOOKS_PY,
        "return rows.any(dim=1).to(device).expand(batch, tokens)  # over heads",
        "return rows.all(dim=1).to(device).expand(batch, tokens)  # over heads",
        HOOKS,
        "hooks: a key blocked for every head when only some heads block it",
    ),
    Mutant(
        "A05",
        HOOKS_PY,
        "return mask.float().amax(dim=-2)  # a key any query may attend to stays",
        "return mask.float()[:, :, 0]",
        HOOKS,
        "hooks: the mean stand-in takes the first query row's bias, not the largest",
    ),
    Mutant(
        "A06",
        HOOKS_PY,
        'index = 0 if slot.recipe.cls_position == "first" else tokens - 1',
        "index = 0",
        HOOKS,
        "hooks: a CLS-last tower's query read from token 0",
    ),
    Mutant(
        "A07",
        HOOKS_PY,
        'logits = torch.einsum("bhqd,bhtd->bht", query, keys) * scale',
        'logits = torch.einsum("bhqd,bhtd->bht", query, keys)',
        HOOKS,
        "hooks: the attention scale dropped",
    ),
    Mutant(
        "A08",
        HOOKS_PY,
        'if position == "first":\n            return rows[..., 1:]',
        'if position == "first":\n            return rows[..., :-1]',
        HOOKS,
        "patch_attention drops the last column instead of the CLS key",
    ),
    Mutant(
        "A09",
        HOOKS_PY,
        "if users == 1:\n                handle.remove()",
        "if users == 0:\n                handle.remove()",
        HOOKS,
        "shared hooks never removed",
    ),
    Mutant(
        "A10",
        HOOKS_PY,
        'logits = logits.masked_fill(~keys_ok[:, None, :], float("-inf"))',
        'logits = logits.masked_fill(keys_ok[:, None, :], float("-inf"))',
        HOOKS,
        "hooks: the attendable keys blocked instead of the padding",
    ),
    # ------------------------------------------------------------------------- sequence rebuild, splice
    Mutant(
        "A11",
        SEQUENCE_PY,
        'where = slice(width - n, width) if side == "left" else slice(0, n)',
        'where = slice(0, n) if side == "left" else slice(width - n, width)',
        SEQUENCE,
        "rebuild pads on the wrong side",
    ),
    Mutant(
        "A12",
        SEQUENCE_PY,
        "shared = ids.shape[1] - int(mask.sum(dim=1).max()) if ids.shape[0] else 0",
        "shared = 0",
        SEQUENCE,
        "rebuild drops the caller's shared padding columns (pad_to_multiple_of)",
    ),
    Mutant(
        "A13",
        SEQUENCE_PY,
        "position += int(layout_lengths[span.image])  # type: ignore[index]",
        "position += count",
        SEQUENCE,
        "original position ids: the text after an image continues from the kept count",
    ),
    Mutant(
        "A14",
        SEQUENCE_PY,
        "prompt = prompt.repeat_interleave(generated.shape[0] // batch, dim=0)",
        "prompt = prompt.repeat(generated.shape[0] // batch, 1)",
        SEQUENCE,
        "splice: prompts tiled instead of interleaved for beams / num_return_sequences",
    ),
    Mutant(
        "A15",
        SEQUENCE_PY,
        "return torch.cat([prompt, generated[:, prompt_length:]], dim=1)",
        "return torch.cat([prompt, generated[:, prompt_length - 1 :]], dim=1)",
        SEQUENCE,
        "splice keeps the last prompt token twice",
    ),
    Mutant(
        "A16",
        SEQUENCE_PY,
        "if image >= len(counts) or cursor + counts[image] > stop:",
        "if image >= len(counts) or cursor + counts[image] >= stop:",
        SEQUENCE,
        "placeholder_spans refuses a run that fits exactly",
    ),
    Mutant(
        "A17",
        SEQUENCE_PY,
        "keep = mask[row, cursor:stop]  # text between runs, padding dropped",
        "keep = torch.ones_like(mask[row, cursor:stop])",
        SEQUENCE,
        "rebuild keeps the caller's padding tokens",
    ),
    # ------------------------------------------------------------------------------------- assemble
    Mutant(
        "A18",
        "hero_adapters/hosts/_shared.py",
        "sent = is_newline | flat[source.clamp(min=0)]  # (T,)",
        "sent = flat[source.clamp(min=0)]  # (T,)",
        HOSTS,
        "assemble_source drops the newline tokens",
    ),
    Mutant(
        "A19",
        "hero_adapters/hosts/_shared.py",
        "kept_patch_tokens=int(offsets.shape[0]) - newlines,",
        "kept_patch_tokens=int(offsets.shape[0]),",
        HOSTS,
        "assemble_source counts newlines as patch tokens",
    ),
    Mutant(
        "A20",
        "hero_adapters/hosts/llava_next.py",
        "sent = is_newline | flat[layout.clamp(min=0)]  # (T_layout,)",
        "sent = flat[layout.clamp(min=0)]  # (T_layout,)",
        HOSTS,
        "LLaVA-NeXT assemble drops the newline tokens",
    ),
    # ------------------------------------------------------------------------- scorers' preprocessing
    Mutant(
        "A21",
        SCORER_PY,
        "top = round((new_h - target_h) / 2.0)  # as torchvision's center_crop",
        "top = (new_h - target_h) // 2",
        SCORERS,
        "centre crop: the top offset floored instead of rounded (tall views with an odd excess)",
    ),
    Mutant(
        "A22",
        SCORER_PY,
        "left = round((new_w - target_w) / 2.0)",
        "left = (new_w - target_w) // 2",
        SCORERS,
        "centre crop: the left offset floored instead of rounded (wide views with an odd excess)",
    ),
    Mutant(
        "A23",
        SCORER_PY,
        "new_h, new_w = max(target_h, int(h * target_w / w)), target_w",
        "new_h, new_w = max(target_h, round(h * target_w / w)), target_w",
        SCORERS,
        "tall views: the long side rounded instead of truncated (torchvision truncates)",
    ),
    Mutant(
        "A24",
        SCORER_PY,
        "return x[..., top : top + target_h, left : left + target_w]",
        "return x[..., left : left + target_h, top : top + target_w]",
        SCORERS,
        "centre crop with the two offsets swapped",
    ),
    Mutant(
        "A25",
        SCORER_PY,
        "height_is_short = h * target_w <= w * target_h",
        "height_is_short = h * target_w >= w * target_h",
        SCORERS,
        "the short side chosen the wrong way round",
    ),
    Mutant(
        "A26",
        SCORER_PY,
        "(pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)",
        "(pad_w // 2, pad_w - pad_w // 2, pad_h - pad_h // 2, pad_h // 2)",
        SCORERS,
        "resize_mode='longest': the odd padding row on top instead of the bottom",
    ),
    Mutant(
        "A27",
        SCORER_PY,
        "return ((x - mean_t) / std_t).to(dtype)",
        "return ((x - mean_t) * std_t).to(dtype)",
        SCORERS,
        "normalisation multiplies by the std",
    ),
    # -------------------------------------------- safety: no checkpoint code runs, writes only to the outputs
    Mutant(
        "S01",
        EVALUATE_PY,
        "config = transformers.AutoConfig.from_pretrained(text, trust_remote_code=False)",
        "config = transformers.AutoConfig.from_pretrained(text, trust_remote_code=True)",
        SAFETY,
        "host_config trusts the checkpoint's code (its auto_map config class is imported and run)",
    ),
    Mutant(
        "S02",
        EVALUATE_PY,
        "processor = transformers.AutoProcessor.from_pretrained(text, trust_remote_code=False)",
        "processor = transformers.AutoProcessor.from_pretrained(text)",
        SAFETY,
        "load_host's processor load leaves trust_remote_code to transformers (an interactive prompt, or a refusal)",
    ),
    Mutant(
        "S03",
        EVALUATE_PY,
        "text, dtype=dtype, trust_remote_code=False, weights_only=True",
        "text, dtype=dtype, trust_remote_code=True, weights_only=True",
        SAFETY,
        "load_host's model load trusts the checkpoint's code (its auto_map model class)",
    ),
    Mutant(
        "S04",
        EVALUATE_PY,
        "text, dtype=dtype, trust_remote_code=False, weights_only=True",
        "text, dtype=dtype, trust_remote_code=False, weights_only=False",
        SAFETY,
        "load_host unpickles a pytorch_model.bin in full (torch.load(weights_only=False): its objects run)",
    ),
    Mutant(
        "S05",
        EVALUATE_PY,
        "errors: tuple[type[BaseException], ...] = (OSError, ValueError, pickle.UnpicklingError)",
        "errors: tuple[type[BaseException], ...] = (OSError, ValueError)",
        SAFETY,
        "a refused pickle escapes load_host (and the CLIP loader) as a traceback (not one line, exit 2)",
    ),
    Mutant(
        "S06",
        CLI_CHECKS_PY,
        "source, local_files_only=exists(local) and local.is_dir(), trust_remote_code=False",
        "source, local_files_only=exists(local) and local.is_dir(), trust_remote_code=True",
        SAFETY,
        "--clip's config check trusts the checkpoint's code",
    ),
    Mutant(
        "S07",
        HF_CLIP_PY,
        "config = transformers.AutoConfig.from_pretrained(source, local_files_only=local, trust_remote_code=False)",
        "config = transformers.AutoConfig.from_pretrained(source, local_files_only=local, trust_remote_code=True)",
        SAFETY,
        "HFClipTextScorer.from_pretrained's config trusts the checkpoint's code",
    ),
    Mutant(
        "S08",
        HF_CLIP_PY,
        "source, local_files_only=local, trust_remote_code=False\n",
        "source, local_files_only=local, trust_remote_code=True\n",
        SAFETY,
        "HFClipTextScorer.from_pretrained's tokenizer trusts the checkpoint's code (its auto_map tokenizer)",
    ),
    Mutant(
        "S09",
        HF_CLIP_PY,
        "                weights_only=True,\n",
        "                weights_only=False,\n",
        SAFETY,
        "HFClipTextScorer.from_pretrained unpickles a pytorch_model.bin in full",
    ),
    Mutant(
        "S10",
        "hero_adapters/text_scorers/open_clip.py",
        'pretrained=source, device=device or "cpu", weights_only=True)',
        'pretrained=source, device=device or "cpu", weights_only=False)',
        SAFETY,
        "OpenClipTextScorer.create unpickles an open_clip checkpoint in full",
    ),
    Mutant(
        "S11",
        "hero_adapters/_lmms_args.py",
        "config = transformers.AutoConfig.from_pretrained(pretrained, trust_remote_code=False)",
        "config = transformers.AutoConfig.from_pretrained(pretrained, trust_remote_code=True)",
        SAFETY,
        "the lmms-eval plugin's model-type check trusts the checkpoint's code",
    ),
    Mutant(
        "S12",
        CLI_SHOW_PY,
        "        written.append(args.json)\n",
        '        written.append(args.json)\n        Path(".hero-last-show.json").write_text(args.json.read_text())\n',
        SAFETY,
        "hero show leaves a copy of its JSON in the working directory",
    ),
    Mutant(
        "S13",
        CLI_CHECKS_PY,
        "        folder = path.resolve().parent\n",
        "        folder = path.resolve().parent\n        folder.mkdir(parents=True, exist_ok=True)\n",
        SAFETY,
        "the output checks make a missing output folder, also for a call refused afterwards",
    ),
    Mutant(
        "S14",
        "hero_adapters/bench/_common.py",
        'path.write_text(json.dumps(payload, indent=2) + "\\n")',
        'path.write_text(json.dumps(payload, indent=2) + "\\n")\n'
        '    (Path.home() / ".hero-bench-last.json").write_text(path.read_text())',
        SAFETY,
        "hero bench keeps a copy of its last record in HOME",
    ),
    # ---------------------------------------------------------- thread safety: per-call hook recordings
    Mutant(
        "T01",
        HOOKS_PY,
        '_ACTIVE: contextvars.ContextVar[tuple[dict[int, _Slot], ...]] = contextvars.ContextVar("hero_recordings", '
        "default=())",
        "class _OneForAll:  # one recording stack for the whole process instead of one per calling context\n"
        "    value: Any = ()\n\n"
        "    def get(self) -> Any:\n        return self.value\n\n"
        "    def set(self, value: Any) -> Any:\n        token, self.value = self.value, value\n        return token\n\n"
        "    def reset(self, token: Any) -> None:\n        self.value = token\n\n\n"
        "_ACTIVE: Any = _OneForAll()",
        THREADS,
        "hooks: the active recordings are a module global, so a call records the tower calls of other threads",
    ),
    # ---------------------------------------------------------- robustness: memory, determinism, dtypes
    Mutant(
        "R01",
        "hero_adapters/vlm.py",
        "        self.last_report = run.report\n        return run.report",
        "        HeroVLM._kept = [*getattr(HeroVLM, '_kept', []), run]  # every call's run kept alive\n"
        "        self.last_report = run.report\n        return run.report",
        ("tests/robustness/test_memory.py",),
        "plan keeps every call's run (features, tiles, plans) alive: live tensors grow with the calls",
    ),
    Mutant(
        "R02",
        "hero_core/selectors/random.py",
        "generator = torch.Generator().manual_seed(self.seed)",
        "generator = torch.Generator().manual_seed(torch.seed())",
        ("tests/robustness/test_determinism.py",),
        "RandomSelector draws a fresh seed per call: the same inputs plan differently",
    ),
    Mutant(
        "R03",
        "hero_adapters/hosts/llava_next.py",
        "features=features.index_select(0, to_device(rows, features.device, torch.long)),",
        "features=features.float().index_select(0, to_device(rows, features.device, torch.long)),",
        ("tests/robustness/test_dtypes.py",),
        "LLaVA-NeXT's assemble hands the LLM float32 features whatever the model's dtype",
    ),
    # ---------------------------------------------------------- host syncs: one per image in Pruner.plan
    Mutant(
        "Y01",
        "hero_core/tiles.py",
        "moved = {device: (torch.cat(chunk).tolist() if chunk else []) for device, chunk in parts.items()}",
        "moved = {device: [x for part in chunk for x in part.tolist()] for device, chunk in parts.items()}",
        SYNCS,
        "fetch: the host facts and the values are read part by part (several syncs per image)",
    ),
    Mutant(
        "Y02",
        "hero_core/_device.py",
        "return host.to(device, non_blocking=True)  # the tensor itself",
        "return host.to(device)  # the tensor itself",
        SYNCS,
        "to_device: a blocking upload (a sync on CUDA; the counter sees it on the CPU too)",
    ),
    Mutant(
        "Y03",
        "hero_core/plan.py",
        "counts = tiles.known_counts(budgets) if trusted else None",
        "counts = tiles.known_counts(budgets)",
        SYNCS,
        "plan: a custom allocator's remembered budgets escape the read-back (edited through .data: silently wrong)",
    ),
    Mutant(
        "Y04",
        "hero_core/plan.py",
        "        return keep  # keep_top / the whole-image selectors keep exactly their budget on valid positions",
        "        pass",
        SYNCS,
        "plan: the shipped selectors' masks are read back again (one more sync per image)",
    ),
)


def _copy_tree(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
    for name in ("src", "tests", "examples"):  # host tests load the examples' own adapters
        shutil.copytree(ROOT / name, destination / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")


def _environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["HYPOTHESIS_PROFILE"] = "ci"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _pytest(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """'passed', 'failed' or 'timeout', the seconds it took, and the end of pytest's output."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=tree, env=_environment(tree), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, ""
    tail = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
    return ("passed" if done.returncode == 0 else "failed"), time.perf_counter() - start, tail


def _imports_the_copy(tree: Path) -> bool:
    """Whether Python started in ``tree`` with its environment imports the copy's packages (not the checkout's)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import hero_core, hero_adapters; print(hero_core.__file__, hero_adapters.__file__)"],
        cwd=tree,
        env=_environment(tree),
        capture_output=True,
        text=True,
        check=True,
    )
    if not all(path.startswith(str(tree)) for path in probe.stdout.split()):
        print(f"the copy is not the imported package: {probe.stdout}", file=sys.stderr)
        return False
    return True


def _check_snippets(tree: Path, mutants: tuple[Mutant, ...]) -> list[str]:
    problems = []
    for mutant in mutants:
        count = (tree / "src" / mutant.file).read_text().count(mutant.original)
        if count != 1:
            problems.append(f"{mutant.id}: the original snippet occurs {count} times in src/{mutant.file}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (a timeout is a kill)")
    parser.add_argument(
        "--without", nargs="+", default=[], metavar="TEST_FILE", help="leave these test files out (what do they kill?)"
    )
    args = parser.parse_args(argv)
    mutants = tuple(
        replace(m, tests=tuple(t for t in m.tests if t not in args.without))
        for m in MUTANTS
        if not args.only or m.id in args.only
    )
    mutants = tuple(m for m in mutants if m.tests)
    if args.list:
        for m in mutants:
            print(f"{m.id}  src/{m.file}: {m.what}" + (f"  [expected to survive: {m.survives}]" if m.survives else ""))
        stale = _check_snippets(ROOT, mutants)  # the listed snippets must still be in the working tree's src/
        for problem in stale:
            print(f"stale: {problem}", file=sys.stderr)
        return 2 if stale else 0
    with tempfile.TemporaryDirectory(prefix="hero-mutants-") as temp:
        tree = Path(temp)
        _copy_tree(tree)
        problems = _check_snippets(tree, mutants)
        if problems:
            print("stale mutant list:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        if not _imports_the_copy(tree):
            return 2
        files = tuple(sorted({t for m in mutants for t in m.tests}))
        status, seconds, tail = _pytest(tree, files, args.timeout * 2)
        print(f"baseline (no mutant, {len(files)} test files): {status} in {seconds:.0f} s", flush=True)
        if status != "passed":
            print(f"the unmutated tests must pass first:\n{tail}", file=sys.stderr)
            return 2
        results = []
        for m in mutants:
            path = tree / "src" / m.file
            text = path.read_text()
            path.write_text(text.replace(m.original, m.replacement))
            try:
                status, seconds, _ = _pytest(tree, m.tests, args.timeout)
            finally:
                path.write_text(text)
            outcome = "survived" if status == "passed" else "killed"
            expected = "survived" if m.survives else "killed"
            results.append({**asdict(m), "outcome": outcome, "by": status, "seconds": round(seconds, 1)})
            flag = "" if outcome == expected else "   <-- UNEXPECTED"
            print(f"{m.id}  {outcome:8s} {seconds:6.1f} s  {m.what}{flag}", flush=True)
    killed = sum(r["outcome"] == "killed" for r in results)
    explained = [r for r in results if r["outcome"] == "survived" and r["survives"]]
    unexpected = [r for r in results if (r["outcome"] == "survived") != bool(r["survives"])]
    print(
        f"\nscore: {killed}/{len(results)} killed ({100 * killed / max(1, len(results)):.0f}%); "
        f"{len(explained)} survivor(s) explained as equivalent; {len(unexpected)} unexpected"
    )
    for r in explained:
        print(f"  {r['id']} survives: {r['survives']}")
    if args.json is not None:
        machine = f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"
        args.json.write_text(
            json.dumps(
                {"machine": machine, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results},
                indent=1,
            )
        )
    return 1 if unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
