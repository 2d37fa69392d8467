"""The loading path: a tiny checkpoint saved with ``save_pretrained`` and read back with ``from_pretrained``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from hero_adapters import HeroVLM, LlavaNextAdapter, get_adapter
from hero_core import presets


def test_whole_path_on_a_checkpoint_loaded_from_disk(tiny: Any, tmp_path: Path) -> None:
    tiny.processor(text=["a b"], return_tensors="pt")  # an unpadded call last: the saved padding side must hold
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    model = LlavaNextForConditionalGeneration.from_pretrained(tmp_path).eval()
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert model.config.model_type == "llava_next"
    assert isinstance(get_adapter(model), LlavaNextAdapter)

    texts = ["USER: <image> describe the image ASSISTANT:", "USER: <image> a b <image> compare ASSISTANT:"]
    images = [tiny.image(40, 100), tiny.image(90, 60), tiny.image(100, 30)]
    inputs = dict(processor(images=images, text=texts, return_tensors="pt", padding=True))
    with torch.no_grad():
        host = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert torch.equal(host, tiny.model.generate(**inputs, max_new_tokens=5, do_sample=False))  # same weights

    same = HeroVLM(model, presets.hero(1.0, low_layers=tiny.low, high_layers=tiny.high), processor=processor)
    assert torch.equal(same.generate(**inputs, max_new_tokens=5, do_sample=False), host)

    def scorer(views: torch.Tensor, text: str) -> torch.Tensor:
        return views.flatten(1).std(-1)

    vlm = HeroVLM(model, presets.hero(0.4, low_layers=tiny.low, high_layers=tiny.high), scorer, processor=processor)
    out = vlm.generate(**inputs, query=["q1", "q2"], max_new_tokens=5, do_sample=False)
    report = vlm.last_report
    assert report is not None and len(report.images) == 3
    assert out.shape[0] == 2 and torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert report.tokens_out < report.tokens_in
    assert [image.query for image in report.images] == ["q1", "q2", "q2"]
    assert vlm.adapter.image_mean == tuple(processor.image_processor.image_mean)
