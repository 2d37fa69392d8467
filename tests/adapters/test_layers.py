"""Layers for any encoder: depth-scaled presets on the tiny hosts, the per-layer attention profile, the
two-stage boundary and the suggested layers, and ``hero layers``."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.cli import main
from hero_adapters.demo import draw_test_card
from hero_adapters.layers import (
    LayerProfile,
    high_norm_tokens,
    layer_profile,
    profile_attention,
    suggest_layers,
    two_stage_boundary,
)
from hero_core import HeroError, presets

from .hosts import host_row

HOSTS = ("llava_next", "internvl", "llava_onevision")
SINKS = (5, 40, 41)  # the "artifact" tokens of the planted second stage


def planted(depth: int, boundary: int, *, views: int = 3, heads: int = 4, tokens: int = 64, seed: int = 0):
    """(L, V, H, N) CLS attention with a two-stage pattern: layers ``0 .. boundary-1`` spread broadly over the
    tokens (random logits of small scale), layers ``boundary ..`` concentrated on the three ``SINKS``.
    The CLS key's column is dropped, as the adapters do (the rows then sum to a little under 1)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(depth, views, heads, tokens + 1, generator=generator) * 0.3
    logits[boundary:, :, :, [s + 1 for s in SINKS]] += 8.0
    return torch.softmax(logits, dim=-1)[..., 1:]


def planted_norms(views: int = 3, tokens: int = 64, seed: int = 1) -> torch.Tensor:
    """(V, N) feature norms near 1, with the sinks' norms ten times larger."""
    generator = torch.Generator().manual_seed(seed)
    norms = 1.0 + 0.05 * torch.randn(views, tokens, generator=generator)
    norms[:, list(SINKS)] = 10.0
    return norms


# ------------------------------------------------------------------------------------------ the analysis
@pytest.mark.parametrize(
    ("depth", "boundary"), [(6, 1), (6, 3), (6, 5), (12, 6), (12, 9), (24, 12), (24, 4), (27, 13), (32, 20)]
)
def test_a_planted_two_stage_pattern_is_recovered(depth, boundary):
    profile = profile_attention(planted(depth, boundary, seed=depth + boundary), norms=planted_norms())
    assert profile.layers == tuple(range(depth)) and len(profile.overlap) == depth - 1
    assert profile.boundary == boundary
    assert min(profile.entropy[:boundary]) > 0.9 > 0.5 > max(profile.entropy[boundary:])
    assert profile.high_norm_tokens == len(SINKS)  # the norm outliers are exactly the sinks
    share = profile.high_norm_share
    assert share is not None and min(share[boundary:]) > 0.9 and max(share[:boundary]) < 0.2
    late = [profile.overlap[i] for i in range(boundary, depth - 1)]
    early = [profile.overlap[i] for i in range(boundary - 1)]
    if late and early:  # consecutive late layers keep the sinks in their top-k; early ones share little
        assert min(late) > max(early)
    low, high = suggest_layers(profile)
    assert low and high and max(low) < boundary <= min(high) and max(high) < depth


def test_the_paper_boundary_gives_the_paper_layers():
    profile = profile_attention(planted(24, 12))
    assert profile.boundary == 12
    assert suggest_layers(profile) == ((5, 6, 7, 8), (21,))
    assert profile.suggest() == ((5, 6, 7, 8), (21,))
    assert profile.high_norm_share is None and profile.high_norm_tokens is None


@pytest.mark.parametrize(
    ("depth", "boundary", "low", "high"), [(12, 6, (2, 3, 4), (10,)), (27, 13, (5, 7, 8, 9), (24,))]
)
def test_the_suggestion_scales_each_stage(depth, boundary, low, high):
    # low: offsets 5-8 of the paper's 12-layer first stage scaled onto `boundary` layers; high: offset 9 of the
    # 12-layer second stage scaled onto the remaining `depth - boundary` layers (presets.scale_layers)
    assert suggest_layers(profile_attention(planted(depth, boundary))) == (low, high)
    assert low == presets.scale_layers((5, 6, 7, 8), boundary, reference_depth=12)
    assert high == tuple(boundary + x for x in presets.scale_layers((9,), depth - boundary, reference_depth=12))


def test_without_an_entropy_drop_the_paper_layers_are_scaled():
    attention = planted(12, 6).flip(0)  # concentrated first, broad later: no drop
    profile = profile_attention(attention)
    assert profile.boundary is None and profile.stage_entropy is None
    assert suggest_layers(profile) == ((2, 3, 4), (10,))
    assert profile.to_dict()["suggested"] == {"low_layers": [2, 3, 4], "high_layers": [10]}


