"""Progress bars for the long-running commands (benchmarks, the demo): tqdm on stderr, shown on a terminal only.

``disable=None`` is tqdm's "only on a TTY": piped output, CI logs and the test-suite get no bar; ``hero -q`` (the
library's logger set above INFO by the command line) hides them too. tqdm comes with
transformers (and huggingface_hub); without it the helpers return the plain items and a bar that does nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Protocol, TypeVar

__all__ = ["Bar", "progress", "progress_bar"]

T = TypeVar("T")


class Bar(Protocol):
    """What :func:`progress_bar` returns: a context manager whose ``update(n)`` advances the bar."""

    def update(self, n: float = 1, /) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> Bar: ...

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None, /
    ) -> Any: ...


class _NoBar:
    def update(self, n: float = 1, /) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None, /
    ) -> None:
        return None


def _disable() -> bool | None:
    """True under ``hero -q`` (the command line set the library's logger above INFO); else tqdm's TTY rule."""
    return True if logging.getLogger("hero_adapters").level > logging.INFO else None


def progress(items: Iterable[T], desc: str, *, total: int | None = None) -> Iterable[T]:
    """``items`` behind a progress bar on stderr (when it is a terminal and tqdm is installed)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return items
    bar: Iterable[T] = tqdm(items, desc=desc, total=total, leave=False, disable=_disable(), file=sys.stderr)
    return bar


def progress_bar(total: int, desc: str) -> Bar:
    """A progress bar of ``total`` steps on stderr (when it is a terminal); ``with progress_bar(3, "x") as bar:``."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return _NoBar()
    bar: Bar = tqdm(total=total, desc=desc, leave=False, disable=_disable(), file=sys.stderr)
    return bar
