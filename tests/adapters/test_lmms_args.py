"""The lmms-eval plugin's model_args, without lmms-eval: every argument checked before any weights load, errors
naming the argument as typed, a missing folder in our words, the warning for a ``clip`` no preset reads, and the
one console line that says HERO is active.

lmms-eval's stand-ins come from ``test_lmms_manifest`` (``stub_lmms_eval``; ``FakeLlavaHf`` records each build, so
``FakeLlavaHf.built == []`` means llava_hf never loaded). lmms-eval's console is loguru's logger; here a stand-in
``loguru`` module records what reaches it, and one test (run where loguru is installed: ``make test-lmms-eval``)
configures the real one as lmms-eval's CLI does and reads the line off its sink.
"""

from __future__ import annotations

import importlib
import io
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from hero_core import HeroError

from .test_lmms_manifest import FakeLlavaHf, stub_lmms_eval  # noqa: F401  (the fixture, used by name)

pytestmark = pytest.mark.usefixtures("stub_lmms_eval")


class Console:
    """Stands in for ``loguru.logger``: records (level, message)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, message: str) -> None:
        self.lines.append(("INFO", message))

    def warning(self, message: str) -> None:
        self.lines.append(("WARNING", message))


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> Console:
    recorder = Console()
    monkeypatch.setitem(sys.modules, "loguru", types.SimpleNamespace(logger=recorder))
    return recorder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    """The tiny LLaVA-NeXT's config (llava_hf is the stand-in: no weights needed), a tiny CLIP checkpoint with
    weights and tokenizer, a CLIP folder holding only its config, a file and a folder without config.json."""
    transformers = pytest.importorskip("transformers")
    from hero_adapters.testing import build_tiny_clip

    root = tmp_path_factory.mktemp("lmms-args")
    tiny.model.config.save_pretrained(root / "llava_next")
    clip = build_tiny_clip()
    clip.model.save_pretrained(root / "clip")
    clip.tokenizer.save_pretrained(root / "clip")
    transformers.CLIPConfig().save_pretrained(root / "clip-config-only")
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "empty").mkdir()
    return {name: root / name for name in ("llava_next", "clip", "clip-config-only", "notes.txt", "empty")}


@pytest.fixture
def clip_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each CLIP weight load, as the number of llava_hf builds before it (0: CLIP loaded first)."""
    transformers = pytest.importorskip("transformers")
    calls: list[int] = []
    real = transformers.CLIPModel.from_pretrained

    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(FakeLlavaHf.built))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", recorded)
    return calls


def _hero(**model_args: Any) -> Any:
    return importlib.import_module("hero_adapters.lmms").HeroLmms(**model_args)


