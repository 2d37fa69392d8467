"""The batch input of ``hero eval`` (and later ``hero run --data``): JSON Lines, one row per line.

Each non-blank line is one JSON object::

    {"id": "q1", "image": "images/sign.jpg", "prompt": "What is written on the sign?", "answer": "stop"}

``id`` is a string or an int, unique in the file (``1`` and ``"1"`` count as the same id); ``image`` a path,
relative paths read from the data file's folder; ``prompt`` the question; ``answer`` (optional, a string or
null) the reference answer for accuracy. Blank lines are skipped; line numbers in messages count them.
Every problem is a ``HeroError`` naming the option, the file, the line and what to do; nothing but the
file and the existence of every image is read, so the check is cheap and runs before any model loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hero_core import HeroError

__all__ = ["KEYS", "Row", "read_rows"]

#: The keys a row may have; the first three are required.
KEYS = ("id", "image", "prompt", "answer")


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
    if not path.is_file():
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
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise HeroError.field(f"{where}: answer", answer, "a non-empty string, null, or no answer key")
    resolved = folder / image
    if not resolved.is_file():
        raise HeroError.field(
            f"{where}: image",
            image,
            f"an image file that exists (looked for {resolved})",
            "Relative paths are read from the data file's folder.",
        )
    return Row(id=identifier, image=resolved, prompt=prompt, answer=answer, line=number)
