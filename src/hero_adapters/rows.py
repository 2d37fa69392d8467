"""The batch input of ``hero eval`` and ``hero run --data`` (JSON Lines, one row per line) and their image opener.

Each non-blank line is one JSON object::

    {"id": "q1", "image": "images/sign.jpg", "prompt": "What is written on the sign?", "answer": "stop"}

``id`` is a string or an int, unique in the file (``1`` and ``"1"`` count as the same id); ``image`` a path,
relative paths read from the data file's folder; ``prompt`` the question; ``answer`` (optional, a string or
null) the reference answer for accuracy. Blank lines are skipped; line numbers in messages count them.
A prompt must not contain an ``<image>`` placeholder: the command places the row's one image before the
prompt itself (through the processor's chat template), so a placeholder in the text would be one too many.
Every problem is a ``HeroError`` naming the option, the file, the line and what to do; nothing but the
file and the existence of every image is read, so the check is cheap and runs before any model loads.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hero_core import HeroError

from ._paths import is_file

__all__ = ["KEYS", "PLACEHOLDER", "Row", "check_placeholders", "open_image", "read_rows"]

#: The keys a row may have; the first three are required.
KEYS = ("id", "image", "prompt", "answer")
#: The image placeholder of the LLaVA processors; a prompt must not contain it (the image is placed for you).
PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Row:
    """One line of a data file.

    Attributes:
        id: the row's id as the file gives it (str or int).
        image: the image file, resolved against the data file's folder.
        prompt: the question / instruction.
        answer: the reference answer, or None.
        line: the 1-based line of the data file it came from.
    """

    id: str | int
    image: Path
    prompt: str
    answer: str | None
    line: int


def read_rows(path: str | Path, *, name: str = "--data") -> list[Row]:
    """Read and check a JSON Lines data file.

    Args:
        path: the data file.
        name: what messages call the file (the command-line option by default).

    Returns:
        The rows in file order.

    Raises:
        HeroError: on a missing or unreadable file, an empty file, a line that is not one JSON object,
            a missing, empty or wrongly typed field, an unknown key, a duplicate id (both lines named) or an
            image file that does not exist.
    """
    path = Path(path)
    if not is_file(path):
        raise HeroError.field(name, str(path), "a JSON Lines file that exists", "Check the path.")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise HeroError.field(name, str(path), "a readable file", str(error)) from error
    folder = path.parent
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for number, data in enumerate(raw.split(b"\n"), start=1):
        where = f"{name} {path}, line {number}"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise HeroError.field(where, data[:40], "UTF-8 text", str(error)) from error
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        row = _row(text, where, number, folder)
        key = str(row.id)
        if key in seen:
            raise HeroError.field(
                f"{where}: id",
                row.id,
                f"an id no other row has (line {seen[key]} has it too)",
                "Give every row its own id.",
            )
        seen[key] = number
        rows.append(row)
    if not rows:
        raise HeroError.field(
            name,
            str(path),
            "at least one row: one JSON object per line",
            'E.g. {"id": 1, "image": "photo.jpg", "prompt": "What is written on the sign?", "answer": "stop"}.',
        )
    return rows


def _row(text: str, where: str, number: int, folder: Path) -> Row:
    """One checked row from one non-blank line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise HeroError.field(
            f"{where}: JSON", text.strip(), f"one JSON object per line ({error.msg} at column {error.colno})"
        ) from error
    if not isinstance(value, dict):
        raise HeroError.field(
            f"{where}: JSON", value, 'a JSON object {"id": ..., "image": ..., "prompt": ...}', "One row per line."
        )
    unknown = [key for key in value if key not in KEYS]
    if unknown:
        raise HeroError.field(
            f"{where}: key", unknown[0], f"one of {list(KEYS)}", "Remove or rename it (answer is optional)."
        )
    for key in KEYS[:3]:
        if key not in value:
            raise HeroError.field(f"{where}: {key}", None, f"a row with {list(KEYS[:3])} (answer is optional)")
    identifier: Any = value["id"]
    if isinstance(identifier, bool) or not isinstance(identifier, (str, int)) or identifier == "":
        raise HeroError.field(f"{where}: id", identifier, "a non-empty string or an int")
    image, prompt, answer = value["image"], value["prompt"], value.get("answer")
    if not isinstance(image, str) or not image.strip():
        raise HeroError.field(f"{where}: image", image, "a non-empty string: the image file's path")
    if not isinstance(prompt, str) or not prompt.strip():
        raise HeroError.field(f"{where}: prompt", prompt, "a non-empty string: the question / instruction")
    check_placeholders(f"{where}: prompt", prompt)
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise HeroError.field(f"{where}: answer", answer, "a non-empty string, null, or no answer key")
    resolved = folder / image
    if not is_file(resolved):
        raise HeroError.field(
            f"{where}: image",
            image,
            f"an image file that exists (looked for {resolved})",
            "Relative paths are read from the data file's folder.",
        )
    check_image(resolved, f"{where}: image")  # a bomb or a non-image is refused before the model loads
    return Row(id=identifier, image=resolved, prompt=prompt, answer=answer, line=number)