def _refusal(folders: dict[str, Path], **model_args: Any) -> str:
    with pytest.raises(HeroError) as caught:
        _hero(**{"pretrained": str(folders["llava_next"]), "device": "cpu", **model_args})
    message = str(caught.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------- checked before any weights load
def test_a_bad_clip_fails_before_any_weights_load(
    folders: dict[str, Path], clip_loads: list[int], tmp_path: Path
) -> None:
    missing = tmp_path / "no-clip-here"
    assert _refusal(folders, clip=str(missing)) == (
        f"clip={str(missing)!r} is invalid: expected a checkpoint folder or a hub id. There is no such folder."
    )
    assert _refusal(folders, clip=str(folders["notes.txt"])) == (
        f"clip={str(folders['notes.txt'])!r} is invalid: expected a checkpoint folder or a hub id. "
        "It is a file, not a folder."
    )
    assert _refusal(folders, clip=str(folders["empty"])) == (
        f"clip={str(folders['empty'])!r} is invalid: expected a checkpoint folder with a config.json."
    )
    assert _refusal(folders, clip=str(folders["llava_next"])).startswith(
        "clip model_type='llava_next' is invalid: expected 'clip': a full CLIP checkpoint with a text tower"
    )
    # a CLIP config without weights: the weights fail to load, still before llava_hf's
    assert _refusal(folders, clip=str(folders["clip-config-only"])).startswith(
        f"clip={str(folders['clip-config-only'])!r} is invalid: expected a CLIPModel checkpoint"
    )
    assert clip_loads == [0]  # only the config-only folder got as far as CLIP's weight loader
    assert FakeLlavaHf.built == []


def test_a_hub_id_found_nowhere_is_said_in_our_words(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _refusal(folders, clip="hero-tests/no-such-clip") == (
        "clip='hero-tests/no-such-clip' is invalid: expected a checkpoint folder or a hub id. There is no such "
        "folder, and no model 'hero-tests/no-such-clip' in the local hub cache (HF_HUB_OFFLINE is set)."
    )
    with pytest.raises(HeroError) as caught:
        _hero(pretrained="hero-tests/no-such-llava")
    assert str(caught.value) == (
        "pretrained='hero-tests/no-such-llava' is invalid: expected a checkpoint folder or a hub id. There is no "
        "such folder, and no model 'hero-tests/no-such-llava' in the local hub cache (HF_HUB_OFFLINE is set)."
    )
    assert FakeLlavaHf.built == []


def test_a_missing_pretrained_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    for missing in (tmp_path / "llava", Path("./not/here/llava"), Path("~/llava-next")):
        with pytest.raises(HeroError) as caught:
            _hero(pretrained=str(missing))
        assert str(caught.value) == (
            f"pretrained={str(missing)!r} is invalid: expected a checkpoint folder or a hub id. "
            "There is no such folder."
        )
    assert FakeLlavaHf.built == []


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        (
            {"set_alpah": 0.7},
            "set_alpah=0.7 is invalid: expected a field of preset hero, one of ['set_alpha', 'set_density_weight', "
            "'set_exact', 'set_head_reduction', 'set_high_layers', 'set_low_layers', 'set_tau_t', 'set_tau_v']. "
            "Check the spelling.",
        ),
        ({"set_alpha": 5}, "set_alpha=5 is invalid: expected a float in [0, 1]."),
        ({"set_alpha": "x", "set_tau_t": 0.5}, "set_alpha='x' is invalid: expected a float in [0, 1]."),
        (
            {"preset": "uniform-random", "set_alpha": 0.5},
            "set_alpha=0.5 is invalid: expected a field of preset uniform-random, one of ['set_seed']. Check the "
            "spelling.",
        ),
        ({"set_keep_ratio": 0.5}, None),  # not a preset field: refused by name, not a TypeError
        ({"set_depth": 24}, None),
        (
            # the tiny tower has 6 layers (read from the config): layer 99 is refused before llava_hf loads
            {"set_low_layers": "[5,99]"},
            "set_low_layers: pruner layers=[5, 99] is invalid: expected 0-based encoder layers in [0, 5] (depth=6: "
            "this vision encoder has 6 layers). Choose layers the encoder has, or leave them out to get the paper's "
            "layers scaled to the depth.",
        ),
    ],
)
def test_preset_fields_are_named_as_typed_before_any_weights_load(
    folders: dict[str, Path], clip_loads: list[int], model_args: dict[str, Any], message: str | None
) -> None:
    got = _refusal(folders, clip=str(folders["clip"]), **model_args)
    if message is None:
        (key,) = model_args
        assert got.startswith(f"{key}={model_args[key]!r} is invalid: expected a field of preset hero, one of [")
    else:
        assert got == message
    assert FakeLlavaHf.built == [] and clip_loads == []


def test_the_uniform_preset_fields_listed_are_its_own() -> None:
    """The list above is the presets' own (a guard against a stale expected message)."""
    import dataclasses

    from hero_core import presets

    pruner = presets.get("uniform-random", 0.5)
    fields = {f.name for part in (pruner.allocator, pruner.selector) for f in dataclasses.fields(part)}
    assert fields == {"seed"}


# ------------------------------------------------------------------------------------- clip and what reads it
def test_clip_loads_before_llava_hf_and_the_console_says_hero_is_active(
    folders: dict[str, Path], tiny: Any, clip_loads: list[int], console: Console
) -> None:
    FakeLlavaHf.host = tiny
    pretrained, clip = str(folders["llava_next"]), str(folders["clip"])
    model = _hero(pretrained=pretrained, clip=clip, keep_ratio=0.5, set_alpha=0.6, device="cpu")
    assert clip_loads == [0]  # CLIP's weights loaded while llava_hf had not been built
    assert len(FakeLlavaHf.built) == 1
    assert model.vlm.text_scorer is not None
    assert console.lines == [
        (
            "INFO",
            f"hero: HERO active: preset hero, keep ratio 0.5, set_alpha=0.6 (relevance from clip={clip}; "
            f"encoder layers [1, 2, 5]) on {pretrained} (llava_next)",
        )
    ]


def test_cdpruner_gets_the_clip_scorer_its_per_token_relevance_needs(
    folders: dict[str, Path], tiny: Any, clip_loads: list[int]
) -> None:
    FakeLlavaHf.host = tiny
    model = _hero(
        pretrained=str(folders["llava_next"]),
        clip=str(folders["clip"]),
        keep_ratio=0.5,
        preset="cdpruner",
        device="cpu",
    )
    assert clip_loads == [0] and model.vlm.text_scorer is not None
    assert callable(model.vlm.text_scorer.score_tokens)


def test_cdpruner_without_clip_is_refused_before_any_weights_load(folders: dict[str, Path]) -> None:
    FakeLlavaHf.built.clear()
    message = _refusal(folders, preset="cdpruner", keep_ratio=0.4)
    assert message.startswith("clip=None is invalid: expected a CLIP checkpoint: preset cdpruner weighs each token")
    assert "clip=openai/clip-vit-large-patch14-336" in message and FakeLlavaHf.built == []


