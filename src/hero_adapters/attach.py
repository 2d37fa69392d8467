"""``HeroVLM.attach()``: HERO inside the model's own ``generate`` for the length of a ``with`` block.

Code that calls ``model.generate`` (a user's script, a transformers ``pipeline``, lmms-eval's HF wrappers)
runs unchanged and pruned::

    with HeroVLM(model, presets.hero(0.2), scorer, processor=processor).attach() as attached:
        answers = pipe(images=image, text=prompt)        # pipeline("image-text-to-text", model=model, ...)
    attached.reports                                     # one PruneReport per generate call

On entry the model gets one instance attribute, ``generate``, that routes each call through
``HeroVLM.generate``; on exit (normal, exception or KeyboardInterrupt) that attribute is removed (or the one
that was there before is put back), so the model has exactly its old attributes and hooks again.

The query for relevance is, per prompt row, the user's text recovered from ``input_ids``: the row decoded
without special and image tokens, with the fixed words of the processor's chat template (role names,
a default system prompt, ...) removed. ``attach(query="...")`` gives one text for every call, and
``attach(query=callable)`` maps the recovered text to the query. Without a text scorer, or with a pruner
that does not read relevance, no query is computed.

Threads: while attached, every caller of ``model.generate`` in any thread is pruned by this wrapper (the
attribute belongs to the model, not to a thread). Other ``HeroVLM`` wrappers on the same model keep their
own results: they call the host's original ``generate``. One attachment per model at a time.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from hero_core import HeroError

if TYPE_CHECKING:
    from .report import PruneReport
    from .vlm import HeroVLM

__all__ = ["Attachment", "host_generate", "prompt_text", "template_words"]

_LOCK = threading.Lock()
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Attachment] = weakref.WeakKeyDictionary()
#: Stands in for the user's text when the chat template is rendered to find its fixed words.
_SENTINEL = "HEROQUERYSENTINEL"

Query = str | Callable[[str], str] | None


def host_generate(model: nn.Module) -> Callable[..., Any]:
    """The host's own ``generate`` of ``model``: the one in place before an attachment, else ``model.generate``."""
    attachment = _ATTACHED.get(model)
    if attachment is not None:
        return attachment.original
    generate: Callable[..., Any] = getattr(model, "generate")  # noqa: B009 - nn.Module types attributes as modules
    return generate


