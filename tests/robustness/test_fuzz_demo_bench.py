"""Fuzzing ``hero demo`` and every ``hero bench`` command through ``main`` with junk argv.

Each argv mixes the real parser's own options (read from the parsers themselves) with bad numbers, empty
strings, unicode, missing paths, directories and repeated options, run in a fresh folder. The outcome is one of:

- exit code 2, exactly one line on stderr (``hero: error: ...``) naming the flag, nothing on stdout;
- exit code 0 with the usage on stdout (``--help``);
- the work function reached (the argv was valid): the demo and the benchmarks' heavy steps are stubs that raise
  ``Reached``, whose arguments are then checked (a folder that can be created, a thread count torch can use);

and in every case nothing is written to disk (the folder's tree is compared). Anything else (another exception, a
traceback, a hang) fails. ``KNOWN_BUGS`` are the bugs this fuzzing found (all fixed): each has a test below that
keeps it fixed, and the fuzzing fails if one comes back.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import io
import math
import os
import re
import signal
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image

from hero_adapters.bench import BENCHMARKS, _common
from hero_adapters.cli import DEMO_FILES, build_parser, main

#: The bugs the fuzzing found (fixed): id -> what went wrong.
KNOWN_BUGS = {
    "encode-threads": "hero bench encode --threads N: N < 1 or a huge N is not refused (torch.set_num_threads "
    "raises RuntimeError / ValueError with a traceback; 100000 threads segfault in the first matmul)",
    "bench-out": "hero bench NAME --out DIR: a DIR that cannot be created (under a file, under /proc, a NUL "
    "byte) passes the checks; the benchmark runs to the end, then write_results fails with a traceback",
    "demo-out": "hero demo --out DIR: a DIR whose parent exists but cannot hold it (/proc/x) passes the checks "
    "and run_demo's mkdir raises; a NUL byte in DIR raises ValueError in _check_demo_folder",
    "line-break": "an unrecognized argument holding a line break is echoed raw: two lines on stderr",
    "long-name": "a path argument with a file name over 255 bytes (demo --out / --image, bench --out): "
    "Path.exists() / is_file() raise OSError ENAMETOOLONG with a traceback",
}
#: The most torch threads a benchmark may be given (anything beyond is no machine's core count).
MAX_THREADS = 1024
#: The per-call limit: every call here takes milliseconds.
DEADLINE_S = 20


class Reached(Exception):
    """A stubbed work function was called: the argv passed every check."""

    def __init__(self, work: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(work)
        self.work, self.args, self.kwargs = work, args, kwargs


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


class Hang(BaseException):
    """A call ran past ``DEADLINE_S`` (a BaseException: ``main`` must not swallow it)."""


# ---------------------------------------------------------------------------------------------- the parsers
@cache
def bench_parser(name: str) -> argparse.ArgumentParser:
    """The parser ``hero bench NAME`` builds (captured at its ``parse_args``; nothing runs)."""
    module = importlib.import_module(f"hero_adapters.bench.{BENCHMARKS[name]}")

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(self)

    with mock.patch.object(_common.Parser, "parse_args", capture):
        try:
            module.main([])
        except _Captured as captured:
            return captured.parser
    raise AssertionError(f"hero bench {name} never parsed its argv")


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = commands.choices[name]
    return sub


def _parsers(command: str) -> list[argparse.ArgumentParser]:
    if command == "demo":
        return [_subparser("demo")]
    which = command.removeprefix("bench").strip()
    names = [which] if which in BENCHMARKS else list(BENCHMARKS)  # "all" and a bare "bench": every benchmark
    return [_subparser("bench"), *(bench_parser(name) for name in names)]


def _choices(command: str) -> list[str]:
    return sorted({str(c) for p in _parsers(command) for a in p._actions if a.choices for c in a.choices})


# --------------------------------------------------------------------------------------------- the values
PATHS = [
    "",
    ".",
    "..",
    "/",
    "img.png",
    "ü.png",
    "broken.png",
    "bomb.png",
    "file.txt",
    "folder",
    "folder/",
    "folder/pic.png",
    "demo-out",
    "demo-out/input.png",
    "new",
    "new/deeper",
    "file.txt/sub",
    "/nonexistent/x",
    "/proc/hero-fuzz",
    "benchmarks/results",
    "a\x00b",
]
NUMBERS = ["0", "-0", "1", "2", "3", "4", "5", "13", "-1", "0.5", "0.2", "1.0", "1.5", "nan", "inf", "-inf", "1e309"]
NUMBERS += ["1e-9", "99999999999999999999", str(2**63), "0x10", "1_000", " 1", "\u0661", "100000"]
JUNK = ["", " ", "-", "--", "---", "-x", "--no-such-flag", "ü", "日本", "\t", "=", "a" * 300, "a\nb"]


def _plausible(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    """The option with values of the kind it takes, mostly good ones (a valid argv needs them), one or a few."""
    flag = st.sampled_from(action.option_strings)
    if action.nargs == 0:
        return flag.map(lambda f: [f])
    if action.choices:
        one = st.sampled_from([str(c) for c in action.choices])
    elif action.type is int:  # mostly good, sometimes a bound or beyond
        one = st.sampled_from(["1", "2", "3", "5", "1", "2", "0", "-1", "100000", "99999999999999999999", "1.5"])
    elif action.type is float or "keep_ratio" in action.dest:
        one = st.sampled_from(["0.2", "0.5", "1", "0.2", "0.5", "1", "0", "1.0001", "-0.5", "nan", "inf", "1e309"])
    else:  # paths
        one = st.sampled_from(PATHS)
    values = st.lists(one, min_size=1, max_size=2) if action.nargs in ("+", "*") else one.map(lambda v: [v])
    return st.tuples(flag, values).map(lambda fv: [fv[0], *fv[1]])


@cache
def _words(command: str) -> st.SearchStrategy[list[str]]:
    actions = [a for p in _parsers(command) for a in p._actions if a.option_strings and a.dest != "help"]
    options = sorted({s for a in actions for s in a.option_strings})
    flag = st.sampled_from([*options, "--no-such-flag"])
    abbreviated = st.sampled_from([o for o in options if o.startswith("--")]).flatmap(
        lambda o: st.integers(3, len(o)).map(lambda k: o[:k])
    )
    value = st.one_of(st.sampled_from([*PATHS, *NUMBERS, *JUNK, *_choices(command), "--help"]), st.text(max_size=6))
    plausible = st.one_of([_plausible(a) for a in actions])
    group = st.one_of(
        plausible,
        plausible,
        plausible,
        flag.map(lambda f: [f]),
        value.map(lambda v: [v]),
        st.tuples(flag, value).map(list),
        st.tuples(flag, value, value).map(list),
        st.tuples(flag, value).map(lambda fv: [f"{fv[0]}={fv[1]}"]),
        st.tuples(abbreviated, value).map(list),
    )
    return st.lists(group, max_size=5).map(lambda groups: [w for g in groups for w in g])


# ------------------------------------------------------------------------------------------- the folder
def _png(path: Path, size: tuple[int, int] = (8, 6)) -> None:
    Image.new("RGB", size, (200, 30, 30)).save(path)


def _bomb(path: Path) -> None:
    """A valid 1 x 1 PNG whose header claims 60000 x 60000 pixels (over Pillow's decompression-bomb limit)."""
    _png(path, (1, 1))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _populate(root: Path, checkout: bool) -> None:
    _png(root / "img.png")
    _png(root / "ü.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    _bomb(root / "bomb.png")
    (root / "file.txt").write_text("not an image\n")
    (root / "folder").mkdir()
    _png(root / "folder" / "pic.png")
    (root / "demo-out").mkdir()  # what an earlier `hero demo` wrote: may be written again
    _png(root / "demo-out" / "input.png")
    (root / "demo-out" / "report.json").write_text("{}\n")
    if checkout:  # the root of a hero checkout: --write-results is allowed
        (root / "pyproject.toml").write_text("[project]\nname = 'hero-prune'\n")
        (root / "benchmarks" / "results").mkdir(parents=True)


def _tree(root: Path) -> list[tuple[str, bool, int, int]]:
    out = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            stat = path.lstat()
            out.append((str(path.relative_to(root)), path.is_dir(), stat.st_size, stat.st_mtime_ns))
    return sorted(out)


# ------------------------------------------------------------------------------------------------ stubs
@dataclass
class Outcome:
    argv: list[str]
    code: int | None = None
    reached: Reached | None = None
    stderr: str = ""
    stdout: str = ""
    unchanged: bool = True
    folders: list[Path] = field(default_factory=list)  # what the benchmarks' output_folder returned
    raised: Exception | None = None  # what a known bug raised (see _raised_bug)
    bug: str | None = None  # the KNOWN_BUGS id it shows
    kind: str = ""  # else what check() found: "error", "help" or "reached"


def _stub(work: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise Reached(work, args, kwargs)

    return call


def _stubs(patch: pytest.MonkeyPatch, outcome: Outcome) -> None:
    """The demo's and every benchmark's first expensive step raise ``Reached``; ``output_folder`` is recorded."""
    patch.setattr("hero_adapters.demo.run_demo", _stub("run_demo"))
    patch.setattr("hero_adapters.bench.core.clip_tower", _stub("clip_tower"))
    patch.setattr("hero_adapters.bench.encode.run_tower", _stub("run_tower"))
    patch.setattr("hero_adapters.bench.encode.measure_memory", _stub("measure_memory"))
    patch.setattr("hero_adapters.bench.prefill._token_counts", _stub("_token_counts"))
    patch.setattr("hero_adapters.testing.build_llava_next", _stub("build_llava_next"))  # bench threads
    patch.setattr(torch, "set_num_threads", _stub("set_num_threads"))  # bench encode, before run_tower
    for module in {f"hero_adapters.bench.{m}" for m in BENCHMARKS.values()}:
        real = importlib.import_module(module).output_folder

        def recorded(*args: Any, real: Callable[..., Path] = real, **kwargs: Any) -> Path:
            folder = real(*args, **kwargs)
            outcome.folders.append(folder)
            return folder

        patch.setattr(f"{module}.output_folder", recorded)


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def call(argv: Sequence[str], checkout: bool = False) -> Outcome:
    """``main(argv)`` in a fresh folder with the work stubbed, judged there (``bug``, else ``check``): any other
    exception than those caught here, and any failed check, fails the test."""
    outcome = Outcome(list(argv))
    err, out = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder).resolve()
        _populate(root, checkout)
        before = _tree(root)
        with contextlib.chdir(root):  # the folder and the cwd are still there while the outcome is judged
            with (
                pytest.MonkeyPatch.context() as patch,
                contextlib.redirect_stderr(err),
                contextlib.redirect_stdout(out),
                _deadline(DEADLINE_S),
            ):
                _stubs(patch, outcome)
                try:
                    outcome.code = main(list(argv))
                except SystemExit as exit_:
                    outcome.code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else -1
                except Reached as reached:
                    outcome.reached = reached
                except (ValueError, OSError) as error:
                    outcome.raised = error
                    if _raised_bug(outcome) is None:
                        raise
            outcome.unchanged = _tree(root) == before
            outcome.stderr, outcome.stdout = err.getvalue(), out.getvalue()
            outcome.bug = _bug(outcome)
            if outcome.bug is None:
                outcome.kind = check(outcome)
    return outcome


# ----------------------------------------------------------------------------------------------- checks
def _virtual(path: Path) -> bool:
    """/proc and /sys: ``os.access`` says writable (to root) but no folder can be made there."""
    return path.resolve().parts[1:2] in (("proc",), ("sys",))


def creatable(folder: Path) -> bool:
    """``folder`` exists as a writable folder, or ``mkdir(parents=True)`` can make it."""
    if "\x00" in str(folder):
        return False
    if folder.is_dir():
        return os.access(folder, os.W_OK) and not _virtual(folder)
    if folder.exists():
        return False
    for parent in folder.parents:
        if parent.exists():
            return parent.is_dir() and os.access(parent, os.W_OK) and not _virtual(parent)
    return False


def _threads_ok(n: Any) -> bool:
    return isinstance(n, int) and 1 <= n <= MAX_THREADS


def _names_a_given_flag(line: str, argv: Sequence[str]) -> bool:
    """The line names a flag of ``argv`` (argparse takes unambiguous prefixes: ``--rep`` is ``--repeats``), the
    ``which`` argument, or echoes the tokens it did not recognise."""
    if "unrecognized arguments: " in line or "argument which: " in line:
        return True
    given = [t.split("=", 1)[0] for t in argv if t.startswith("-") and len(t) > 1]
    named = re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", line)
    return any(flag.startswith(token) for flag in named for token in given)


def _one_line(text: str) -> bool:
    return text.endswith("\n") and text.count("\n") == 1 and "\r" not in text


def _raised_bug(outcome: Outcome) -> str | None:
    error = outcome.raised
    if isinstance(error, OSError) and error.errno == errno.ENAMETOOLONG:
        return "long-name"
    if isinstance(error, ValueError) and "embedded null byte" in str(error) and outcome.argv[0] == "demo":
        return "demo-out"
    return None


def _bug(outcome: Outcome) -> str | None:
    """The ``KNOWN_BUGS`` id this outcome shows, if any."""
    reached = outcome.reached
    if outcome.raised is not None:
        return _raised_bug(outcome)
    if reached is not None and reached.work == "run_demo" and not creatable(reached.args[0]):
        return "demo-out"
    if reached is not None and reached.work == "set_num_threads" and not _threads_ok(reached.args[0]):
        return "encode-threads"
    if reached is not None and reached.work == "measure_memory" and not _threads_ok(reached.args[2].threads):
        return "encode-threads"
    if reached is not None and not all(creatable(f) for f in outcome.folders):
        return "bench-out"
    if outcome.code == 2 and not _one_line(outcome.stderr) and any("\n" in t or "\r" in t for t in outcome.argv):
        return "line-break"
    return None


def check(outcome: Outcome) -> str:
    """Assert the outcome is one of the three allowed; returns which ("error", "help", "reached")."""
    argv, err = outcome.argv, outcome.stderr
    assert outcome.unchanged, (argv, "wrote into the folder", err)
    assert "Traceback" not in err, (argv, err)
    if outcome.reached is not None:
        reached = outcome.reached
        if reached.work == "run_demo":
            out, options = reached.args[0], reached.kwargs
            assert creatable(out), (argv, out)
            if out.is_dir():
                assert all(any(p.match(name) for name in DEMO_FILES) for p in out.iterdir()), (argv, out)
            assert options["image"] is None or isinstance(options["image"], Image.Image), argv
            ratios = options["keep_ratios"]
            assert ratios and all(math.isfinite(r) and 0 < r <= 1 for r in ratios), (argv, ratios)
        else:
            assert outcome.folders or reached.work == "measure_memory", (argv, "the output folder was not checked")
            assert all(creatable(f) for f in outcome.folders), (argv, outcome.folders)
            if reached.work == "set_num_threads":
                assert _threads_ok(reached.args[0]), (argv, reached.args)
            if reached.work == "measure_memory":
                assert _threads_ok(reached.args[2].threads), (argv, reached.args[2])
        return "reached"
    if outcome.code == 0:
        assert outcome.stdout.startswith("usage: hero"), (argv, outcome.stdout[:200])
        assert err == "", (argv, err)
        return "help"
    assert outcome.code == 2, (argv, outcome.code, err)
    assert outcome.stdout == "", (argv, outcome.stdout)
    assert _one_line(err), (argv, "not one line", err)
    assert err.startswith("hero: error: "), (argv, err)
    assert _names_a_given_flag(err, argv), (argv, "names no flag that was given", err)
    return "error"


def _fuzz(argv: list[str], checkout: bool) -> None:
    outcome = call(argv, checkout)
    assert outcome.bug is None, (argv, KNOWN_BUGS[outcome.bug])
    event(outcome.kind)


# ------------------------------------------------------------------------------------------------ tests
COMMANDS = ["demo", "bench", *(f"bench {name}" for name in [*BENCHMARKS, "all"])]


@pytest.mark.parametrize("command", COMMANDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data(), checkout=st.booleans())
def test_junk_argv_is_refused_in_one_line_or_reaches_the_work(command: str, data: Any, checkout: bool) -> None:
    words = data.draw(_words(command), label="words")
    if command == "bench":  # the benchmark's name itself: given, missing, or junk
        which = data.draw(st.sampled_from(["", *BENCHMARKS, "all", "nonsense", "--out", "-h"]), label="which")
        argv = ["bench", *([which] if which else []), *words]
    else:
        argv = [*command.split(), *words]
    _fuzz(argv, checkout)


VALID = [
    (["demo"], "run_demo"),
    (["demo", "--out", "new", "--image", "img.png", "--keep-ratios", "1", "0.05", "-q"], "run_demo"),
    (["demo", "--out", "demo-out", "--image", "folder/pic.png"], "run_demo"),
    (["bench"], "clip_tower"),
    (["bench", "core", "--views", "1", "2", "--repeats", "1", "--out", "folder"], "clip_tower"),
    (["bench", "encode", "--tower", "clip-l14-336", "--threads", "1", "--tiny"], "set_num_threads"),
    (["bench", "encode", "--memory-mode", "a_host", "--tower", "siglip-so400m"], "measure_memory"),
    (["bench", "prefill", "--keep-ratios", "1", "0.2", "--skip-overhead", "--out", "new/deeper"], "_token_counts"),
    (["bench", "threads", "--calls", "1", "--repeats", "1"], "build_llava_next"),
    (["bench", "all", "--out", "new"], "clip_tower"),
]


@pytest.mark.parametrize(("argv", "work"), VALID, ids=[" ".join(argv) for argv, _ in VALID])
def test_valid_argv_reaches_the_work_function(argv: list[str], work: str) -> None:
    """The stubs are where the work starts: a valid argv gets there (else the fuzzing above checks nothing)."""
    outcome = call(argv)
    assert outcome.kind == "reached" and outcome.reached is not None and outcome.reached.work == work


def test_write_results_reaches_the_work_only_in_a_checkout() -> None:
    assert call(["bench", "core", "--write-results"], checkout=True).kind == "reached"
    refused = call(["bench", "core", "--write-results"], checkout=False)
    assert refused.kind == "error" and "--write-results" in refused.stderr


# --------------------------------------------------------------------------- the known bugs, one test each
def _refused(argv: list[str], flag: str) -> None:
    outcome = call(argv)
    assert outcome.bug is None, KNOWN_BUGS[outcome.bug]
    assert outcome.kind == "error" and flag in outcome.stderr, outcome


@pytest.mark.parametrize("threads", ["0", "-1", "100000", str(2**64)])
def test_bench_encode_refuses_thread_counts_torch_cannot_use(threads: str) -> None:
    _refused(["bench", "encode", "--threads", threads], "--threads")


@pytest.mark.parametrize("out", ["file.txt/sub", "/proc/hero-fuzz", "a\x00b"])
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_bench_refuses_an_out_folder_it_cannot_create(name: str, out: str) -> None:
    _refused(["bench", name, "--out", out], "--out")


@pytest.mark.parametrize("out", ["/proc/hero-fuzz", "a\x00b"])
def test_demo_refuses_an_out_folder_it_cannot_create(out: str) -> None:
    _refused(["demo", "--out", out], "--out")


@pytest.mark.parametrize(
    "argv", [["demo", "a\nb"], ["bench", "core", "a\nb"], ["bench", "threads", "\r"]], ids=["demo", "core", "threads"]
)
def test_an_unrecognized_argument_with_a_line_break_is_still_one_line(argv: list[str]) -> None:
    outcome = call(argv)
    assert outcome.bug is None, KNOWN_BUGS[outcome.bug]
    assert outcome.kind == "error"


@pytest.mark.parametrize(
    "argv", [["demo", "--out"], ["demo", "--image"], ["bench", "core", "--out"]], ids=["demo-out", "demo-image", "core"]
)
def test_a_file_name_too_long_for_the_file_system_is_refused(argv: list[str]) -> None:
    _refused([*argv, "a" * 300], argv[-1])


@pytest.mark.parametrize("link", ["dangling", "loop"])
@pytest.mark.parametrize("argv", [["bench", "core", "--out"], ["demo", "--out"]], ids=["bench", "demo"])
def test_a_symlinked_out_folder_that_cannot_be_made_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], link: str, argv: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    if link == "dangling":
        os.symlink(tmp_path / "missing", tmp_path / "out")
    else:
        os.symlink(tmp_path / "out", tmp_path / "out")
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        code = main([*argv, "out"])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("hero: error: --out="), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
