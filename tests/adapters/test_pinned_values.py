"""Exact values where the plausible mistake gives another answer, on the adapters' side (issue 16, item 4).

Prompts that END with an image run, labels that are not the defaults, the thumbnail at the last view
(InternVL), hand-computed report and evaluation numbers, restore-on-exit where something was there before
(an instance ``generate``, the user's own hooks), nested scopes, and bounds on both sides. Expected values are
the host's own outputs, slow loops written here, or numbers worked out by hand in the comments; every test's
docstring names the mistakes it was seen to fail on (applied by hand to a scratch copy of the source).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM, cls_attention_hooks
from hero_adapters.report import ImageReport, PruneReport
from hero_adapters.sequence import IGNORE_INDEX, placeholder_runs, placeholder_spans, rebuild
from hero_core import HeroError, PrunePlan
from hero_core.testing import make_tiles

from .hosts import assert_same, generate, host_row

IMAGE = 99  # the placeholder id of the slow oracle (no tiny vocabulary has it)


# ------------------------------------------------------------------------- slow rebuild oracle
def _slow_rebuild(
    ids: list[list[int]], mask: list[list[int]], counts: list[int], kept: list[int], labels: list[list[int]] | None
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Walk each prompt token by token: padding dropped, image i's ``counts[i]`` placeholders replaced by
    ``kept[i]`` (labelled with the run's value), then left padding (pad 0, label -100) to the longest row plus the
    columns every row had as padding."""
    image = 0
    rows, row_labels = [], []
    for r, row in enumerate(ids):
        out, lab = [], []
        j = 0
        while j < len(row):
            if not mask[r][j]:
                j += 1
                continue
            if row[j] == IMAGE:
                value = labels[r][j] if labels is not None else None
                out += [IMAGE] * kept[image]
                lab += [value] * kept[image]
                j += counts[image]
                image += 1
                continue
            out.append(row[j])
            lab.append(labels[r][j] if labels is not None else None)
            j += 1
        rows.append(out)
        row_labels.append(lab)
    shared = len(ids[0]) - max(sum(m) for m in mask)
    width = max(len(r) for r in rows) + shared
    padded = [[0] * (width - len(r)) + r for r in rows]
    padded_labels = [[IGNORE_INDEX] * (width - len(r)) + r for r in row_labels] if labels is not None else None
    _slow_rebuild.mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]  # type: ignore[attr-defined]
    return padded, padded_labels


# ------------------------------------------------------------------ (c) prompts ending with images
def test_runs_at_the_end_of_the_prompt_are_found_split_and_shrunk() -> None:
    """Row 0 ends with a run of two images (3 + 2 placeholders), row 1 ends with one image after left padding,
    row 2 has its run in the middle. Kills: the closing edge after the last column dropped (a run that ends the
    prompt is never closed), the text after the last run cut one token short or dropped, the split of one run into
    images made from the right."""
    ids = [
        [5, 6, IMAGE, IMAGE, IMAGE, IMAGE, IMAGE],
        [0, 0, 0, 5, IMAGE, IMAGE, IMAGE],
        [0, 5, IMAGE, IMAGE, IMAGE, IMAGE, 7],
    ]
    mask = [[1] * 7, [0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1]]
    labels = [
        [11, 12, 3, 3, 3, 3, 3],
        [IGNORE_INDEX] * 3 + [15, 4, 4, 4],
        [IGNORE_INDEX, 16, 8, 8, 8, 8, 17],
    ]
    counts = [3, 2, 3, 4]
    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
    assert placeholder_runs(t_ids, t_mask, IMAGE) == [5, 3, 4]
    spans = placeholder_spans(t_ids, t_mask, IMAGE, counts)
    assert [(s.image, s.row, s.start, s.stop) for s in spans] == [
        (0, 0, 2, 5),
        (1, 0, 5, 7),
        (2, 1, 4, 7),
        (3, 2, 2, 6),
    ]
    for kept in ([3, 2, 3, 4], [1, 2, 0, 3], [0, 0, 1, 0]):
        got = rebuild(t_ids, t_mask, spans, kept, token_id=IMAGE, pad_id=0, labels=torch.tensor(labels))
        want_ids, want_labels = _slow_rebuild(ids, mask, counts, kept, labels)
        assert got.input_ids.tolist() == want_ids, kept
        assert got.labels is not None and got.labels.tolist() == want_labels, kept
        assert got.attention_mask.tolist() == _slow_rebuild.mask, kept  # type: ignore[attr-defined]
    full = rebuild(t_ids, t_mask, spans, counts, token_id=IMAGE, pad_id=0)
    assert full.input_ids.tolist() == ids  # at full counts the caller's own prompt, column for column


