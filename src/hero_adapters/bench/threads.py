"""Two threads sharing one model: the cost of HERO's per-call hook recordings under concurrency.

A server shares one host model between requests. HERO's CLS-attention hooks are shared and reference-counted,
and each call records only its own tower calls (a context variable), so two ``HeroVLM`` wrappers on one model
can plan from two threads at once. This times, in one run, on the demo-size LLaVA-NeXT (the real 336-px tile
geometry, 5 views of 576 tokens for a 672 x 672 image, a narrow 24-layer CLIP tower; random weights):

  - (a) one thread: ``--calls`` calls of ``HeroVLM.plan`` (encode under the hooks + plan);
  - (b) two threads at once, each making ``--calls`` calls with its own wrapper (keep ratios 0.2 and 0.3): twice the
    work.

and records (b) / (a) (target: at most 2.2, i.e. twice the work in at most 2.2x the time: the hooks add no
serialisation of their own) and that every threaded plan equals its single-thread plan. Medians of
``--repeats`` rounds, the two modes alternating. Results: threads.json + threads.md in ./hero-bench-results,
or --out DIR; --write-results updates the checkout's tracked benchmarks/results instead.

Usage: hero bench threads [--calls 4] [--repeats 3] [--out DIR | --write-results]
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from hero_core import presets

from .._progress import progress
from ._common import HelpFormatter, Parser, add_output_options, machine, now, output_folder, write_results


def main(argv: Sequence[str] | None = None) -> None:
    parser = Parser(prog="hero bench threads", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--calls", type=int, default=4, help="plan calls per thread per round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of both modes (median)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        parser.error("--calls and --repeats must be >= 1")
    folder = output_folder(args.out, args.write_results)  # checked before the model is built

    from PIL import Image

    from ..testing import build_llava_next
    from ..vlm import HeroVLM

    host = build_llava_next()
    image = Image.new("RGB", (672, 672))
    image.paste(Image.effect_noise((672, 672), 64).convert("RGB"))
    inputs = dict(host.processor(images=[image], text=["USER: <image> describe ASSISTANT:"], return_tensors="pt"))
    wrappers = [
        HeroVLM(host.model, presets.hero(0.2), processor=host.processor),
        HeroVLM(host.model, presets.hero(0.3), processor=host.processor),  # the same hooks, another budget
    ]
    alone = [vlm.plan(**inputs).to_dict()["images"] for vlm in wrappers]  # also the warm-up

    def calls(vlm: HeroVLM, out: list[Any]) -> None:
        for _ in range(args.calls):
            out.append(vlm.plan(**inputs).to_dict()["images"])

    def one_thread() -> list[list[Any]]:
        out: list[Any] = []
        calls(wrappers[0], out)
        return [out]

    def two_threads() -> list[list[Any]]:
        outs: list[list[Any]] = [[], []]
        threads = [threading.Thread(target=calls, args=(vlm, out)) for vlm, out in zip(wrappers, outs, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outs

    times: dict[str, list[float]] = {"a_one_thread": [], "b_two_threads": []}
    same = True
    for round_ in progress(range(args.repeats), desc="bench threads"):
        order = ("a_one_thread", "b_two_threads") if round_ % 2 == 0 else ("b_two_threads", "a_one_thread")
        for mode in order:
            start = time.perf_counter()
            outs = one_thread() if mode == "a_one_thread" else two_threads()
            times[mode].append(time.perf_counter() - start)
            same = same and all(plan == alone[i] for i, out in enumerate(outs) for plan in out)
    a, b = statistics.median(times["a_one_thread"]), statistics.median(times["b_two_threads"])
    ratio = b / a
    print(
        f"one thread, {args.calls} plans: {a:.3f} s   two threads, {args.calls} plans each: {b:.3f} s   "
        f"(b)/(a) {ratio:.3f} (target <= 2.2: {'met' if ratio <= 2.2 else 'NOT met'})   "
        f"threaded plans equal single-thread plans: {same}"
    )
    payload = {
        "benchmark": "bench_threads",
        "what": "HeroVLM.plan on one shared demo-size LLaVA-NeXT: one thread vs two threads with their own wrappers "
        "(twice the work), medians of alternating rounds",
        "settings": {"calls": args.calls, "repeats": args.repeats, "torch_threads": torch.get_num_threads()},
        "machine": machine(torch.device("cpu")),
        "measured_at": now(),
        "seconds": times,
        "ratio": ratio,
        "same_plans": same,
        "target": "(b)/(a) <= 2.2 and same plans",
        "met": ratio <= 2.2 and same,
    }
    table = [
        "| mode | median (s) |",
        "|---|---|",
        f"| (a) one thread, {args.calls} plans | {a:.3f} |",
        f"| (b) two threads, {args.calls} plans each | {b:.3f} |",
        "",
        f"(b) / (a) = {ratio:.3f} (target <= 2.2); threaded plans equal single-thread plans: {same}.",
    ]
    print("wrote", write_results("threads", payload, table, folder))
