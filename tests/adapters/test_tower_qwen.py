"""Qwen2.5-VL / Qwen3-VL tower recipes: packed calls, rotary q/k, window and full-attention segments.

The oracle is written here: a pre-hook captures each attention module's packed inputs, q / k / v come from
the module's own ``qkv`` and ``apply_rotary_pos_emb_vision``, the stand-in query (mean of the segment's
rotated queries) is appended to each segment's queries, and a plain softmax per segment gives its row.
The same loop also rebuilds the module's output (softmax(Q K^T) V per segment, then ``proj``), which must
equal what the module returned (to 1e-5: eager's softmax runs in float32), so the oracle's q, k and segments
are the module's. Towers run in float64 and the oracle's rows in float64, so the only gap left is the
recipe's own float32 arithmetic (well under 1e-6).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from hero_adapters.towers import (
    attention_modules,
    cls_attention_hooks,
    full_attention_layers,
    tower_recipe,
    unpermute_windows,
)
from hero_core import HeroError

qwen2_5 = pytest.importorskip("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")
qwen3 = pytest.importorskip("transformers.models.qwen3_vl.modeling_qwen3_vl")
qwen3_moe = pytest.importorskip("transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe")
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig  # noqa: E402
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig  # noqa: E402
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeVisionConfig  # noqa: E402
from transformers.vision_utils import get_vision_window_index  # noqa: E402

# Two images of different non-square grids, packed: 8 x 12 and 4 x 6 patches (t = 1).
GRID = torch.tensor([[1, 8, 12], [1, 4, 6]])
FIRST = 8 * 12  # image 1's tokens; window_index keeps the images in order, so they come first
TOKENS = FIRST + 4 * 6
IMAGE_BOUNDS = [0, FIRST, TOKENS]
PATCH_FEATURES = 3 * 2 * 14 * 14
TOL = 1e-6


def _pixels(seed: int = 0) -> Tensor:
    return torch.randn(TOKENS, PATCH_FEATURES, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _peaked(tower: nn.Module, seed: int) -> nn.Module:
    """Random weights with q / k large enough for peaked (not uniform) rows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in tower.named_parameters():
            if name.endswith("attn.qkv.weight"):
                parameter.copy_(torch.randn(parameter.shape, dtype=parameter.dtype) * 0.4)
    return tower.eval()


def _qwen2_5(**options: Any) -> nn.Module:
    settings: dict[str, Any] = {
        "depth": 4,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
        "out_hidden_size": 32,
        "fullatt_block_indexes": [1, 3],
        "window_size": 56,  # 56 px // 14 px // merge 2 = 2 x 2 merge groups: windows of 4 x 4 patches
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    } | options
    config = Qwen2_5_VLVisionConfig(**settings)
    torch.manual_seed(3)
    model = qwen2_5.Qwen2_5_VisionTransformerPretrainedModel._from_config(
        config, attn_implementation="eager", dtype=torch.float64
    )
    return _peaked(model, 3)


def _qwen3(moe: bool = False) -> nn.Module:
    settings: dict[str, Any] = {
        "depth": 4,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
        "out_hidden_size": 32,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [1, 2],
    }
    config_class, model_class = (
        (Qwen3VLMoeVisionConfig, qwen3_moe.Qwen3VLMoeVisionModel)
        if moe
        else (Qwen3VLVisionConfig, qwen3.Qwen3VLVisionModel)
    )
    torch.manual_seed(5)
    model = model_class._from_config(config_class(**settings), attn_implementation="eager", dtype=torch.float64)
    return _peaked(model, 5)


def _window_bounds() -> list[int]:
    _, bounds = get_vision_window_index(GRID, spatial_merge_size=2, window_size=56, patch_size=14)
    return [int(b) for b in bounds]


def _hook_counts(module: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in module.modules()]


