"""The lmms-eval plugin without lmms-eval: the entry point, the manifest, the class it names, bad model_args,
and ``generate_until``'s bookkeeping around a stand-in for lmms-eval's ``llava_hf``.

lmms-eval is never imported for real here: every test puts small stand-ins for the few names the plugin reads
(``ModelManifest``, the ``lmms`` base class, ``get_model``, ``GenerationResult`` / ``TokenCounts``) into
``sys.modules``. The plugin against the real lmms-eval is ``make test-lmms-eval`` (tests/lmms_eval/).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import subprocess
import sys
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import hero_adapters
from hero_core import HeroError

ENTRY_POINT = "hero_adapters.lmms_manifest:manifests"


@dataclasses.dataclass(frozen=True)
class StubManifest:
    """lmms-eval 0.7.3's ``ModelManifest`` fields."""

    model_id: str
    simple_class_path: str | None = None
    chat_class_path: str | None = None
    aliases: tuple[str, ...] = ()


class StubLmms:
    """The part of ``lmms_eval.api.model.lmms`` the plugin relies on."""

    is_simple = True

    def __init__(self) -> None:
        self._rank, self._world_size = 0, 1
        self.cache_hook = None
        self.task_dict: dict[str, Any] = {}

    def clean(self) -> None: ...


@dataclasses.dataclass
class StubTokenCounts:
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclasses.dataclass
class StubGenerationResult:
    text: str
    token_counts: StubTokenCounts | None = None


