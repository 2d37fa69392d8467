"""CLIP text scorers on tiny real models (transformers CLIPModel, open_clip CLIP), built in-process.

Oracles: the model's own encoders called by hand on the scorer's preprocessed input, the model's
``logits_per_image`` divided by its logit scale, torchvision's resize/crop, and open_clip's tokenizer
for the in-memory transformers tokenizer. Nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import html
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from hero_adapters.text_scorers import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    HFClipTextScorer,
    OpenClipTextScorer,
    clip_tokenizer_from_open_clip,
)
from hero_core import HeroError
from hero_core._errors import check_relevance

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

LONG_TEXT = " ".join(f"word{i} is, perhaps, (not) the answer!" for i in range(300))
SAMPLE_TEXTS = [
    "a photo of a cat.",
    "What is written on the sign?  Answer with one word!!!",
    "Hello, World... (test) -- x's y'll don't we've <b>bold</b> #tag @user 3.14 100% $5",
    "café naïve Ωmega 日本語のテキスト 한국어 emoji 🐱🚀 Ünïcödé",
    "TABS\tand\nnewlines   and   UPPER case",
    LONG_TEXT,
]


# --------------------------------------------------------------------------------------------------
# Fixtures: one tiny model of each kind, the real CLIP tokenizer built offline
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_tokenizer() -> Any:
    return clip_tokenizer_from_open_clip()


@pytest.fixture(scope="module")
def open_clip_tokenizer() -> Any:
    return open_clip.get_tokenizer("ViT-L-14-336")


def _tiny_hf_clip(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": 49408,  # the real CLIP vocabulary, so the real tokenizer fits
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    return transformers.CLIPModel(config).eval()


@pytest.fixture(scope="module")
def hf_model() -> Any:
    return _tiny_hf_clip()


@pytest.fixture(scope="module")
def hf_scorer(hf_model: Any, clip_tokenizer: Any) -> HFClipTextScorer:
    return HFClipTextScorer(hf_model, clip_tokenizer)


@pytest.fixture(scope="module")
def oc_model() -> Any:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(1)
    vision = CLIPVisionCfg(layers=2, width=32, head_width=8, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=4, layers=2)
    return CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()


@pytest.fixture(scope="module")
def oc_scorer(oc_model: Any, open_clip_tokenizer: Any) -> OpenClipTextScorer:
    return OpenClipTextScorer(oc_model, open_clip_tokenizer)


@pytest.fixture(params=["hf", "open_clip"])
def scorer(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("hf_scorer" if request.param == "hf" else "oc_scorer")


def _views(num_views: int = 4, height: int = 48, width: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_views, 3, height, width, generator=generator)


# --------------------------------------------------------------------------------------------------
# The in-memory OpenAI CLIP tokenizer
# --------------------------------------------------------------------------------------------------


def _open_clip_ids(tokenizer: Any, text: str) -> list[int]:
    row = tokenizer([text])[0]
    return row[row != 0].tolist()  # open_clip pads with 0 (id 0 is "!", never inside these texts)


def test_in_memory_tokenizer_has_the_clip_vocabulary(clip_tokenizer: Any) -> None:
    assert len(clip_tokenizer) == 49408
    assert clip_tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    assert clip_tokenizer.bos_token_id == 49406 and clip_tokenizer.eos_token_id == 49407
    assert clip_tokenizer.model_max_length == 77


@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_in_memory_tokenizer_ids_equal_open_clip(clip_tokenizer: Any, open_clip_tokenizer: Any, text: str) -> None:
    ours = clip_tokenizer(text, truncation=True, max_length=77)["input_ids"]
    assert ours == _open_clip_ids(open_clip_tokenizer, text)
    assert ours[0] == 49406 and ours[-1] == 49407


def test_in_memory_tokenizer_truncates_to_77_with_the_end_token(clip_tokenizer: Any) -> None:
    ids = clip_tokenizer(LONG_TEXT, truncation=True, max_length=77)["input_ids"]
    full = clip_tokenizer(LONG_TEXT)["input_ids"]
    assert len(full) > 300
    assert len(ids) == 77 and ids[-1] == 49407 and ids[:76] == full[:76]


@pytest.mark.parametrize("text", ["&amp; fish &lt;3", "“curly” ’quotes’", "ﬁne ligature", "１２３ full width"])
def test_in_memory_tokenizer_differs_from_open_clip_only_by_its_text_cleaning(
    clip_tokenizer: Any, open_clip_tokenizer: Any, text: str
) -> None:
    """open_clip runs ftfy.fix_text and html.unescape before BPE (documented); after that the ids agree."""
    import ftfy

    cleaned = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    assert cleaned != text
    assert clip_tokenizer(cleaned)["input_ids"] == _open_clip_ids(open_clip_tokenizer, text)


def test_tokenizer_survives_save_and_reload(clip_tokenizer: Any, tmp_path: Path) -> None:
    clip_tokenizer.save_pretrained(tmp_path)
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(reloaded) == 49408
    for text in SAMPLE_TEXTS[:4]:
        assert reloaded(text)["input_ids"] == clip_tokenizer(text)["input_ids"]


def test_in_memory_tokenizer_from_an_explicit_bpe_path(tmp_path: Path) -> None:
    from hero_adapters.text_scorers._clip_bpe import clip_bpe_path

    copy = tmp_path / "bpe.txt.gz"
    copy.write_bytes(clip_bpe_path().read_bytes())
    ids = clip_tokenizer_from_open_clip(copy)("a photo of a cat")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(HeroError, match="bpe_path="):
        clip_tokenizer_from_open_clip(broken)


def test_module_import_is_lazy_and_bpe_needs_no_open_clip_import() -> None:
    """Importing the module pulls in neither host; the BPE file is found without importing open_clip."""
    code = (
        "import sys\n"
        "import hero_adapters.text_scorers\n"
        "from hero_adapters.text_scorers._clip_bpe import clip_vocab_and_merges\n"
        "vocab, merges = clip_vocab_and_merges()\n"
        "assert len(vocab) == 49408 and len(merges) == 48894, (len(vocab), len(merges))\n"
        "assert vocab['<|endoftext|>'] == 49407 and vocab['!'] == 0 and vocab['!</w>'] == 256\n"
        "loaded = sorted(m for m in ('transformers', 'open_clip') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


# --------------------------------------------------------------------------------------------------
# HFClipTextScorer
# --------------------------------------------------------------------------------------------------


def _hf_manual(model: Any, tokenizer: Any, pixels: torch.Tensor, text: str) -> torch.Tensor:
    tokens = tokenizer(text, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
        query = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return F.normalize(image, dim=-1) @ F.normalize(query.pooler_output, dim=-1)[0]


def test_hf_scores_equal_the_manual_cosine(hf_scorer: HFClipTextScorer, hf_model: Any, clip_tokenizer: Any) -> None:
    views = _views()
    scores = hf_scorer(views, "a red square on the left")
    assert scores.shape == (4,) and scores.dtype == torch.float32
    manual = _hf_manual(hf_model, clip_tokenizer, hf_scorer.preprocess(views), "a red square on the left")
    torch.testing.assert_close(scores, manual, atol=1e-5, rtol=0)
    assert float(scores.abs().max()) <= 1.0 + 1e-6
    check_relevance(scores, 4)


def test_hf_scores_are_not_multiplied_by_the_logit_scale(hf_scorer: HFClipTextScorer, hf_model: Any) -> None:
    views, text = _views(3), "two dogs"
    tokens = hf_scorer.tokenize(text)
    with torch.no_grad():
        out = hf_model(pixel_values=hf_scorer.preprocess(views), **tokens)
    scale = float(hf_model.logit_scale.detach().exp())
    assert scale > 10  # CLIP's init, 1 / 0.07: a scaled score could not pass the check below
    torch.testing.assert_close(hf_scorer(views, text), out.logits_per_image[:, 0] / scale, atol=1e-5, rtol=0)


def test_hf_long_query_is_truncated_to_77_tokens(hf_scorer: HFClipTextScorer) -> None:
    views = _views(2)
    assert hf_scorer.tokenize(LONG_TEXT)["input_ids"].shape == (1, 77)
    scores = hf_scorer(views, LONG_TEXT)
    assert scores.shape == (2,) and bool(torch.isfinite(scores).all())
    # Words past the 77th token cannot change the score.
    torch.testing.assert_close(hf_scorer(views, LONG_TEXT + " zebra"), scores, atol=0, rtol=0)


def test_hf_float64_views_give_identical_scores(hf_scorer: HFClipTextScorer) -> None:
    views = _views()
    assert torch.equal(hf_scorer(views, "a cat"), hf_scorer(views.double(), "a cat"))


def test_hf_batch_equals_per_view_calls(hf_scorer: HFClipTextScorer) -> None:
    views = _views(5)
    batch = hf_scorer(views, "a chart with numbers")
    singles = torch.cat([hf_scorer(views[i : i + 1], "a chart with numbers") for i in range(5)])
    torch.testing.assert_close(batch, singles, atol=1e-6, rtol=0)
    assert float(batch.max() - batch.min()) > 1e-4  # the views really score differently


def test_hf_output_is_a_normal_tensor_on_the_views_device(hf_scorer: HFClipTextScorer) -> None:
    scores = hf_scorer(_views(2), "a cat")
    assert not scores.is_inference() and not scores.requires_grad
    assert scores.device == torch.device("cpu")
    scores += 1  # in-place use outside inference mode is allowed


def test_preprocess_matches_torchvision_resize_and_center_crop(hf_scorer: HFClipTextScorer) -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    views = _views(2, 48, 70)
    expected = TF.resize(views, 32, interpolation=InterpolationMode.BICUBIC, antialias=True)  # (2, 3, 32, 46)
    expected = TF.center_crop(expected, [32, 32]).clamp(0, 1)
    expected = TF.normalize(expected, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    torch.testing.assert_close(hf_scorer.preprocess(views), expected, atol=1e-5, rtol=0)


def test_preprocess_clamps_bicubic_overshoot(hf_model: Any, clip_tokenizer: Any) -> None:
    """Like PIL's uint8 pipeline, resampled pixels stay in [0, 1] although bicubic overshoots on edges."""
    scorer = HFClipTextScorer(hf_model, clip_tokenizer, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    stripes = (torch.arange(70) // 3 % 2).float().expand(1, 3, 48, 70).contiguous()
    raw = F.interpolate(stripes, size=(32, 46), mode="bicubic", antialias=True)
    assert float(raw.min()) < -0.01 and float(raw.max()) > 1.01  # the input really overshoots
    pixels = scorer.preprocess(stripes)
    assert float(pixels.min()) == 0.0 and float(pixels.max()) == 1.0


def test_hf_tokenizer_without_end_token_is_refused(hf_model: Any) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"w{i}": i + 1 for i in range(1500)}, "a": 1501, "cat": 1502}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    plain = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(HeroError, match="end-of-text token"):
        HFClipTextScorer(hf_model, plain)(_views(1), "a cat")