def check_placeholders(name: str, prompt: str, tokens: tuple[str, ...] = (PLACEHOLDER,)) -> None:
    """Refuse a prompt with image placeholders: each prompt has one image, placed before the text for it.

    Args:
        name: what the message calls the prompt (``--prompt``, ``--data FILE, line 3: prompt``).
        prompt: the user's text.
        tokens: the placeholders to look for (``<image>``, and the processor's own ``image_token``).

    Raises:
        HeroError: naming the placeholder, how many there are and that the image has one already.
    """
    for token in dict.fromkeys(t for t in tokens if t):
        count = prompt.count(token)
        if count:
            raise HeroError.field(
                name,
                prompt,
                f"a prompt without {token}: there is 1 image and it is placed before the prompt for you, so "
                f"{count} {token} in the text make {count + 1} placeholders for 1 image",
                f"Remove {token} from the prompt.",
            )


def open_image(path: str | Path, name: str = "--image") -> Any:
    """Open an image file as RGB, refusing what Pillow calls a decompression bomb (``Image.MAX_IMAGE_PIXELS``).

    Pillow only warns between ``MAX_IMAGE_PIXELS`` and twice that; here both are refused, so that a huge image
    fails with one line naming ``name`` instead of filling the memory.

    Args:
        path: the image file.
        name: what the message calls it (``--image``, ``--data FILE, line 3: image``).

    Returns:
        The decoded ``PIL.Image.Image`` in mode RGB.

    Raises:
        HeroError: on a missing file, a file Pillow cannot read, or an image over the pixel limit.
    """
    image = _pillow(path, name, decode=True)
    assert image is not None
    return image


def check_image(path: str | Path, name: str = "--image") -> None:
    """``open_image``'s checks without decoding the pixels: the file exists, Pillow reads its header and verifies
    its structure, and its size is under the decompression-bomb limit (cheap: a data file's rows are checked
    this way before any model loads)."""
    _pillow(path, name, decode=False)


def _pillow(path: str | Path, name: str, *, decode: bool) -> Any:
    from .extras import require

    image_module = require("PIL.Image")
    path = Path(path)
    if not is_file(path):
        raise HeroError.field(name, str(path), "an image file that exists", "Check the path.")
    bombs = (image_module.DecompressionBombError, image_module.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", image_module.DecompressionBombWarning)
            with image_module.open(path) as image:
                if decode:
                    return image.convert("RGB")
                image.verify()
                return None
    except bombs:
        limit = image_module.MAX_IMAGE_PIXELS
        raise HeroError.field(
            name,
            str(path),
            f"an image of at most {limit} pixels (Pillow's decompression-bomb limit, PIL.Image.MAX_IMAGE_PIXELS)",
            "Downscale the image first.",
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise HeroError.field(name, str(path), "a readable image (PNG, JPEG, ...)", str(error)) from error
