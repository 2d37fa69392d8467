"""CDPruner's per-token relevance (``score_tokens``) on both CLIP backends, held to an oracle written here.

The oracle reads the host model directly: the vision model's last layer (transformers: ``output_hidden_states``;
open_clip: a forward hook on the last residual block during ``encode_image``), class token dropped, the final
layer norm and the visual projection applied by hand, then a loop over the patch grid in raster order computing
each token's cosine with the model's own text embedding. The tiny models get a random final layer norm (weight and
bias) and equal token and embedding widths, so dropping the norm or the projection, a text of another image, a
transposed grid or the class token left in give measurably different values (asserted too). The open_clip model
has a non-square input (32 x 48, a 4 x 6 grid) and every view is non-square before the resize.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from hero_adapters.testing import build_tiny_clip
from hero_adapters.text_scorers import HFClipTextScorer, OpenClipTextScorer
from hero_core import HeroError

TEXTS = ["a red stop sign", "two cats on a sofa"]


def _views(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


# Two images, different view counts, non-square views (h != w, both orientations).
VIEWS = [_views(2, 40, 72, 0), _views(3, 90, 50, 1)]


def _randomise_norm(norm: torch.nn.Module, seed: int) -> None:
    """A final layer norm with non-trivial weight and bias (the default 1 and 0 would make it a mere centering)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=generator))
        norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=generator))


def _tiny_open_clip(image_size: Any = (32, 48), **vision: Any) -> OpenClipTextScorer:
    """test_scorer_graphs' tiny open_clip model, with a non-square input and embed_dim = width (32)."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(1)
    settings: dict[str, Any] = {"layers": 2, "width": 32, "head_width": 8, "patch_size": 8, "image_size": image_size}
    vision_cfg = CLIPVisionCfg(**{**settings, **vision})
    text_cfg = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)
    model = CLIP(embed_dim=32, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()
    return OpenClipTextScorer(model, open_clip.get_tokenizer("ViT-L-14-336"))


def _build(backend: str) -> Any:
    if backend == "hf":
        scorer = build_tiny_clip(seed=3)  # hidden 64 = projection_dim 64, 224 px / 32 px patches: a 7 x 7 grid
        _randomise_norm(scorer.model.vision_model.post_layernorm, 5)
    else:
        scorer = _tiny_open_clip()
        _randomise_norm(scorer.model.visual.ln_post, 5)
    return scorer


@pytest.fixture(scope="module", params=["hf", "open_clip"])
def scorer(request: pytest.FixtureRequest) -> Any:
    return _build(request.param)


# --------------------------------------------------------------------------------------------------
# The oracle, straight from the host model
# --------------------------------------------------------------------------------------------------


def _grid(scorer: Any) -> tuple[int, int]:
    if isinstance(scorer, HFClipTextScorer):
        config = scorer.model.config.vision_config
        side = config.image_size // config.patch_size
        return side, side
    grid_h, grid_w = scorer.model.visual.grid_size
    return int(grid_h), int(grid_w)


def _last_layer(scorer: Any, pixels: torch.Tensor) -> torch.Tensor:
    """(V, 1 + N, D): the vision model's last layer output, class token first, before the final norm."""
    if isinstance(scorer, HFClipTextScorer):
        out = scorer.model.vision_model(pixel_values=pixels, output_hidden_states=True)
        return out.hidden_states[-1]
    visual = scorer.model.visual
    assert visual.transformer.batch_first
    seen: list[torch.Tensor] = []
    handle = visual.transformer.resblocks[-1].register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        scorer.model.encode_image(pixels)
    finally:
        handle.remove()
    (last,) = seen
    return last


def _norm_and_projection(scorer: Any) -> tuple[torch.nn.Module, torch.Tensor]:
    """The final layer norm and the (D, E) visual projection matrix."""
    if isinstance(scorer, HFClipTextScorer):
        return scorer.model.vision_model.post_layernorm, scorer.model.visual_projection.weight.T
    return scorer.model.visual.ln_post, scorer.model.visual.proj


def _text_embedding(scorer: Any, text: str) -> torch.Tensor:
    """(E,) from the model's own text path."""
    tokens = scorer.tokenize(text)
    if isinstance(scorer, HFClipTextScorer):
        out = scorer.model.get_text_features(**tokens)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).reshape(-1)
    return scorer.model.encode_text(tokens).reshape(-1)


