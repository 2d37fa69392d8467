"""Safety: nothing that comes with a checkpoint runs, the command line writes only where it is told, and
concurrent calls record only their own tower calls.

- Code shipped with a checkpoint (``auto_map`` naming a module of the checkpoint folder) never runs: hero gives
  every transformers loader ``trust_remote_code=False`` (it has no option to turn it on). A built-in model type
  loads transformers' own classes; a model type that only its own code implements is refused (one line, exit 2).
- Weights load only through safetensors or ``torch.load(weights_only=True)``: a pickled ``pytorch_model.bin`` (or
  open_clip checkpoint) whose objects would run code is refused, its code never run; one of tensors only loads.
- Every file a command writes is an output it was given (or ``hero bench``'s documented ./hero-bench-results),
  and a refused call writes nothing at all. Watched: the cwd, HOME, XDG_CACHE_HOME, HF_HOME, TMPDIR,
  MPLCONFIGDIR, the checkpoints and the outputs' folder (every file and folder, with size and mtime), plus an
  audit hook (``sys.addaudithook``) that sees every file Python opens for writing, anywhere. In-process, the
  libraries imported earlier keep the cache paths they read then, so the audit hook is what covers those; one
  fresh ``hero run`` process with every cache variable pointed into the watched folders covers import time.

Each marker file below is written only if checkpoint code (an imported module, an unpickled object) runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from hero_core import HeroError

from .test_cli import LAYERS, main, save_checkpoint

#: A module shipped with a checkpoint: importing it writes the marker (then it offers transformers' own classes).
OWN_CODE = '''"""Checkpoint code: importing it writes a marker file."""
from pathlib import Path

Path({marker!r}).write_text("checkpoint code ran")

from transformers import CLIPConfig as EvilClipConfig, CLIPModel as EvilClipModel  # noqa: E402
from transformers import LlavaNextConfig as EvilConfig  # noqa: E402
from transformers import LlavaNextForConditionalGeneration as EvilModel  # noqa: E402
from transformers import LlavaNextProcessor as EvilProcessor  # noqa: E402
from transformers import CLIPTokenizerFast as EvilTokenizer  # noqa: E402
'''
LLAVA_MAP = {
    "AutoConfig": "evil.EvilConfig",
    "AutoModel": "evil.EvilModel",
    "AutoModelForImageTextToText": "evil.EvilModel",
    "AutoProcessor": "evil.EvilProcessor",
}
CLIP_MAP = {"AutoConfig": "evil.EvilClipConfig", "AutoModel": "evil.EvilClipModel"}


class Unpickled:
    """A pickled object whose loading runs code (``exec``): what ``torch.load(weights_only=False)`` would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pickle ran')",)


def _add_own_code(folder: Path, marker: Path, auto_map: dict[str, str], model_type: str | None = None) -> None:
    """``evil.py`` in the folder and ``auto_map`` entries pointing at it in every config that can carry one."""
    (folder / "evil.py").write_text(OWN_CODE.format(marker=str(marker)))
    for name, entries in (
        ("config.json", auto_map),
        ("processor_config.json", {"AutoProcessor": "evil.EvilProcessor"}),
        ("preprocessor_config.json", {"AutoProcessor": "evil.EvilProcessor"}),
        ("tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", None]}),
    ):
        path = folder / name
        if path.is_file():
            config = json.loads(path.read_text())
            config["auto_map"] = entries
            if model_type is not None and name == "config.json":
                config["model_type"] = model_type
            path.write_text(json.dumps(config))


