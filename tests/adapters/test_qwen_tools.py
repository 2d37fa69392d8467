"""The tools on the Qwen hosts (issue 19, item 5): ``hero run`` / ``show`` / ``eval``, the picture, ``attach()``, the
lmms-eval plugin's refusal and the command line's one-line errors, on tiny Qwen2.5-VL and Qwen3-VL checkpoints the
tests save themselves (the rows of tests/adapters/hosts.py).

A Qwen image is ONE view of ``h w / 4`` merged tokens (``image_grid_thw`` = (1, h, w) patches): the numbers the
tests expect come from the processor's grid and ``Pruner.kept_count``, never from the code under test.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from hero_adapters import HeroVLM
from hero_adapters.adapter import get_adapter, preset_options
from hero_adapters.testing import hook_snapshot
from hero_core import HeroError, ImageCounts, presets

from .hosts import QWEN_TAG, HostRow, host_row
from .test_cli import LAYERS, counting_loads, main, save_checkpoint
from .test_lmms_manifest import FakeLlavaHf, stub_lmms_eval  # noqa: F401  (the fixture, used by name)

QWEN = ("qwen2_5_vl", "qwen3_vl")
RATIO = 0.5
#: hero-native over 2 x 2 regions: several regions on the tiny images' grids.
NATIVE = ["--preset", "hero-native", "--set", "region=2", *LAYERS]
EVAL_PRESETS = ("hero-native", "cls-attention", "uniform-strided")


@pytest.fixture(scope="module", params=QWEN)
def qwen(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The host row, its checkpoint (model + processor saved), the test card, two more images and a data file."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    row = host_row(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    files: dict[str, Any] = save_checkpoint(folder, row)
    images = [("card", files["image"]), ("wide", folder / "wide.png"), ("tall", folder / "tall.png")]
    row.image(40, 100).save(folder / "wide.png")
    row.image(90, 60).save(folder / "tall.png")
    prompts = ["what is in this picture", "describe the image", "compare two"]
    lines = [{"id": name, "image": str(path), "prompt": p} for (name, path), p in zip(images, prompts, strict=True)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {**files, "row": row, "name": request.param, "images": [p for _, p in images], "data": folder / "rows.jsonl"}


def _tokens_in(row: HostRow, path: Path) -> int:
    """Merged tokens of one image from the processor's own grid: ``t h w / 4`` (2 x 2 merge)."""
    from PIL import Image

    with Image.open(path) as image:
        grid = row.processor(images=[image.convert("RGB")], text=[row.text("{} x")], return_tensors="pt")
    (t, h, w) = grid["image_grid_thw"][0].tolist()
    return int(t * h * w) // 4


def _kept(row: HostRow, preset: str, ratio: float, tokens: int) -> int:
    """The count ``Pruner.kept_count`` fixes for a one-view image of ``tokens`` merged tokens."""
    options = preset_options(get_adapter(row.model, processor=row.processor))
    return presets.get(preset, ratio, **options).kept_count(ImageCounts(1, tokens, tokens))


def _one_view_picture(path: Path) -> tuple[int, int]:
    """The picture's size, checked to be the one-view layout (no thumbnail panel beside: at most 672 + 32 wide)."""
    from PIL import Image

    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.size[0] <= 672 + 32 < 672 + 336  # a tiled host's picture has the thumbnail panel beside
        return picture.size