def test_preprocess_at_input_size_is_only_normalisation(hf_scorer: HFClipTextScorer) -> None:
    views = _views(2, 32, 32)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(hf_scorer.preprocess(views), (views - mean) / std, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("mode", "fill_rows"), [("squash", 0), ("longest", 8)])
def test_other_resize_modes(hf_model: Any, clip_tokenizer: Any, mode: str, fill_rows: int) -> None:
    scorer = HFClipTextScorer(hf_model, clip_tokenizer, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize_mode=mode)
    pixels = scorer.preprocess(torch.ones(1, 3, 16, 32))  # a white 1:2 view
    assert pixels.shape == (1, 3, 32, 32)
    # "longest" fits 16x32 into 16x32 and pads 8 black rows above and below; "squash" stretches.
    torch.testing.assert_close(pixels[..., fill_rows : 32 - fill_rows, :], torch.ones(1, 3, 32 - 2 * fill_rows, 32))
    assert float(pixels.sum()) == 3 * 32 * (32 - 2 * fill_rows)


def test_hf_degenerate_tokenizer_is_refused(hf_model: Any) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel(vocab={"<|endoftext|>": 0, "<unk>": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tiny = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|endoftext|>")
    assert len(tiny) == 2
    with pytest.raises(HeroError, match=r"len\(tokenizer\)=2") as info:
        HFClipTextScorer(hf_model, tiny)
    assert "vocab.json" in str(info.value) and "clip_tokenizer_from_open_clip()" in str(info.value)


_TINY_TOWER = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


def test_hf_tokenizer_of_another_model_is_refused(clip_tokenizer: Any) -> None:
    small = transformers.CLIPModel(
        transformers.CLIPConfig(
            text_config={**_TINY_TOWER, "vocab_size": 5000},
            vision_config={**_TINY_TOWER, "image_size": 16, "patch_size": 8},
            projection_dim=8,
        )
    )
    scorer = HFClipTextScorer(small, clip_tokenizer)
    with pytest.raises(HeroError, match="does not belong to this model"):
        scorer(_views(1), "a photo of a zebra")  # ids up to 49407 do not fit 5000 embeddings


def test_hf_rejects_a_vision_only_model(clip_tokenizer: Any, hf_model: Any) -> None:
    with pytest.raises(HeroError, match="CLIPModel"):
        HFClipTextScorer(hf_model.vision_model, clip_tokenizer)


def test_hf_from_pretrained_round_trip(
    hf_model: Any, clip_tokenizer: Any, hf_scorer: HFClipTextScorer, tmp_path: Path
) -> None:
    hf_model.save_pretrained(tmp_path)
    clip_tokenizer.save_pretrained(tmp_path)
    loaded = HFClipTextScorer.from_pretrained(tmp_path)
    views = _views(3)
    torch.testing.assert_close(loaded(views, "a cat"), hf_scorer(views, "a cat"), atol=1e-6, rtol=0)
    assert len(loaded.tokenizer) == 49408 and not loaded.model.training


def test_hf_from_pretrained_reads_mean_std_and_casts_to_the_model_dtype(
    hf_model: Any, clip_tokenizer: Any, hf_scorer: HFClipTextScorer, tmp_path: Path
) -> None:
    hf_model.save_pretrained(tmp_path)
    clip_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}')
    loaded = HFClipTextScorer.from_pretrained(tmp_path, device="cpu", dtype=torch.float64)
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.std == (0.5, 0.5, 0.5)
    views = _views(2)
    pixels = loaded.preprocess(views)
    assert pixels.dtype == torch.float64
    scores = loaded(views, "a cat")
    assert scores.dtype == torch.float32
    expected = _hf_manual(loaded.model, clip_tokenizer, pixels, "a cat").float()
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("saved", ["processor", "both"])
def test_hf_from_pretrained_reads_mean_std_from_the_file_transformers_writes(
    saved: str, hf_model: Any, clip_tokenizer: Any, hf_scorer: HFClipTextScorer, tmp_path: Path
) -> None:
    """transformers 5.x: ``CLIPProcessor.save_pretrained`` writes processor_config.json (the image processor nested
    in it), not preprocessor_config.json; with both, the nested entry wins. Oracle: transformers' own
    ``CLIPImageProcessor.from_pretrained`` of the same directory."""
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    sizes = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
    image_processor = transformers.CLIPImageProcessor(image_mean=list(mean), image_std=list(std), **sizes)
    hf_model.save_pretrained(tmp_path)
    if saved == "both":  # an older image processor's file beside the processor's: transformers reads the nested one
        other = [0.9, 0.9, 0.9]
        transformers.CLIPImageProcessor(image_mean=other, image_std=other, **sizes).save_pretrained(tmp_path)
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer).save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file()
    assert (tmp_path / "preprocessor_config.json").is_file() == (saved == "both")
    loaded = HFClipTextScorer.from_pretrained(tmp_path)
    assert loaded.mean == pytest.approx(mean) and loaded.std == pytest.approx(std)
    reference = transformers.CLIPImageProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.mean == tuple(reference.image_mean) and loaded.std == tuple(reference.image_std)
    # the scorer normalises with them: its input is the default scorer's, un-normalised and normalised again
    views = _views(2)
    channels = (3, 1, 1)
    unit = hf_scorer.preprocess(views) * torch.tensor(OPENAI_CLIP_STD).view(channels) + torch.tensor(
        OPENAI_CLIP_MEAN
    ).view(channels)
    expected = (unit - torch.tensor(mean).view(channels)) / torch.tensor(std).view(channels)
    torch.testing.assert_close(loaded.preprocess(views), expected, atol=1e-5, rtol=0)
    manual = _hf_manual(loaded.model, clip_tokenizer, expected, "a cat")
    torch.testing.assert_close(loaded(views, "a cat"), manual, atol=1e-5, rtol=0)
    assert not torch.allclose(loaded(views, "a cat"), hf_scorer(views, "a cat"), atol=1e-4)