def test_generate_and_forward_on_prompts_ending_with_the_image(tiny: Any) -> None:
    """Two prompts whose last tokens are the image run (one left-padded): at keep ratio 1 HeroVLM.generate and
    forward are the host (sequences, logits); at 0.5 the LLM receives each prompt ending with exactly its image's
    kept count of placeholders. Kills: a run at the end of the prompt not found (the call then refuses or sends
    the whole run), the text before it dropped, the last token of the prompt lost in the rebuild."""
    texts = ["USER: describe the image <image>", "USER: a <image>"]
    images = [tiny.image(40, 100), tiny.image(90, 60)]
    inputs = tiny.inputs(texts, images)
    assert int(inputs["input_ids"][0, -1]) == int(inputs["input_ids"][1, -1]) == tiny.image_token_id
    full = HeroVLM(tiny.model, tiny.pruner(1.0))
    assert_same(generate(tiny.model, inputs), generate(full, inputs), atol=0)
    with torch.no_grad():
        host_logits = tiny.model(**inputs).logits
    assert torch.equal(full.forward(**inputs).logits, host_logits)

    seen: list[dict[str, Any]] = []
    handle = tiny.model.register_forward_pre_hook(lambda m, a, k: seen.append(k), with_kwargs=True)
    try:
        pruned = HeroVLM(tiny.model, tiny.pruner(0.5))
        pruned.generate(**inputs, max_new_tokens=1)
    finally:
        handle.remove()
    report = pruned.last_report
    assert report is not None
    sent = seen[0]["input_ids"]
    for row, image in enumerate(report.images):
        assert image.prompt == row and image.tokens_out < image.tokens_in
        tail = sent[row, -image.tokens_out - 1 :].tolist()
        assert tail[1:] == [tiny.image_token_id] * image.tokens_out and tail[0] != tiny.image_token_id
    ids = inputs["input_ids"].tolist()
    mask = inputs["attention_mask"].tolist()
    want, _ = _slow_rebuild(
        [[IMAGE if t == tiny.image_token_id else t for t in row] for row in ids],
        mask,
        [image.tokens_in for image in report.images],
        [image.tokens_out for image in report.images],
        None,
    )
    want = [[tiny.image_token_id if t == IMAGE else t for t in row] for row in want]
    pad = tiny.model.config.text_config.pad_token_id
    got = [
        [pad if not m else t for t, m in zip(row, mrow, strict=True)]
        for row, mrow in zip(sent.tolist(), seen[0]["attention_mask"].tolist(), strict=True)
    ]
    assert got == [[pad if t == 0 else t for t in row] for row in want]