class FakeLlavaHf(StubLmms):
    """Stands in for lmms-eval's chat ``llava_hf``: same model_args; answers requests one at a time, last request
    first, with ``self.model.generate`` and, like llava_hf, turns a generate error into an empty answer."""

    is_simple = False
    host: Any = None  # the session's tiny LLaVA-NeXT (set by each test)
    built: ClassVar[list[dict[str, Any]]] = []

    def __init__(
        self,
        pretrained: str = "llava-hf/llava-1.5-7b-hf",
        revision: str = "main",
        device: str = "cuda",
        dtype: str = "auto",
        batch_size: int = 1,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        device_map: str = "",
        chat_template: str | None = None,
        use_cache: bool = True,
        max_frames_num: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        assert kwargs == {}
        FakeLlavaHf.built.append({"pretrained": pretrained, "device": device, "batch_size": batch_size})
        self.model = self.host.model
        self._image_processor = self.host.processor
        self.tokenizer = self.host.processor.tokenizer
        self.device = torch.device("cpu")
        self.accelerator = None
        self.batch_size = int(batch_size)

    def generate_until(self, requests: list[Any]) -> list[Any]:
        out: list[Any] = [None] * len(requests)
        for index in reversed(range(len(requests))):
            _ctx, doc_to_messages, gen_kwargs, doc_id, task, split = requests[index].args
            doc = self.task_dict[task][split][doc_id]
            messages = doc_to_messages(doc)
            inputs = self._image_processor(
                images=[messages["image"]], text=[f"USER: <image> {messages['text']} ASSISTANT:"], return_tensors="pt"
            )
            extra = {"past_key_values": object()} if doc.get("refuse") else {}
            try:
                cont = self.model.generate(
                    **inputs, max_new_tokens=gen_kwargs["max_new_tokens"], do_sample=False, **extra
                )
                new = cont[0, inputs["input_ids"].shape[1] :]
                out[index] = StubGenerationResult(self.tokenizer.decode(new), StubTokenCounts(output_tokens=len(new)))
            except Exception:
                out[index] = StubGenerationResult("")
        return out


@dataclasses.dataclass
class Request:
    """The fields of ``lmms_eval.api.instance.Instance`` that llava_hf reads."""

    arguments: tuple[Any, ...]

    @property
    def args(self) -> tuple[Any, ...]:
        return self.arguments


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


@pytest.fixture
def stub_lmms_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    """lmms-eval stand-ins in ``sys.modules``; the plugin's modules are imported afresh against them."""
    models = _module("lmms_eval.models", get_model=lambda name: FakeLlavaHf if name == "llava_hf" else None)
    stubs = {
        "lmms_eval": _module("lmms_eval"),
        "lmms_eval.api": _module("lmms_eval.api"),
        "lmms_eval.api.model": _module("lmms_eval.api.model", lmms=StubLmms),
        "lmms_eval.api.instance": _module(
            "lmms_eval.api.instance", GenerationResult=StubGenerationResult, TokenCounts=StubTokenCounts
        ),
        "lmms_eval.models": models,
        "lmms_eval.models.registry_v2": _module("lmms_eval.models.registry_v2", ModelManifest=StubManifest),
    }
    for name, module in stubs.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("hero_adapters.lmms", "hero_adapters.lmms_manifest"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.delattr(hero_adapters, name.rsplit(".", 1)[1], raising=False)
    FakeLlavaHf.built.clear()


def test_entry_point_resolves_in_installed_metadata(stub_lmms_eval: None) -> None:
    found = [ep for ep in entry_points(group="lmms_eval.models") if ep.name == "hero"]
    assert len(found) == 1, "reinstall the project (pip install -e .): the entry point is read from its metadata"
    assert found[0].value == ENTRY_POINT
    manifests = found[0].load()  # what lmms-eval's registry does with it
    assert isinstance(manifests, tuple) and len(manifests) == 1
    (manifest,) = manifests
    assert isinstance(manifest, StubManifest)
    assert manifest.model_id == "hero"
    assert manifest.chat_class_path == "hero_adapters.lmms.HeroLmms"
    assert manifest.simple_class_path is None
    module_name, class_name = manifest.chat_class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    assert inspect.isclass(cls) and issubclass(cls, StubLmms)
    assert cls.is_simple is False  # lmms-eval refuses a chat path whose class says is_simple


def test_manifest_module_imports_only_the_manifest(stub_lmms_eval: None) -> None:
    before = set(sys.modules)
    importlib.import_module("hero_adapters.lmms_manifest")
    new = set(sys.modules) - before
    assert new == {"hero_adapters.lmms_manifest"}, new


def test_import_hero_adapters_leaves_lmms_eval_out() -> None:
    code = "import sys, hero_adapters; sys.exit(sorted(m for m in sys.modules if 'lmms' in m) or 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_without_lmms_eval_a_hero_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("lmms_eval", "lmms_eval.api", "lmms_eval.api.model"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import raises ImportError
    monkeypatch.delitem(sys.modules, "hero_adapters.lmms", raising=False)
    with pytest.raises(HeroError, match=r"pip install 'hero-prune\[lmms-eval\]'"):
        importlib.import_module("hero_adapters.lmms")


# ----------------------------------------------------------------------------------------------- bad model_args
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny: Any) -> dict[str, Path]:
    """Config-only checkpoint folders: the tiny LLaVA-NeXT's, and two model types HERO cannot serve here."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("lmms-configs")
    tiny.model.config.save_pretrained(root / "llava_next")
    transformers.LlavaConfig().save_pretrained(root / "llava")  # LLaVA-1.5: llava_hf loads it, it has no tiles
    transformers.InternVLConfig().save_pretrained(root / "internvl")  # a HERO host llava_hf does not load
    return {name: root / name for name in ("llava_next", "llava", "internvl")}


def _hero(**model_args: Any) -> Any:
    return importlib.import_module("hero_adapters.lmms").HeroLmms(**model_args)


@pytest.mark.parametrize(
    ("model_args", "needle"),
    [
        ({"pretrained": None}, "pretrained"),
        ({"keep_ratio": 0}, r"\(0, 1\]"),
        ({"keep_ratio": 1.5}, r"\(0, 1\]"),
        ({"keep_ratio": "high"}, r"\(0, 1\]"),
        ({"preset": "fastv"}, "preset"),
        ({"set_beta": 1}, "beta"),
        ({"set_low_layers": "five"}, "set_low_layers"),
        ({"foo": 1}, r"model_args=\['foo'\].*set_<preset field>.*'attn_implementation'"),
        ({"max_new_tokens": 16}, "max_new_tokens"),
        ({"batch_size": 4}, "--batch_size"),
    ],
)
def test_bad_model_args_raise_before_llava_hf_loads(
    stub_lmms_eval: None, checkpoints: dict[str, Path], model_args: dict[str, Any], needle: str
) -> None:
    with pytest.raises(HeroError, match=needle):
        _hero(**{"pretrained": str(checkpoints["llava_next"]), **model_args})
    assert FakeLlavaHf.built == []


@pytest.mark.parametrize("model_type", ["llava", "internvl"])
def test_unsupported_model_raises_with_the_supported_types(
    stub_lmms_eval: None, checkpoints: dict[str, Path], model_type: str
) -> None:
    with pytest.raises(HeroError, match=rf"model_type='{model_type}'.*\['llava_next', 'llava_onevision'\]"):
        _hero(pretrained=str(checkpoints[model_type]))
    assert FakeLlavaHf.built == []


def test_missing_checkpoint_raises(stub_lmms_eval: None, tmp_path: Path) -> None:
    with pytest.raises(HeroError, match="pretrained="):
        _hero(pretrained=str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------------------- generate_until's books
def _task(tiny: Any, refuse: int | None = None) -> tuple[dict[str, Any], list[Request]]:
    docs = [
        {"text": "describe the image", "image": tiny.image(40, 100)},
        {"text": "what is in this picture", "image": tiny.image(90, 60)},
        {"text": "a b c", "image": tiny.image(100, 30)},
    ]
    if refuse is not None:
        docs[refuse]["refuse"] = True
    requests = [
        Request(("", lambda doc: doc, {"max_new_tokens": 3}, doc_id, "toy", "test")) for doc_id in range(len(docs))
    ]
    requests.append(requests[1])  # lmms-eval repeats a request by listing the same Instance again
    return {"toy": {"test": docs}}, requests


def _prompt_tokens(tiny: Any, doc: dict[str, Any]) -> int:
    text = f"USER: <image> {doc['text']} ASSISTANT:"
    return int(tiny.processor(images=[doc["image"]], text=[text], return_tensors="pt")["input_ids"].shape[1])


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5])
def test_generate_until_reports_the_llm_prompt_after_pruning(
    stub_lmms_eval: None, checkpoints: dict[str, Path], tiny: Any, tmp_path: Path, keep_ratio: float
) -> None:
    FakeLlavaHf.host = tiny
    reports = tmp_path / "reports.jsonl"
    model = _hero(pretrained=str(checkpoints["llava_next"]), keep_ratio=keep_ratio, device="cpu", reports=str(reports))
    assert FakeLlavaHf.built == [{"pretrained": str(checkpoints["llava_next"]), "device": "cpu", "batch_size": 1}]
    assert model.pruner.layers == (1, 2, 5)  # the paper's (5, 6, 7, 8) and (21,) scaled to the 6-layer tower
    model.task_dict, requests = _task(tiny)
    hooks = tiny.snapshot()
    results = model.generate_until(requests)
    assert tiny.snapshot() == hooks and "generate" not in tiny.model.__dict__  # attach() left no trace

    docs = model.task_dict["toy"]["test"]
    lines = [json.loads(line) for line in reports.read_text().splitlines()]
    assert [line["doc_id"] for line in lines] == [0, 1, 2, 1]
    for result, request, line in zip(results, requests, lines):
        doc = docs[request.args[3]]
        report = line["report"]
        full = _prompt_tokens(tiny, doc)
        assert result.token_counts.input_tokens == line["input_tokens"]
        assert line["input_tokens"] == full - report["tokens_in"] + report["tokens_out"]
        assert 1 <= result.token_counts.output_tokens <= 3
        if keep_ratio == 1.0:
            assert line["input_tokens"] == full
        else:
            assert line["input_tokens"] < full
    # with no text scorer, no query is recovered; the answers agree across repeats of one request
    assert results[1].text == results[3].text
    # A second run into the same reports file replaces it (one line per answered request, not accumulated).
    again = _hero(pretrained=str(checkpoints["llava_next"]), keep_ratio=keep_ratio, device="cpu", reports=str(reports))
    again.task_dict = model.task_dict
    again.generate_until(requests[:2])
    assert [json.loads(line)["doc_id"] for line in reports.read_text().splitlines()] == [0, 1]


def test_a_refused_request_ends_the_run_instead_of_an_empty_answer(
    stub_lmms_eval: None, checkpoints: dict[str, Path], tiny: Any
) -> None:
    FakeLlavaHf.host = tiny
    model = _hero(pretrained=str(checkpoints["llava_next"]), keep_ratio=0.5, device="cpu")
    model.task_dict, requests = _task(tiny, refuse=2)
    with pytest.raises(HeroError, match=r"HERO refused 1 of 4 requests.*doc_id 2.*past_key_values"):
        model.generate_until(requests)
    assert "generate" not in tiny.model.__dict__


def test_loglikelihood_and_multi_round_say_why_not(
    stub_lmms_eval: None, checkpoints: dict[str, Path], tiny: Any
) -> None:
    FakeLlavaHf.host = tiny
    model = _hero(pretrained=str(checkpoints["llava_next"]), device="cpu")
    with pytest.raises(NotImplementedError, match="unpruned"):
        model.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round"):
        model.generate_until_multi_round([])