def _pickle_weights(folder: Path, marker: Path | None) -> None:
    """Replace ``model.safetensors`` by a pickled ``pytorch_model.bin`` (with a code-running object unless None)."""
    from safetensors.torch import load_file

    state = dict(load_file(folder / "model.safetensors"))
    if marker is not None:
        state["hero_unpickled"] = Unpickled(marker)  # type: ignore[assignment]
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    """The tiny LLaVA-NeXT and a tiny CLIP saved, and variants of them that carry code or code-running pickles."""
    from hero_adapters.testing import build_tiny_clip

    root = tmp_path_factory.mktemp("safety")
    files = save_checkpoint(root, tiny)
    markers = root / "markers"
    markers.mkdir()
    scorer = build_tiny_clip()
    scorer.model.save_pretrained(root / "clip")
    scorer.tokenizer.save_pretrained(root / "clip")
    for name, base in (("own-code", "model"), ("own-type", "model"), ("pickled", "model"), ("bin", "model"),
                       ("clip-own-code", "clip"), ("clip-pickled", "clip")):  # fmt: skip
        shutil.copytree(root / base, root / name)
    _add_own_code(root / "own-code", markers / "own-code", LLAVA_MAP)
    _add_own_code(root / "own-type", markers / "own-type", LLAVA_MAP, model_type="hero_own_vlm")
    _add_own_code(root / "clip-own-code", markers / "clip-own-code", CLIP_MAP)
    _pickle_weights(root / "pickled", markers / "pickled")
    _pickle_weights(root / "bin", None)
    _pickle_weights(root / "clip-pickled", markers / "clip-pickled")
    (root / "rows.jsonl").write_text(json.dumps({"id": 1, "image": "card.png", "prompt": "what is it"}) + "\n")
    return {**files, "root": root, "markers": markers, "clip": root / "clip",
            **{name: root / name for name in ("own-code", "own-type", "pickled", "bin", "clip-own-code",
                                              "clip-pickled", "rows.jsonl")}}  # fmt: skip


@pytest.fixture(autouse=True)
def modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where transformers would copy a checkpoint's module before importing it (only if hero trusted it)."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf-modules"))


def _ran(ckpt: dict[str, Path]) -> list[str]:
    return sorted(path.name for path in ckpt["markers"].iterdir())


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("Loading weights")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("hero: error: ")
    return lines[0]


def _command(name: str, model: Path, ckpt: dict[str, Path], out: Path, *extra: Any) -> list[Any]:
    if name == "run":
        return ["run", "--model", model, "--image", ckpt["image"], "--prompt", "what", "--max-new-tokens", "1",
                "--json", out / "run.json", *LAYERS, "--device", "cpu", *extra]  # fmt: skip
    return ["eval", "--model", model, "--data", ckpt["rows.jsonl"], "--keep-ratios", "0.5", "--max-new-tokens", "1",
            "--json", out / "eval.json", *LAYERS, "--device", "cpu", *extra]  # fmt: skip


# ------------------------------------------------------------------------------------- trust_remote_code
@pytest.mark.parametrize("command", ["run", "eval"])
def test_checkpoint_code_never_runs_a_builtin_type_loads_transformers_classes(ckpt, tmp_path, capsys, command):
    """A llava_next / clip checkpoint whose configs map every Auto class to its own module: transformers' own
    classes load (the module is never imported), and the command answers as usual."""
    code = main(*_command(command, ckpt["own-code"], ckpt, tmp_path, "--clip", ckpt["clip-own-code"]))
    assert code == 0, capsys.readouterr().err
    assert _ran(ckpt) == []
    assert (tmp_path / f"{command}.json").is_file()


@pytest.mark.parametrize("command", ["run", "eval"])
def test_a_model_type_only_its_own_code_implements_is_refused(ckpt, tmp_path, capsys, command):
    code = main(*_command(command, ckpt["own-type"], ckpt, tmp_path))
    line = _one_error(capsys)
    assert code == 2 and _ran(ckpt) == []
    assert line.startswith(f"hero: error: --model={str(ckpt['own-type'])!r} is invalid: expected a checkpoint whose")
    assert "auto_map" in line and "trust_remote_code is always off" in line and "'-hf' checkpoints" in line
    assert not (tmp_path / f"{command}.json").exists()