# --------------------------------------------------------------------------- (d) non-default labels
def test_forward_with_labels_on_image_runs_and_text(tiny: Any) -> None:
    """Text labels are the token ids themselves (not -100) and each image run carries its own value, not -100
    (31 and 29: ids no text here uses). At keep ratio 1 the loss and logits are the host's with the same labels;
    at 0.5 the labels sent are the slow loop's (each shrunk run keeps its value, padding -100) and the loss is
    the host's on them. Kills: image runs relabelled -100, text labels replaced or shifted, new padding
    labelled with the pad id, labels dropped."""
    texts = ["USER: <image> describe the image ASSISTANT:", "USER: what is <image>"]
    images = [tiny.image(40, 100), tiny.image(50, 50)]
    inputs = tiny.inputs(texts, images)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX).clone()
    image_rows = ids == tiny.image_token_id
    labels[0][image_rows[0]] = 31
    labels[1][image_rows[1]] = 29
    with torch.no_grad():
        host = tiny.model(**inputs, labels=labels)
    ours = HeroVLM(tiny.model, tiny.pruner(1.0)).forward(**inputs, labels=labels)
    assert torch.equal(ours.logits, host.logits)
    torch.testing.assert_close(ours.loss, host.loss, rtol=0, atol=0)

    seen: list[dict[str, Any]] = []
    handle = tiny.model.register_forward_pre_hook(lambda m, a, k: seen.append(k), with_kwargs=True)
    try:
        vlm = HeroVLM(tiny.model, tiny.pruner(0.5))
        pruned = vlm.forward(**inputs, labels=labels)
    finally:
        handle.remove()
    report = vlm.last_report
    assert report is not None
    local = [[IMAGE if t == tiny.image_token_id else t for t in row] for row in ids.tolist()]
    _, want = _slow_rebuild(
        local,
        mask.tolist(),
        [i.tokens_in for i in report.images],
        [i.tokens_out for i in report.images],
        labels.tolist(),
    )
    assert seen[0]["labels"].tolist() == want
    assert want[0].count(31) == report.images[0].tokens_out and want[1].count(29) == report.images[1].tokens_out
    with torch.no_grad():
        manual = tiny.model(
            input_ids=seen[0]["input_ids"],
            attention_mask=seen[0]["attention_mask"],
            labels=torch.tensor(want),
            mm_encoder_outputs=seen[0]["mm_encoder_outputs"],
        )
    torch.testing.assert_close(pruned.loss, manual.loss, rtol=0, atol=0)


# ---------------------------------------------------- (a) the thumbnail last: InternVL's relevance
def test_internvl_scores_the_tiles_not_the_last_view_thumbnail() -> None:
    """InternVL puts the thumbnail LAST. The scorer must receive the K local tiles (views 0..V-2, in order), the
    relevance of view V-1 is 0 and reported as None. Kills: the tiles taken as views 1..V-1 (thumbnail-first), the
    scores written into the wrong views, the thumbnail's None placed at index 0."""
    row = host_row("internvl")
    inputs = row.inputs([row.text("USER: {} describe ASSISTANT:")], [row.image(40, 100)])
    received: list[torch.Tensor] = []

    def scorer(views: torch.Tensor, text: str, /) -> torch.Tensor:
        received.append(views.clone())
        return 0.1 * torch.arange(1, views.shape[0] + 1, dtype=torch.float32)

    vlm = HeroVLM(row.model, row.pruner(0.5, alpha=0.5), scorer, processor=row.processor)
    report = vlm.plan(**inputs, query="describe")
    image = report.images[0]
    views = image.views
    assert views >= 3 and image.encoded.thumbnail_index == views - 1
    with torch.inference_mode():
        encoded = vlm.adapter.encode(inputs, vlm.pruner.layers, runs=[image.tokens_in])[0]
    assert len(received) == 1 and torch.equal(received[0], encoded.views[: views - 1])
    expected = [0.1 * k for k in range(1, views)] + [0.0]
    assert image.relevance is not None
    torch.testing.assert_close(image.relevance, torch.tensor(expected), atol=1e-7, rtol=0)
    as_dict = image.to_dict()["relevance"]
    assert as_dict[-1] is None and all(isinstance(x, float) for x in as_dict[:-1])
    assert image.to_dict()["thumbnail_index"] == views - 1


# --------------------------------------------------------------------- (e) numbers, computed by hand
def _image_report(tokens_in: int, tokens_out: int, kept: int, newlines: int, thumb: int) -> ImageReport:
    tiles = make_tiles(num_views=3, grid=(2, 3), padding="cols", pad_amount=0.34, thumbnail_index=thumb)
    budgets = torch.tensor([2, 1, 3]) if thumb == 2 else torch.tensor([3, 2, 1])
    keep = torch.zeros(3, 6, dtype=torch.bool)
    plan = PrunePlan(keep=keep, budgets=budgets, importance=torch.tensor([0.25, 0.75, 0.0]), keep_ratio=0.4)
    return ImageReport(
        index=0,
        prompt=1,
        plan=plan,
        encoded=tiles,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        kept_patch_tokens=kept,
        newline_tokens=newlines,
        relevance=torch.tensor([0.5, 0.25, 0.0]),
    )