@torch.no_grad()
def _reference(
    scorer: Any,
    views: list[torch.Tensor],
    texts: list[str],
    *,
    norm: bool = True,
    project: bool = True,
    keep_cls: bool = False,
) -> list[torch.Tensor]:
    """Per image, (V_i, gh, gw): a slow loop over every patch token (float64)."""
    grid_h, grid_w = _grid(scorer)
    layer_norm, projection = _norm_and_projection(scorer)
    out = []
    for item, text in zip(views, texts, strict=True):
        hidden = _last_layer(scorer, scorer.preprocess(item))  # (V, 1 + N, D)
        assert hidden.shape[1] == 1 + grid_h * grid_w
        tokens = hidden[:, :-1] if keep_cls else hidden[:, 1:]  # (V, N, D)
        if norm:
            width = tokens.shape[-1]
            tokens = F.layer_norm(tokens, (width,), layer_norm.weight, layer_norm.bias, layer_norm.eps)
        if project:
            tokens = tokens @ projection  # (V, N, E)
        query = _text_embedding(scorer, text).double()
        scores = torch.empty(item.shape[0], grid_h, grid_w, dtype=torch.float64)
        for view in range(item.shape[0]):
            for row in range(grid_h):
                for col in range(grid_w):
                    token = tokens[view, row * grid_w + col].double()
                    scores[view, row, col] = token @ query / (token.norm() * query.norm())
        out.append(scores.float())
    return out


def _worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_token_scores_equal_the_oracle_and_wrong_recipes_differ(scorer: Any) -> None:
    grid = _grid(scorer)
    got = scorer.score_tokens(VIEWS, TEXTS)
    expected = _reference(scorer, VIEWS, TEXTS)
    assert [tuple(s.shape) for s in got] == [(2, *grid), (3, *grid)]
    assert all(s.dtype == torch.float32 and s.device == v.device for s, v in zip(got, VIEWS, strict=True))
    assert all(not s.is_inference() for s in got)  # usable outside inference mode
    assert _worst(got, expected) <= 1e-5

    # Each recipe error would be caught: the oracle moves by far more than the tolerance.
    wrong = {
        "no final norm": _reference(scorer, VIEWS, TEXTS, norm=False),
        "no projection": _reference(scorer, VIEWS, TEXTS, project=False),
        "texts swapped": _reference(scorer, VIEWS, TEXTS[::-1]),
        "class token kept": _reference(scorer, VIEWS, TEXTS, keep_cls=True),
    }
    for name, scores in wrong.items():
        assert _worst(expected, scores) > 1e-2, name
    transposed = [s.transpose(-1, -2) for s in expected]
    if grid[0] == grid[1]:
        assert _worst(expected, transposed) > 1e-2
    else:
        assert [s.shape for s in transposed] != [s.shape for s in got]

    # The batch equals image-by-image calls (the tower sees a larger batch).
    single = [scorer.score_tokens([v], [t])[0] for v, t in zip(VIEWS, TEXTS, strict=True)]
    assert _worst(got, single) <= 1e-5
    assert scorer.score_tokens([], []) == []


def _patch_embedding(scorer: Any) -> torch.nn.Module:
    if isinstance(scorer, HFClipTextScorer):
        return scorer.model.vision_model.embeddings.patch_embedding
    return scorer.model.visual.conv1


def test_one_tower_call_per_call_and_one_text_embedding_per_distinct_text(scorer: Any, monkeypatch: Any) -> None:
    tower_batches: list[int] = []
    texts_embedded: list[int] = []
    original = type(scorer)._embed_text

    def counting(self: Any, tokens: Any) -> Any:
        texts_embedded.append(1)
        return original(self, tokens)

    monkeypatch.setattr(type(scorer), "_embed_text", counting)
    monkeypatch.setattr(type(scorer), "_embed_image", lambda self, pixels: pytest.fail("pooled tower called"))
    handle = _patch_embedding(scorer).register_forward_hook(
        lambda module, args, out: tower_batches.append(out.shape[0])
    )
    scorer.clear_text_cache()
    try:
        views = [*VIEWS, _views(1, 60, 30, 2)]
        texts = [TEXTS[0], TEXTS[1], TEXTS[0]]
        first = scorer.score_tokens(views, texts)
        assert tower_batches == [6] and len(texts_embedded) == 2  # every view in one call; two distinct texts
        again = scorer.score_tokens(views, texts)
        assert tower_batches == [6, 6] and len(texts_embedded) == 2  # the texts come from the cache
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
        assert _worst(first[2:], scorer.score_tokens(views[2:], texts[2:])) <= 1e-5
    finally:
        handle.remove()
        scorer.clear_text_cache()


