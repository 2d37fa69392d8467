"""What the command line prints besides results: one-line log records on stderr, and progress bars that keep
result lines on stdout whole."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ._args import _one_line

_LOG = logging.getLogger("hero_adapters.cli")  # also under `python -m hero_adapters.cli`
#: The loggers ``-v`` / ``-q`` configure: the library's own.
LOGGERS = ("hero_adapters", "hero_core")


class _Format(logging.Formatter):
    """``hero: note: ...`` (INFO), ``hero: warning: ...``, ``hero: debug: ...``: one line each."""

    def format(self, record: logging.LogRecord) -> str:
        label = {logging.DEBUG: "debug", logging.INFO: "note", logging.WARNING: "warning"}.get(record.levelno, "error")
        return f"hero: {label}: {_one_line(record.getMessage())}"


def _configure_logging(verbose: int, quiet: bool) -> Callable[[], None]:
    """Send the library's loggers to stderr for one command (INFO; ``-q`` WARNING; ``-v`` DEBUG); returns the undo."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(level)
        logger.addHandler(handler)
        logger.propagate = False

    def restore() -> None:
        for logger, old_level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = propagate

    return restore


class _Steps:
    """A tqdm bar on stderr (on a terminal only: ``disable=None``; never with ``-q``), and result lines on stdout
    that do not break it."""

    def __init__(self, total: int, desc: str, quiet: bool) -> None:
        self.bar: Any = None
        if not quiet:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm comes with transformers
                return
            self.bar = tqdm(total=total, desc=desc, leave=False, disable=None, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set_description(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def write(self, line: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _steps(args: argparse.Namespace, total: int, desc: str) -> _Steps:
    return _Steps(total, desc, bool(getattr(args, "quiet", False)))


#: The exit code of a command whose stdout reader went away (``hero show ... | head -1``): 128 + SIGPIPE, what a
#: shell reports for a program the closed pipe ended.
PIPE_CLOSED = 141


def _stdout_closed() -> None:
    """The reader of stdout is gone: send what is still buffered, and anything printed later, to the null
    device, so that neither a later ``print`` nor Python's flush at exit raises again (no traceback)."""
    if sys.stdout is not sys.__stdout__ or sys.stdout is None:  # a test's capture: nothing of the process's own
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor behind stdout
        pass


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False