def _capture(tower: nn.Module, layers: tuple[int, ...], pixels: Tensor) -> dict[int, dict[str, Any]]:
    """Each layer's packed call (hidden, cu_seqlens, position_embeddings) and output, with hooks of our own."""
    seen: dict[int, dict[str, Any]] = {}
    modules = attention_modules(tower)[0]
    handles = []
    for layer in layers:

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], layer: int = layer) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            seen[layer] = {
                "hidden": hidden.clone(),
                "bounds": [int(b) for b in kwargs["cu_seqlens"]],
                "embeddings": tuple(e.clone() for e in kwargs["position_embeddings"]),
            }

        def post(module: nn.Module, args: Any, output: Tensor, layer: int = layer) -> None:
            seen[layer]["output"] = output.clone()

        handles.append(modules[layer].register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(modules[layer].register_forward_hook(post))
    try:
        with torch.no_grad():
            tower(pixels, grid_thw=GRID)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _oracle(module: Any, call: dict[str, Any], bounds: list[int]) -> tuple[Tensor, Tensor]:
    """(H, S) float64 stand-in rows within each segment of ``bounds``, and the module's output rebuilt."""
    hidden = call["hidden"]
    cos, sin = call["embeddings"]
    tokens, heads = hidden.shape[0], module.num_heads
    with torch.no_grad():
        q, k, v = module.qkv(hidden).reshape(tokens, 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = qwen2_5.apply_rotary_pos_emb_vision(q, k, cos, sin)
        rows = torch.zeros(heads, tokens, dtype=torch.float64)
        outputs = []
        for start, stop in itertools.pairwise(bounds):
            queries = torch.cat([q[start:stop], q[start:stop].mean(0, keepdim=True)])  # the stand-in appended
            logits = torch.einsum("qhd,khd->hqk", queries.double(), k[start:stop].double()) * module.scaling
            probabilities = torch.softmax(logits, dim=-1)  # (H, n + 1, n)
            rows[:, start:stop] = probabilities[:, -1]
            outputs.append(torch.einsum("hqk,khd->qhd", probabilities[:, :-1], v[start:stop].double()))
        rebuilt = module.proj(torch.cat(outputs).reshape(tokens, -1).to(hidden.dtype))
    return rows, rebuilt


def _segment_sums(rows: Tensor, bounds: list[int]) -> Tensor:
    """(G, ..., H) sums of (..., H, S) rows over each segment."""
    return torch.stack([rows[..., a:b].sum(-1) for a, b in itertools.pairwise(bounds)])


# ------------------------------------------------------------------------------------------- Qwen2.5-VL
def test_qwen2_5_full_and_window_rows_equal_the_oracle() -> None:
    tower = _qwen2_5()
    layers = (0, 1, 2, 3)
    pixels = _pixels()
    modules, recipe = attention_modules(tower)
    assert recipe.name == "qwen2.5-vl" and modules == [block.attn for block in tower.blocks]
    calls = _capture(tower, layers, pixels)
    with torch.no_grad(), cls_attention_hooks(tower, layers, query="mean") as record:
        tower(pixels, grid_thw=GRID)
    rows = record.stacked()  # (L, 1, H, S): window order
    assert rows.shape == (4, 1, 2, TOKENS) and rows.dtype == torch.float32
    assert torch.equal(record.patch_attention(), rows)  # no CLS column to drop
    windows = _window_bounds()
    assert len(windows) - 1 == 6 + 2  # image 1: 2 x 3 windows of 16; image 2: one of 16, one of 8 (clipped)
    for layer in layers:
        full = layer in (1, 3)
        call = calls[layer]
        assert call["bounds"] == (IMAGE_BOUNDS if full else windows)  # the segments the module attended in
        expected, rebuilt = _oracle(modules[layer], call, call["bounds"])
        # the oracle is the module's attention (1e-5: eager's softmax runs in float32 even in a float64 tower)
        assert (rebuilt - call["output"]).abs().max().item() <= 1e-5
        got = rows[layer, 0].double()
        assert (got - expected).abs().max().item() <= TOL, layer
        assert (_segment_sums(got, call["bounds"]) - 1).abs().max().item() <= TOL  # each segment sums to 1
        assert float(got.amax()) > 5 / (16 if not full else FIRST)  # peaked, far from uniform in any segment
        if not full:  # restricted to each window, and a row mixing the image's windows would fail
            per_window, _ = _oracle(modules[layer], call, windows)
            assert (got - per_window).abs().max().item() <= TOL
            whole_image, _ = _oracle(modules[layer], call, IMAGE_BOUNDS)
            assert (got - whole_image).abs().max().item() > 1e-2
    assert not torch.allclose(rows[1], rows[3], atol=1e-3)  # layer-specific: the comparisons can fail


def test_qwen2_5_sdpa_tower_records_the_same_rows() -> None:
    """The hook never touches the kernel: an SDPA copy records the eager tower's rows, its output unchanged."""
    eager = _qwen2_5()
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    pixels = _pixels()
    records = []
    outputs = []
    for tower in (eager, sdpa):
        with torch.no_grad(), cls_attention_hooks(tower, (0, 3), query="mean") as record:
            outputs.append(tower(pixels, grid_thw=GRID).pooler_output)
        records.append(record.stacked())
    assert (records[0] - records[1]).abs().max().item() <= TOL
    with torch.no_grad():
        assert torch.equal(sdpa(pixels, grid_thw=GRID).pooler_output, outputs[1])  # the hooks change nothing
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)  # eager's float32 softmax


def test_qwen2_5_images_are_separate_segments() -> None:
    tower = _qwen2_5()
    pixels = _pixels()
    other = pixels.clone()
    other[FIRST:] = _pixels(seed=9)[FIRST:]  # image 2 changed, image 1 as before
    recorded = []
    for given in (pixels, other):
        with torch.no_grad(), cls_attention_hooks(tower, (0, 1, 3), query="mean") as record:
            tower(given, grid_thw=GRID)
        recorded.append(record.stacked())
    first, second = recorded
    assert (first[..., :FIRST] - second[..., :FIRST]).abs().max().item() <= TOL  # full (1, 3) and window (0)
    assert (first[..., FIRST:] - second[..., FIRST:]).abs().max().item() > 1e-3  # image 2's rows did change


def test_qwen2_5_unpermute_windows_inverts_the_tower_permutation() -> None:
    tower = _qwen2_5()
    window_index, _ = get_vision_window_index(GRID, spatial_merge_size=2, window_size=56, patch_size=14)
    assert not torch.equal(window_index, torch.arange(TOKENS // 4))  # the 8 x 12 image is really permuted
    original = torch.randn(3, 2, TOKENS, generator=torch.Generator().manual_seed(4))
    # the tower's own permutation of a (S, features) tensor, applied to the token axis
    permuted = tower.permute_input_for_window_attn(original.flatten(0, 1).T, window_index, TOKENS).T
    permuted = permuted.reshape(original.shape)
    assert torch.equal(unpermute_windows(permuted, window_index, 4), original)
    with pytest.raises(HeroError, match="merge groups"):
        unpermute_windows(permuted[..., :-1], window_index, 4)


def test_qwen2_5_full_attention_layers() -> None:
    assert full_attention_layers(_qwen2_5()) == (1, 3)
    assert full_attention_layers(_qwen2_5(fullatt_block_indexes=[3, 1, 9])) == (1, 3)  # only layers it has
    wrapped = nn.ModuleDict({"visual": _qwen2_5()})
    assert full_attention_layers(wrapped) == (1, 3)  # read from the Qwen2.5 tower inside
    default = Qwen2_5_VLVisionConfig(hidden_size=16, num_heads=2, intermediate_size=16, out_hidden_size=16)
    assert default.depth == 32
    tower = qwen2_5.Qwen2_5_VisionTransformerPretrainedModel._from_config(default)
    assert full_attention_layers(tower) == (7, 15, 23, 31)


# ------------------------------------------------------------------------------------------- Qwen3-VL
@pytest.mark.parametrize("moe", [False, True], ids=["qwen3-vl", "qwen3-vl-moe"])
def test_qwen3_rows_equal_the_oracle(moe: bool) -> None:
    tower = _qwen3(moe)
    layers = (0, 2, 3)
    pixels = _pixels()
    modules, recipe = attention_modules(tower)
    assert recipe.name == "qwen3-vl"
    assert modules == [block.attn for block in tower.blocks]  # the DeepStack mergers are not layers
    assert len(tower.deepstack_merger_list) == 2
    assert full_attention_layers(tower) is None  # full attention everywhere
    calls = _capture(tower, layers, pixels)
    with torch.no_grad(), cls_attention_hooks(tower, layers, query="mean") as record:
        out = tower(pixels, grid_thw=GRID)
    assert len(out.deepstack_features) == 2
    rows = record.stacked()
    assert rows.shape == (3, 1, 2, TOKENS) and rows.dtype == torch.float32
    for i, layer in enumerate(layers):
        call = calls[layer]
        assert call["bounds"] == IMAGE_BOUNDS
        expected, rebuilt = _oracle(modules[layer], call, IMAGE_BOUNDS)
        assert (rebuilt - call["output"]).abs().max().item() <= 1e-5  # eager's float32 softmax
        got = rows[i, 0].double()
        assert (got - expected).abs().max().item() <= TOL, layer
        assert (_segment_sums(got, IMAGE_BOUNDS) - 1).abs().max().item() <= TOL
        assert float(got.amax()) > 5 / FIRST  # peaked, far from uniform
    assert not torch.allclose(rows[0], rows[2], atol=1e-3)


def test_qwen3_images_are_separate_segments() -> None:
    tower = _qwen3()
    pixels = _pixels()
    other = pixels.clone()
    other[FIRST:] = _pixels(seed=9)[FIRST:]
    recorded = []
    for given in (pixels, other):
        with torch.no_grad(), cls_attention_hooks(tower, (1, 3), query="mean") as record:
            tower(given, grid_thw=GRID)
        recorded.append(record.stacked())
    first, second = recorded
    assert (first[..., :FIRST] - second[..., :FIRST]).abs().max().item() <= TOL
    assert (first[..., FIRST:] - second[..., FIRST:]).abs().max().item() > 1e-3


# ------------------------------------------------------------------------------------------- both
@pytest.mark.parametrize("build", [_qwen2_5, _qwen3], ids=["qwen2.5-vl", "qwen3-vl"])
def test_hooks_removed_and_cls_refused(build: Any) -> None:
    tower = build()
    before = _hook_counts(tower)
    assert tower_recipe(tower).cls_position == "none"
    with pytest.raises(HeroError, match="does not have"), cls_attention_hooks(tower, (0,)):
        pass
    assert _hook_counts(tower) == before
    with torch.no_grad(), cls_attention_hooks(tower, (0, 3), query="mean"):
        assert sum(h for h, _ in _hook_counts(tower)) == sum(h for h, _ in before) + 2
        tower(_pixels(), grid_thw=GRID)
    assert _hook_counts(tower) == before
    with pytest.raises(RuntimeError, match="half way"), cls_attention_hooks(tower, (1,), query="mean"):
        raise RuntimeError("half way")
    assert _hook_counts(tower) == before


def test_bfloat16_tower_gives_float32_rows() -> None:
    tower = _qwen2_5().to(torch.bfloat16)
    with torch.no_grad(), cls_attention_hooks(tower, (0, 1), query="mean") as record:
        tower(_pixels().to(torch.bfloat16), grid_thw=GRID)
    rows = record.stacked()
    assert rows.dtype == torch.float32
    assert (_segment_sums(rows[1, 0], IMAGE_BOUNDS) - 1).abs().max().item() <= 1e-5
    assert (_segment_sums(rows[0, 0], _window_bounds()) - 1).abs().max().item() <= 1e-5


def test_bad_packed_call_is_a_hero_error() -> None:
    tower = _qwen3()
    module = attention_modules(tower)[0][0]
    hidden = torch.zeros(6, 32, dtype=torch.float64)
    embeddings = (torch.ones(6, 16), torch.zeros(6, 16))
    with cls_attention_hooks(tower, (0,), query="mean"):
        with pytest.raises(HeroError, match="cu_seqlens"):
            module(hidden, cu_seqlens=torch.tensor([[0, 6]], dtype=torch.int32), position_embeddings=embeddings)
        with pytest.raises(HeroError, match="position_embeddings"):
            module(hidden, cu_seqlens=torch.tensor([0, 6], dtype=torch.int32), position_embeddings=None)
