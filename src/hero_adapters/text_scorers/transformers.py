"""The transformers backend: :class:`HFClipTextScorer` and the offline OpenAI CLIP tokenizer.

transformers is imported when a scorer is loaded or a tokenizer built (``require``), not with this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hero_core import HeroError

from ..extras import require
from ..pixels import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, check_channels
from ._clip_bpe import clip_vocab_and_merges
from ._core import (
    ClipScorer,
    check_graphs,
    check_tokenizer,
    implausible_vocab_size,
    no_patch_grid,
    param_dtype_device,
    to_hw,
)

__all__ = ["HFClipTextScorer", "clip_tokenizer_from_open_clip"]

_TOKENIZER_FIX = (
    "Load the tokenizer from a local checkpoint directory that contains vocab.json and merges.txt (or "
    "tokenizer.json), e.g. `CLIPTokenizer.from_pretrained('/path/to/clip-vit-large-patch14-336')`, or build the "
    "OpenAI CLIP tokenizer offline with `hero_adapters.text_scorers.clip_tokenizer_from_open_clip()`. "
    "(Offline, `CLIPTokenizer.from_pretrained('<hub id>')` silently returns a 2-token tokenizer.)"
)


def clip_tokenizer_from_open_clip(bpe_path: str | os.PathLike[str] | None = None, *, model_max_length: int = 77) -> Any:
    """The OpenAI CLIP tokenizer as a transformers ``CLIPTokenizer``, built in memory (no download).

    The vocabulary (49408 tokens) and the 48894 merge rules come from ``bpe_simple_vocab_16e6.txt.gz``,
    which ships inside the open_clip_torch wheel (found without importing open_clip). The ids equal
    those of ``open_clip.get_tokenizer("ViT-L-14-336")`` and of the hub's ``openai/clip-vit-*``
    tokenizers for ordinary text, punctuation and unicode. open_clip cleans the text (``ftfy.fix_text``,
    HTML unescaping) before its BPE; the transformers CLIP tokenizer (from the hub or from here) does not,
    so the ids differ where that cleaning changes the text (HTML entities, curly quotes, ligatures,
    full-width characters, mojibake).

    Args:
        bpe_path: the merges file; None uses the one inside the installed open_clip package.
        model_max_length: the tokenizer's default maximum length (77, CLIP's context).

    Returns:
        A ``transformers.CLIPTokenizer`` with ``len(tokenizer) == 49408``.

    Raises:
        HeroError: if transformers is missing, or the BPE file cannot be found or read.
    """
    transformers = require("transformers")
    vocab, merges = clip_vocab_and_merges(None if bpe_path is None else os.fspath(bpe_path))
    return transformers.CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def check_clip_config(config: Any, field: str, fix: str) -> None:
    """Refuse a config that is not a full CLIP model's (``model_type`` other than ``clip``: a VLM's own folder, a
    vision tower alone), naming ``field`` as the caller's user typed it (``--clip``, ``clip``, ``path_or_id``).

    Raises:
        HeroError: ``<field> model_type=<its model_type> is invalid: ...`` with ``fix``.
    """
    if getattr(config, "model_type", None) != "clip":
        raise HeroError.field(
            f"{field} model_type",
            getattr(config, "model_type", None),
            "'clip': a full CLIP checkpoint with a text tower, e.g. openai/clip-vit-large-patch14-336",
            fix,
        )


@dataclass(frozen=True, eq=False, repr=False)
class HFClipTextScorer(ClipScorer[dict[str, Tensor]]):
    """HERO's text relevance with a transformers ``CLIPModel``: cosine(view embedding, text embedding).

    Implements ``hero_core.TextScorer``. The model is used as given (device, dtype, eval mode): views
    are moved and cast to the model's parameters; the result comes back as float32 on the views'
    device.

    Attributes:
        model: a ``transformers.CLIPModel`` (anything with ``get_image_features``, ``get_text_features``
            and a ``config`` with ``vision_config.image_size`` and ``text_config.max_position_embeddings``).
        tokenizer: its tokenizer (``CLIPTokenizer``/``CLIPTokenizerFast`` or any transformers tokenizer).
        mean: per-channel mean of the normalisation (OpenAI CLIP's by default).
        std: per-channel standard deviation of the normalisation (OpenAI CLIP's by default).
        resize_mode: ``"shortest"`` (CLIP: shortest side then center crop), ``"squash"`` or ``"longest"``;
            see :meth:`preprocess`.
        graphs: on CUDA, run the image tower under CUDA graphs captured per input shape (eval mode, autograd
            off; eager otherwise, and from the first failure on). False keeps it eager.

    Raises:
        HeroError: on construction, if the model lacks the CLIP interface, the tokenizer's vocabulary is
            implausibly small (< 1000 tokens: the offline hub-id trap), or mean/std/resize_mode/graphs are bad.
    """

    model: nn.Module
    tokenizer: Any
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resize_mode: str = "shortest"
    graphs: bool = True

    def __post_init__(self) -> None:
        model = self.model
        config = getattr(model, "config", None)
        image_size = getattr(getattr(config, "vision_config", None), "image_size", None)
        max_positions = getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
        if (
            not isinstance(model, nn.Module)
            or not callable(getattr(model, "get_image_features", None))
            or not callable(getattr(model, "get_text_features", None))
            or image_size is None
            or not isinstance(max_positions, int)
        ):
            raise HeroError.field(
                "model",
                type(model).__name__,
                "a transformers CLIPModel (get_image_features, get_text_features, config.vision_config.image_size, "
                "config.text_config.max_position_embeddings)",
                "Pass the dual-encoder `CLIPModel`, not `CLIPVisionModel`/`CLIPTextModel`, or use "
                "`HFClipTextScorer.from_pretrained(path)`.",
            )
        to_hw("model.config.vision_config.image_size", image_size)
        check_tokenizer(self.tokenizer, "transformers", "", _TOKENIZER_FIX)
        check_graphs(self.graphs)
        self._set_preprocessing(self.mean, self.std, self.resize_mode)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        tokenizer: Any = None,
        graphs: bool = True,
    ) -> HFClipTextScorer:
        """Load ``CLIPModel`` and its tokenizer from a checkpoint (a local directory, or a hub id in the cache).

        A local directory is read with ``local_files_only=True`` (nothing is downloaded); a hub id
        follows ``HF_HUB_OFFLINE``. A local directory's image processor settings give the normalisation's
        ``image_mean``/``image_std``, read as transformers 5.x reads them: the ``image_processor`` entry of
        ``processor_config.json`` (what ``CLIPProcessor.save_pretrained`` writes), else
        ``preprocessor_config.json`` (what ``CLIPImageProcessor.save_pretrained`` and transformers 4.x
        write); OpenAI CLIP's values where neither names them (and for a hub id).

        Args:
            path_or_id: checkpoint directory (``config.json``, weights, tokenizer files) or hub id.
            device: where to put the model (default: where transformers loads it, the CPU).
            dtype: the model's dtype (default: the checkpoint's / float32).
            tokenizer: a tokenizer to use instead of loading one, e.g. ``clip_tokenizer_from_open_clip()``
                for a directory without tokenizer files.
            graphs: the scorer's ``graphs`` (CUDA graphs of the image tower on CUDA; False: eager).

        Returns:
            The scorer, with the model in eval mode.

        Raises:
            HeroError: if transformers is missing, the checkpoint cannot be loaded, or the loaded
                tokenizer is degenerate (no vocabulary files found). Nothing from the checkpoint runs: one that
                needs code of its own (``auto_map``) and pickled weights holding more than tensors are refused.
        """
        check_graphs(graphs)  # before loading anything
        transformers = require("transformers")
        local = Path(path_or_id).is_dir()
        source = os.fspath(path_or_id)
        from ..evaluate import hub_offline, refused_checkpoint, weight_errors

        fix = (
            "Pass a local checkpoint directory (config.json + model weights)."
            if local or hub_offline()
            else "Check the id, or download the checkpoint and pass its directory."
        )
        expected = "a CLIPModel checkpoint (directory or cached hub id)"

        # Nothing from the checkpoint runs: no code of its own (trust_remote_code=False), and pickled weights only
        # through torch.load(weights_only=True) (safetensors first).
        try:
            config = transformers.AutoConfig.from_pretrained(source, local_files_only=local, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            refused = refused_checkpoint("path_or_id", source, exc)
            raise refused or HeroError.field("path_or_id", source, expected, f"{fix} ({exc})") from exc
        check_clip_config(
            config,
            "path_or_id",
            f"{source} is not one; a VLM's own vision tower has no text tower, pass a separate CLIP checkpoint.",
        )
        try:
            dtype_kwargs = {} if dtype is None else {"dtype": dtype}
            model, info = transformers.CLIPModel.from_pretrained(
                source,
                config=config,
                local_files_only=local,
                output_loading_info=True,
                trust_remote_code=False,
                weights_only=True,
                **dtype_kwargs,
            )
        except weight_errors() as exc:
            refused = refused_checkpoint("path_or_id", source, exc)
            raise refused or HeroError.field("path_or_id", source, expected, f"{fix} ({exc})") from exc
        missing = list(info.get("missing_keys", []))
        if missing:
            raise HeroError.field(
                "path_or_id",
                source,
                "a checkpoint holding every CLIPModel weight",
                f"{len(missing)} weights are missing (e.g. {missing[:3]}); a partial checkpoint would score with "
                "random weights.",
            )
        loaded = tokenizer is None
        if loaded:
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    source, local_files_only=local, trust_remote_code=False
                )
            except (OSError, ValueError, TypeError) as exc:
                raise refused_checkpoint("path_or_id", source, exc) or HeroError.field(
                    "path_or_id", source, "a checkpoint with tokenizer files", f"{_TOKENIZER_FIX} ({exc})"
                ) from exc
        mean, std = _mean_std_from_checkpoint(Path(source)) if local else (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        try:  # the checks run once, in __post_init__, before the model is moved to `device`
            scorer = cls(model=model.eval(), tokenizer=tokenizer, mean=mean, std=std, graphs=graphs)
        except HeroError as exc:
            size = implausible_vocab_size(tokenizer) if loaded else None
            if size is None:
                raise
            raise HeroError.field(
                "path_or_id",
                source,
                "a checkpoint with tokenizer files (vocab.json + merges.txt, or tokenizer.json)",
                f"Its tokenizer loaded with only {size} tokens, so the files are missing. Copy them into the "
                "directory, or pass `tokenizer=clip_tokenizer_from_open_clip()` (the OpenAI CLIP tokenizer, "
                "built offline).",
            ) from exc
        if device is not None:
            scorer.model.to(device)  # in place: nn.Module.to moves the parameters and returns the module
        return scorer

    @property
    def image_size(self) -> tuple[int, int]:
        """The model's input resolution (height, width)."""
        return to_hw("image_size", self._host.config.vision_config.image_size)

    @property
    def max_text_tokens(self) -> int:
        """How many tokens of the query reach the text encoder, start and end tokens included (77 for CLIP)."""
        limit = int(self._host.config.text_config.max_position_embeddings)
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 2 <= tokenizer_limit < limit:
            limit = tokenizer_limit
        return limit

    def _tokens(self, text: str) -> dict[str, Tensor]:
        encoded = self.tokenizer(text, truncation=True, max_length=self.max_text_tokens, return_tensors="pt")
        input_ids = encoded["input_ids"]
        text_config = self._host.config.text_config
        vocab_size = int(text_config.vocab_size)
        if input_ids.numel() == 0 or int(input_ids.max()) >= vocab_size or int(input_ids.min()) < 0:
            raise HeroError.field(
                "tokenizer",
                type(self.tokenizer).__name__,
                f"ids in [0, {vocab_size}) (the model's text vocabulary), at least one token",
                "The tokenizer does not belong to this model: load both from the same checkpoint.",
            )
        eos = getattr(text_config, "eos_token_id", None)
        # CLIP pools the text at the first end-of-text token (legacy configs with eos_token_id == 2 use argmax).
        if isinstance(eos, int) and eos != 2 and not bool((input_ids == eos).any()):
            raise HeroError.field(
                "tokenizer",
                type(self.tokenizer).__name__,
                f"a tokenizer that appends the model's end-of-text token (id {eos})",
                "CLIP reads the text embedding at that token. " + _TOKENIZER_FIX,
            )
        _, device = param_dtype_device(self.model)
        out = {"input_ids": input_ids.to(device)}
        mask = encoded.get("attention_mask")
        if mask is not None:
            out["attention_mask"] = mask.to(device)
        return out

    def _embed_image(self, pixels: Tensor) -> Tensor:
        return self._run_image_tower(self._image_features, pixels)  # (V, E)

    def _image_features(self, pixels: Tensor) -> Tensor:
        """The eager image tower: (V, 3, S_h, S_w) -> (V, E)."""
        return _embedding(self._host.get_image_features(pixel_values=pixels))

    def _embed_patches(self, pixels: Tensor) -> Tensor:
        """The eager tower's patch tokens in the joint space: (V, 3, S_h, S_w) -> (V, gh, gw, E).

        ``vision_model(...).last_hidden_state`` is the last encoder layer's output BEFORE ``post_layernorm`` (that
        norm is applied to the pooled class token only, in transformers 4.x's ``CLIPVisionTransformer`` and 5.x's
        ``CLIPVisionModel`` alike); each patch token then goes through ``post_layernorm`` and
        ``visual_projection`` as CDPruner does.
        """
        host = self._host
        vision = getattr(host, "vision_model", None)
        parts: dict[str, Any] = {
            "model.vision_model": vision,
            "model.vision_model.post_layernorm": getattr(vision, "post_layernorm", None),
            "model.visual_projection": getattr(host, "visual_projection", None),
        }
        for name, part in parts.items():
            if not isinstance(part, nn.Module):
                raise no_patch_grid(self, name, None if part is None else type(part).__name__, "the model lacks it")
        patch = getattr(getattr(getattr(host, "config", None), "vision_config", None), "patch_size", None)
        if not isinstance(patch, int) or isinstance(patch, bool) or patch < 1:
            raise no_patch_grid(self, "model.config.vision_config.patch_size", patch, "it is not a positive int")
        vision, norm, projection = parts.values()
        grid_h, grid_w = pixels.shape[-2] // patch, pixels.shape[-1] // patch
        hidden = vision(pixel_values=pixels, return_dict=True).last_hidden_state  # (V, 1 + N, D)
        if not isinstance(hidden, Tensor) or hidden.dim() != 3 or hidden.shape[1] != 1 + grid_h * grid_w:
            raise no_patch_grid(
                self,
                "model.vision_model output",
                hidden,
                f"expected the class token and {grid_h} x {grid_w} patch tokens",
            )
        tokens: Tensor = projection(norm(hidden[:, 1:]))  # (V, N, E), N in raster order
        return tokens.reshape(tokens.shape[0], grid_h, grid_w, -1)

    def _embed_text(self, tokens: dict[str, Tensor]) -> Tensor:
        return _embedding(self._host.get_text_features(**tokens))  # (1, E)


#: Where transformers 5.x looks for an image processor's settings, in its order (``ImageProcessingMixin``).
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def _mean_std_from_checkpoint(folder: Path) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``image_mean`` / ``image_std`` of the checkpoint's image processor, OpenAI CLIP's where it names none.

    transformers 5.x reads the ``image_processor`` entry of ``processor_config.json`` (a whole processor
    saved) and, when there is none, ``preprocessor_config.json`` (an image processor alone, or 4.x).
    """
    for name in _PROCESSOR_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HeroError.field(name, str(path), "a readable JSON file", str(exc)) from exc
        if name == "processor_config.json":
            cfg = cfg.get("image_processor") if isinstance(cfg, dict) else None
            if not isinstance(cfg, dict):
                continue  # a processor_config.json without an image processor: transformers reads the next file
        if not isinstance(cfg, dict):
            break
        mean, std = cfg.get("image_mean"), cfg.get("image_std")
        mean = OPENAI_CLIP_MEAN if mean is None else check_channels(f"{name} image_mean", mean, positive=False)
        std = OPENAI_CLIP_STD if std is None else check_channels(f"{name} image_std", std, positive=True)
        return mean, std
    return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def _embedding(output: Any) -> Tensor:
    """The projected embedding from ``get_*_features``: a tensor (transformers 4.x) or ``.pooler_output`` (5.x)."""
    if isinstance(output, Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, Tensor):
        return pooled
    raise HeroError.field(
        "model output",
        type(output).__name__,
        "a tensor or an output with a tensor .pooler_output (the projected CLIP embedding)",
        "Pass a transformers CLIPModel.",
    )
