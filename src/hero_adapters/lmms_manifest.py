"""The lmms-eval plugin's manifest: ``lmms-eval --model hero`` resolves to ``hero_adapters.lmms.HeroLmms``.

lmms-eval (0.6 and later) reads the entry point ``hero`` of the group ``lmms_eval.models`` (``pyproject.toml``) on
every start, while ``lmms_eval.models`` is still initialising, and loads all plugins inside one ``try``: a plugin
that fails to import drops every plugin. So this module imports only ``ModelManifest`` and names the class by its
dotted path; lmms-eval imports ``hero_adapters.lmms`` (torch, transformers, llava_hf) only when ``--model hero`` is
asked for.
"""

from __future__ import annotations

from lmms_eval.models.registry_v2 import ModelManifest  # type: ignore[import-not-found,import-untyped,unused-ignore]

__all__ = ["CHAT_CLASS_PATH", "MODEL_ID", "manifests"]

#: The name given to ``lmms-eval --model``.
MODEL_ID = "hero"
#: The class lmms-eval builds: a chat model (``is_simple = False``), as lmms-eval's ``llava_hf`` it wraps.
CHAT_CLASS_PATH = "hero_adapters.lmms.HeroLmms"

manifests = (ModelManifest(model_id=MODEL_ID, chat_class_path=CHAT_CLASS_PATH),)
