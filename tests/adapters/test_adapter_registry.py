"""Adapter registry, and the lazy optional imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from hero_adapters import LlavaNextAdapter, get_adapter, list_adapters, register_adapter
from hero_adapters import adapter as registry
from hero_core import HeroError


def test_llava_next_is_registered(tiny: Any) -> None:
    assert "llava_next" in list_adapters()
    adapter = get_adapter(tiny.model, layout="reference")
    assert isinstance(adapter, LlavaNextAdapter) and adapter.layout == "reference"
    assert adapter.image_token_id == tiny.image_token_id


def test_register_get_and_refuse_duplicates() -> None:
    class Config:
        model_type = "hero_test_only"

    class Model:
        config = Config()

    @register_adapter("hero_test_only")
    class Adapter:
        def __init__(self, model: Any, **options: Any) -> None:
            self.model, self.options = model, options

    try:
        model = Model()
        adapter = get_adapter(model, layout="vanilla")
        assert isinstance(adapter, Adapter) and adapter.model is model and adapter.options == {"layout": "vanilla"}
        assert "hero_test_only" in list_adapters()
        with pytest.raises(HeroError, match="Already registered"):
            register_adapter("hero_test_only")(type("Other", (), {}))
        with pytest.raises(HeroError, match="Already registered"):
            register_adapter("llava_next")(type("Other", (), {}))
    finally:
        registry._ADAPTERS.pop("hero_test_only", None)
    assert "hero_test_only" not in list_adapters()
    with pytest.raises(HeroError, match="model_types"):
        register_adapter()
    with pytest.raises(HeroError, match="model_types"):
        register_adapter("")


def test_import_without_transformers_fails_only_on_use() -> None:
    """``import hero_adapters`` works when transformers is missing; using an HF adapter names the extra."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["transformers"] = None  # as if it were not installed
        import hero_adapters
        from hero_core import HeroError
        assert "open_clip" not in sys.modules
        try:
            hero_adapters.LlavaNextAdapter._host(None)
        except HeroError as error:
            assert "hero-prune[hf]" in str(error), error
        else:
            raise SystemExit("no HeroError")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_does_not_load_transformers() -> None:
    code = "import sys, hero_adapters; print('transformers' in sys.modules, 'open_clip' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"
