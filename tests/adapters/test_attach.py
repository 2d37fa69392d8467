"""``HeroVLM.attach()``: the model's own ``generate`` pruned inside a ``with`` block, and exactly restored."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

from hero_adapters import HeroVLM
from hero_adapters.attach import ChatTemplate, prompt_text
from hero_adapters.testing import hook_snapshot, word_tokenizer
from hero_core import HeroError, presets

from .hosts import HOSTS, HostRow, assert_same, generate, host_row

TEMPLATE = (
    "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


@pytest.fixture(scope="module", params=sorted(HOSTS))
def host(request: pytest.FixtureRequest) -> HostRow:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return host_row(request.param)


class RecordingScorer:
    """A text scorer that records the queries it is given and scores every tile alike."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, views: torch.Tensor, text: str) -> torch.Tensor:
        self.queries.append(text)
        return torch.full((views.shape[0],), 0.25)


def _generate(model: Any, inputs: dict[str, Any], **settings: Any) -> Any:
    return generate(model, inputs, **{"max_new_tokens": 3, **settings})


_same = assert_same


@pytest.mark.parametrize("beams", [1, 2])
def test_model_generate_inside_attach_equals_outside_at_keep_ratio_1(host: HostRow, beams: int) -> None:
    inputs = host.batch()
    outside = _generate(host.model, inputs, num_beams=beams)
    vlm = HeroVLM(host.model, host.pruner(1.0), processor=host.processor)
    with vlm.attach() as attached:
        inside = _generate(host.model, inputs, num_beams=beams)
    _same(outside, inside)
    assert len(attached.reports) == 1 and attached.reports[0] is vlm.last_report
    assert vlm.last_report.tokens_out == vlm.last_report.tokens_in


def test_inside_attach_the_llm_receives_the_reports_token_count(host: HostRow) -> None:
    inputs = host.inputs([host.text("USER: {} describe the image ASSISTANT:")], [host.image(40, 100)])
    seen: list[int] = []
    embeddings = host.model.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, args, out: seen.append(int(args[0].shape[1])))
    try:
        with HeroVLM(host.model, host.pruner(0.5), processor=host.processor).attach() as attached:
            _generate(host.model, inputs)
    finally:
        handle.remove()
    report = attached.reports[0]
    assert report.tokens_out < report.tokens_in
    assert seen[0] == inputs["input_ids"].shape[1] - report.tokens_in + report.tokens_out


@pytest.mark.parametrize("raised", [None, ValueError, KeyboardInterrupt])
def test_the_model_is_exactly_restored_after_the_block(raised: type[BaseException] | None) -> None:
    host = host_row("llava_next")
    inputs = host.batch()
    before, attributes, answer = hook_snapshot(host.model), dict(vars(host.model)), _generate(host.model, inputs)
    vlm = HeroVLM(host.model, host.pruner(0.3), processor=host.processor)
    with pytest.raises(raised) if raised else contextlib.nullcontext(), vlm.attach():
        assert "generate" in vars(host.model)
        _generate(host.model, inputs)
        if raised:
            raise raised("inside the block")
    assert hook_snapshot(host.model) == before
    assert vars(host.model).keys() == attributes.keys()
    _same(answer, _generate(host.model, inputs), atol=0.0)
    with vlm.attach():  # and it can be attached again
        _generate(host.model, inputs)


def test_attaching_twice_or_two_wrappers_to_one_model_is_refused() -> None:
    host = host_row("llava_next")
    first = HeroVLM(host.model, host.pruner(0.5), processor=host.processor)
    second = HeroVLM(host.model, host.pruner(0.3), processor=host.processor)
    before = dict(vars(host.model))
    with first.attach():
        patched = host.model.generate
        with pytest.raises(HeroError, match="already attached"), first.attach():
            pass
        with pytest.raises(HeroError, match="One attachment per model"), second.attach():
            pass
        assert host.model.generate == patched  # the refused attach changed nothing
        # A wrapper that is not attached still calls the host's own generate (pruned once, by itself).
        plain = second.generate(**host.batch(), max_new_tokens=2, do_sample=False)
        assert plain.shape[0] == 3 and second.last_report.tokens_out < second.last_report.tokens_in
    assert vars(host.model).keys() == before.keys()