# ------------------------------------------------------------------------------------------------ run, show
@pytest.mark.parametrize("preset", ["hero", "hero-native"])
def test_run_answers_with_the_exact_counts_and_draws_the_picture(qwen, preset, capsys) -> None:
    row, folder = qwen["row"], qwen["dir"]
    out_json, out_png = folder / f"run-{preset}.json", folder / f"run-{preset}.png"
    flags = NATIVE if preset == "hero-native" else LAYERS
    code = main("run", "--model", qwen["model"], "--image", qwen["image"], "--prompt", "what is it ?",
                "--keep-ratio", RATIO, "--max-new-tokens", "3", "--json", out_json, "--show", out_png,
                *flags)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"answer ({preset}, keep ratio 0.5):" in captured.out
    unit = "region" if preset == "hero-native" else "tile"  # hero-native ranks regions of the one view
    assert f"hero: note: no --clip given: {unit} budgets come from visual saliency alone" in captured.err
    tokens_in = _tokens_in(row, qwen["image"])
    kept = _kept(row, preset, RATIO, tokens_in)
    assert 0 < kept < tokens_in
    payload = json.loads(out_json.read_text())
    assert payload["preset"] == preset
    report = payload["report"]
    assert (report["tokens_in"], report["tokens_out"]) == (tokens_in, kept)
    (image,) = report["images"]
    assert image["views"] == 1 and image["thumbnail_index"] == 0 and image["tile_grid"] is None
    assert image["budgets"] == [kept] and image["kept_patch_tokens"] == kept and image["newline_tokens"] == 0
    assert image["valid_tokens"] == [tokens_in] and image["view_boxes"] == [[0.0, 0.0, 1.0, 1.0]]
    assert f"image tokens: {tokens_in} -> {kept} ({kept} patch + 0 newline)" in captured.out
    rows = [line.split() for line in captured.out.splitlines()]
    views = [row[0] for row in rows if len(row) > 1 and row[0] in ("image", "thumbnail") and row[1].isdigit()]
    assert views == ["image"]  # the table's one row names the one view, not a thumbnail beside no tiles
    _one_view_picture(out_png)


@pytest.mark.parametrize("preset", ["hero", "hero-native"])
def test_show_writes_the_picture_the_layer_strip_and_the_plan(qwen, preset, capsys) -> None:
    row, folder = qwen["row"], qwen["dir"]
    out, out_json = folder / f"show-{preset}.png", folder / f"show-{preset}.json"
    flags = NATIVE if preset == "hero-native" else LAYERS
    code = main("show", "--model", qwen["model"], "--image", qwen["image"], "--prompt", "describe",
                "--keep-ratio", RATIO, "--out", out, "--json", out_json, "--layers", *flags)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    strip = out.with_name(out.stem + "_layers.png")
    for path in (out, strip, out_json):
        assert f"wrote {path}" in captured.out
    tokens_in = _tokens_in(row, qwen["image"])
    report = json.loads(out_json.read_text())["report"]
    assert (report["tokens_in"], report["tokens_out"]) == (tokens_in, _kept(row, preset, RATIO, tokens_in))
    _one_view_picture(out)
    from PIL import Image

    with Image.open(strip) as picture:  # one map per layer of the 6-layer tower
        assert picture.format == "PNG" and picture.size[0] > 6 * 100


def _edge_share(picture: np.ndarray, column: int, top: int, bottom: int) -> float:
    """The share of the rows ``top:bottom`` where the columns around ``column`` hold a border: a black and a white
    pixel side by side (a region edge is black, white, black; a crossing edge's black rows are black throughout)."""
    strip = picture[top:bottom, column - 3 : column + 3].astype(int)
    black, white = strip.max(axis=-1) <= 10, strip.min(axis=-1) >= 245
    return float((black.any(axis=1) & white.any(axis=1)).mean())


def test_the_picture_marks_kept_tokens_on_the_image_and_outlines_hero_natives_regions(qwen) -> None:
    """One view: the kept tokens are drawn on the large image (no thumbnail panel); hero-native's regions get
    borders (black and white lines) along their edges in the token grid."""
    from PIL import Image

    from hero_adapters.visualize import _plan_layout, render_plan

    row = qwen["row"]
    with Image.open(qwen["image"]) as opened:
        image = opened.convert("RGB")
    inputs = row.inputs([row.text("USER: {} describe ASSISTANT:")], [image])
    vlm = HeroVLM(row.model, row.pruner(RATIO), processor=row.processor)  # hero-native, 2 x 2 regions
    report = vlm.plan(**inputs).images[0]
    regions = report.plan.regions
    assert len(regions) > 1
    layout = _plan_layout(image.size, report)
    picture = np.asarray(render_plan(image, report))
    assert picture.shape[1] == layout.size[0] == layout.panel[2] + 16  # one panel, no thumbnail beside
    x0, y0, x1, y1 = layout.views[0]
    rows, cols = layout.grid
    assert (rows, cols) == tuple(report.encoded.grid)
    inner = [c for _, c0, _, c1 in regions for c in (c0, c1) if 0 < c < cols]
    assert inner, regions  # a region edge inside the image
    column = int(np.round(np.linspace(x0, x1, cols + 1))[inner[0]])
    assert _edge_share(picture, column, y0 + 40, y1 - 4) > 0.9  # below the labels, along the edge
    # The same plan without regions (the paper preset) draws no such edge inside the image.
    plain = HeroVLM(row.model, row.pruner(RATIO, "hero"), processor=row.processor).plan(**inputs).images[0]
    drawn = np.asarray(render_plan(image, plain))
    assert _edge_share(drawn, column, y0 + 40, y1 - 4) < 0.5
    for shown in (picture, drawn):  # kept tokens outlined in magenta on the image itself
        assert (shown[y0:y1, x0:x1] == (255, 0, 255)).all(axis=-1).any()