def test_report_numbers_are_the_hand_sums() -> None:
    """Image A: 20 in, 9 out (7 patches + 2 newlines), thumbnail at view 2; image B: 12 in, 12 out (10 + 2),
    thumbnail at 0. Totals 32 in, 21 out, 17 patches, 4 newlines, ratio 21 / 32 = 0.65625; A's ratio 0.45.
    Kills: a total summing the wrong field, the ratio inverted (in / out), the thumbnail's relevance None at view 0
    instead of its own index, valid counts read from the budgets."""
    a = _image_report(20, 9, 7, 2, thumb=2)
    b = _image_report(12, 12, 10, 2, thumb=0)
    report = PruneReport(images=[a, b], timings={"encode": 0.5, "plan": 0.25}, positions="original")
    summary = report.to_dict()
    assert {k: summary[k] for k in ("tokens_in", "tokens_out", "kept_patch_tokens", "newline_tokens")} == {
        "tokens_in": 32,
        "tokens_out": 21,
        "kept_patch_tokens": 17,
        "newline_tokens": 4,
    }
    assert summary["effective_ratio"] == 21 / 32 == 0.65625
    assert summary["timings"] == {"encode": 0.5, "plan": 0.25} and summary["positions"] == "original"
    first = summary["images"][0]
    assert first["effective_ratio"] == 0.45
    assert first["budgets"] == [2, 1, 3] and first["valid_tokens"] == [4, 4, 6]  # 3 cols, int(0.34 * 3) = 1 padded
    assert first["relevance"] == [0.5, 0.25, None] and first["thumbnail_index"] == 2
    assert summary["images"][1]["relevance"] == [None, 0.25, 0.0] and summary["images"][1]["valid_tokens"] == [6, 4, 4]
    assert first["importance"] == [0.25, 0.75, 0.0] and first["keep_ratio"] == pytest.approx(0.4)
    assert first["tile_grid"] == [1, 2] and first["views"] == 3
    assert PruneReport(images=[]).effective_ratio == 1.0
    assert _image_report(0, 0, 0, 0, thumb=0).effective_ratio == 1.0