def test_a_pipeline_inside_attach_is_pruned() -> None:
    transformers = pytest.importorskip("transformers")
    host = host_row("llava_next")
    pipe = transformers.pipeline("image-text-to-text", model=host.model, processor=host.processor)
    image, text = host.image(40, 100), "USER: <image> describe the image ASSISTANT:"
    settings = {"max_new_tokens": 3, "do_sample": False}
    vlm = HeroVLM(host.model, host.pruner(0.25), processor=host.processor)
    with vlm.attach() as attached:
        answer = pipe(images=image, text=text, generate_kwargs=settings, return_full_text=False)
    assert len(attached.reports) == 1
    report = attached.reports[0]
    assert report.tokens_out < report.tokens_in
    inputs = host.inputs([text], [image])
    direct = vlm.generate(**inputs, **settings)
    expected = host.processor.decode(direct[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer[0]["generated_text"].strip() == expected.strip()  # the pipeline decodes with the prompt


def test_the_query_is_the_users_text_without_the_templates_words() -> None:
    host = host_row("llava_next")
    processor = host.processor
    scorer = RecordingScorer()
    content = [{"type": "image"}, {"type": "text", "text": "what is in this picture"}]
    conversation = [{"role": "user", "content": content}]
    saved = processor.chat_template
    processor.chat_template = TEMPLATE
    try:
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        assert prompt == "USER: <image> what is in this picture ASSISTANT:"
        assert ChatTemplate.of(processor, processor.tokenizer).suffix == " ASSISTANT:"
        inputs = host.inputs([prompt, "USER: <image> describe the image ASSISTANT:"], [host.image(40, 100)] * 2)
        vlm = HeroVLM(host.model, host.pruner(0.5), scorer, processor=processor)
        with vlm.attach():
            _generate(host.model, inputs)
        assert scorer.queries[:1] == ["what is in this picture"] and scorer.queries[-1] == "describe the image"
        assert [image.query for image in vlm.last_report.images] == ["what is in this picture", "describe the image"]
        # The same plan as passing the query explicitly.
        explicit = vlm.plan(**inputs, query=["what is in this picture", "describe the image"])
        assert [i.plan.keep.tolist() for i in explicit.images] == [i.plan.keep.tolist() for i in vlm.last_report.images]
    finally:
        processor.chat_template = saved
    # Without a template only special and image tokens are dropped: the role words stay.
    ids = host.inputs(["USER: <image> describe ASSISTANT:"], [host.image(40, 100)])["input_ids"][0]
    assert prompt_text(processor.tokenizer, ids, host.model.config.image_token_id) == "USER: describe ASSISTANT:"


def test_cdpruner_inside_attach_reads_each_rows_prompt_text() -> None:
    """cdpruner reads no tile relevance but each token's: attached, it still gets the row's own text as its query
    (without it every call would be refused for a missing query) and plans what an explicit query plans."""
    from hero_adapters.adapter import preset_options
    from hero_adapters.testing import build_tiny_clip

    host = host_row("llava_next")
    inputs = host.inputs(
        ["USER: <image> what is in this picture ASSISTANT:", "USER: <image> describe the image ASSISTANT:"],
        [host.image(40, 100), host.image(60, 30)],
    )
    options = preset_options(HeroVLM(host.model, host.pruner(0.5), processor=host.processor).adapter)
    vlm = HeroVLM(host.model, presets.cdpruner(0.3, **options), build_tiny_clip(), processor=host.processor)
    with vlm.attach():
        _generate(host.model, inputs)
    texts = ["USER: what is in this picture ASSISTANT:", "USER: describe the image ASSISTANT:"]
    assert [image.query for image in vlm.last_report.images] == texts
    explicit = vlm.plan(**inputs, query=texts)
    assert [i.plan.keep.tolist() for i in explicit.images] == [i.plan.keep.tolist() for i in vlm.last_report.images]


def test_a_given_query_or_query_function_is_used() -> None:
    host = host_row("llava_next")
    inputs = host.inputs(["USER: <image> describe the image ASSISTANT:"], [host.image(40, 100)])
    scorer = RecordingScorer()
    vlm = HeroVLM(host.model, host.pruner(0.5), scorer, processor=host.processor)
    with vlm.attach(query="the sign"):
        _generate(host.model, inputs)
    with vlm.attach(query=lambda text: text.upper()):
        _generate(host.model, inputs)
    assert scorer.queries[0] == "the sign" and scorer.queries[-1] == "USER: DESCRIBE THE IMAGE ASSISTANT:"


def test_bad_attach_arguments_are_refused_before_anything_changes() -> None:
    host = host_row("llava_next")
    before = dict(vars(host.model))
    with pytest.raises(HeroError, match="query"):
        HeroVLM(host.model, host.pruner(0.5), processor=host.processor).attach(query=3)  # type: ignore[arg-type]
    with pytest.raises(HeroError, match="processor"):
        HeroVLM(host.model, host.pruner(0.5), RecordingScorer()).attach()  # a query is needed, nothing decodes
    # Without a scorer no query is read, so no processor is needed.
    with HeroVLM(host.model, host.pruner(0.5)).attach():
        pass
    assert vars(host.model).keys() == before.keys()


def test_keep_reports_false_keeps_only_the_last_report() -> None:
    """A long run (a benchmark inside one block) must not accumulate reports, which hold tensors."""
    host = host_row("llava_next")
    inputs = host.inputs(["USER: <image> describe the image ASSISTANT:"], [host.image(40, 100)])
    vlm = HeroVLM(host.model, host.pruner(0.5), processor=host.processor)
    with vlm.attach(keep_reports=False) as attached:
        _generate(host.model, inputs)
        first = vlm.last_report
        _generate(host.model, inputs)
    assert attached.reports == [] and vlm.last_report is not None and vlm.last_report is not first


# ------------------------------------------------------------------------------------ query recovery, unit
QWEN = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "<s>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
VICUNA = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} {% else %}ASSISTANT: "
    "{{ m['content'] }}</s>{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
SPECIALS = {
    "image_token": "<image>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "header_start": "<|start_header_id|>",
    "header_end": "<|end_header_id|>",
    "eot": "<|eot_id|>",
}
VOCAB = ("<pad>", "<s>", "</s>", "<unk>", *SPECIALS.values(), "USER:", "ASSISTANT:", "user", "assistant",
         "what", "is", "on", "the", "sign", "sign?", "interface", "who", "red", "it", "a", "cat")  # fmt: skip


def _recovered(template: str, conversation: list[dict[str, str]], image: bool = True) -> str:
    tokenizer = word_tokenizer(VOCAB, **SPECIALS)
    tokenizer.chat_template = template
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    if image:  # the image placeholders the processor would put before the last user text
        last = conversation[-1]["content"]
        text = text[: text.rindex(last)] + "<image> <image> " + text[text.rindex(last) :]
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    return prompt_text(tokenizer, ids, image_id, ChatTemplate.of(None, tokenizer))


@pytest.mark.parametrize("template", [QWEN, LLAMA3, VICUNA], ids=["qwen", "llama3", "vicuna"])
def test_the_last_user_turn_is_recovered_whatever_the_template(template: str) -> None:
    one = [{"role": "user", "content": "what is on the sign?"}]
    assert _recovered(template, one) == "what is on the sign?"  # llama3 glues it to <|eot_id|>
    turns = [
        {"role": "user", "content": "who is it"},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "what is red"},
    ]
    assert _recovered(template, turns) == "what is red"  # not the earlier turns, not the role words
    # The user's own role-like words stay: only the template's text around the user text is removed.
    words = [{"role": "user", "content": "user interface who is the assistant"}]
    assert _recovered(template, words) == "user interface who is the assistant"


