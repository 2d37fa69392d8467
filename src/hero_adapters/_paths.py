"""Output and input paths the command line checks before any work: one line (``HeroError``) for every path
the file system would refuse later (with a traceback, after minutes of work)."""

from __future__ import annotations

import os
from pathlib import Path

from hero_core import HeroError

__all__ = ["check_folder", "check_path", "exists", "is_file"]

_NAME_MAX = 255  # bytes per path component on Linux, macOS and Windows file systems
_VIRTUAL = (("proc",), ("sys",))  # kernel file systems: writable to root by os.access, yet no folder can be made


def _bytes(part: str) -> int:
    try:
        return len(os.fsencode(part))
    except UnicodeError:  # a lone surrogate (only from Python, never from argv)
        return len(part.encode("utf-8", "surrogatepass"))


def check_path(flag: str, path: Path) -> None:
    """Refuse a path no file system takes: a NUL byte or a file name over 255 bytes (HeroError naming ``flag``)."""
    text = str(path)
    if "\x00" in text:
        raise HeroError.field(flag, text, "a path without NUL bytes")
    long = [part for part in path.parts if _bytes(part) > _NAME_MAX]
    if long:
        raise HeroError.field(
            flag, text, f"file names of at most {_NAME_MAX} bytes", f"{long[0][:40]!r}... is {_bytes(long[0])} bytes."
        )


def exists(path: Path) -> bool:
    """``path.exists()``, False (not an exception) for a path the file system cannot even look up."""
    try:
        return "\x00" not in str(path) and path.exists()
    except (OSError, RuntimeError):  # ENAMETOOLONG; a symlink loop (Python 3.11)
        return False


def is_file(path: Path) -> bool:
    """``path.is_file()``, False (not an exception) for a path the file system cannot even look up."""
    try:
        return "\x00" not in str(path) and path.is_file()
    except (OSError, RuntimeError):  # e.g. ENAMETOOLONG: Python 3.11's is_file only swallows "not found"
        return False


def check_folder(flag: str, folder: Path, *, parents: bool = True) -> None:
    """``folder`` is a writable folder, or one ``mkdir`` can make (``parents``: missing parents too).

    Raises:
        HeroError: naming ``flag``: a NUL byte, a name over 255 bytes, a file on the way, a missing parent (when
            ``parents`` is False), a folder hero may not write in, or /proc and /sys.
    """
    check_path(flag, folder)
    text = str(folder)
    try:
        if folder.is_symlink() and not folder.exists():
            raise HeroError.field(flag, text, "a folder (or a path to create one at)", "It is a broken symbolic link.")
        resolved = folder.resolve()
        existing = resolved
        while not existing.exists():
            existing = existing.parent
    except (OSError, RuntimeError) as error:  # a symlink loop raises RuntimeError on Python 3.11
        raise HeroError.field(flag, text, "a path the file system accepts", str(error)) from error
    if not existing.is_dir():
        fix = "It is a file." if existing == resolved else f"{existing} is a file."
        raise HeroError.field(flag, text, "a folder (or a path to create one at)", fix)
    if not parents and existing not in (resolved, resolved.parent):
        raise HeroError.field(flag, text, "a folder whose parent folder exists")
    if resolved.parts[1:2] in _VIRTUAL or not os.access(existing, os.W_OK | os.X_OK):
        raise HeroError.field(flag, text, "a folder hero may write in", f"{existing} is not writable.")
