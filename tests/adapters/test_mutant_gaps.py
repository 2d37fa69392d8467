"""Adapter behaviours a mutation run found untested (issue 11, item 5), each against an outside oracle.

- the scorers' centre crop on tall (and odd-sized) views, against torchvision's resize + center_crop;
- the hooks' additive-mask branch, against the eager attention probabilities of a transformers CLIP
  attention module called with a float mask (no current host passes a mask to its tower), and a slow
  per-key loop for the mean-token stand-in of a SigLIP module.

Every test names the hand-made mutants of ``tools/mutants.py`` it kills. Tiny modules, built in-process.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
from typing import Any

import pytest
import torch

from hero_adapters import cls_attention_hooks
from hero_adapters.text_scorers import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HFClipTextScorer
from hero_adapters.towers import attention_modules

transformers = pytest.importorskip("transformers")
pytest.importorskip("torchvision")

NEG = torch.finfo(torch.float32).min


class _VocabOnlyTokenizer:
    """Enough of a tokenizer for ``preprocess`` (which never tokenizes): callable, with CLIP's vocabulary size."""

    def __len__(self) -> int:
        return 49408

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("preprocess must not tokenize")


@pytest.fixture(scope="module")
def scorer() -> HFClipTextScorer:
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    return HFClipTextScorer(transformers.CLIPModel(config).eval(), _VocabOnlyTokenizer())


@pytest.mark.parametrize(
    ("height", "width"),
    [
        (81, 50),  # tall: resized to (51, 32), cropped from row round(9.5) = 10; int(51.84) truncates
        (77, 48),  # tall: (51, 32), crop offset 10
        (50, 81),  # wide, odd excess: (32, 51), crop offset 10
        (40, 32),  # tall, width already the input size: no resample, crop rows 4..36
    ],
)
def test_preprocess_center_crop_matches_torchvision(scorer: HFClipTextScorer, height: int, width: int) -> None:
    """Kills: top/left swapped or floored instead of rounded, the short side chosen by the wrong comparison,
    the long side rounded instead of truncated."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    views = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    if min(height, width) == 32:
        resized = views  # torchvision would resample to the same size; the scorer skips it
    else:
        resized = TF.resize(views, 32, interpolation=InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    expected = TF.normalize(TF.center_crop(resized, [32, 32]), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    torch.testing.assert_close(scorer.preprocess(views), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("height", "width"), [(17, 32), (32, 15)])
def test_longest_mode_pads_like_open_clip(scorer: HFClipTextScorer, height: int, width: int) -> None:
    """Odd padding: the extra row (column) goes to the bottom (right), as open_clip's center_crop_or_pad puts it.
    Kills: the two halves of the padding swapped."""
    open_clip_transform = pytest.importorskip("open_clip.transform")
    longest = HFClipTextScorer(scorer.model, scorer.tokenizer, resize_mode="longest")
    views = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(2))  # one side already 32
    padded = open_clip_transform.center_crop_or_pad(views, [32, 32], fill=0)
    expected = _normalise(padded)
    torch.testing.assert_close(longest.preprocess(views), expected, atol=1e-6, rtol=0)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------- additive masks
@pytest.fixture(scope="module")
def clip_attention() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The tower (hooks need it) and its layer-1 attention module, eager so it returns its probabilities."""
    config = transformers.CLIPVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        image_size=56,
        patch_size=14,
        initializer_factor=5.0,
    )
    torch.manual_seed(1)
    tower = transformers.CLIPVisionModel(config).eval()
    tower.set_attn_implementation("eager")
    return tower, attention_modules(tower)[0][1]