def test_stage_timer_adds_the_time_of_a_stage_entered_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clock readings 0, 1 | 1, 3.5 | 10, 10.25: stage a = 1 + 0.25, b = 2.5. Kills: a repeated stage overwriting
    its earlier time, the time taken before the body ran."""
    from hero_adapters import _timing

    clock = iter([0.0, 1.0, 1.0, 3.5, 10.0, 10.25])
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: next(clock))
    timer = _timing.StageTimer("cpu")
    for name in ("a", "b", "a"):
        with timer.stage(name):
            pass
    assert timer.seconds == {"a": 1.25, "b": 2.5}


def test_evaluation_metrics_equal_the_hand_computed_values() -> None:
    """Four rows (answers "Red", none, "two", "the cat"); unpruned says "red.", "B.", "three", "The cat".
    Setting hero@0.2 says "red.", "b", "two", "dog": agreement 1/4 (exact text: "b" is not "B."); accuracy over
    the 3 answered rows 2/3 (the unpruned also 2/3); flips right->wrong 1 (row 3), wrong->right 1 (row 2); first
    divergence None, 5, 2 (the shorter's length), 0, median 2 (mean 2.33); tokens 75 -> 25; prefill 0.3 s
    unpruned / 0.075 s = 4.00x. Setting hero@0.5 agrees everywhere and has no prefill: speed-up None. Overhead
    (10 - 4) / 10 = 0.6, and 0 (not negative) when generate took longer than the loop.
    Kills: agreement on normalised answers, accuracy over all rows, flips swapped, divergence at the longer
    length, the mean for the median, tokens_in from the pruned counts, the speed-up inverted, the overhead
    unclamped."""
    from hero_adapters.evaluate.metrics import Evaluation, Tally, summarise
    from hero_adapters.rows import Row

    rows = [
        Row(id=i, image=Path("x.png"), prompt="q", answer=answer, line=i + 1)
        for i, answer in enumerate(["Red", None, "two", "the cat"])
    ]
    unpruned = Tally(
        texts=["red.", "B.", "three", "The cat"],
        ids=[[1, 2, 3], [4, 5, 6, 7, 8, 1], [6, 7, 8], [9]],
        tokens_in=[100, 100, 50, 50],
        tokens_out=[100, 100, 50, 50],
        prefill=[0.2, 0.4],
        seconds=3.0,
    )
    pruned = Tally(
        texts=["red.", "b", "two", "dog"],
        ids=[[1, 2, 3], [4, 5, 6, 7, 8, 2], [6, 7], [8]],
        tokens_in=[100, 100, 50, 50],
        tokens_out=[40, 30, 20, 10],
        prefill=[0.1, 0.05],
        seconds=0.5,
    )
    same = Tally(texts=list(unpruned.texts), ids=list(unpruned.ids), tokens_in=[100, 100, 50, 50], tokens_out=[60] * 4)
    evaluation = summarise(
        types.SimpleNamespace(source="tiny"),  # type: ignore[arg-type]
        "data.jsonl",
        rows,
        rows,
        ["hero"],
        [0.2, 0.5],
        {"hero": {"alpha": 0.7}},
        unpruned,
        [pruned, same],
        settings={"batch_size": 1},
        loop_seconds=10.0,
        generate_seconds=4.0,
        complete=True,
        error=None,
    )
    first, second = evaluation.results
    assert first.key == "hero@0.2" and second.key == "hero@0.5"
    assert first.agreement == 0.25 and second.agreement == 1.0
    assert first.accuracy == pytest.approx(2 / 3) and evaluation.unpruned["accuracy"] == pytest.approx(2 / 3)
    assert first.flips == {"right_to_wrong": 1, "wrong_to_right": 1}
    assert second.flips == {"right_to_wrong": 0, "wrong_to_right": 0}
    assert first.first_divergence == (None, 5, 2, 0) and second.first_divergence == (None,) * 4
    assert (first.tokens_in, first.tokens_out, second.tokens_out) == (75.0, 25.0, 60.0)
    assert evaluation.unpruned["tokens_in"] == 75.0
    assert first.prefill_seconds == pytest.approx(0.075) and evaluation.unpruned["prefill_seconds"] == pytest.approx(
        0.3
    )
    assert first.speedup == pytest.approx(4.0) and second.speedup is None
    assert first.generate_seconds == 0.5 and evaluation.unpruned["generate_seconds"] == 3.0
    assert evaluation.overhead == pytest.approx(0.6)
    assert [a.to_dict() for a in evaluation.answers][2] == {
        "id": 2,
        "line": 3,
        "answer": "two",
        "unpruned": "three",
        "pruned": {"hero@0.2": "two", "hero@0.5": "three"},
    }
    table = evaluation.table().splitlines()
    assert table[2] == "| unpruned | - | - | - | 66.7% of 3 | - | 75.0 -> 75.0 | 300.0 | 1.00x | 100.0% | 100.0% |"
    assert (
        table[3]
        == "| hero | 0.2 | 25.0% of 4 | 2 | 66.7% of 3 | 1 / 1 | 75.0 -> 25.0 | 75.0 | 4.00x | 25.0% | 100.0% |"
    )
    assert table[4] == "| hero | 0.5 | 100.0% of 4 | - | 66.7% of 3 | 0 / 0 | 75.0 -> 60.0 | - | - | 100.0% | 100.0% |"
    slow = Evaluation(**{**evaluation.__dict__, "loop_seconds": 2.0, "generate_seconds": 3.0})
    assert slow.overhead == 0.0
    assert Evaluation(**{**evaluation.__dict__, "loop_seconds": 0.0}).overhead is None


# -------------------------------------------------------- (f) restore what was there before, exactly
def test_attach_restores_a_generate_the_model_already_had(tiny: Any) -> None:
    """The model carries its own instance ``generate`` (a user's wrapper) before the block. Inside, the pruned
    call's host step goes through THAT generate; after the block, normal or raised, the very same object is back.
    Kills: the instance attribute popped on exit (the user's wrapper lost), the previous value read after the
    swap (the attachment's own function left behind), the class's generate called instead of the user's."""
    model = tiny.model
    inputs = tiny.inputs(["USER: <image> describe ASSISTANT:"], [tiny.image(40, 100)])
    calls: list[int] = []

    def users_generate(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return type(model).generate(model, *args, **kwargs)

    assert "generate" not in model.__dict__
    model.generate = users_generate
    try:
        expected = generate(model, inputs)
        calls.clear()
        vlm = HeroVLM(model, tiny.pruner(1.0))
        with vlm.attach() as attached:
            inside = generate(model, inputs)
        assert calls == [1] and len(attached.reports) == 1
        assert_same(expected, inside, atol=0)
        assert model.__dict__["generate"] is users_generate
        with pytest.raises(KeyError, match="on purpose"), vlm.attach():
            raise KeyError("on purpose")
        assert model.__dict__["generate"] is users_generate
    finally:
        model.__dict__.pop("generate", None)
    with vlm.attach():
        pass
    assert "generate" not in model.__dict__


def test_hooks_leave_the_users_own_hooks_exactly_as_they_were(tiny: Any) -> None:
    """The attention module of layer 1 already carries the user's pre-hook and forward hook. After a scope (normal
    or raised) the module's hook dicts are exactly the user's (same keys, same functions), which still fire; a hook
    the user adds INSIDE the scope stays. Kills: release clearing every hook of the module, removing by position
    (the last registered), or leaving ours."""
    from hero_adapters.towers import attention_modules

    tower = tiny.model.model.vision_tower
    module = attention_modules(tower)[0][1]
    fired: list[str] = []
    pre = module.register_forward_pre_hook(lambda m, a: fired.append("pre"))
    post = module.register_forward_hook(lambda m, a, o: fired.append("post"))
    added = None
    try:
        before = (dict(module._forward_pre_hooks), dict(module._forward_hooks))
        pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode(), cls_attention_hooks(tower, (1, 2)) as record:
            tower(pixel_values=pixels)
            added = module.register_forward_pre_hook(lambda m, a: fired.append("inside"))
        assert fired == ["pre", "post"] and len(record.rows[1]) == 1
        assert dict(module._forward_pre_hooks) == {**before[0], added.id: module._forward_pre_hooks[added.id]}
        added.remove()
        with pytest.raises(RuntimeError, match="on purpose"), torch.inference_mode(), cls_attention_hooks(tower, (1,)):
            raise RuntimeError("on purpose")
        assert (dict(module._forward_pre_hooks), dict(module._forward_hooks)) == before
        fired.clear()
        with torch.inference_mode():
            tower(pixel_values=pixels)
        assert fired == ["pre", "post"]
    finally:
        pre.remove()
        post.remove()
        if added is not None:
            added.remove()


# ------------------------------------------------------------------------------ (g) nested scopes
def test_nested_hook_scopes_each_record_their_own_calls(tiny: Any) -> None:
    """Outer scope on layer 1, inner on layers (1, 2): one tower call before, one inside, one after the inner.
    The outer records all 3 on layer 1, the inner exactly the 1 inside; after both, the module has no hook of ours.
    Kills: the inner exit removing the shared hook the outer still uses, the inner scope replacing the outer's
    recordings instead of adding to them, counts not reference-counted."""
    from hero_adapters.towers import attention_modules

    tower = tiny.model.model.vision_tower
    modules = attention_modules(tower)[0]
    counts = [len(m._forward_pre_hooks) for m in modules]
    pixels = [torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    with torch.inference_mode(), cls_attention_hooks(tower, (1,)) as outer:
        tower(pixel_values=pixels[0])
        with cls_attention_hooks(tower, (1, 2)) as inner:
            tower(pixel_values=pixels[1])
        tower(pixel_values=pixels[2])
    assert len(outer.rows[1]) == 3 and 2 not in outer.rows
    assert len(inner.rows[1]) == 1 and len(inner.rows[2]) == 1
    assert torch.equal(inner.rows[1][0], outer.rows[1][1])  # the same call, seen by both
    assert [len(m._forward_pre_hooks) for m in modules] == counts


def test_another_wrapper_and_a_plan_inside_an_attach_block_are_unchanged(tiny: Any) -> None:
    """Inside ``with a.attach()`` (a at keep ratio 1), wrapper b (keep ratio 0.5) generates exactly as outside the
    block (its host step is the host's original generate, not a's), a's attachment records nothing for it, and a
    plan made inside the block equals one made outside. Two guards route b's host step (``host_generate``'s lookup
    of the attachment, and the per-thread ``host_call`` depth that sends calls made inside a host step to the
    original): removing either ALONE is equivalent here (the other still routes it). Kills: ``host_generate``
    returning the attached generate together with the depth check or ``host_call`` gone."""
    inputs = tiny.inputs(["USER: <image> describe ASSISTANT:"], [tiny.image(90, 60)])
    a = HeroVLM(tiny.model, tiny.pruner(1.0))
    b = HeroVLM(tiny.model, tiny.pruner(0.5))
    outside = generate(b, inputs)
    plan_outside = b.plan(**inputs).to_dict()
    with a.attach() as attached:
        inside = generate(b, inputs)
        plan_inside = b.plan(**inputs).to_dict()
        nested = generate(tiny.model, inputs)  # the attached call itself, once
    assert_same(outside, inside, atol=0)
    assert {k: v for k, v in plan_inside.items() if k != "timings"} == {
        k: v for k, v in plan_outside.items() if k != "timings"
    }
    assert len(attached.reports) == 1 and attached.reports[0].tokens_out == attached.reports[0].tokens_in
    assert_same(generate(tiny.model, inputs), nested, atol=0)


# ------------------------------------------------------------------------------ (h) bounds, each side
def test_encoder_layers_at_depth_minus_one_and_depth(tiny: Any) -> None:
    """The tiny tower has 6 layers: 0 and 5 are layers, 6 and -1 are not, both for HeroVLM and for the hooks.
    Kills: ``<=`` for ``<`` at the depth, a negative layer accepted (Python would index from the end)."""
    tower = tiny.model.model.vision_tower
    HeroVLM(tiny.model, tiny.pruner(0.5, low_layers=(0,), high_layers=(5,)))
    with pytest.raises(HeroError, match=r"\[0, 5\]"):
        HeroVLM(tiny.model, tiny.pruner(0.5, low_layers=(0,), high_layers=(6,)))
    with torch.inference_mode(), cls_attention_hooks(tower, (0, 5)) as record:
        tower(pixel_values=torch.zeros(1, 3, 56, 56))
    assert record.layers == (0, 5)
    for bad in (6, -1):
        with pytest.raises(HeroError, match="attention layers"), cls_attention_hooks(tower, (bad,)):
            pass


def test_the_smallest_ratio_sends_only_the_newlines(tiny: Any) -> None:
    """At a keep ratio whose floor keeps no patch token, every image sends only its newline tokens (never
    pruned), and generate still runs; the report says 0 patches. Kills: newlines pruned with the patches, a
    ratio floor that rounds up to one token per view."""
    inputs = tiny.inputs(["USER: <image> describe ASSISTANT:"], [tiny.image(40, 100)])
    vlm = HeroVLM(tiny.model, tiny.pruner(0.001))
    out = vlm.generate(**inputs, max_new_tokens=2, do_sample=False)
    report = vlm.last_report
    assert report is not None and out.shape[1] == inputs["input_ids"].shape[1] + 2
    image = report.images[0]
    assert image.kept_patch_tokens == 0 and image.budgets == [0] * image.views
    assert image.tokens_out == image.newline_tokens > 0