@pytest.fixture
def lmms_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``hero_adapters.lmms._checked_model_type`` (the plugin's config read), imported afresh against a stand-in
    base class (lmms-eval itself is not installed here: ``make test-lmms-eval``); the module is put back after."""
    import importlib
    import types

    import hero_adapters

    base = types.ModuleType("lmms_eval.api.model")
    base.lmms = type("lmms", (), {})  # type: ignore[attr-defined]
    for name, module in (("lmms_eval", types.ModuleType("lmms_eval")), ("lmms_eval.api", types.ModuleType("x")),
                         ("lmms_eval.api.model", base)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    saved = sys.modules.pop("hero_adapters.lmms", None), vars(hero_adapters).pop("lmms", None)
    try:
        yield importlib.import_module("hero_adapters.lmms")._checked_model_type
    finally:
        sys.modules.pop("hero_adapters.lmms", None)
        vars(hero_adapters).pop("lmms", None)
        if saved[0] is not None:
            sys.modules["hero_adapters.lmms"] = saved[0]
        if saved[1] is not None:
            hero_adapters.lmms = saved[1]  # type: ignore[attr-defined]


def test_python_loaders_never_run_checkpoint_code(ckpt, lmms_check):
    from transformers import CLIPModel, LlavaNextForConditionalGeneration

    from hero_adapters.evaluate import host_config, load_host
    from hero_adapters.text_scorers import HFClipTextScorer

    host = load_host(ckpt["own-code"], device="cpu")
    assert type(host.model) is LlavaNextForConditionalGeneration
    assert type(HFClipTextScorer.from_pretrained(ckpt["clip-own-code"]).model) is CLIPModel
    with pytest.raises(HeroError, match=r"^--model=.*trust_remote_code is always off"):
        host_config(ckpt["own-type"])
    with pytest.raises(HeroError, match=r"^pretrained=.*trust_remote_code is always off"):
        lmms_check(str(ckpt["own-type"]), object)
    assert lmms_check(str(ckpt["own-code"]), object) == "llava_next"
    assert _ran(ckpt) == []


LOADERS = ("AutoConfig", "AutoProcessor", "AutoTokenizer", "AutoModelForImageTextToText", "CLIPModel")
WEIGHT_LOADERS = ("AutoModelForImageTextToText", "CLIPModel")


@contextmanager
def recorded_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int, dict[str, Any]]]]:
    """Every ``from_pretrained`` of the classes hero calls: (class, nesting depth, keyword arguments); depth 0 is
    hero's own call, deeper ones are transformers' calls inside it."""
    import open_clip
    import transformers

    calls: list[tuple[str, int, dict[str, Any]]] = []
    depth = [0]

    def recording(name: str, original: Any) -> Any:
        def load(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, depth[0], dict(kwargs)))
            depth[0] += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1

        return load

    for name in LOADERS:
        cls = getattr(transformers, name)
        monkeypatch.setattr(cls, "from_pretrained", recording(name, cls.from_pretrained))
    monkeypatch.setattr(open_clip, "create_model", recording("open_clip.create_model", open_clip.create_model))
    yield calls


def test_every_loader_gets_trust_remote_code_false_and_weights_only(ckpt, tmp_path, capsys, monkeypatch, lmms_check):
    from hero_adapters.text_scorers import OpenClipTextScorer

    folder = _open_clip_folder(tmp_path / "oc", None)
    with recorded_loads(monkeypatch) as calls:
        assert main(*_command("run", ckpt["model"], ckpt, tmp_path, "--clip", ckpt["clip"])) == 0
        assert main("layers", "--model", ckpt["model"], "--images", ckpt["image"], "--device", "cpu") == 0
        lmms_check(str(ckpt["model"]), object)
        OpenClipTextScorer.create(f"local-dir:{folder}")
    capsys.readouterr()
    ours = [(name, kwargs) for name, depth, kwargs in calls if depth == 0]
    assert {name for name, _ in ours} == {*LOADERS, "open_clip.create_model"}  # every loader was seen
    for name, kwargs in ours:
        if name != "open_clip.create_model":
            assert kwargs.get("trust_remote_code") is False, (name, kwargs)  # explicit: no interactive prompt
        if name in (*WEIGHT_LOADERS, "open_clip.create_model"):
            assert kwargs.get("weights_only") is True, (name, kwargs)
    assert not [call for call in calls if call[2].get("trust_remote_code") or call[2].get("weights_only") is False]


# ------------------------------------------------------------------------------------------------ pickles
def _open_clip_folder(folder: Path, marker: Path | None) -> Path:
    """A tiny open_clip ``local-dir:`` checkpoint: its config and a pickled ``open_clip_pytorch_model.bin``."""
    from open_clip.model import CLIP

    folder.mkdir(parents=True)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    state: dict[str, Any] = dict(CLIP(**model_cfg).state_dict())  # type: ignore[arg-type]
    if marker is not None:
        state["hero_unpickled"] = Unpickled(marker)
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    return folder


@pytest.mark.parametrize("flag", ["--model", "--clip"])
def test_pickled_weights_that_would_run_code_are_refused(ckpt, tmp_path, capsys, flag):
    model, extra = (ckpt["pickled"], ()) if flag == "--model" else (ckpt["model"], ("--clip", ckpt["clip-pickled"]))
    code = main(*_command("run", model, ckpt, tmp_path, *extra))
    line = _one_error(capsys)
    assert code == 2 and _ran(ckpt) == []
    named = ckpt["pickled"] if flag == "--model" else ckpt["clip-pickled"]
    assert line.startswith(f"hero: error: {flag}={str(named)!r} is invalid: expected weights that load without")
    assert "pytorch_model.bin holds pickled objects other than tensors" in line and "weights_only=True" in line
    assert not (tmp_path / "run.json").exists()


def test_python_loaders_refuse_code_running_pickles_and_load_tensor_pickles(ckpt, tmp_path, monkeypatch):
    from hero_adapters.evaluate import load_host
    from hero_adapters.text_scorers import HFClipTextScorer, OpenClipTextScorer

    markers = ckpt["markers"]
    with pytest.raises(HeroError, match=r"^--model=.*pytorch_model\.bin holds pickled objects"):
        load_host(ckpt["pickled"], device="cpu")
    with pytest.raises(HeroError, match=r"^path_or_id=.*pytorch_model\.bin holds pickled objects"):
        HFClipTextScorer.from_pretrained(ckpt["clip-pickled"])
    folder = _open_clip_folder(tmp_path / "open-clip-pickled", markers / "open-clip")
    with pytest.raises(HeroError, match=r"^model_name='local-dir:.*open_clip_pytorch_model\.bin holds pickled"):
        OpenClipTextScorer.create(f"local-dir:{folder}")
    import open_clip

    model_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "hero-tiny-test", model_cfg)  # a named architecture
    with pytest.raises(HeroError, match=r"^pretrained=.*open_clip_pytorch_model\.bin holds pickled objects"):
        OpenClipTextScorer.create("hero-tiny-test", pretrained=folder / "open_clip_pytorch_model.bin")
    assert _ran(ckpt) == []
    # Pickles of tensors only still load, and torch.load itself is asked for weights_only=True (transformers'
    # .bin path does not forward hero's weights_only: this records what torch.load really receives).
    seen: list[object] = []
    load = torch.load

    def recording(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    assert load_host(ckpt["bin"], device="cpu").model.config.model_type == "llava_next"
    plain = _open_clip_folder(tmp_path / "open-clip", None)
    assert OpenClipTextScorer.create(f"local-dir:{plain}").image_size == (32, 32)
    assert len(seen) >= 2 and all(value is True for value in seen), seen


# ------------------------------------------------------------------------------------ nothing else written
_WRITES: list[str] | None = None  # the paths written while a recording is active (the audit hook is permanent)
_HOOKED = False
_MODES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_EVENTS = ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.symlink", "os.link", "os.chmod",
           "os.utime", "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.rmtree", "tempfile.mkstemp",
           "tempfile.mkdtemp")  # fmt: skip
_TWO_PATHS = ("os.rename", "os.symlink", "os.link", "shutil.copyfile", "shutil.move")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    writes = _WRITES
    if writes is None or (event != "open" and event not in _EVENTS):
        return
    try:
        if event == "open":
            path, mode, flags = args
            writing = isinstance(mode, str) and any(c in mode for c in "wax+")
            if not (writing or (isinstance(flags, int) and flags & _MODES)):
                return
            paths: Sequence[Any] = (path,)
        else:
            paths = args[:2] if event in _TWO_PATHS else args[:1]
        found = [os.path.abspath(os.fsdecode(p)) for p in paths if isinstance(p, (str, bytes, os.PathLike))]
        writes.extend(path for path in found if path != os.devnull)  # a subprocess's stdin is no file write
    except Exception as error:  # never break the call under test; make the test fail instead
        writes.append(f"<audit hook failed on {event}: {error!r}>")


@contextmanager
def recorded_writes() -> Iterator[list[str]]:
    """Every path Python opens for writing (or makes, moves, removes) while the block runs, anywhere."""
    global _WRITES, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)
        _HOOKED = True
    _WRITES = []
    try:
        yield _WRITES
    finally:
        _WRITES = None


def tree(*roots: Path) -> dict[str, tuple[bool, int, int]]:
    """Every file and folder under ``roots``: (is a folder, size, mtime in ns); a folder's size and mtime are 0."""
    found = {}
    for root in roots:
        for path in root.rglob("*"):
            stat = path.lstat()
            folder = path.is_dir() and not path.is_symlink()
            found[str(path)] = (folder, 0 if folder else stat.st_size, 0 if folder else stat.st_mtime_ns)
    return found


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ckpt: dict[str, Path]) -> dict[str, Path]:
    """A fresh cwd and HOME, caches and temp folder inside tmp_path (environment and ``tempfile.tempdir``)."""
    roots = {name: tmp_path / name for name in ("cwd", "home", "cache", "hf-home", "tmp", "mpl", "out")}
    for folder in roots.values():
        folder.mkdir()
    for variable, name in (("HOME", "home"), ("XDG_CACHE_HOME", "cache"), ("HF_HOME", "hf-home"), ("TMPDIR", "tmp"),
                           ("MPLCONFIGDIR", "mpl")):  # fmt: skip
        monkeypatch.setenv(variable, str(roots[name]))
    monkeypatch.setattr(tempfile, "tempdir", str(roots["tmp"]))
    monkeypatch.chdir(roots["cwd"])
    return {**roots, "root": ckpt["root"]}