def _additive_mask(batch: int, heads: int, tokens: int, seed: int) -> torch.Tensor:
    """A float bias (B, H, T, T) of arbitrary values (every query row different), with blocked keys:
    image 0 blocks key 5 for every head; image 1 blocks keys 10.. for heads 0-2 only."""
    mask = 2.0 * torch.randn(batch, heads, tokens, tokens, generator=torch.Generator().manual_seed(seed))
    mask[0, :, :, 5] = NEG
    mask[1, : heads // 2, :, 10:] = NEG
    return mask


def test_additive_mask_rows_equal_the_modules_eager_probabilities(
    clip_attention: tuple[torch.nn.Module, torch.nn.Module],
) -> None:
    """Kills: the additive row dropped, read from the wrong query row, blocked keys found with the wrong
    threshold, or a key blocked when only some heads block it."""
    tower, attention = clip_attention
    hidden = torch.randn(2, 17, 48, generator=torch.Generator().manual_seed(4))
    mask = _additive_mask(2, 6, 17, seed=5)
    with torch.inference_mode(), cls_attention_hooks(tower, (1,)) as record:
        _, probabilities = attention(hidden_states=hidden, attention_mask=mask)  # eager: (B, H, T, T)
    assert probabilities is not None
    rows = record.stacked()[0]  # (B, H, T)
    expected = probabilities[:, :, 0].float()  # the CLS query's row
    assert (rows - expected).abs().max().item() <= 1e-6
    assert float(rows[0, :, 5].abs().max()) == 0.0 and float(rows[1, :3, 10:].abs().max()) == 0.0
    assert float(rows[1, 3:, 10:].min()) > 0  # heads that do not block those keys still attend to them
    blocks_only = torch.where(mask == NEG, NEG, 0.0)
    with torch.inference_mode(), cls_attention_hooks(tower, (1,)) as plain:
        attention(hidden_states=hidden, attention_mask=blocks_only)
    assert (plain.stacked()[0] - rows).abs().max().item() > 1e-2  # the bias really moves the rows


def _siglip_attention() -> tuple[torch.nn.Module, torch.nn.Module]:
    config = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14
    )
    torch.manual_seed(3)
    tower = transformers.SiglipVisionModel(config).eval()
    return tower, attention_modules(tower)[0][1]


def test_mean_stand_in_with_an_additive_mask_matches_a_slow_loop() -> None:
    """The mean query of a CLS-free tower: mean of the tokens some query may attend to, and per key the
    largest bias any query row gives it (HERO_SPEC.md's stand-in). Kills: max over rows replaced by a min,
    a mean or the first row; the blocked-key threshold changed."""
    tower, attention = _siglip_attention()
    batch, tokens, heads = 2, 16, 4
    hidden = torch.randn(batch, tokens, 32, generator=torch.Generator().manual_seed(6))
    mask = _additive_mask(batch, heads, tokens, seed=7)
    mask[1, :, :, 12:] = NEG  # image 1: its last keys are padding for every head
    with torch.inference_mode(), cls_attention_hooks(tower, (1,), query="mean") as record:
        attention(hidden_states=hidden, attention_mask=mask)
    got = record.stacked()[0]  # (B, H, T)
    dim, scale = attention.head_dim, attention.scale
    with torch.no_grad():
        for b in range(batch):
            allowed = [j for j in range(tokens) if bool((mask[b, :, :, j] > NEG / 2).any())]
            query = attention.q_proj(hidden[b, allowed].mean(0)).view(heads, dim)
            keys = attention.k_proj(hidden[b]).view(tokens, heads, dim)
            for h in range(heads):
                logits = [
                    float(query[h] @ keys[j, h]) * scale + float(mask[b, h, :, j].max()) if j in allowed else -math.inf
                    for j in range(tokens)
                ]
                top = max(logits)
                weights = [math.exp(x - top) for x in logits]
                expected = torch.tensor([w / sum(weights) for w in weights])
                assert (got[b, h] - expected).abs().max().item() <= 1e-5, (b, h)


# ------------------------------------------------------------------------------------------ rebuild
def test_rebuild_keeps_the_shared_padding_columns() -> None:
    """``pad_to_multiple_of`` leaves padding in every row; at full counts the rebuilt prompt is the caller's own,
    column for column, and a pruned one keeps those shared columns. Kills: the shared columns dropped."""
    from hero_adapters.sequence import placeholder_spans, rebuild

    ids = torch.tensor([[0, 0, 5, 9, 9, 9, 6, 7], [0, 0, 0, 0, 5, 9, 9, 9]])
    mask = (torch.arange(8) >= torch.tensor([[2], [4]])).long()  # two and four left padding columns
    spans = placeholder_spans(ids, mask, 9, [3, 3])
    full = rebuild(ids, mask, spans, [3, 3], token_id=9, pad_id=0)
    assert torch.equal(full.input_ids, ids) and torch.equal(full.attention_mask, mask)
    pruned = rebuild(ids, mask, spans, [1, 2], token_id=9, pad_id=0)
    assert pruned.input_ids.tolist() == [[0, 0, 5, 9, 6, 7], [0, 0, 0, 5, 9, 9]]  # width: longest + 2 shared
    assert pruned.lengths == (4, 3)