# --------------------------------------------------------------------------------------------------- eval
def test_eval_sends_equal_counts_per_image_and_agrees_at_keep_ratio_1(qwen, capsys) -> None:
    row, out = qwen["row"], qwen["dir"] / "eval.json"
    code = main("eval", "--model", qwen["model"], "--data", qwen["data"], "--presets", *EVAL_PRESETS,
                "--keep-ratios", "1", RATIO, "--max-new-tokens", "3", "--set", "region=2", "--json", out)  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = [line for line in captured.out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 1 + 2 * len(EVAL_PRESETS) and table[2].startswith("| unpruned |")
    assert f"wrote {out}" in captured.out
    payload = json.loads(out.read_text())
    assert payload["complete"] is True and payload["rows"] == 3
    tokens = [_tokens_in(row, path) for path in qwen["images"]]
    assert payload["unpruned"]["tokens_in"] == pytest.approx(sum(tokens) / 3)
    for result in payload["results"]:
        ratio = result["keep_ratio"]
        expected = [_kept(row, result["preset"], ratio, n) for n in tokens]  # per image, the same for every preset
        assert expected == [_kept(row, "uniform-strided", ratio, n) for n in tokens]
        assert result["tokens_in"] == pytest.approx(sum(tokens) / 3)
        assert result["tokens_out"] == pytest.approx(sum(expected) / 3)
        if ratio == 1:
            assert expected == tokens and result["agreement"] == 1.0
            assert result["first_divergence"] == [None, None, None]
    for answer in payload["answers"]:  # identity rows answer as the host does
        for preset in EVAL_PRESETS:
            assert answer["pruned"][f"{preset}@1"] == answer["unpruned"]
    # Per image, what each preset's plan sends (the rows' images, planned one by one): the same count.
    from PIL import Image

    options = preset_options(get_adapter(row.model, processor=row.processor))
    for path, n in zip(qwen["images"], tokens, strict=True):
        with Image.open(path) as opened:
            inputs = row.inputs([row.text("USER: {} x ASSISTANT:")], [opened.convert("RGB")])
        sent = set()
        for preset in EVAL_PRESETS:
            pruner = presets.get(preset, RATIO, **options, **({"region": 2} if preset == "hero-native" else {}))
            report = HeroVLM(row.model, pruner, processor=row.processor).plan(**inputs)
            assert report.tokens_in == n
            sent.add(report.tokens_out)
        assert sent == {_kept(row, "hero-native", RATIO, n)}


# ------------------------------------------------------------------------------------------------- attach
def _answer(target: Any, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = target.generate(**inputs, max_new_tokens=3, do_sample=False)
    return out


def test_model_generate_inside_attach_equals_vlm_generate_and_the_model_is_restored(qwen) -> None:
    row = qwen["row"]
    inputs = row.batch()  # one image, two images, none
    vlm = HeroVLM(row.model, row.pruner(RATIO), processor=row.processor)
    direct = _answer(vlm, inputs)
    assert vlm.last_report is not None and vlm.last_report.tokens_out < vlm.last_report.tokens_in
    before, attributes, plain = hook_snapshot(row.model), dict(vars(row.model)), _answer(row.model, inputs)
    with vlm.attach() as attached:
        assert "generate" in vars(row.model)
        inside = _answer(row.model, inputs)
    assert torch.equal(inside, direct)
    assert attached.reports[0].tokens_out == vlm.last_report.tokens_out
    assert hook_snapshot(row.model) == before and vars(row.model).keys() == attributes.keys()
    assert torch.equal(_answer(row.model, inputs), plain)  # the host answers as before the block
    identity = HeroVLM(row.model, row.pruner(1.0), processor=row.processor)
    with identity.attach():
        same = _answer(row.model, inputs)
    assert torch.equal(same, plain)
    assert "generate" not in vars(row.model)


def test_a_pipeline_inside_attach_is_pruned(qwen) -> None:
    transformers = pytest.importorskip("transformers")
    row = qwen["row"]
    pipe = transformers.pipeline("image-text-to-text", model=row.model, processor=row.processor)
    image, text = row.image(40, 100), row.text("USER: {} describe the image ASSISTANT:")
    settings = {"max_new_tokens": 3, "do_sample": False}
    vlm = HeroVLM(row.model, row.pruner(RATIO), processor=row.processor)
    with vlm.attach() as attached:
        answer = pipe(images=image, text=text, generate_kwargs=settings, return_full_text=False)
    (report,) = attached.reports
    assert report.tokens_out == _kept(row, "hero-native", RATIO, report.tokens_in) < report.tokens_in
    inputs = row.inputs([text], [image])
    direct = _answer(vlm, inputs)
    expected = row.processor.decode(direct[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer[0]["generated_text"].strip() == expected.strip()


# -------------------------------------------------------------------------------------------- lmms plugin
def test_lmms_plugin_refuses_a_qwen_checkpoint_before_anything_loads(qwen, stub_lmms_eval) -> None:  # noqa: F811
    """The plugin wraps lmms-eval's ``llava_hf``, which does not load Qwen-VL: refused from the config, naming the
    model type, the types it serves and the ``attach()`` route."""
    FakeLlavaHf.host = qwen["row"]
    lmms = importlib.import_module("hero_adapters.lmms")
    with pytest.raises(HeroError) as info:
        lmms.HeroLmms(pretrained=str(qwen["model"]), preset="hero-native", keep_ratio=RATIO, device="cpu")
    message = str(info.value)
    assert f"model_type='{qwen['name']}'" in message and "['llava_next', 'llava_onevision']" in message
    assert "Qwen2.5-VL or Qwen3-VL" in message and "attach()" in message
    assert FakeLlavaHf.built == []


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("command", "extra", "needle"),
    [
        ("run", ["--preset", "hero-native", "--set", "region=0"], "--set region=0 is invalid"),
        ("show", ["--preset", "hero-native", "--set", "global_share=1"], "--set global_share=1 is invalid"),
        ("run", ["--set", "region=2"], "--set region=2"),  # the paper preset has no region field
        ("run", ["--preset", "hero-native", "--set", "low_layers=6"], "[0, 5]"),  # the 6-layer tower
        ("eval", ["--presets", *EVAL_PRESETS, "--set", "region=0"], "--set region=0 is invalid"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_the_weights_load(qwen, capsys, command, extra, needle) -> None:
    if command == "eval":
        args = ["eval", "--model", qwen["model"], "--data", qwen["data"], "--keep-ratios", RATIO]
    else:
        args = [command, "--model", qwen["model"], "--image", qwen["image"], "--prompt", "x", "--keep-ratio", RATIO]
        if command == "show":
            args += ["--out", qwen["dir"] / "never.png"]
    before = sorted(p.name for p in qwen["dir"].iterdir())
    with counting_loads() as loads:
        code = main(*args, *extra)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith("hero: error:") and needle in line, line
    assert loads == [] and sorted(p.name for p in qwen["dir"].iterdir()) == before


def test_the_processors_own_placeholder_in_a_prompt_is_refused_before_the_weights_load(qwen, capsys) -> None:
    with counting_loads() as loads:
        code = main("run", "--model", qwen["model"], "--image", qwen["image"], "--prompt", f"{QWEN_TAG} what")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--prompt=" in line and "<|image_pad|>" in line and loads == []