def test_a_float64_model_gives_float32_scores(scorer: Any) -> None:
    wide = copy.deepcopy(scorer)
    wide.model.to(torch.float64)
    scores = wide.score_tokens([v.double() for v in VIEWS], TEXTS)
    assert all(s.dtype == torch.float32 for s in scores)
    assert _worst(scores, scorer.score_tokens(VIEWS, TEXTS)) <= 1e-4


@pytest.mark.parametrize(
    ("views", "texts", "message"),
    [
        ([VIEWS[0]], TEXTS, r"^texts=2 is invalid: expected one text per image \(1 images of views\)"),
        ([VIEWS[0][0]], TEXTS[:1], r"^views=<tensor shape=\(3, 40, 72\).*a \(V, 3, h, w\) tensor"),
        ([VIEWS[0], VIEWS[1] * 255], TEXTS, r"^views='<tensor shape=\(3, 3, 90, 50\) min=.* values in \[0, 1\]"),
        ([VIEWS[0]], [""], r"^text='' is invalid: expected a non-empty query"),
        ([VIEWS[0]], [3], r"^text=3 is invalid: expected a str"),
    ],
    ids=["lengths", "3-D views", "range", "empty text", "not a str"],
)
def test_bad_input_names_the_field(scorer: Any, views: Any, texts: Any, message: str) -> None:
    with pytest.raises(HeroError, match=message):
        scorer.score_tokens(views, texts)


@pytest.mark.parametrize(
    "vision",
    [
        {"image_size": 32, "attentional_pool": True, "attn_pooler_queries": 4, "attn_pooler_heads": 2},
        {"image_size": 32, "layers": (1, 1, 1, 1), "width": 16},  # ModifiedResNet
    ],
    ids=["attentional pooling", "ResNet"],
)
def test_an_open_clip_tower_without_a_patch_grid_is_refused(vision: dict[str, Any]) -> None:
    scorer = _tiny_open_clip(**vision)
    assert scorer(VIEWS[0], TEXTS[0]).shape == (2,)  # the per-view score still works
    with pytest.raises(
        HeroError, match=r"per-token scores need a ViT CLIP tower.*OpenClipTextScorer\.score_tokens cannot"
    ):
        scorer.score_tokens(VIEWS, TEXTS)


def test_a_transformers_model_without_a_visual_projection_is_refused() -> None:
    base = build_tiny_clip()
    model = copy.deepcopy(base.model)
    model.visual_projection = None
    with pytest.raises(HeroError, match=r"^model\.visual_projection=None .*HFClipTextScorer\.score_tokens"):
        HFClipTextScorer(model, base.tokenizer).score_tokens(VIEWS, TEXTS)


def test_token_relevance_resamples_onto_a_non_square_token_grid() -> None:
    """HeroVLM's resampling of the scorer's (gh, gw) map onto a view's (rows, cols) token grid: bilinear with
    antialiasing onto exactly (rows, cols), not (cols, rows), on a 2 x 8 grid from a 4 x 4 map whose value is its
    row index (so rows differ and columns agree)."""
    from hero_adapters._scoring import token_relevance
    from hero_core import presets
    from hero_core.testing import make_tiles

    class RowMap:
        image_size = (8, 8)

        def score_tokens(self, views: Any, texts: Any) -> list[torch.Tensor]:
            row = torch.arange(4, dtype=torch.float32)[:, None].expand(4, 4)
            return [row[None].expand(int(v.shape[0]), 4, 4).clone() for v in views]

    tiles = make_tiles(num_views=1, grid=(2, 8))
    (scores,) = token_relevance(RowMap(), presets.cdpruner(0.5), [torch.rand(1, 3, 8, 8)], ["a sign"], [tiles])
    grid = scores.view(2, 8)
    row = torch.arange(4, dtype=torch.float32)[:, None].expand(4, 4)[None, None]
    expected = F.interpolate(row, size=(2, 8), mode="bilinear", align_corners=False, antialias=True)[0, 0]
    torch.testing.assert_close(grid, expected)
    assert torch.equal(grid, grid[:, :1].expand(2, 8)) and float(grid[1, 0]) > float(grid[0, 0])