def _tiny_tower(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=336, patch_size=112
    )
    return CLIPVisionModel(config).to(device, dtype).eval()


BENCH = ["bench", "core", "--device", "cpu", "--views", "2", "--repeats", "1", "--forward-repeats", "1"]
# command -> (argv, the files it writes); OUT is the outputs' folder, CWD the working directory.
WRITING = {
    "run": (["run", "MODEL", "--image", "IMAGE", "--prompt", "what", "--max-new-tokens", "1", "--clip", "CLIP",
             "--json", "OUT/run.json", "--show", "OUT/run.png", *LAYERS], ["OUT/run.json", "OUT/run.png"]),
    "run --data": (["run", "MODEL", "--data", "ROWS", "--max-new-tokens", "1", "--json", "OUT/rows.jsonl", *LAYERS],
                   ["OUT/rows.jsonl"]),
    "show": (["show", "MODEL", "--image", "IMAGE", "--prompt", "what", "--out", "OUT/show.png", "--layers", "1",
              "--json", "OUT/show.json", *LAYERS], ["OUT/show.png", "OUT/show_layers.png", "OUT/show.json"]),
    "eval": (["eval", "MODEL", "--data", "ROWS", "--keep-ratios", "0.5", "--max-new-tokens", "1", "--clip", "CLIP",
              "--json", "OUT/eval.json"], ["OUT/eval.json"]),
    "layers": (["layers", "MODEL", "--images", "IMAGE", "--json", "OUT/layers.json"], ["OUT/layers.json"]),
    "flops": (["flops", "--tokens", "2673", "583"], []),
    "bench --out": ([*BENCH, "--out", "OUT/bench"], ["OUT/bench/core.json", "OUT/bench/core.md"]),
    # without --out: the documented default, ./hero-bench-results (docs/benchmarks.md)
    "bench": (BENCH, ["CWD/hero-bench-results/core.json", "CWD/hero-bench-results/core.md"]),
}  # fmt: skip
REFUSED = {
    "argparse": ["run", "MODEL", "--image", "IMAGE", "--prompt", "what", "--keep-ratio", "0", "--json", "OUT/x.json"],
    "missing --json folder": ["run", "MODEL", "--image", "IMAGE", "--prompt", "what", "--json", "CWD/new/x.json",
                              "--set", "low_layers=99"],
    "bad --set": ["run", "MODEL", "--image", "IMAGE", "--prompt", "what", "--json", "OUT/x.json", "--show",
                  "OUT/x.png", "--set", "low_layers=99"],
    "own code": ["run", "--model", "OWN", "--image", "IMAGE", "--prompt", "what", "--json", "OUT/x.json"],
    "pickled --model": ["run", "--model", "PICKLED", "--image", "IMAGE", "--prompt", "what", "--json", "OUT/x.json",
                        "--show", "OUT/x.png", *LAYERS],
    "pickled --clip": ["eval", "MODEL", "--data", "ROWS", "--clip", "CLIP_PICKLED", "--json", "OUT/x.json"],
    "eval missing data": ["eval", "MODEL", "--data", "CWD/missing.jsonl", "--json", "OUT/x.json"],
    "layers missing image": ["layers", "MODEL", "--images", "CWD/missing.png", "--json", "OUT/x.json"],
    "bench --out a file": [*BENCH, "--out", "IMAGE"],
    "demo --out a file": ["demo", "--out", "IMAGE"],
}  # fmt: skip