def test_hf_from_pretrained_refuses_a_bad_mean_in_processor_config(
    hf_model: Any, clip_tokenizer: Any, tmp_path: Path
) -> None:
    hf_model.save_pretrained(tmp_path)
    clip_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text('{"image_processor": {"image_mean": [0.5, 0.5]}}')
    with pytest.raises(HeroError, match=r"^processor_config.json image_mean="):
        HFClipTextScorer.from_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text('{"processor_class": "CLIPProcessor"}')  # no image processor
    assert HFClipTextScorer.from_pretrained(tmp_path).mean == OPENAI_CLIP_MEAN


def test_hf_from_pretrained_without_tokenizer_files(hf_model: Any, clip_tokenizer: Any, tmp_path: Path) -> None:
    hf_model.save_pretrained(tmp_path)  # weights and config only
    with pytest.raises(HeroError, match="tokenizer=clip_tokenizer_from_open_clip"):
        HFClipTextScorer.from_pretrained(tmp_path)
    scorer = HFClipTextScorer.from_pretrained(tmp_path, tokenizer=clip_tokenizer)
    assert scorer(_views(2), "a cat").shape == (2,)


def test_hf_from_pretrained_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(HeroError, match="path_or_id"):
        HFClipTextScorer.from_pretrained(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------------
# OpenClipTextScorer
# --------------------------------------------------------------------------------------------------


def test_open_clip_scores_equal_the_manual_cosine(oc_scorer: OpenClipTextScorer, oc_model: Any) -> None:
    views = _views()
    scores = oc_scorer(views, "a red square on the left")
    assert scores.shape == (4,) and scores.dtype == torch.float32
    tokens = open_clip.get_tokenizer("ViT-L-14-336")(["a red square on the left"])
    with torch.no_grad():
        image = oc_model.encode_image(oc_scorer.preprocess(views), normalize=True)
        query = oc_model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(scores, (image @ query.T)[:, 0], atol=1e-5, rtol=0)
    check_relevance(scores, 4)


def test_open_clip_long_query_and_per_view_consistency(oc_scorer: OpenClipTextScorer) -> None:
    views = _views(3)
    scores = oc_scorer(views, LONG_TEXT)
    assert scores.shape == (3,) and bool(torch.isfinite(scores).all())
    torch.testing.assert_close(oc_scorer(views, LONG_TEXT + " zebra"), scores, atol=0, rtol=0)
    singles = torch.cat([oc_scorer(views[i : i + 1], LONG_TEXT) for i in range(3)])
    torch.testing.assert_close(scores, singles, atol=1e-6, rtol=0)
    assert torch.equal(oc_scorer(views.double(), "a cat"), oc_scorer(views, "a cat"))


def test_open_clip_reads_the_model_preprocess_cfg(oc_model: Any, open_clip_tokenizer: Any) -> None:
    cfg = {"size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "resize_mode": "squash"}
    open_clip.set_model_preprocess_cfg(oc_model, cfg)
    try:
        scorer = OpenClipTextScorer(oc_model, open_clip_tokenizer)
        assert (scorer.mean, scorer.std, scorer.resize_mode) == (cfg["mean"], cfg["std"], "squash")
        override = OpenClipTextScorer(oc_model, open_clip_tokenizer, mean=OPENAI_CLIP_MEAN, resize_mode="shortest")
        assert override.mean == OPENAI_CLIP_MEAN and override.std == cfg["std"]
        torch.testing.assert_close(scorer.preprocess(torch.full((1, 3, 8, 8), 0.75)), torch.ones(1, 3, 32, 32))
    finally:
        del oc_model.visual.preprocess_cfg, oc_model.visual.image_mean, oc_model.visual.image_std


def test_open_clip_create_refuses_unknown_names() -> None:
    with pytest.raises(HeroError, match=r"model_name='ViT-L-14-3366'.*ViT-L-14-336"):
        OpenClipTextScorer.create("ViT-L-14-3366")


def test_open_clip_create_refuses_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(HeroError, match="pretrained="):
        OpenClipTextScorer.create("RN50", pretrained=str(tmp_path / "missing.pt"))


def test_open_clip_tokenizer_with_wrong_context_is_refused(oc_model: Any) -> None:
    scorer = OpenClipTextScorer(oc_model, open_clip.get_tokenizer("ViT-L-14-336", context_length=64))
    with pytest.raises(HeroError, match="context_length=77"):
        scorer(_views(1), "a cat")


# --------------------------------------------------------------------------------------------------
# Bad input (both scorers) and missing extras
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("views", "match"),
    [
        (torch.rand(3, 32, 32), r"\(V, 3, h, w\)"),
        (torch.rand(2, 32, 32, 3), r"\(V, 3, h, w\)"),
        (torch.rand(0, 3, 32, 32), r"V >= 1"),
        ("not a tensor", r"\(V, 3, h, w\)"),
        (torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8), "floating-point"),
        (torch.rand(2, 3, 32, 32) * 255, r"un-normalised RGB in \[0, 1\]"),
        ((torch.rand(2, 3, 32, 32) - 0.5) / 0.25, r"un-normalised RGB in \[0, 1\]"),
        (torch.full((2, 3, 32, 32), float("nan")), r"values in \[0, 1\]"),
    ],
    ids=["rank3", "channels-last", "no-views", "str", "uint8", "0-255", "normalised", "nan"],
)
def test_bad_views_raise(scorer: Any, views: Any, match: str) -> None:
    with pytest.raises(HeroError, match=match):
        scorer(views, "a cat")


