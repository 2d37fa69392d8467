"""The real path end to end: the host's own ``model.generate`` against ``HeroVLM.generate``, side by side in one run.

A LLaVA-NeXT host and a CLIP relevance scorer are built in-process from configs (random weights; nothing is
downloaded), at ``--size``:

- ``7b`` (default on CUDA): LLaVA-NeXT-7B's shape, CLIP ViT-L/14-336 (24 layers) and Vicuna-7B (32 layers,
  d 4096), bf16, with a real-size CLIP ViT-L/14-336 scorer;
- ``narrow`` (default on CPU): the same geometry (336-px views, patch 14, 24 vision layers, so the same token
  counts and the preset's layers) at width 64, and a 4-layer LLaMA of width 512;
- ``tiny``: test-size, seconds.

Rows, each at batch 1 (a 672 x 672 image: 2 x 2 tiles + the base view) and batch 8 (eight images of different
shapes and token counts): ``model.generate``; ``HeroVLM`` with ``presets.hero`` at every ``--keep-ratios``; and the
baselines (``--baselines``) at ``--baseline-ratio``. HERO's scorer runs on the query (the score stage is real).

A Qwen2.5-VL host (``--hosts``; one view per image at native resolution, no tiles) follows with its own rows:
``model.generate`` and ``HeroVLM`` with ``presets.hero_native`` (``preset_options(adapter)``: the tower's depth and
full-attention blocks) at every ``--keep-ratios``, scored by the same CLIP scorer (one crop per region). Sizes: ``7b``
Qwen2.5-VL-7B's vision tower and Qwen2.5-7B's LLM shape (28 layers, d 3584, GQA 28 / 4), bf16; ``narrow`` the same
tower geometry (patch 14, 112-px windows, 32 blocks, full attention at 7, 15, 23, 31) at width 64 and a 4-layer LLM
of width 512; ``tiny`` for tests. Batch 1 is a 1008 x 672 image (48 x 72 patches, 864 image tokens), batch 8 that
one and seven of the LLaVA rows' shapes. No baselines there (``thumbnail-attention`` needs tiles) and no concurrency
(the host caches its M-RoPE ``rope_deltas`` on the model, so even its own ``generate`` cannot share one model across
threads).
Per row:

- TTFT: ``generate(max_new_tokens=1)``, median of ``--repeats`` (batch > 1: half of them, at least one);
- end to end: ``--new-tokens`` greedy tokens (``min_new_tokens`` too: no early stop), seconds and tokens/s;
- speed-up of TTFT against ``model.generate`` measured in the same run;
- peak memory: CUDA ``torch.cuda.max_memory_allocated``, reset per row; not measured on CPU;
- HERO's stages from the call's report (``report.timings``): encode (the host's tower under HERO's hooks: the host
  runs that tower too), score, plan, assemble; and score + plan + assemble as a share of the row's TTFT (the
  issue's target: at most 10%).

Identity at keep ratio 1 is CHECKED for every host and batch size: ``HeroVLM`` with ``presets.hero(1.0)``
(Qwen2.5-VL: ``presets.hero_native(1.0)``) must give the
same tokens as ``model.generate`` and raw logits equal within ``--atol`` (``output_logits`` /
``return_dict_in_generate``). A failure marks the table and the record, and the command exits with an error after
writing them.

Concurrency: ``--threads`` threads share the one model, each sending ``--requests`` batch-1 requests (the eight
shapes in turn, ``--new-tokens`` tokens each); requests/s and p50 / p99 latency, HERO at ``--baseline-ratio``
against the host.

Results: ``e2e-<device>.json`` + ``.md`` (``-<size>`` added for a size that is not the device's default) in
./hero-bench-results, or --out DIR; --write-results updates the checkout's tracked benchmarks/results and
benchmarks/README.md instead.

Usage: hero bench e2e [--device auto|cpu|cuda] [--dtype ...] [--size 7b|narrow|tiny] [--hosts llava-next qwen2.5-vl]
                      [--repeats N]
                      [--new-tokens 16] [--batches 1 8] [--threads 4] [--requests N] [--out DIR | --write-results]
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hero_core import HeroError, presets

from .._progress import progress
from ._common import HelpFormatter, Parser, add_output_options, machine, now, output_folder, pick_device, sync
from ._common import write_results as _write
from ._e2e_setup import QUERY, SIZES, Setup, build, build_qwen, image_tokens

STAGES = ("encode", "score", "plan", "assemble")
HERO_OWN = ("score", "plan", "assemble")  # encode is the host's own tower (under the hooks)
SHARE_TARGET = 0.10
HOST = "model.generate"
#: ``--hosts``: the host name in the record, and the preset its HERO rows use.
HOSTS = {"llava-next": ("LLaVA-NeXT", "hero"), "qwen2.5-vl": ("Qwen2.5-VL", "hero-native")}


def parse(argv: Sequence[str] | None) -> Any:
    parser = Parser(prog="hero bench e2e", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="weights (default: bfloat16 on CUDA, else float32)"
    )
    parser.add_argument("--size", choices=list(SIZES), help="model size (default: 7b on CUDA, narrow on CPU)")
    parser.add_argument(
        "--hosts", nargs="+", choices=list(HOSTS), default=list(HOSTS), help="hosts whose rows run (LLaVA-NeXT first)"
    )
    parser.add_argument("--repeats", type=int, help="timed calls per row (default: 3 on CUDA, 2 on CPU)")
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens of the end-to-end run")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (1 to 8)")
    parser.add_argument("--keep-ratios", type=float, nargs="+", default=[1.0, 0.4, 0.2, 0.1], help="HERO's ratios")
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=["cls-attention", "uniform-strided", "thumbnail-attention"],
        choices=sorted(name for name in presets.PRESETS if name != "hero"),
        help="presets timed at --baseline-ratio",
    )
    parser.add_argument("--baseline-ratio", type=float, default=0.2, help="keep ratio of the baselines and threads")
    parser.add_argument("--threads", type=int, default=4, help="concurrency: threads sharing the model (0: skip)")
    parser.add_argument("--requests", type=int, help="concurrency: requests per thread (default: 4 CUDA, 2 CPU)")
    parser.add_argument("--atol", type=float, help="identity: max |logit diff| (default: 1e-4 float32, 2e-2 half)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if not all(1 <= n <= 8 for n in args.batches):
        parser.error(f"--batches must lie in [1, 8], not {args.batches}")
    if not all(0 < ratio <= 1 for ratio in [*args.keep_ratios, args.baseline_ratio]):
        parser.error("--keep-ratios and --baseline-ratio must lie in (0, 1]")
    if 1.0 not in args.keep_ratios:
        parser.error("--keep-ratios must include 1 (the identity check)")
    for name in ("repeats", "requests"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.new_tokens < 2 or args.threads < 0 or (args.atol is not None and not args.atol >= 0):  # NaN too
        parser.error("--new-tokens must be >= 2, --threads >= 0, --atol >= 0")
    return args


# ------------------------------------------------------------------------------------------------ one row
def _preset(setup: Setup) -> str:
    """The preset of the host's HERO rows: ``hero``; ``hero-native`` on Qwen2.5-VL (one view, no tiles)."""
    return next(preset for host, preset in HOSTS.values() if host == setup.host)