class Attachment:
    """The ``with`` block of ``HeroVLM.attach()``; ``reports`` holds one ``PruneReport`` per generate call.

    Args:
        vlm: the wrapper whose ``generate`` the model's ``generate`` becomes.
        query: None (the user's text recovered from each prompt), one text, or ``callable(text) -> query``.
        processor: the processor whose tokenizer decodes prompts and whose chat template names the fixed
            words (default: the adapter's processor).
        keep_reports: keep every call's report in ``reports`` (default). A report holds tensors (the CLS
            attention of every view), so a block that runs a whole benchmark should pass False and read
            ``vlm.last_report`` (or ``report.to_dict()``) after each call instead.
    """

    def __init__(self, vlm: HeroVLM, query: Query = None, processor: Any = None, keep_reports: bool = True) -> None:
        if query is not None and not isinstance(query, str) and not callable(query):
            raise HeroError.field("query", query, "None, a str, or a callable (prompt text) -> str")
        self.vlm = vlm
        self.query = query
        self.processor = processor if processor is not None else getattr(vlm.adapter, "processor", None)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.keep_reports = bool(keep_reports)
        self.reports: list[PruneReport] = []
        self.original: Callable[..., Any] = host_generate(vlm.model)
        self._previous: tuple[bool, Any] = (False, None)
        self._words: list[str] | None = None
        if self._needs_text() and not callable(getattr(self.tokenizer, "decode", None)):
            raise HeroError.field(
                "processor",
                None,
                "a processor (or tokenizer) to recover each prompt's text for the relevance query",
                "Pass HeroVLM(..., processor=processor), attach(processor=...) or attach(query='...').",
            )

    # ------------------------------------------------------------------------------------ context manager
    def __enter__(self) -> Attachment:
        model = self.vlm.model
        with _LOCK:
            other = _ATTACHED.get(model)
            if other is not None:
                raise HeroError.field(
                    "model",
                    type(model).__name__,
                    "a model no HeroVLM is attached to",
                    "One attachment per model at a time: leave the other `with vlm.attach():` block first"
                    + (" (this wrapper is already attached)." if other.vlm is self.vlm else "."),
                )
            self.original = getattr(model, "generate")  # noqa: B009 - see host_generate
            self._previous = ("generate" in model.__dict__, model.__dict__.get("generate"))
            self.reports = []
            model.generate = self._generate
            _ATTACHED[model] = self
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        model = self.vlm.model
        with _LOCK:
            had, previous = self._previous
            if had:
                model.generate = previous
            else:
                model.__dict__.pop("generate", None)
            if _ATTACHED.get(model) is self:
                del _ATTACHED[model]

    # ------------------------------------------------------------------------------------------ the calls
    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        """``model.generate`` while attached: ``HeroVLM.generate`` with this block's query."""
        if args:
            if len(args) > 1 or "input_ids" in kwargs or "inputs" in kwargs:
                raise HeroError.field(
                    "generate arguments",
                    f"{len(args)} positional",
                    "the prompt ids as the only positional argument, everything else by keyword",
                )
            kwargs["input_ids"] = args[0]
        if "inputs" in kwargs:
            kwargs["input_ids"] = kwargs.pop("inputs")
        if "query" not in kwargs:
            kwargs["query"] = self._queries(kwargs.get("input_ids"), kwargs.get("attention_mask"))
        output = self.vlm.generate(**kwargs)
        if self.keep_reports and self.vlm.last_report is not None:
            self.reports.append(self.vlm.last_report)
        return output

    def _needs_text(self) -> bool:
        relevance = self.vlm.text_scorer is not None and bool(getattr(self.vlm.pruner, "uses_relevance", False))
        return relevance and not isinstance(self.query, str)

    def _queries(self, ids: Any, mask: Any) -> str | list[str | None] | None:
        if isinstance(self.query, str):
            return self.query
        if not self._needs_text() or not isinstance(ids, Tensor) or ids.dim() != 2:
            return None  # no relevance read (or HeroVLM.generate refuses the ids with its own message)
        if self._words is None:
            self._words = template_words(self.processor, self.tokenizer)
        texts: list[str | None] = []
        for row in range(ids.shape[0]):
            kept = ids[row] if not isinstance(mask, Tensor) else ids[row][mask[row].bool()]
            text = prompt_text(self.tokenizer, kept, self.vlm.adapter.image_token_id, self._words)
            texts.append(self.query(text) if callable(self.query) else text)
        return texts


def prompt_text(tokenizer: Any, ids: Tensor, image_token_id: int, fixed_words: Sequence[str] = ()) -> str:
    """The user's text of one prompt: ``ids`` decoded without special and image tokens, then each line stripped
    of the chat template's fixed words (a line that is one of them is dropped; one that starts or ends with
    one loses it), whitespace collapsed."""
    text = str(tokenizer.decode(ids[ids != image_token_id].tolist(), skip_special_tokens=True))
    words = sorted({w for w in fixed_words if w}, key=len, reverse=True)
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        changed = True
        while line and changed:
            changed = False
            for word in words:
                if line == word:
                    line, changed = "", True
                elif line.startswith(word) and line[len(word)].isspace():
                    line, changed = line[len(word) :].strip(), True
                elif line.endswith(word) and line[-len(word) - 1].isspace():
                    line, changed = line[: -len(word)].strip(), True
                if changed:
                    break
        if line:
            lines.append(line)
    return " ".join(" ".join(lines).split())


def template_words(processor: Any, tokenizer: Any) -> list[str]:
    """The fixed words of the chat template, line by line, as ``prompt_text`` sees them (decoded without
    special tokens): the template rendered around a stand-in user text, split at it. [] without a template."""
    rendered = None
    for owner, content in (
        (processor, [{"type": "text", "text": _SENTINEL}]),
        (tokenizer, _SENTINEL),
    ):
        if owner is None or not getattr(owner, "chat_template", None):
            continue
        conversation = [{"role": "user", "content": content}]
        try:
            rendered = owner.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        except Exception:  # a template that cannot render a text-only turn (jinja raises many kinds): no words
            continue
        if isinstance(rendered, str) and _SENTINEL in rendered:
            break
        rendered = None
    if rendered is None:
        return []
    words = []
    for fragment in rendered.split(_SENTINEL):
        ids = tokenizer(fragment, add_special_tokens=False)["input_ids"]
        decoded = str(tokenizer.decode(ids, skip_special_tokens=True))
        words += [line.strip() for line in decoded.splitlines() if line.strip()]
    return words
