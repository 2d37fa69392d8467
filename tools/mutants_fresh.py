"""A fresh mutant set written by a second reader who has not read the tests (issue 16, item 4).

The mutants come from the source and docs HERO_SPEC.md only. Each is a (file, exact original snippet, replacement)
triple, run with ``tools/mutants.py``'s machinery (a copy of the tree, one mutant at a time, ``-x``). Unlike that
list, the tests each mutant runs are not chosen by hand: they are the fast test *functions* that execute the
mutated line(s), read from a line -> test map that coverage.py's dynamic contexts record once over the fast suite
(``--refresh-map``; git-ignored in ``.mutants/coverage-map.json``). A mutant whose lines no test executes survives
without running anything. Where a snippet's line runs at import time (a default argument, a constant), the mutant
names an ``anchor``: a snippet in the same file whose lines stand for it in the map.

The map covers the whole fast suite (``tests/core``, ``tests/adapters``, ``tests/robustness``; the first run, made
while other agents were restructuring the command line and the evaluation, left those test files and
``tests/robustness`` out, which undercounted three kills). With ``--refresh-map`` the coverage run
(which must pass) is the baseline; otherwise every mapped test the mutants need runs unmutated first. The
per-mutant timeout (a timeout is a kill) is three times that baseline, at least 120 s.

Usage::

    .venv/bin/python tools/mutants_fresh.py --refresh-map   # recompute the map (several minutes), then run all
    .venv/bin/python tools/mutants_fresh.py                 # every fresh mutant (the map must exist)
    .venv/bin/python tools/mutants_fresh.py --list          # the table, without running
    .venv/bin/python tools/mutants_fresh.py --only F01 F07 --json .mutants/fresh.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import ROOT, Mutant, _check_snippets, _copy_tree, _environment, _imports_the_copy, _pytest

MAP_DIR = ROOT / ".mutants"
MAP_FILE = MAP_DIR / "coverage-map.json"
MAP_TESTS = ("tests/core", "tests/adapters", "tests/robustness")
#: The CUDA tests (deselected on a machine without a GPU anyway).
MAP_IGNORE = ("tests/adapters/test_gpu.py", "tests/core/test_gpu_core.py")

CORE = "hero_core"
AD = "hero_adapters"

# Mutants whose snippet runs at import time map their tests through another snippet of the same file.
ANCHORS: dict[str, str] = {}

FRESH: tuple[Mutant, ...] = (
    # ---------------------------------------------------------------- hero_core: exact budget arithmetic
    Mutant(
        "F01",
        f"{CORE}/_arith.py",
        "math.floor(Fraction(repr(float(keep_ratio))) * count)",
        "math.floor(Fraction(float(keep_ratio)) * count)",
        (),
        "floor_ratio reads the binary float, not its decimal: floor(0.29 * 100) drifts to 28",
    ),
    Mutant(
        "F02",
        f"{CORE}/_arith.py",
        "key=lambda i: quota[i] - floors[i], reverse=True)",
        "key=lambda i: quota[i] - floors[i])",
        (),
        "largest remainder inverted: the leftover units go to the SMALLEST fractional remainders",
    ),
    Mutant(
        "F03",
        f"{CORE}/_arith.py",
        "by_remainder = sorted(open_, key=",
        "by_remainder = sorted(open_[::-1], key=",
        (),
        "ties in the remainders go to the HIGHER index (spec: lower tile index)",
    ),
    Mutant(
        "F04",
        f"{CORE}/_arith.py",
        "mass = mass if mass > 0 else Fraction(len(open_))",
        "mass = mass if mass > 0 else Fraction(1)",
        (),
        "all-zero weights: the even split divides by 1, not by the open count (over-allocates)",
    ),
    Mutant(
        "F05",
        f"{CORE}/counts.py",
        "return min(floor_ratio(ratio, counts.views * counts.tokens_per_view), counts.valid)",
        "return min(floor_ratio(ratio, (counts.views - 1) * counts.tokens_per_view), counts.valid)",
        (),
        "paper total B counts K views, not V (the thumbnail's N left out of Eq. 4's total)",
    ),
    Mutant(
        "F06",
        f"{CORE}/allocators/_split.py",
        "budgets[thumb] = min(thumb_budget + pool - sum(tile_capacity), capacity[thumb])",
        "budgets[thumb] = thumb_budget",
        (),
        "surplus the tiles cannot absorb is dropped instead of going back to the thumbnail",
    ),
    Mutant(
        "F07",
        f"{CORE}/allocators/_split.py",
        "thumb_budget = min(floor_ratio(keep_ratio, num_tokens), capacity[thumb])",
        "thumb_budget = floor_ratio(keep_ratio, num_tokens)",
        (),
        "thumbnail quota not capped at the thumbnail's valid count n_thumb",
    ),
    # ---------------------------------------------------------------- hero_core: HERO importance (Eq. 1-3)
    Mutant(
        "F08",
        f"{CORE}/allocators/hero.py",
        "torch.softmax(cosine / self.tau_v, dim=0)",
        "torch.softmax(cosine * self.tau_v, dim=0)",
        (),
        "saliency softmax multiplies by the temperature instead of dividing (Eq. 1)",
    ),
    Mutant(
        "F09",
        f"{CORE}/allocators/hero.py",
        "relevance.double()[others] / self.tau_t",
        "relevance.double()[others] / self.tau_v",
        (),
        "relevance softmax uses tau_v instead of tau_t (Eq. 2)",
    ),
    Mutant(
        "F10",
        f"{CORE}/allocators/hero.py",
        "self.alpha * saliency, (1.0 - self.alpha) * task",
        "(1.0 - self.alpha) * saliency, self.alpha * task",
        (),
        "alpha weights relevance instead of saliency (Eq. 3; invisible at alpha = 0.5)",
    ),
    Mutant(
        "F11",
        f"{CORE}/allocators/hero.py",
        "cls[tiles.thumbnail_index].unsqueeze(0)",
        "cls[0].unsqueeze(0)",
        (),
        "saliency reference is view 0, not the thumbnail (wrong when the thumbnail is last, InternVL)",
    ),
    Mutant(
        "F12",
        f"{CORE}/allocators/hero.py",
        "score = self.density_weight * density + rest * score",
        "score = rest * density + self.density_weight * score",
        (),
        "reference density prior mixed with swapped weights (0.8 d + 0.2 s instead of 0.2 d + 0.8 s)",
    ),
    Mutant(
        "F13",
        f"{CORE}/allocators/hero.py",
        "pool = floor_ratio(keep_ratio, len(others) * tiles.num_tokens)",
        "pool = floor_ratio(keep_ratio, tiles.num_views * tiles.num_tokens)",
        (),
        "reference tile pool P = floor(V N R) instead of floor(K N R)",
    ),
    Mutant(
        "F14",
        f"{CORE}/allocators/hero.py",
        "min(math.floor(scores[v] * pool), capacity[v])",
        "min(round(scores[v] * pool), capacity[v])",
        (),
        "reference budgets round s_i P instead of flooring it",
    ),
    # ---------------------------------------------------------------- hero_core: thumbnail-attention allocator
    Mutant(
        "F15",
        f"{CORE}/allocators/thumbnail_attention.py",
        "owner = (tile_r[:, None] * tile_cols + tile_c[None, :])",
        "owner = (tile_r[:, None] * tile_rows + tile_c[None, :])",
        (),
        "thumbnail patch -> tile index uses the row count as the row stride (non-square tile grids)",
    ),
    Mutant(
        "F16",
        f"{CORE}/allocators/thumbnail_attention.py",
        "thumb = attention[0, tiles.thumbnail_index].mean(dim=0)",
        "thumb = attention[0, 0].mean(dim=0)",
        (),
        "reads view 0's attention as the thumbnail's (thumbnail last: wrong view)",
    ),
    # ---------------------------------------------------------------- hero_core: selection (Eq. 5-6)
    Mutant(
        "F17",
        f"{CORE}/selectors/_rank.py",
        "torch.sort(masked, dim=-1, descending=True, stable=True)",
        "torch.sort(masked, dim=-1, descending=True, stable=False)",
        (),
        "unstable sort: equal scores no longer go to the lower position (differs at N = 576)",
    ),
    Mutant(
        "F18",
        f"{CORE}/selectors/_rank.py",
        "attention = torch.softmax(attention, dim=-1)",
        "attention = torch.softmax(attention, dim=-2)",
        (),
        "reference head reduction re-applies the softmax over heads, not over the N patches",
    ),
    Mutant(
        "F19",
        f"{CORE}/selectors/function_aware.py",
        'checked.layer_attention(self.low_layers, field="FunctionAwareSelector.low_layers")',
        'checked.layer_attention(self.high_layers, field="FunctionAwareSelector.low_layers")',
        (),
        "tiles ranked by the high (thumbnail) layers instead of the low layers (Eq. 6)",
    ),
    Mutant(
        "F20",
        f"{CORE}/selectors/function_aware.py",
        'field="FunctionAwareSelector.high_layers")[:, thumb]',
        'field="FunctionAwareSelector.high_layers")[:, 0]',
        (),
        "thumbnail score read from view 0 instead of the thumbnail index (Eq. 5)",
    ),
    Mutant(
        "F21",
        f"{CORE}/selectors/function_aware.py",
        "self.head_reduction\n        ).mean(0)  # (V, N)",
        "self.head_reduction\n        )[0]  # (V, N)",
        (),
        "tile score from the first low layer only instead of the mean over low layers",
    ),
    Mutant(
        "F22",
        f"{CORE}/selectors/strided.py",
        "threshold = bayer[:rows, :cols].flatten()",
        "threshold = bayer[:cols, :rows].flatten()",
        (),
        "dither matrix cropped with rows and columns swapped (non-square grids)",
    ),
    Mutant(
        "F23",
        f"{CORE}/selectors/strided.py",
        "torch.cat([4 * bayer + 3, 4 * bayer + 1], 1)",
        "torch.cat([4 * bayer + 1, 4 * bayer + 3], 1)",
        (),
        "Bayer recursion, lower-left and lower-right swapped (R = 1/2 keeps columns, not a checkerboard)",
    ),
    Mutant(
        "F24",
        f"{CORE}/selectors/random.py",
        "torch.Generator().manual_seed(self.seed)",
        "torch.Generator().manual_seed(0)",
        (),
        "random selector ignores its seed",
    ),
    # ---------------------------------------------------------------- hero_core: tiles, plan, checks, presets
    Mutant(
        "F25",
        f"{CORE}/tiles.py",
        "not 0 <= index < num_views:",
        "not 0 <= index <= num_views:",
        (),
        "thumbnail_index == V accepted (bound off by one)",
    ),
    Mutant(
        "F26",
        f"{CORE}/tiles.py",
        "[self.attention_layers.index(layer) for layer in layers]",
        "list(range(len(layers)))",
        (),
        "layer_attention takes the first len(layers) recorded layers, not the requested ones",
    ),
    Mutant(
        "F27",
        f"{CORE}/plan.py",
        "return tuple(sorted(set(self.selector.layers) | set(extra)))",
        "return tuple(sorted(set(self.selector.layers)))",
        (),
        "Pruner.layers forgets the allocator's layers (ThumbnailAttentionAllocator's layer not hooked)",
    ),
    Mutant(
        "F28",
        f"{CORE}/plan.py",
        "outside = (keep & ~tiles.valid_mask).any()",
        "outside = keep.new_zeros(())",
        (),
        "a custom selector that keeps padding positions is no longer refused",
    ),
    Mutant(
        "F29",
        f"{CORE}/_errors.py",
        "not 0.0 < value <= 1.0",
        "not 0.0 <= value <= 1.0",
        (),
        "keep_ratio = 0 accepted",
    ),
    Mutant(
        "F30",
        f"{CORE}/_errors.py",
        "not 0.0 <= float(value) <= 1.0",
        "not 0.0 < float(value) <= 1.0",
        (),
        "alpha / density_weight = 0 refused (bound off by one)",
    ),
    Mutant(
        "F31",
        f"{CORE}/presets.py",
        "mapped = (2 * layer * target + span) // (2 * span)",
        "mapped = layer * target // span",
        (),
        "scale_layers floors instead of rounding half up",
    ),
    Mutant(
        "F32",
        f"{CORE}/presets.py",
        "HeroAllocator(density_weight=0.2, exact=False)",
        "HeroAllocator(density_weight=0.8, exact=False)",
        (),
        "reference preset's density prior weight 0.8 instead of 0.2",
    ),
    Mutant(
        "F33",
        f"{CORE}/presets.py",
        "any(layer >= depth for layer in pruner.layers)",
        "any(layer > depth for layer in pruner.layers)",
        (),
        "a layer equal to depth passes the preset's depth check",
    ),
    Mutant(
        "F34",
        f"{CORE}/efficiency.py",
        "+ 3 * n * d * m)",
        "+ 2 * n * d * m)",
        (),
        "prefill FLOPs count 2 MLP matrices, not SwiGLU's 3",
    ),
    Mutant(
        "F35",
        f"{CORE}/efficiency.py",
        "kv_hidden_size=hidden * kv_heads // heads",
        "kv_hidden_size=hidden * heads // kv_heads",
        (),
        "KV width of a grouped-query config inverted",
    ),
    Mutant(
        "F36",
        f"{CORE}/_make_tiles.py",
        'if view == thumbnail_index or padding == "none":',
        'if view == 0 or padding == "none":',
        (),
        "make_tiles pads the thumbnail when it is not view 0 (and leaves view 0 unpadded)",
    ),
    # ---------------------------------------------------------------- adapters: sequence surgery
    Mutant(
        "F37",
        f"{AD}/sequence.py",
        "prepend=torch.zeros(ids.shape[0], 1, dtype=torch.int8))\n"
        "    edges = torch.cat([edges, -is_image[:, -1:].to(torch.int8)], dim=1)",
        "prepend=torch.zeros(ids.shape[0], 1, dtype=torch.int8))\n"
        "    edges = torch.cat([edges, torch.zeros_like(edges[:, :1])], dim=1)",
        (),
        "placeholder_spans loses the end of a run that closes the prompt",
    ),
    Mutant(
        "F38",
        f"{AD}/sequence.py",
        "prepend=torch.zeros(is_image.shape[0], 1, dtype=torch.int8))\n"
        "    edges = torch.cat([edges, -is_image[:, -1:].to(torch.int8)], dim=1)",
        "prepend=torch.zeros(is_image.shape[0], 1, dtype=torch.int8))\n"
        "    edges = torch.cat([edges, torch.zeros_like(edges[:, :1])], dim=1)",
        (),
        "placeholder_runs loses a run that closes the prompt",
    ),
    Mutant(
        "F39",
        f"{AD}/sequence.py",
        "return [query[span.row] for span in spans]",
        "return [query[span.image] for span in spans]",
        (),
        "per-prompt queries indexed by image, not by prompt row (multi-image prompts)",
    ),
    Mutant(
        "F40",
        f"{AD}/sequence.py",
        "parts_lab.append(run[:1].expand(count))",
        "parts_lab.append(torch.full((count,), IGNORE_INDEX, dtype=run.dtype))",
        (),
        "an image run's labels always become -100, whatever single value the caller gave",
    ),
    Mutant(
        "F41",
        f"{AD}/sequence.py",
        "shared = ids.shape[1] - int(mask.sum(dim=1).max())",
        "shared = ids.shape[1] - int(mask.sum(dim=1).min())",
        (),
        "shared padding columns counted from the shortest prompt, not the longest",
    ),
    Mutant(
        "F42",
        f"{AD}/sequence.py",
        "position += int(layout_lengths[span.image])",
        "position += count",
        (),
        "original positions: text after an image continues from the kept count, not the layout length",
    ),
    Mutant(
        "F43",
        f"{AD}/sequence.py",
        "new_pos = torch.zeros((len(rows), width), dtype=torch.long)",
        "new_pos = torch.ones((len(rows), width), dtype=torch.long)",
        (),
        "position ids under padding 1 instead of the host's 0 (transformers 5; it wrote 1 before)",
    ),
    Mutant(
        "F44",
        f"{AD}/sequence.py",
        "prompt.repeat_interleave(generated.shape[0] // batch, dim=0)",
        "prompt.repeat(generated.shape[0] // batch, 1)",
        (),
        "splice tiles the prompts (a, b, a, b) instead of interleaving (a, a, b, b) for n returns",
    ),
    Mutant(
        "F45",
        f"{AD}/sequence.py",
        "if low < 0 or high >= vocab_size:",
        "if low < 0 or high > vocab_size:",
        (),
        "an id equal to vocab_size passes the vocabulary check",
    ),
    # ---------------------------------------------------------------- adapters: hosts
    Mutant(
        "F46",
        f"{AD}/hosts/_shared.py",
        "sent = is_newline | flat[source.clamp(min=0)]",
        "sent = flat[source.clamp(min=0)]",
        (),
        "assemble_source prunes newlines (a newline is sent only when patch 0 is kept)",
    ),
    Mutant(
        "F47",
        f"{AD}/hosts/_shared.py",
        'for name in ("pad_token_id", "eos_token_id"):',
        'for name in ("eos_token_id", "pad_token_id"):',
        (),
        "new padding uses eos before pad",
    ),
    Mutant(
        "F48",
        f"{AD}/hosts/_shared.py",
        "return (views.float() * s + m).clamp_(0.0, 1.0)",
        "return ((views.float() - m) / s).clamp_(0.0, 1.0)",
        (),
        "unnormalise normalises again instead of undoing (views for the scorer are wrong)",
    ),
    Mutant(
        "F49",
        f"{AD}/hosts/llava_next.py",
        "tile_grid = (int(grid[0]), int(grid[1])) if count > 1 else None",
        "tile_grid = (int(grid[1]), int(grid[0])) if count > 1 else None",
        (),
        "LLaVA-NeXT tile grid stored as (cols, rows)",
    ),
    Mutant(
        "F50",
        f"{AD}/hosts/llava_next.py",
        "view = 1 + (r // side) * cols + c // side",
        "view = 1 + (r // side) * rows + c // side",
        (),
        "reference layout: tile index uses the row count as stride (non-square grids)",
    ),
    Mutant(
        "F51",
        f"{AD}/hosts/llava_next.py",
        "index_fill_(0, sources[i] + 1, True)[1:]",
        "index_fill_(0, sources[i] + 1, True)[:-1]",
        (),
        "valid mask shifted by one position (the newline slot kept instead of dropped)",
    ),
    Mutant(
        "F52",
        f"{AD}/hosts/llava_next.py",
        "kept_patch_tokens=int(offsets.shape[0]) - newlines,",
        "kept_patch_tokens=int(offsets.shape[0]),",
        (),
        "LLaVA-NeXT counts newlines as kept patch tokens",
    ),
    Mutant(
        "F53",
        f"{AD}/hosts/internvl.py",
        "thumbnail = count - 1 if count > 1 else 0",
        "thumbnail = 0",
        (),
        "InternVL's thumbnail taken as view 0 (it is last)",
    ),
    Mutant(
        "F54",
        f"{AD}/hosts/internvl.py",
        "cols, rows = canvas((int(height), int(width)), tile, low, high)",
        "rows, cols = canvas((int(height), int(width)), tile, low, high)",
        (),
        "GotOcr2's (cols, rows) read as (rows, cols)",
    ),
    Mutant(
        "F55",
        f"{AD}/hosts/internvl.py",
        "sizes = [(int(image.size[1]), int(image.size[0])) for image in images]",
        "sizes = [(int(image.size[0]), int(image.size[1])) for image in images]",
        (),
        "PIL (width, height) passed as (height, width) image_sizes",
    ),
    Mutant(
        "F56",
        f"{AD}/hosts/llava_onevision.py",
        "embeddings = last.float().mean(dim=1)",
        "embeddings = last.float()[:, 0]",
        (),
        "SigLIP stand-in CLS = the first patch, not the mean token",
    ),
    Mutant(
        "F57",
        f"{AD}/hosts/llava_onevision.py",
        "return [c == 1 for c in counts for _ in range(c)]",
        "return [c >= 1 for c in counts for _ in range(c)]",
        (),
        "images of multi-image prompts treated as tiled",
    ),
    # ---------------------------------------------------------------- adapters: towers
    Mutant(
        "F58",
        f"{AD}/towers/hooks.py",
        'torch.einsum("bhqd,bhtd->bht", query, keys) * scale',
        'torch.einsum("bhqd,bhtd->bht", query, keys)',
        (),
        "recorded CLS row computed without the attention scale",
    ),
    Mutant(
        "F59",
        f"{AD}/towers/hooks.py",
        "return torch.softmax(logits, dim=-1)",
        "return torch.softmax(logits, dim=1)",
        (),
        "recorded CLS row softmaxed over heads instead of keys",
    ),
    Mutant(
        "F60",
        f"{AD}/towers/hooks.py",
        'if position == "first":\n            return rows[..., 1:]',
        'if position == "first":\n            return rows[..., :-1]',
        (),
        "patch_attention drops the last key instead of the CLS key",
    ),
    Mutant(
        "F61",
        f"{AD}/towers/hooks.py",
        "not 0 <= x < len(modules)]",
        "not 0 <= x <= len(modules)]",
        (),
        "a layer equal to the depth passes the hook's range check",
    ),
    # ---------------------------------------------------------------- adapters: scorers, pixels, rows
    Mutant(
        "F62",
        f"{AD}/pixels.py",
        "(x > 0 or not positive)",
        "(x >= 0 or not positive)",
        (),
        "a std of 0 accepted",
    ),
    Mutant(
        "F63",
        f"{AD}/text_scorers/_core.py",
        "query = F.normalize(query.to(work), dim=-1)",
        "query = query.to(work)",
        (),
        "text embedding not L2-normalised (scores are not cosines)",
    ),
    Mutant(
        "F64",
        f"{AD}/text_scorers/_core.py",
        "image = F.normalize(image.to(work), dim=-1)",
        "image = F.normalize(image.to(work), dim=0)",
        (),
        "image embeddings normalised across views instead of per view",
    ),
    Mutant(
        "F65",
        f"{AD}/text_scorers/_core.py",
        "(pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)",
        "(pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)",
        (),
        "'longest' padding: height padding applied to the width (F.pad's last-dim-first order)",
    ),
    Mutant(
        "F66",
        f"{AD}/text_scorers/_core.py",
        "height_is_short = h * target_w <= w * target_h",
        "height_is_short = h * target_w >= w * target_h",
        (),
        "resize picks the wrong limiting side for non-square views",
    ),
    Mutant(
        "F67",
        f"{AD}/text_scorers/transformers.py",
        "self.tokenizer(text, truncation=True, max_length=self.max_text_tokens",
        "self.tokenizer(text, truncation=False, max_length=self.max_text_tokens",
        (),
        "queries longer than CLIP's 77 tokens are not truncated",
    ),
    Mutant(
        "F68",
        f"{AD}/rows.py",
        "key = str(row.id)",
        "key = row.id",
        (),
        "ids 1 and '1' no longer count as duplicates",
    ),
    Mutant(
        "F69",
        f"{AD}/rows.py",
        'enumerate(raw.split(b"\\n"), start=1)',
        'enumerate(raw.split(b"\\n"), start=0)',
        (),
        "data-file line numbers in messages counted from 0",
    ),
    Mutant(
        "F70",
        f"{AD}/adapter.py",
        "return self.kept_patch_tokens + self.newline_tokens",
        "return self.kept_patch_tokens",
        (),
        "tokens_out forgets the newline tokens",
    ),
)


def refresh_map(tree: Path) -> None:
    """Run the mapped fast tests of ``tree`` (a copy of the project) under coverage with per-test contexts; store
    src line -> test functions. Test functions that fail unmutated (another change in progress) are left out."""
    MAP_DIR.mkdir(exist_ok=True)
    rc = MAP_DIR / "coveragerc"
    data = MAP_DIR / "coverage.data"
    rc.write_text(f"[run]\nsource = src\ndata_file = {data}\nbranch = false\n")
    for stale in MAP_DIR.glob("coverage.data*"):
        stale.unlink()
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--no-header",
        "-m",
        "not slow and not gpu",
        "--cov=src",
        f"--cov-config={rc}",
        "--cov-context=test",
        "--cov-report=",
        "-rfE",
        *MAP_TESTS,
        *(f"--ignore-glob={path}" for path in MAP_IGNORE),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=_environment(tree), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = done.stdout.strip().splitlines()[-1:] or [done.stderr[-500:]]
    print(f"coverage run: exit {done.returncode} in {seconds:.0f} s: {summary[0]}", flush=True)
    failing = sorted(
        {_test_function(line.split()[1]) for line in done.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))}
    )
    for test in failing:
        print(f"  left out of the map (fails unmutated): {test}", flush=True)
    import coverage  # pytest-cov brings it (not in the test extra yet: pip install pytest-cov)

    cov = coverage.Coverage(data_file=str(data))
    cov.load()
    covdata = cov.get_data()
    src = (tree / "src").resolve()
    lines: dict[str, dict[str, list[str]]] = {}
    for measured in covdata.measured_files():
        path = Path(measured).resolve()
        if src not in path.parents:
            continue
        by_line = covdata.contexts_by_lineno(measured)
        entry: dict[str, list[str]] = {}
        for line, contexts in by_line.items():
            tests = sorted({_test_function(c) for c in contexts if c} - set(failing))
            if tests:
                entry[str(line)] = tests
        lines[str(path.relative_to(src))] = entry
    MAP_FILE.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "tests": list(MAP_TESTS),
                "ignored": list(MAP_IGNORE),
                "pytest_exit": done.returncode,
                "seconds": round(seconds, 1),
                "failing": failing,
                "lines": lines,
            }
        )
    )
    print(f"map: {sum(len(v) for v in lines.values())} covered lines in {len(lines)} files -> {MAP_FILE}")


def _test_function(context: str) -> str:
    """'tests/x.py::Class::test_f[param]|run' -> 'tests/x.py::Class::test_f' (every parametrisation runs)."""
    node = context.split("|")[0]
    head, _, last = node.rpartition("::")
    return f"{head}::{last.split('[')[0]}" if head else node


def _snippet_lines(text: str, snippet: str) -> range:
    start = text.index(snippet)
    first = text.count("\n", 0, start) + 1
    return range(first, first + snippet.count("\n") + 1)


def lines_per_test(coverage_map: dict[str, dict[str, list[str]]]) -> dict[str, int]:
    """How many source lines each test function executes: the smaller, the more focused (and faster) it is."""
    sizes: dict[str, int] = {}
    for by_line in coverage_map.values():
        for tests in by_line.values():
            for test in tests:
                sizes[test] = sizes.get(test, 0) + 1
    return sizes


def covering_tests(
    mutant: Mutant, coverage_map: dict[str, dict[str, list[str]]], sizes: dict[str, int] | None, tree: Path = ROOT
) -> tuple[str, ...]:
    """The test functions that execute the mutant's lines, most focused first (``-x`` then stops sooner)."""
    text = (tree / "src" / mutant.file).read_text()
    anchor = ANCHORS.get(mutant.id, mutant.original)
    if text.count(anchor) != 1:
        return ()
    by_line = coverage_map.get(mutant.file, {})
    found: set[str] = set()
    for line in _snippet_lines(text, anchor):
        found.update(by_line.get(str(line), ()))
    sizes = sizes or {}
    return tuple(sorted(found, key=lambda test: (sizes.get(test, 0), test)))


