"""The OpenAI CLIP byte-level BPE vocabulary, rebuilt from the merges file that open_clip ships.

Pure Python: nothing here imports torch, transformers or open_clip. ``open_clip_torch`` is only looked
up (``importlib.util.find_spec``) to find ``bpe_simple_vocab_16e6.txt.gz`` inside the installed wheel,
so ``pip install --no-deps open_clip_torch`` is enough to provide the file.

The vocabulary (49408 entries) is laid out as OpenAI trained it:

- ids 0..255: the 256 byte symbols (GPT-2's reversible byte -> printable character map);
- ids 256..511: the same symbols with the end-of-word marker ``</w>`` appended;
- ids 512..49405: one entry per merge rule, in rank order (the concatenation of the pair);
- ids 49406, 49407: ``<|startoftext|>`` and ``<|endoftext|>``.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from hero_core import HeroError

__all__ = [
    "BOS_TOKEN",
    "CLIP_VOCAB_SIZE",
    "EOS_TOKEN",
    "NUM_MERGES",
    "byte_symbols",
    "clip_bpe_path",
    "clip_vocab_and_merges",
]

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # 48894: the merge budget OpenAI used; the file holds more lines than that
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
CLIP_VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2  # 49408


def byte_symbols() -> list[str]:
    """The printable stand-in character of every byte value, indexed by byte (GPT-2's reversible map).

    Bytes that are already visible, non-space Latin-1 characters stand for themselves; the other 68
    (controls, space, DEL, NBSP, soft hyphen, ...) are moved to code points 256, 257, ... in byte order.
    The BPE vocabulary lists the symbols in this order: the 188 visible bytes first, then the moved ones.

    Returns:
        ``symbols[b]`` for b in 0..255.
    """
    symbols = [""] * 256
    shifted = 0
    for byte in range(256):
        if _is_visible(byte):
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return symbols


def _is_visible(byte: int) -> bool:
    return 0x21 <= byte <= 0x7E or 0xA1 <= byte <= 0xAC or 0xAE <= byte <= 0xFF


def _symbols_in_vocab_order() -> list[str]:
    symbols = byte_symbols()
    visible = [symbols[b] for b in range(256) if _is_visible(b)]
    moved = [symbols[b] for b in range(256) if not _is_visible(b)]
    return visible + moved


def clip_bpe_path() -> Path:
    """Where the installed open_clip package keeps ``bpe_simple_vocab_16e6.txt.gz`` (open_clip is not imported).

    Raises:
        HeroError: if open_clip_torch is not installed or the file is missing from it.
    """
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BPE_FILE_NAME
        if candidate.is_file():
            return candidate
    raise HeroError(
        f"The CLIP BPE vocabulary ({BPE_FILE_NAME}) was not found: it ships inside the open_clip_torch wheel, "
        f"which is not installed (searched: {locations or 'nothing, open_clip is not importable'}). "
        "Install it with `pip install 'hero-prune[openclip]'` (or `pip install --no-deps open_clip_torch` for the "
        "file alone), or pass `bpe_path=` to the file."
    )


@functools.lru_cache(maxsize=4)
def clip_vocab_and_merges(bpe_path: str | None = None) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Read the merges file and lay out the 49408-entry OpenAI CLIP vocabulary.

    Args:
        bpe_path: the gzip file; None finds it inside the installed open_clip package.

    Returns:
        ``(vocab, merges)``: token string -> id, and the 48894 merge rules in rank order. Both are
        shared (cached); copy the dict before changing it.

    Raises:
        HeroError: if the file cannot be found or does not look like the CLIP merges file.
    """
    path = Path(bpe_path) if bpe_path is not None else clip_bpe_path()
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise HeroError.field(
            "bpe_path", str(path), f"a readable gzip file with the CLIP BPE merges ({BPE_FILE_NAME})", str(exc)
        ) from exc
    rules = [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]  # line 0 is a version header
    if len(rules) != NUM_MERGES or any(len(rule) != 2 for rule in rules):
        raise HeroError.field(
            "bpe_path",
            str(path),
            f"a CLIP merges file with at least {NUM_MERGES} 'left right' lines after its header",
            f"Use open_clip's {BPE_FILE_NAME}.",
        )
    merges = tuple((rule[0], rule[1]) for rule in rules)
    symbols = _symbols_in_vocab_order()
    tokens = [*symbols, *(s + END_OF_WORD for s in symbols), *(left + right for left, right in merges)]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise HeroError.field(
            "bpe_path", str(path), f"merges that give {CLIP_VOCAB_SIZE} distinct tokens (got {len(vocab)})"
        )
    return vocab, merges
