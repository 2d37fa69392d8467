"""CLIP text scorers: the raw cosine between every view and the instruction (HERO Eq. 2's relevance).

Both scorers implement ``hero_core.TextScorer``: ``scorer(views, text) -> (V,)`` where ``views`` is
(V, 3, h, w) un-normalised RGB in [0, 1]. Each scorer resizes and normalises the views itself (see
``preprocess``), embeds them and the text with a CLIP model, and returns the cosine of the two
embeddings, NOT multiplied by CLIP's logit scale.

- :class:`HFClipTextScorer` holds a transformers ``CLIPModel`` and its tokenizer.
- :class:`OpenClipTextScorer` holds an open_clip model and its tokenizer.
- :func:`clip_tokenizer_from_open_clip` builds the OpenAI CLIP tokenizer as a transformers
  ``CLIPTokenizer`` in memory, for a checkpoint directory without ``vocab.json``/``merges.txt``.

Importing this package does not import transformers or open_clip; they are imported when a scorer is
built from a name or a path.
"""

from __future__ import annotations

from ..pixels import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ._core import RESIZE_MODES
from .open_clip import OpenClipTextScorer
from .transformers import HFClipTextScorer, clip_tokenizer_from_open_clip

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "RESIZE_MODES",
    "HFClipTextScorer",
    "OpenClipTextScorer",
    "clip_tokenizer_from_open_clip",
]