@pytest.mark.parametrize(
    ("model_args", "why"),
    [
        ({"preset": "uniform-random"}, "UniformAllocator.uses_relevance is False"),
        ({"preset": "thumbnail-attention"}, "ThumbnailAttentionAllocator.uses_relevance is False"),
        ({"preset": "hero", "set_alpha": 1.0}, "HeroAllocator.uses_relevance is False, alpha=1"),
    ],
)
def test_a_clip_no_preset_reads_is_checked_not_loaded_and_a_warning_says_so(
    folders: dict[str, Path], tiny: Any, clip_loads: list[int], console: Console, model_args: dict[str, Any], why: str
) -> None:
    FakeLlavaHf.host = tiny
    clip = str(folders["clip-config-only"])  # a config is enough: its weights are never loaded
    model = _hero(pretrained=str(folders["llava_next"]), clip=clip, keep_ratio=0.5, device="cpu", **model_args)
    assert clip_loads == [] and model.vlm.text_scorer is None
    preset = model_args["preset"]
    assert console.lines[0] == (
        "WARNING",
        f"hero: clip={clip} is ignored: preset {preset} reads no relevance ({why}); drop clip= or use a preset "
        "that reads it (cdpruner, hero, hero-native, hero-reference)",
    )
    assert [level for level, _ in console.lines] == ["WARNING", "INFO"]
    assert console.lines[1][1].startswith(f"hero: HERO active: preset {preset}, keep ratio 0.5")
    assert "no text relevance" in console.lines[1][1]


def test_an_ignored_clip_is_still_checked(folders: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    assert _refusal(folders, clip=str(missing), preset="uniform-random").endswith("There is no such folder.")
    assert _refusal(folders, clip=str(folders["llava_next"]), preset="cls-attention").startswith(
        "clip model_type='llava_next' is invalid"
    )
    assert FakeLlavaHf.built == []


def test_without_clip_the_hero_preset_warns_of_saliency_alone(
    folders: dict[str, Path], tiny: Any, console: Console
) -> None:
    FakeLlavaHf.host = tiny
    _hero(pretrained=str(folders["llava_next"]), keep_ratio=0.2, device="cpu")
    assert [level for level, _ in console.lines] == ["WARNING", "INFO"]
    assert console.lines[0][1].startswith("hero: no clip= checkpoint given, so hero allocates by visual saliency")
    assert console.lines[1][1].startswith("hero: HERO active: preset hero, keep ratio 0.2 (no text relevance;")


def test_without_loguru_the_lines_are_stdlib_warnings(
    folders: dict[str, Path], tiny: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Python's last-resort handler shows WARNING and above when nothing configured logging."""
    monkeypatch.setitem(sys.modules, "loguru", None)  # the import raises ImportError
    FakeLlavaHf.host = tiny
    with caplog.at_level(logging.WARNING, logger="hero_adapters.lmms"):
        _hero(pretrained=str(folders["llava_next"]), preset="uniform-random", keep_ratio=0.5, device="cpu")
    lines = [(record.levelno, record.getMessage()) for record in caplog.records if record.name == "hero_adapters.lmms"]
    assert len(lines) == 1 and lines[0][0] == logging.WARNING
    assert lines[0][1].startswith("hero: HERO active: preset uniform-random, keep ratio 0.5 (no text relevance) on")


def test_the_line_reaches_loguru_as_lmms_eval_configures_it(folders: dict[str, Path], tiny: Any) -> None:
    """lmms-eval's CLI: ``logger.remove(); logger.add(sys.stdout, level=args.verbosity)`` with INFO by default."""
    loguru = pytest.importorskip("loguru")
    logger = loguru.logger
    sink = io.StringIO()
    logger.remove()
    handler = logger.add(sink, level="INFO", format="{level} | {message}")
    try:
        FakeLlavaHf.host = tiny
        _hero(pretrained=str(folders["llava_next"]), preset="uniform-random", keep_ratio=0.25, device="cpu")
    finally:
        logger.remove(handler)
        logger.add(sys.stderr)
    lines = sink.getvalue().splitlines()
    assert [line for line in lines if "HERO active" in line] == [
        f"INFO | hero: HERO active: preset uniform-random, keep ratio 0.25 (no text relevance) "
        f"on {folders['llava_next']} (llava_next)"
    ]


@pytest.mark.parametrize(
    ("model_args", "message"),
    [
        ({"positions": "orignal"}, "positions='orignal' is invalid: expected one of ('contiguous', 'original')."),
        (
            {"layout": "refrence"},
            "layout='refrence' is invalid: expected one of ('vanilla', 'reference') "
            "(the llava_next adapter's layouts).",
        ),
        (
            {"reports": "."},
            "reports='.' is invalid: expected a file path for one JSON line per request. It is a folder.",
        ),
    ],
)
def test_layout_positions_and_reports_are_checked_before_any_weights_load(
    folders: dict[str, Path], model_args: dict[str, Any], message: str
) -> None:
    """Found in review: these three were checked only once llava_hf had loaded the model (or, reports, at the
    first write after generating)."""
    assert _refusal(folders, **model_args) == message
    assert FakeLlavaHf.built == []