@pytest.mark.parametrize(
    ("text", "match"),
    [(None, "a str"), (["a cat"], "a str"), (b"a cat", "a str"), ("", "query=None"), ("  \n", "query=None")],
)
def test_bad_text_raises(scorer: Any, text: Any, match: str) -> None:
    with pytest.raises(HeroError, match=match):
        scorer(_views(1), text)


def test_slightly_out_of_range_views_are_accepted(scorer: Any) -> None:
    views = _views(2).clamp(0.0, 1.0)
    views[0, 0, 0, 0], views[1, 0, 0, 0] = -0.005, 1.005  # rounding slack of an upstream resize
    assert scorer(views, "a cat").shape == (2,)


@pytest.mark.parametrize(("field", "value"), [("mean", (0.5, 0.5)), ("std", (0.5, 0.0, 0.5)), ("resize_mode", "crop")])
def test_bad_fields_raise(hf_model: Any, clip_tokenizer: Any, field: str, value: Any) -> None:
    with pytest.raises(HeroError, match=field):
        HFClipTextScorer(hf_model, clip_tokenizer, **{field: value})


def test_repr_is_short(hf_scorer: HFClipTextScorer, oc_scorer: OpenClipTextScorer) -> None:
    assert repr(hf_scorer).startswith("HFClipTextScorer(model=CLIPModel, tokenizer=CLIPTokenizer(vocab=49408)")
    assert repr(oc_scorer).startswith("OpenClipTextScorer(model=CLIP, tokenizer=SimpleTokenizer(vocab=49408)")