def _settings(args: Any, setup: Setup) -> list[tuple[str, str | None, float | None]]:
    """(label, preset, keep ratio) of every row of the host; the host's own generate first."""
    rows: list[tuple[str, str | None, float | None]] = [(HOST, None, None)]
    preset = _preset(setup)
    label = "HERO" if preset == "hero" else "HERO-native"
    rows += [(f"{label} R = {r:g}", preset, r) for r in args.keep_ratios]
    if preset == "hero":  # the baselines on the tiled host (thumbnail-attention needs tiles)
        rows += [(f"`{name}` R = {args.baseline_ratio:g}", name, args.baseline_ratio) for name in args.baselines]
    return rows


def _vlm(setup: Setup, preset: str, ratio: float) -> Any:
    from .. import get_adapter
    from ..adapter import preset_options
    from ..vlm import HeroVLM

    adapter = get_adapter(setup.model, processor=setup.processor)
    pruner = presets.get(preset, ratio, **preset_options(adapter))
    return HeroVLM(setup.model, pruner, setup.scorer, adapter=adapter)


def _caller(setup: Setup, preset: str | None, ratio: float | None) -> tuple[Callable[..., Any], Any]:
    """(generate(inputs, **kwargs), the HeroVLM or None): the host's own generate, or HeroVLM's with the query."""
    if preset is None or ratio is None:

        def host(inputs: dict[str, Any], **kwargs: Any) -> Any:
            with torch.inference_mode():
                return setup.model.generate(**inputs, **kwargs)

        return host, None
    vlm = _vlm(setup, preset, ratio)

    def hero(inputs: dict[str, Any], **kwargs: Any) -> Any:
        return vlm.generate(**inputs, query=QUERY, **kwargs)

    return hero, vlm


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure_row(
    setup: Setup, label: str, preset: str | None, ratio: float | None, batch: int, args: Any, device: torch.device
) -> dict[str, Any]:
    inputs = setup.batches[batch]
    generate, vlm = _caller(setup, preset, ratio)
    greedy = {"do_sample": False}
    n = args.new_tokens
    repeats = args.repeats if batch == 1 else max(1, args.repeats // 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    generate(inputs, max_new_tokens=1, **greedy)  # warm-up (lazy host hooks, kernels, CUDA graphs of the scorer)
    ttft: list[float] = []
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for _ in range(repeats):
        ttft.append(_timed(lambda: generate(inputs, max_new_tokens=1, **greedy), device))
        if vlm is not None and vlm.last_report is not None:
            timings = dict(vlm.last_report.timings.items())
            for stage in STAGES:
                if stage in timings:  # score: only where the preset reads relevance and does not keep all
                    stages[stage].append(float(timings[stage]))
    e2e = [
        _timed(lambda: generate(inputs, max_new_tokens=n, min_new_tokens=n, **greedy), device) for _ in range(repeats)
    ]
    tokens = image_tokens(setup, inputs)
    if vlm is not None and vlm.last_report is not None:
        tokens = int(vlm.last_report.tokens_out)
    row: dict[str, Any] = {
        "host": setup.host,
        "setting": label,
        "preset": preset,
        "keep_ratio": ratio,
        "batch": batch,
        "image_tokens": tokens,
        "ttft_s": statistics.median(ttft),
        "ttft_runs_s": [round(s, 5) for s in ttft],
        "e2e_s": statistics.median(e2e),
        "new_tokens": n,
        "tokens_per_s": batch * n / statistics.median(e2e),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    if vlm is not None:
        row["stages_s"] = {stage: statistics.median(times) for stage, times in stages.items() if times}
        row["hero_s"] = sum(row["stages_s"].get(stage, 0.0) for stage in HERO_OWN)
        row["hero_share_of_ttft"] = row["hero_s"] / row["ttft_s"]
    return row


# ------------------------------------------------------------------------------------------------ identity
def check_identity(setup: Setup, batch: int, args: Any, atol: float) -> dict[str, Any]:
    """HeroVLM at keep ratio 1 against ``model.generate``: the same tokens, raw logits within ``atol``."""
    inputs = setup.batches[batch]
    settings = {
        "max_new_tokens": min(args.new_tokens, 4),
        "do_sample": False,
        "output_logits": True,
        "return_dict_in_generate": True,
    }
    host, _ = _caller(setup, None, None)
    hero, _ = _caller(setup, _preset(setup), 1.0)
    want, got = host(inputs, **settings), hero(inputs, **settings)
    same = bool(torch.equal(want.sequences, got.sequences))
    steps = min(len(want.logits), len(got.logits))
    pairs = zip(want.logits[:steps], got.logits[:steps], strict=True)
    diff = max((float((a.float() - b.float()).abs().max()) for a, b in pairs), default=0.0)
    ok = same and len(want.logits) == len(got.logits) and diff <= atol
    return {
        "host": setup.host,
        "batch": batch,
        "new_tokens": settings["max_new_tokens"],
        "tokens_equal": same,
        "max_abs_logit_diff": diff,
        "atol": atol,
        "passed": ok,
    }


# ------------------------------------------------------------------------------------------------ concurrency
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the sorted values."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_concurrency(setup: Setup, preset: str | None, ratio: float | None, args: Any, requests: int) -> Any:
    """``args.threads`` threads on the one model, each with its own caller (HeroVLM wrapper), batch-1 requests."""
    callers = [_caller(setup, preset, ratio)[0] for _ in range(args.threads)]
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    n = args.new_tokens

    def work(index: int) -> None:
        try:
            for j in range(requests):
                inputs = setup.singles[(index + j) % len(setup.singles)]
                start = time.perf_counter()
                callers[index](inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
                with lock:
                    latencies.append(time.perf_counter() - start)
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)

    for inputs in setup.singles:  # every request shape once before the clock: kernels, the scorer's graph per size
        callers[0](inputs, max_new_tokens=1, do_sample=False)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(args.threads)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {
        "setting": HOST if preset is None else f"HERO R = {ratio:g}",
        "threads": args.threads,
        "requests": len(latencies),
        "new_tokens": n,
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
    }


# ------------------------------------------------------------------------------------------------ table
def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{1e3 * seconds:.1f}"


def table_lines(record: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    identity = record["identity"]
    if not all(check["passed"] for check in identity):
        lines += ["**IDENTITY CHECK FAILED: HeroVLM at keep ratio 1 is not model.generate (see below).**", ""]
    n = record["settings"]["new_tokens"]
    hosts = list(dict.fromkeys(row.get("host", "LLaVA-NeXT") for row in record["rows"]))
    for host_name, batch in [(host_name, batch) for host_name in hosts for batch in record["settings"]["batches"]]:
        rows = [row for row in record["rows"] if row["batch"] == batch and row.get("host", "LLaVA-NeXT") == host_name]
        image = "one 1008 x 672 image" if host_name == "Qwen2.5-VL" else "one 672 x 672 image"
        title = "" if hosts == ["LLaVA-NeXT"] else f"{host_name}, "
        lines += [
            f"#### {title}Batch {batch}" + (f" ({image})" if batch == 1 else f" ({batch} images, different shapes)"),
            "",
            f"| setting | image tokens | TTFT ms | speed-up | {n} new tokens, s | tokens/s | peak GiB | "
            "encode ms | score ms | plan ms | assemble ms | HERO % of TTFT |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        host = rows[0]["ttft_s"]
        for row in rows:
            stages = row.get("stages_s", {})
            share = row.get("hero_share_of_ttft")
            peak = "n/m" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
            lines.append(
                f"| {row['setting']} | {row['image_tokens']} | {_ms(row['ttft_s'])} | {host / row['ttft_s']:.2f}x | "
                f"{row['e2e_s']:.2f} | {row['tokens_per_s']:.1f} | {peak} | "
                + " | ".join(_ms(stages.get(stage)) for stage in STAGES)
                + f" | {'–' if share is None else f'{100 * share:.1f}%'} |"
            )
        lines.append("")
    shares = [row["hero_share_of_ttft"] for row in record["rows"] if _pruned_hero(row)]
    verdict = (
        f" HERO's pruned rows: {100 * min(shares):.1f}% to {100 * max(shares):.1f}% "
        f"({'met' if record['met'] else 'NOT met'})."
        if shares
        else ""
    )
    lines += [
        "HERO % of TTFT = (score + plan + assemble) / TTFT; encode is the host's own vision tower under HERO's hooks. "
        f"Target: at most {100 * SHARE_TARGET:.0f}%.{verdict}"
        + (" Peak memory is not measured on CPU (n/m)." if record["machine"]["device"] == "cpu" else ""),
        "",
        "| identity at keep ratio 1 | new tokens | tokens equal | max abs logit diff | atol | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {_host_label(c, hosts)}batch {c['batch']} | {c['new_tokens']} | {c['tokens_equal']} | "
        f"{c['max_abs_logit_diff']:.2e} | {c['atol']:g} | {'passed' if c['passed'] else '**FAILED**'} |"
        for c in identity
    ]
    if record.get("concurrency"):
        first = record["concurrency"][0]
        lines += [
            "",
            f"Concurrency: {first['threads']} threads share the one model, each sending batch-1 requests of "
            f"{first['new_tokens']} new tokens (the eight shapes in turn)"
            + (
                "; LLaVA-NeXT only (Qwen2.5-VL caches its M-RoPE rope_deltas on the model, so one model cannot serve "
                "two threads, the host's own generate included):"
                if "Qwen2.5-VL" in hosts
                else ":"
            ),
            "",
            "| setting | requests | requests/s | p50 latency s | p99 latency s |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['setting']} | {c['requests']} | {c['requests_per_s']:.2f} | {c['p50_s']:.2f} | {c['p99_s']:.2f} |"
            for c in record["concurrency"]
        ]
    return lines


def _host_label(check: dict[str, Any], hosts: list[str]) -> str:
    """``"Qwen2.5-VL, "`` before an identity check's batch where the record has more than LLaVA-NeXT."""
    return "" if hosts == ["LLaVA-NeXT"] else f"{check.get('host', 'LLaVA-NeXT')}, "


def _pruned_hero(row: dict[str, Any]) -> bool:
    """A HERO row below keep ratio 1 (``hero`` or ``hero-native``): the rows the 10% target is about."""
    return row["preset"] in ("hero", "hero-native") and row["keep_ratio"] < 1


# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    folder = output_folder(args.out, args.write_results)  # checked before any model is built
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    size = SIZES[args.size or ("7b" if cuda else "narrow")]
    dtype_name = args.dtype or ("bfloat16" if cuda else "float32")
    dtype = getattr(torch, dtype_name)
    args.repeats = args.repeats or (3 if cuda else 2)
    requests = args.requests or (4 if cuda else 2)
    atol = args.atol if args.atol is not None else (1e-4 if dtype == torch.float32 else 2e-2)
    batches = sorted(set(args.batches))
    setup = build(size, device, dtype, batches)  # the scorer is built with it, and shared
    setups = [setup] if "llava-next" in args.hosts else []
    if "qwen2.5-vl" in args.hosts:
        setups.append(build_qwen(size, setup.scorer, device, dtype, batches))
    identity = [check_identity(each, batch, args, atol) for each in setups for batch in batches]
    rows = [
        measure_row(each, label, preset, ratio, batch, args, device)
        for each, batch, (label, preset, ratio) in progress(
            [(each, batch, setting) for each in setups for batch in batches for setting in _settings(args, each)],
            desc="bench e2e",
        )
    ]
    concurrency = []
    if args.threads and "llava-next" in args.hosts:
        for preset, ratio in progress([(None, None), ("hero", args.baseline_ratio)], desc="bench e2e: threads"):
            concurrency.append(measure_concurrency(setup, preset, ratio, args, requests))
    passed = all(check["passed"] for check in identity)
    pruned = [row for row in rows if _pruned_hero(row)]
    record: dict[str, Any] = {
        "benchmark": "bench_e2e",
        "what": "model.generate vs HeroVLM.generate end to end: "
        + "; ".join(each.title or size.title for each in setups)
        + f"; random {dtype_name} weights; "
        f"TTFT = generate(max_new_tokens=1), median of {args.repeats} (batch > 1: {max(1, args.repeats // 2)})",
        "machine": machine(device),
        "measured_at": now(),
        "settings": {
            "size": size.name,
            "hosts": [each.host for each in setups],
            "dtype": dtype_name,
            "repeats": args.repeats,
            "new_tokens": args.new_tokens,
            "batches": batches,
            "keep_ratios": args.keep_ratios,
            "baselines": args.baselines,
            "baseline_ratio": args.baseline_ratio,
            "query": QUERY,
        },
        "identity": identity,
        "identity_passed": passed,
        "rows": rows,
        "concurrency": concurrency,
        "target": f"HERO's stages (score + plan + assemble) <= {SHARE_TARGET:.0%} of the pruned TTFT",
        "met": bool(pruned) and all(row["hero_share_of_ttft"] <= SHARE_TARGET for row in pruned),
    }
    table = table_lines(record)
    name = f"e2e-{device.type}" + ("" if size.name == ("7b" if cuda else "narrow") else f"-{size.name}")
    path = _write(name, record, table, folder)
    print("\n".join(table))
    print("wrote", path)
    if not passed:
        raise HeroError.field(
            "bench e2e identity at keep ratio 1",
            [check for check in identity if not check["passed"]],
            "HeroVLM(presets.hero(1.0)).generate = model.generate (tokens equal, logits within atol)",
            f"The table in {path} is marked; HERO changed the host's output at keep ratio 1.",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
