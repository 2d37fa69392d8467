"""Writing the files a command was asked for: whole or not at all (a full disk leaves no half-written file, and
an existing file as it was), and a failed write is one line naming the flag."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hero_core import HeroError

from .._paths import exists


def _failed(flag: str, path: Path, error: OSError) -> HeroError:
    reason = error.strerror or str(error)
    return HeroError.field(
        flag, str(path), "a file hero can write", f"Writing it failed: {reason}. Free space or name another file."
    )


#: An existing output up to this size is kept in memory while it is rewritten, to be put back if the write fails.
_KEEP_OLD = 64 * 2**20


def _write_file(flag: str, path: Path, write: Callable[[Path], None]) -> None:
    """``write(path)``, whole or not at all: when it fails (a full disk, a quota, an I/O error), the half-written
    file is removed, or an existing file's old content (up to 64 MiB) is put back. The command writes nothing but
    the file asked for (no temporary file beside it: tests/adapters/test_safety.py watches every write); a path
    that exists and is not a regular file (``/dev/full``, a FIFO) is written as it is.

    Raises:
        HeroError: naming ``flag`` and ``path`` when the write fails.
    """
    special, old = _before(path)
    try:
        write(path)
    except OSError as error:
        if not special:
            _undo(path, old)
        raise _failed(flag, path, error) from error
    except BaseException:
        if not special:
            _undo(path, old)
        raise


def _before(path: Path) -> tuple[bool, bytes | None]:
    """(whether ``path`` exists and is not a regular file, which is then written as it is and never removed or
    cut; the old content of an existing regular file, up to 64 MiB, to put back if the write fails)."""
    regular = exists(path) and path.is_file()
    old: bytes | None = None
    if regular:
        with contextlib.suppress(OSError):
            old = path.read_bytes() if path.stat().st_size <= _KEEP_OLD else None
    return exists(path) and not regular, old


def _undo(path: Path, old: bytes | None) -> None:
    """The old content back (it takes no more room than the write just freed by truncating it), else no file."""
    try:
        if old is not None:
            path.write_bytes(old)
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _write_text(flag: str, path: Path, text: str) -> None:
    """``text`` into ``path``, whole or not at all (``_write_file``)."""

    def write(target: Path) -> None:
        with target.open("w", encoding="utf-8") as file:
            file.write(text)
            file.flush()  # a full disk shows here (or in close), inside the try of _write_file

    _write_file(flag, path, write)


class _JsonLines:
    """``run --data --json``: one JSON line per row, written and flushed batch by batch, so that a failure keeps the
    rows before it. A failed write (a full disk) cuts the file back to the last whole batch (none: the file is
    removed, or an existing file's old content put back, as ``_write_file`` does; a path that is not a regular
    file, ``/dev/full`` or a FIFO, is left as it is) and is one line naming ``--json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.special, self.old = _before(path)
        try:
            self.file = path.open("w", encoding="utf-8")
        except OSError as error:  # an existing file hero may not write: before any row is answered
            raise _failed("--json", path, error) from error
        self.whole = 0  # bytes of whole batches on disk
        self.rows = 0

    def add(self, results: Sequence[dict[str, Any]], rows: int) -> None:
        try:
            for result in results:
                self.file.write(json.dumps(result) + "\n")
            self.file.flush()
            self.whole, self.rows = self.file.tell(), rows
        except OSError as error:
            self._cut()
            kept = f" The {self.rows} row(s) before it are in it." if self.rows else " Nothing was written."
            raise HeroError.field(
                "--json",
                str(self.path),
                "a file hero can write",
                f"Writing the line(s) of row(s) {self.rows + 1}-{rows} failed: {error.strerror or error}.{kept}",
            ) from error

    def _cut(self) -> None:
        with contextlib.suppress(OSError):  # the buffered rest fails again: it is cut below
            self.file.close()
        if self.special:
            return
        if not self.whole:
            _undo(self.path, self.old)
            return
        with contextlib.suppress(OSError):
            os.truncate(self.path, self.whole)

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