def _path(arg: str, roots: dict[str, Path]) -> str:
    return arg.replace("OUT/", f"{roots['out']}/").replace("CWD/", f"{roots['cwd']}/")


def _argv(argv: Sequence[str], ckpt: dict[str, Path], roots: dict[str, Path]) -> list[str]:
    names = {"MODEL": ["--model", str(ckpt["model"]), "--device", "cpu"], "IMAGE": [str(ckpt["image"])],
             "CLIP": [str(ckpt["clip"])], "ROWS": [str(ckpt["rows.jsonl"])], "OWN": [str(ckpt["own-type"])],
             "PICKLED": [str(ckpt["pickled"])], "CLIP_PICKLED": [str(ckpt["clip-pickled"])]}  # fmt: skip
    out: list[str] = []
    for arg in argv:
        out += names.get(arg, [_path(arg, roots)])
    return out


def _expected(paths: Sequence[str], roots: dict[str, Path]) -> set[str]:
    """The files and the folders made for them (those that do not exist yet)."""
    files = {_path(p, roots) for p in paths}
    made = {str(parent) for f in files for parent in Path(f).parents if not parent.exists()}
    return files | made


@pytest.mark.parametrize("name", list(WRITING))
def test_a_command_writes_only_its_outputs(ckpt, watched, capsys, monkeypatch, name):
    from hero_adapters.bench import core

    monkeypatch.setattr(core, "clip_tower", _tiny_tower)
    argv, outputs = WRITING[name]
    expected = _expected(outputs, watched)
    before = tree(*watched.values())
    with recorded_writes() as writes:
        code = main(*_argv(argv, ckpt, watched))
    assert code == 0, capsys.readouterr().err
    after = tree(*watched.values())
    changed = {path for path in after if before.get(path) != after[path]}
    assert changed == expected and set(before) <= set(after)  # new or changed: exactly the outputs; none removed
    assert set(writes) <= expected, sorted(set(writes) - expected)  # and nothing anywhere else, as Python sees it
    assert {path for path in writes if not Path(path).is_dir()} == {p for p in expected if Path(p).is_file()}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_refused_call_writes_nothing_at_all(ckpt, watched, capsys, monkeypatch, name):
    from hero_adapters.bench import core

    monkeypatch.setattr(core, "clip_tower", _tiny_tower)
    before = tree(*watched.values())
    with recorded_writes() as writes:
        code = main(*_argv(REFUSED[name], ckpt, watched))
    assert code == 2
    _one_error(capsys)
    assert tree(*watched.values()) == before
    assert writes == []
    assert _ran(ckpt) == []


