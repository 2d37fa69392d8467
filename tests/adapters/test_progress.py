"""Progress bars of the long commands: on stderr when it is a terminal, silent otherwise."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("tqdm")

from hero_adapters._progress import progress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_draw_on_a_terminal_stderr_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert list(progress([1, 2, 3], desc="quiet")) == [1, 2, 3]
    with progress_bar(2, "quiet") as bar:
        bar.update(2)
    assert capsys.readouterr() == ("", "")  # pytest's captured stderr is no terminal
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert list(progress(range(3), desc="bench core")) == [0, 1, 2]
    with progress_bar(3, "hero demo") as bar:
        bar.update(1)
    shown = terminal.getvalue()
    assert "bench core:" in shown and "hero demo:" in shown and "/3" in shown
    assert capsys.readouterr().out == ""


def test_hero_q_hides_the_bars_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from hero_adapters.cli import _configure_logging

    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    restore = _configure_logging(0, True)  # what `hero -q ...` sets up
    try:
        assert list(progress(range(3), desc="bench core")) == [0, 1, 2]
        with progress_bar(3, "hero demo") as bar:
            bar.update(1)
    finally:
        restore()
    assert terminal.getvalue() == ""
    assert logging.getLogger("hero_adapters").level == logging.NOTSET  # restored: bars show again