def test_two_stage_boundary_is_the_least_squares_change_point():
    assert two_stage_boundary([0.9, 0.9, 0.2, 0.2]) == 2
    assert two_stage_boundary([0.9, 0.8, 0.85, 0.3, 0.25, 0.35]) == 3
    assert two_stage_boundary([0.5, 0.5, 0.5]) is None  # nothing drops
    assert two_stage_boundary([0.2, 0.9]) is None  # entropy rises
    assert two_stage_boundary([0.9]) is None and two_stage_boundary([]) is None
    assert two_stage_boundary([0.9, 0.9, 0.2, 0.3, 0.9]) == 2  # a mild late diffusion (paper: layers 21-23)


def test_statistics_are_the_documented_formulas():
    # one layer pair, one view of 10 tokens, two heads: the head mean is what is measured
    first = torch.tensor([[0.5, 0.5] + [0.0] * 8, [0.5, 0.5] + [0.0] * 8])
    second = torch.full((2, 10), 0.1)
    attention = torch.stack([first, second])[:, None]  # (2, 1, 2, 10)
    profile = profile_attention(attention, top_k_fraction=0.2)
    assert profile.entropy[0] == pytest.approx(math.log(2) / math.log(10))
    assert profile.entropy[1] == pytest.approx(1.0)
    # top-2 of layer 0 = {0, 1}; of the uniform layer 1 = {0, 1} (ties go to the lower position)
    assert profile.overlap == (pytest.approx(1.0),)
    # padding is left out and rows are renormalised over the valid tokens
    valid = torch.tensor([[True] * 5 + [False] * 5])
    padded = torch.stack([second, second])[:, None] * torch.tensor([1.0] * 5 + [9.0] * 5)  # mass on the padding
    masked = profile_attention(padded, valid=valid)
    assert masked.entropy == (pytest.approx(1.0), pytest.approx(1.0))


def test_images_are_averaged():
    a, b = planted(6, 2, views=2, seed=1), planted(6, 4, views=5, seed=2)
    both = profile_attention([a, b])
    one, two = profile_attention(a), profile_attention(b)
    for x, y, z in zip(both.entropy, one.entropy, two.entropy, strict=True):
        assert x == pytest.approx((y + z) / 2)
    assert both.num_images == 2 and both.num_views == 7


def test_high_norm_tokens_are_robust_outliers():
    norms = torch.tensor([[1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 8.0, math.nan], [2.0] * 8])
    valid = torch.tensor([[True] * 8, [True] * 7 + [False]])
    high = high_norm_tokens(norms, valid)
    assert high[0].tolist() == [False] * 6 + [True, False]  # NaN (no feature) is never high-norm
    assert not bool(high[1].any())  # all alike: no outlier
    norms[1, 7] = 50.0  # an outlier on a padded token does not count
    assert not bool(high_norm_tokens(norms, valid)[1].any())


def test_bad_input_is_a_hero_error():
    attention = planted(6, 3)
    with pytest.raises(HeroError, match="at least 2 layers"):
        profile_attention(attention[:1])
    with pytest.raises(HeroError, match="like image 0"):
        profile_attention([attention, attention[..., :10]])
    with pytest.raises(HeroError, match="every image or for none"):
        profile_attention([attention, attention], norms=[planted_norms(), None])
    with pytest.raises(HeroError, match="bool tensor"):
        profile_attention(attention, valid=torch.ones(3, 64))
    with pytest.raises(HeroError, match="non-negative"):
        profile_attention(attention - 1)
    with pytest.raises(HeroError, match="top_k_fraction"):
        profile_attention(attention, top_k_fraction=0)
    with pytest.raises(HeroError, match="one entry per image"):
        profile_attention([attention], valid=[None, None])
    with pytest.raises(HeroError, match="HostAdapter"):
        layer_profile(object(), {})


# ------------------------------------------------------------------------------------------ on the tiny hosts
def test_an_explicit_layer_the_encoder_lacks_names_its_depth():
    row = host_row("internvl")
    with pytest.raises(HeroError, match="6 layers"):
        HeroVLM(row.model, presets.hero(0.2, high_layers=(30,)), processor=row.processor)
    with pytest.raises(HeroError, match="6 layers"):  # with the depth given, already in the preset
        presets.hero(0.2, depth=6, high_layers=(30,))


