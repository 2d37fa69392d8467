"""HERO as a vLLM plugin: pruned LLaVA-NeXT behind vLLM's continuous batching and paged KV cache.

vLLM runs the entry point ``hero`` of the group ``vllm.general_plugins`` (``register``) in every process it
starts; ``register`` adds the HERO architectures to vLLM's model registry by lazy strings (nothing is imported
until an engine asks for them). Select one per engine with stock checkpoints::

    from vllm import LLM
    llm = LLM(
        model="llava-hf/llava-v1.6-vicuna-7b-hf",
        hf_overrides={
            "architectures": ["HeroLlavaNextForConditionalGeneration"],
            "hero": {"preset": "hero", "keep_ratio": 0.2, "clip": "/models/clip-vit-large-patch14-336"},
        },
    )

and per request ``mm_processor_kwargs={"hero_query": "What is written on the sign?", "hero_keep_ratio": 0.4}``.

This subpackage imports ``hero_core``, its own modules and vLLM; never the transformers hosts of
``hero_adapters.hosts`` (vLLM pins its own transformers range). See docs/serving.md.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "register"]

#: HERO architecture name -> "module:Class", as registered with vLLM.
ARCHITECTURES = {
    "HeroLlavaNextForConditionalGeneration": (
        "hero_adapters.vllm_plugin.llava_next:HeroLlavaNextForConditionalGeneration"
    ),
    "HeroInternVLForConditionalGeneration": "hero_adapters.vllm_plugin.internvl:HeroInternVLForConditionalGeneration",
}


def register() -> None:
    """Register the HERO architectures with vLLM's ``ModelRegistry`` (idempotent: vLLM calls it in every
    process, possibly more than once; an architecture already registered is left alone)."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for name, target in ARCHITECTURES.items():
        if name not in known:
            ModelRegistry.register_model(name, target)