def test_a_fresh_hero_process_writes_only_its_output(ckpt, tmp_path):
    """Import time included: every cache variable points into watched folders. The one entry that is not hero's:
    importing transformers' models imports torch._dynamo, which makes its (empty) cache folder
    $TMPDIR/torchinductor_<user>; hero writes nothing there."""
    roots = {name: tmp_path / name for name in ("cwd", "home", "cache", "hf-home", "tmp", "mpl", "torch", "out")}
    for folder in roots.values():
        folder.mkdir()
    env = {**os.environ, "HOME": str(roots["home"]), "XDG_CACHE_HOME": str(roots["cache"]),
           "HF_HOME": str(roots["hf-home"]), "TMPDIR": str(roots["tmp"]), "MPLCONFIGDIR": str(roots["mpl"]),
           "TORCH_HOME": str(roots["torch"]), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TQDM_DISABLE": "1", "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_MODULES_CACHE", "TORCHINDUCTOR_CACHE_DIR"):
        env.pop(variable, None)
    out = roots["out"] / "run.json"
    before = tree(*roots.values(), ckpt["root"])
    result = subprocess.run(
        [sys.executable, "-m", "hero_adapters.cli", "run", "--model", str(ckpt["model"]), "--image",
         str(ckpt["image"]), "--prompt", "what", "--max-new-tokens", "1", "--device", "cpu", "-q", "--json",
         str(out), *LAYERS],
        capture_output=True, text=True, env=env, cwd=roots["cwd"], timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = tree(*roots.values(), ckpt["root"])
    changed = {path for path in after if before.get(path) != after[path]}
    inductor = {p for p in changed if Path(p).parent == roots["tmp"] and Path(p).name.startswith("torchinductor_")}
    assert all(after[p][0] for p in inductor)  # folders ...
    assert not [p for p in after if str(Path(p).parent) in inductor]  # ... and empty
    assert changed - inductor == {str(out)}


# ------------------------------------------------------------------------------------------------ threads
def test_two_threads_record_only_their_own_tower_calls():
    """The recordings are per calling context: thread A's scope is open while thread B's tower call runs, and A
    records only its own call (a module-global recording would hand A both calls), deterministically ordered."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from hero_adapters import cls_attention_hooks

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=56, patch_size=14, initializer_factor=5.0)  # fmt: skip
    torch.manual_seed(3)
    tower = CLIPVisionModel(config).eval()
    pixels = [torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(seed)) for seed in (0, 1)]
    alone = []
    for image in pixels:
        with torch.no_grad(), cls_attention_hooks(tower, (1, 2)) as record:
            tower(image)
        alone.append(record.stacked())
    assert not torch.allclose(alone[0], alone[1])
    opened, second_done = threading.Barrier(2, timeout=30), threading.Event()
    records: dict[int, Any] = {}
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with torch.no_grad(), cls_attention_hooks(tower, (1, 2)) as record:
                opened.wait()  # both threads are here: this scope is open
                assert second_done.wait(30)  # the other thread's whole call ran while it was open
                tower(pixels[0])
            records[0] = record
        except BaseException as error:
            errors.append(error)

    def second() -> None:
        try:
            opened.wait()
            with torch.no_grad(), cls_attention_hooks(tower, (1, 2)) as record:
                tower(pixels[1])
            records[1] = record
        except BaseException as error:
            errors.append(error)
        finally:
            second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    for index in (0, 1):
        assert [len(records[index].rows[layer]) for layer in (1, 2)] == [1, 1]  # one tower call each
        assert torch.equal(records[index].stacked(), alone[index])
    assert all(not m._forward_pre_hooks for m in tower.modules())
