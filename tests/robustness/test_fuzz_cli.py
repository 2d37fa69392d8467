"""Fuzzing the ``hero`` command line in-process: junk argv exits with 0 or 2 and one readable line, never a
traceback. ``main`` is fuzzed on the commands that fail or finish fast (no model can load: every ``--model`` is
a path that does not exist); the parser alone is fuzzed on every command."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from hero_adapters.cli import build_parser, main

COMMANDS = ["run", "show", "layers", "eval", "demo", "flops", "bench"]
FLAGS = [
    "--model",
    "--image",
    "--prompt",
    "--keep-ratio",
    "--keep-ratios",
    "--preset",
    "--set",
    "--layout",
    "--device",
    "--dtype",
    "--clip",
    "--data",
    "--out",
    "--max-new-tokens",
    "--batch-size",
    "--tokens",
    "--shape",
    "--bytes",
    "--compare",
    "-v",
    "-q",
    "--help",
    "--version",
    "--no-such-flag",
    "-",
    "--",
]
VALUES = [
    "0",
    "-0.1",
    "1e-9",
    "1",
    "1.0000001",
    "nan",
    "inf",
    "-inf",
    "0.2",
    "",
    " ",
    "hero",
    "no-such-preset",
    "alpha=2",
    "alpha=nan",
    "low_layers=(1,2)",
    "=",
    "cpu",
    "cuda:7",
    "float16",
    "int8",
    "vicuna-7b",
    "/nonexistent/model",
    "-5",
    "10",
    "3.5",
    "\x00",
    "ü",
    "a" * 300,
]
WORD = st.one_of(st.sampled_from(FLAGS), st.sampled_from(VALUES), st.text(max_size=6))


def _call(argv: Sequence[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with (
        tempfile.TemporaryDirectory() as folder,
        contextlib.chdir(folder),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(out),
    ):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    return code, err.getvalue()


def _check(argv: Sequence[str]) -> None:
    code, err = _call(argv)
    assert code in (0, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
    if code == 2:
        assert "hero" in err and "error" in err, (argv, err)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["flops", "run", "show", "layers", "eval", "nonsense", ""]), st.lists(WORD, max_size=7))
def test_main_with_junk_argv_exits_0_or_2(command: str, words: list[str]) -> None:
    argv = [command, *words] if command else words
    # never a model that could load: every --model is a path that does not exist
    argv = [w if i == 0 or argv[i - 1] != "--model" else "/nonexistent/model" for i, w in enumerate(argv)]
    if "--model" not in argv and command in ("run", "show", "layers", "eval"):
        argv += ["--model", "/nonexistent/model"]
    _check(argv)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([*COMMANDS, "junk"]), st.lists(WORD, max_size=8))
def test_the_parser_with_junk_argv_exits_0_or_2(command: str, words: list[str]) -> None:
    err, code = io.StringIO(), None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args([command, *words])
        except SystemExit as exit_:
            code = exit_.code
    assert code in (0, 2, None), (command, words, code, err.getvalue())
    assert "Traceback" not in err.getvalue()


def test_flops_with_a_valid_call_exits_0() -> None:
    assert _call(["flops", "--tokens", "100", "50"])[0] == 0