def test_an_image_only_prompt_gives_no_query() -> None:
    host = host_row("llava_next")
    scorer = RecordingScorer()
    saved = host.processor.chat_template
    host.processor.chat_template = TEMPLATE
    try:
        inputs = host.inputs(["USER: <image>  ASSISTANT:"], [host.image(40, 100)])
        vlm = HeroVLM(host.model, host.pruner(0.5), scorer, processor=host.processor)
        with vlm.attach(query=lambda text: pytest.fail(f"called with {text!r}")):
            _generate(host.model, inputs)
    finally:
        host.processor.chat_template = saved
    assert scorer.queries == [] and vlm.last_report.images[0].query is None


def test_reports_from_two_threads_are_each_their_own() -> None:
    """Each call's report goes into ``reports``, also when another thread's call sets ``last_report`` meanwhile."""
    import threading

    host = host_row("llava_next")
    shapes = [(40, 100), (90, 60)]
    inputs = [host.inputs(["USER: <image> describe ASSISTANT:"], [host.image(*shape)]) for shape in shapes]
    vlm = HeroVLM(host.model, host.pruner(0.5), processor=host.processor)
    expected = sorted(vlm.plan(**row).tokens_in for row in inputs)
    errors: list[BaseException] = []

    def work(row: dict[str, Any]) -> None:
        try:
            for _ in range(2):
                host.model.generate(**row, max_new_tokens=2, do_sample=False)
        except BaseException as error:
            errors.append(error)

    with vlm.attach() as attached:
        threads = [threading.Thread(target=work, args=(row,)) for row in inputs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert sorted(report.tokens_in for report in attached.reports) == sorted(expected * 2)


def test_an_attached_wrapper_and_another_wrapper_in_threads_each_get_their_single_thread_result() -> None:
    """The server set-up of issue 11: one wrapper attached (its callers use model.generate), another wrapper with
    another preset called directly, from two threads at once; each answers as it does alone."""
    import threading

    host = host_row("llava_next")
    inputs = host.batch()
    attached_vlm = HeroVLM(host.model, host.pruner(0.5), processor=host.processor)
    other = HeroVLM(host.model, presets.get("cls-attention", 0.25, layer=4), processor=host.processor)
    with attached_vlm.attach():
        alone_attached = _generate(host.model, inputs)
    alone_other = _generate(other, inputs)
    before = hook_snapshot(host.model)
    results: dict[str, list[Any]] = {"attached": [], "other": []}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            for _ in range(2):
                results[name].append(_generate(host.model if name == "attached" else other, inputs))
        except BaseException as error:
            errors.append(error)

    with attached_vlm.attach():
        threads = [threading.Thread(target=work, args=(name,)) for name in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    for out in results["attached"]:
        _same(alone_attached, out, atol=1e-6)
    for out in results["other"]:
        _same(alone_other, out, atol=1e-6)
    assert hook_snapshot(host.model) == before and "generate" not in vars(host.model)