def _mutants(tree: Path, selected: tuple[Mutant, ...]) -> tuple[tuple[Mutant, ...], list[str], dict[str, object]]:
    """The selected mutants with their covering tests (from the map), the stale snippets, and the map's header."""
    recorded = json.loads(MAP_FILE.read_text())
    coverage_map = recorded.pop("lines")
    stale = _check_snippets(tree, selected)
    stale += [
        f"{m.id}: its anchor is not found exactly once"
        for m in selected
        if m.id in ANCHORS and (tree / "src" / m.file).read_text().count(ANCHORS[m.id]) != 1
    ]
    sizes = lines_per_test(coverage_map)
    mutants = tuple(replace(m, tests=covering_tests(m, coverage_map, sizes, tree)) for m in selected)
    return mutants, stale, recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--refresh-map", action="store_true", help="recompute the line -> test map first")
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds per mutant (a timeout is a kill); default: 3 x the unmutated run of the mapped tests, >= 120",
    )
    args = parser.parse_args(argv)
    selected = tuple(m for m in FRESH if not args.only or m.id in args.only)
    if args.list:
        if not MAP_FILE.exists():
            print(f"no line -> test map at {MAP_FILE}: run with --refresh-map first", file=sys.stderr)
            return 2
        mutants, stale, _ = _mutants(ROOT, selected)
        for m in mutants:
            note = f"  [expected to survive: {m.survives}]" if m.survives else ""
            print(f"{m.id}  src/{m.file}: {m.what}  ({len(m.tests)} tests){note}")
        for problem in stale:
            print(f"stale: {problem}", file=sys.stderr)
        return 2 if stale else 0
    with tempfile.TemporaryDirectory(prefix="hero-mutants-fresh-") as temp:
        tree = Path(temp)
        _copy_tree(tree)  # one snapshot: the map, the baseline and every mutant see the same files
        if not _imports_the_copy(tree):
            return 2
        if args.refresh_map:
            refresh_map(tree)
        if not MAP_FILE.exists():
            print(f"no line -> test map at {MAP_FILE}: run with --refresh-map first", file=sys.stderr)
            return 2
        mutants, stale, recorded = _mutants(tree, selected)
        if stale:
            print("stale mutant list:\n  " + "\n  ".join(stale), file=sys.stderr)
            return 2
        union = tuple(sorted({t for m in mutants for t in m.tests}))
        if args.refresh_map:
            # the map was just made in this snapshot by a run of every mapped test (under coverage, so slower
            # than any subset of them unmutated); the tests that failed there are out of the map
            baseline = float(str(recorded["seconds"]))
            print(f"baseline: the coverage run of every mapped test took {baseline:.0f} s", flush=True)
        else:
            status, baseline, tail = _pytest(tree, union, 3600.0)
            print(f"baseline (no mutant, {len(union)} test functions): {status} in {baseline:.0f} s", flush=True)
            if status != "passed":
                print(f"the unmutated tests must pass first:\n{tail}", file=sys.stderr)
                return 2
        timeout = args.timeout or max(120.0, 3 * baseline)
        print(f"per-mutant timeout: {timeout:.0f} s (a timeout counts as a kill)", flush=True)
        results = []
        for m in mutants:
            if not m.tests:
                status, seconds, tail = "uncovered", 0.0, ""
            else:
                path = tree / "src" / m.file
                text = path.read_text()
                path.write_text(text.replace(m.original, m.replacement))
                try:
                    status, seconds, tail = _pytest(tree, m.tests, timeout)
                finally:
                    path.write_text(text)
            outcome = "killed" if status in ("failed", "timeout") else "survived"
            expected = "survived" if m.survives else "killed"
            failed = [line for line in tail.splitlines() if line.startswith(("FAILED", "ERROR"))][:3]
            results.append(
                {
                    **asdict(m),
                    "tests": len(m.tests),
                    "outcome": outcome,
                    "by": status,
                    "seconds": round(seconds, 1),
                    "first_failure": failed,
                }
            )
            flag = "" if outcome == expected else "   <-- UNEXPECTED"
            print(f"{m.id}  {outcome:8s} {status:9s} {seconds:6.1f} s  {m.what}{flag}", flush=True)
    killed = sum(r["outcome"] == "killed" for r in results)
    explained = [r for r in results if r["outcome"] == "survived" and r["survives"]]
    unexpected = [r for r in results if (r["outcome"] == "survived") != bool(r["survives"])]
    print(
        f"\nscore: {killed}/{len(results)} killed ({100 * killed / max(1, len(results)):.1f}%); "
        f"{len(explained)} survivor(s) explained as equivalent; {len(unexpected)} unexpected"
    )
    for r in results:
        if r["outcome"] == "survived":
            print(f"  {r['id']} survived ({r['by']}): src/{r['file']}: {r['what']}")
    if args.json is not None:
        machine = f"{platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "map": recorded,
                    "baseline_seconds": round(baseline, 1),
                    "timeout_seconds": timeout,
                    "results": results,
                },
                indent=1,
            )
        )
    return 1 if unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
