"""The README's "With a real checkpoint" snippet runs as written, on this machine's device (CPU or CUDA).

Only the two hub ids are replaced, by tiny checkpoints the test saves itself (a LLaVA-NeXT with the 7B's
tower depth and a chat template, a CLIP), and ``photo.jpg`` is an image written into the cwd. Nothing is
downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from hero_adapters.testing import LLAVA_NEXT_7B_PINPOINTS, build_llava_next, build_tiny_clip

README = Path(__file__).resolve().parents[2] / "README.md"
LLAVA_ID, CLIP_ID = "llava-hf/llava-v1.6-vicuna-7b-hf", "openai/clip-vit-large-patch14-336"
#: Vicuna's turn format, short: the image and the text of each user turn, then the assistant's cue.
CHAT_TEMPLATE = (
    "{% for message in messages %}USER: {% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _snippet() -> str:
    text = README.read_text()
    section = text[text.index("## With a real checkpoint") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_readme_snippet_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _snippet()
    assert LLAVA_ID in code and CLIP_ID in code and "device_map" not in code
    tile = 56  # the 7B's grid pinpoints and tower depth (24 layers, so the paper's layers exist) at 56-px tiles
    pinpoints = [[tile * p // 336 for p in pin] for pin in LLAVA_NEXT_7B_PINPOINTS]
    host = build_llava_next(tile_pixels=tile, pinpoints=pinpoints, vision_width=16, vision_heads=2, text_width=32,
                            text_layers=1, text_heads=2)  # fmt: skip
    host.processor.chat_template = CHAT_TEMPLATE
    host.model.save_pretrained(tmp_path / "llava")
    host.processor.save_pretrained(tmp_path / "llava")
    clip = build_tiny_clip()
    clip.model.save_pretrained(tmp_path / "clip")
    clip.tokenizer.save_pretrained(tmp_path / "clip")
    from PIL import Image

    Image.new("RGB", (120, 80), (200, 40, 40)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    code = code.replace(repr(LLAVA_ID).replace("'", '"'), repr(str(tmp_path / "llava")))
    code = code.replace(repr(CLIP_ID).replace("'", '"'), repr(str(tmp_path / "clip")))
    namespace: dict[str, object] = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)
    report = namespace["vlm"].last_report  # type: ignore[attr-defined]
    assert report is not None and report.tokens_out < report.tokens_in
    assert f"{report.tokens_in} -> {report.tokens_out}" in capsys.readouterr().out
    assert str(next(namespace["model"].parameters()).device).startswith(namespace["device"])  # type: ignore[attr-defined]


QWEN_TEMPLATE = (
    "{% for message in messages %}USER: {% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|> {% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def test_readme_qwen_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Qwen2.5-VL snippet, with the first snippet's names (scorer, dtype, device, question), on a tiny
    checkpoint with the real tower's depth and full-attention blocks, saved and loaded from disk."""
    from PIL import Image

    from hero_adapters import HeroVLM
    from hero_adapters.testing import build_qwen2_5_vl
    from hero_core import presets

    text = README.read_text()
    section = text[text.index("Qwen2.5-VL and Qwen3-VL (`Qwen2_5_VLForConditionalGeneration`") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    code = match.group(1)
    assert '"./Qwen2.5-VL-7B-Instruct"' in code
    host = build_qwen2_5_vl(vision_width=32, vision_heads=2, text_width=32, text_layers=1, text_heads=2,
                            min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64)  # fmt: skip
    host.processor.chat_template = QWEN_TEMPLATE
    host.model.save_pretrained(tmp_path / "qwen")
    host.processor.save_pretrained(tmp_path / "qwen")
    Image.new("RGB", (150, 90), (40, 200, 40)).save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    code = code.replace('"./Qwen2.5-VL-7B-Instruct"', repr(str(tmp_path / "qwen")))
    namespace: dict[str, object] = {
        "__name__": "__readme__",
        "AutoProcessor": __import__("transformers").AutoProcessor,
        "HeroVLM": HeroVLM,
        "presets": presets,
        "Image": Image,
        "scorer": lambda views, text: views.flatten(1).std(-1),
        "dtype": None,
        "device": "cpu",
        "question": "what is in the picture",
    }
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["encoder"] == {"depth": 32, "full_attention": (7, 15, 23, 31)}
    report = namespace["vlm"].last_report  # type: ignore[attr-defined]
    assert report is not None and 0 < report.tokens_out < report.tokens_in
    assert report.positions == "original"