@pytest.mark.parametrize("name", HOSTS)
def test_depth_scaled_presets_plan_on_every_host(name):
    row = host_row(name)
    inputs = row.inputs([row.text("USER: {} describe ASSISTANT:")], [row.image(40, 100)])
    adapter = HeroVLM(row.model, presets.uniform_strided(0.5), processor=row.processor).adapter
    assert adapter.num_layers == 6
    for preset in ("hero", "hero-reference", "cls-attention", "thumbnail-attention"):
        pruner = presets.get(preset, 0.2, depth=adapter.num_layers)
        assert all(0 <= layer < 6 for layer in pruner.layers)
        vlm = HeroVLM(row.model, pruner, processor=row.processor)
        extra = vlm.adapter.image_inputs([row.image(40, 100)]) if preset == "thumbnail-attention" else {}
        report = vlm.plan(**inputs, **extra)
        (image,) = report.images
        assert image.kept_patch_tokens == sum(image.budgets) > 0
    assert presets.hero(0.2, depth=6).layers == (1, 2, 5)


@pytest.mark.parametrize("name", HOSTS)
def test_layer_profile_end_to_end(name):
    row = host_row(name)
    vlm = HeroVLM(row.model, presets.hero(0.2, depth=6), processor=row.processor)
    images = [row.image(40, 100), row.image(90, 60, seed=3)]
    batches = [row.inputs([row.text("USER: {} describe ASSISTANT:")], [image]) for image in images]
    profile = layer_profile(vlm, batches)
    assert isinstance(profile, LayerProfile)
    assert profile.layers == tuple(range(6)) and profile.num_images == 2 and profile.num_tokens == row.tokens_per_view
    assert profile.query_source == ("mean-token" if name == "llava_onevision" else "cls")
    assert all(0.0 <= x <= 1.0 + 1e-6 for x in profile.entropy)
    assert all(0.0 <= x <= 1.0 + 1e-6 for x in profile.overlap)
    assert profile.high_norm_share is not None and all(0.0 <= x <= 1.0 + 1e-6 for x in profile.high_norm_share)
    low, high = profile.suggest()
    assert all(0 <= x < 6 for x in (*low, *high)) and set(low).isdisjoint(high)
    json.dumps(profile.to_dict())  # JSON-ready
    # the same numbers as the analysis of the adapter's own all-layer outputs, one image at a time
    encoded = [vlm.adapter.encode(dict(b), profile.layers)[0] for b in batches]  # input_ids give InternVL its runs
    direct = profile_attention([e.tiles.cls_attention for e in encoded], valid=[e.tiles.valid_mask for e in encoded])
    assert profile.entropy == pytest.approx(direct.entropy) and profile.overlap == pytest.approx(direct.overlap)


# ------------------------------------------------------------------------------------------ hero layers
def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hero_layers_refuses_bad_images_before_loading_the_model(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing_model = str(tmp_path / "no-model")  # never reached: the images are checked first
    for images, needle in (([empty], "folder with images"), ([text], "readable images"), ([tmp_path / "x"], "exist")):
        code, _, err = _main(capsys, "layers", "--model", missing_model, "--images", *map(str, images))
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hero: error: --images=") and needle in lines[0], err


def test_hero_layers_on_a_saved_checkpoint(tmp_path):
    row = host_row("llava_next")
    row.model.save_pretrained(tmp_path / "model")
    row.processor.save_pretrained(tmp_path / "model")
    folder = tmp_path / "photos"
    folder.mkdir()
    draw_test_card(120, 80).save(folder / "card.png")
    row.image(60, 90).save(folder / "noise.jpg")
    (folder / "readme.txt").write_text("skipped: not an image suffix")
    single = tmp_path / "one.png"
    draw_test_card(70, 140).save(single)
    out = tmp_path / "layers.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "hero_adapters.cli", "layers", "--model", str(tmp_path / "model"),
         "--images", str(folder), str(single), "--json", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "vision encoder of 6 layers" in result.stdout and "3 image(s)" in result.stdout
    assert "entropy" in result.stdout and "top-k overlap" in result.stdout and "high-norm share" in result.stdout
    payload = json.loads(out.read_text())
    profile = payload["profile"]
    assert len(payload["images"]) == 3 and profile["depth"] == 6 and len(profile["layers"]) == 6
    low, high = profile["suggested"]["low_layers"], profile["suggested"]["high_layers"]
    suggestion = f"--set low_layers={','.join(map(str, low))} --set high_layers={','.join(map(str, high))}"
    assert suggestion in result.stdout
    assert profile["layers"][-1]["topk_overlap_next"] is None