def test_missing_extras_name_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import fails, find_spec returns None
    with pytest.raises(HeroError, match=r"hero-prune\[openclip\]"):
        OpenClipTextScorer.create("ViT-L-14-336")
    from hero_adapters.text_scorers import _clip_bpe

    _clip_bpe.clip_vocab_and_merges.cache_clear()
    try:
        with pytest.raises(HeroError, match=r"hero-prune\[openclip\]"):
            clip_tokenizer_from_open_clip()
    finally:
        _clip_bpe.clip_vocab_and_merges.cache_clear()
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(HeroError, match=r"hero-prune\[hf\]"):
        HFClipTextScorer.from_pretrained("/nonexistent")


# --------------------------------------------------------------------------------------------------
# Real size (opt-in) and GPU
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_open_clip_vit_l_14_336_random_weights_scores_five_views() -> None:
    scorer = OpenClipTextScorer.create("ViT-L-14-336", pretrained=None)
    assert scorer.image_size == (336, 336)
    scores = scorer(_views(5, 336, 336), "What is the title of the book on the table?")
    assert scores.shape == (5,) and bool(torch.isfinite(scores).all())
    assert float(scores.abs().max()) <= 1.0 + 1e-5


@pytest.mark.gpu
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_scorers_on_cuda_return_on_the_views_device(hf_model: Any, clip_tokenizer: Any, oc_model: Any) -> None:
    import copy

    views = _views(3)
    for cpu_scorer, make in [
        (HFClipTextScorer(hf_model, clip_tokenizer), lambda m: HFClipTextScorer(m, clip_tokenizer)),
        (
            OpenClipTextScorer(oc_model, open_clip.get_tokenizer("ViT-L-14-336")),
            lambda m: OpenClipTextScorer(m, open_clip.get_tokenizer("ViT-L-14-336")),
        ),
    ]:
        on_gpu = make(copy.deepcopy(cpu_scorer.model).cuda())
        expected = cpu_scorer(views, "a cat")
        from_cpu = on_gpu(views, "a cat")  # model on cuda, views on cpu
        assert from_cpu.device.type == "cpu"
        torch.testing.assert_close(from_cpu, expected, atol=1e-4, rtol=0)
        from_gpu = on_gpu(views.cuda(), "a cat")
        assert from_gpu.device.type == "cuda"
        torch.testing.assert_close(from_gpu.cpu(), expected, atol=1e-4, rtol=0)


def test_hf_from_pretrained_refuses_a_checkpoint_that_is_not_clip(clip_tokenizer: Any, tmp_path: Path) -> None:
    """The easy mistake `--clip <the VLM's directory>` must not silently score with a random CLIP."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(
        CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         image_size=28, patch_size=14)
    ).save_pretrained(tmp_path)  # fmt: skip
    clip_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(HeroError, match=r"^path_or_id model_type='clip_vision_model'.*separate CLIP checkpoint"):
        HFClipTextScorer.from_pretrained(tmp_path)
