"""``HeroVLM.attach()``: HERO inside the model's own ``generate`` for the length of a ``with`` block.

Code that calls ``model.generate`` (a user's script, a transformers ``pipeline``, lmms-eval's HF wrappers)
runs unchanged and pruned:

    with HeroVLM(model, presets.hero(0.2), scorer, processor=processor).attach() as attached:
        answers = pipe(images=image, text=prompt)        # pipeline("image-text-to-text", model=model, ...)
    attached.reports                                     # one PruneReport per generate call

On entry the model gets one instance attribute, ``generate``, that routes each call through
``HeroVLM.generate``; on exit (normal, exception or KeyboardInterrupt) that attribute is removed (or the one
that was there before is put back), so the model has exactly its old attributes and hooks again.

The query for relevance is, per prompt row, the user's text recovered from ``input_ids`` (``prompt_text``):
the row's last user turn, without the chat template's fixed text around it (role markers, a default
system prompt, the generation prompt; found by rendering the template around stand-in texts) and without
special and image tokens. A row with no user text (an image alone) gets no query: its budgets come from
saliency. ``attach(query="...")`` gives one text for every call, and ``attach(query=callable)`` maps the
recovered text (newlines kept) to the query. Without a text scorer, or with a pruner that does not read
relevance, no query is computed.

Threads: while attached, every caller of ``model.generate`` in any thread is pruned by this wrapper (the
attribute belongs to the model, not to a thread). Other ``HeroVLM`` wrappers on the same model keep their
own results: they call the host's original ``generate``. One attachment per model at a time.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor, nn

from hero_core import HeroError

from ._scoring import reads_query

if TYPE_CHECKING:
    from .report import PruneReport

__all__ = ["Attachment", "ChatTemplate", "host_call", "host_generate", "prompt_text"]

_LOCK = threading.Lock()
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, Attachment] = weakref.WeakKeyDictionary()
#: Per thread: how many host ``generate`` calls started by an attachment are running (assisted decoding nests).
_INSIDE = threading.local()
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


class Wrapper(Protocol):
    """What an ``Attachment`` needs of its ``HeroVLM`` (this module does not import ``vlm.py``: it imports this one)."""

    model: Any  # an nn.Module whose generate the attachment replaces
    adapter: Any
    pruner: Any
    text_scorer: Any

    def _generate(
        self, input_ids: Tensor | None, attention_mask: Tensor | None, query: object, kwargs: dict[str, Any]
    ) -> tuple[Any, PruneReport]: ...


@contextmanager
def host_call() -> Iterator[None]:
    """Marks, for this thread, that a host ``generate`` started by a HeroVLM is running: an attached
    ``generate`` entered meanwhile (an assistant's, in assisted decoding) is the host's original one."""
    _INSIDE.depth = getattr(_INSIDE, "depth", 0) + 1
    try:
        yield
    finally:
        _INSIDE.depth -= 1


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

    def __init__(self, vlm: Wrapper, query: Query = None, processor: Any = None, keep_reports: bool = True) -> None:
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
        self._template: ChatTemplate | None = None
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
        """``model.generate`` while attached: ``HeroVLM.generate`` with this block's query.

        A call made from inside a host ``generate`` that a HeroVLM started, in the same thread (assisted
        decoding: the host calls its assistant's ``generate`` with the features it already pruned and its own
        cache, also when the assistant is the model itself), goes to the host's original ``generate``.
        """
        if getattr(_INSIDE, "depth", 0):
            return self.original(*args, **kwargs)
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
        ids, mask = kwargs.pop("input_ids", None), kwargs.pop("attention_mask", None)
        query = kwargs.pop("query") if "query" in kwargs else self._queries(ids, mask)
        output, report = self.vlm._generate(ids, mask, query, kwargs)  # its own report, whatever other threads do
        if self.keep_reports:
            with _LOCK:
                self.reports.append(report)
        return output

    def _needs_text(self) -> bool:
        relevance = self.vlm.text_scorer is not None and reads_query(self.vlm.pruner)  # tiles' or tokens' relevance
        return relevance and not isinstance(self.query, str)

    def _queries(self, ids: Any, mask: Any) -> str | list[str | None] | None:
        if isinstance(self.query, str):
            return self.query
        if not self._needs_text() or not isinstance(ids, Tensor) or ids.dim() != 2:
            return None  # no relevance read (or HeroVLM.generate refuses the ids with its own message)
        if self._template is None:
            self._template = ChatTemplate.of(self.processor, self.tokenizer)
        texts: list[str | None] = []
        for row in range(ids.shape[0]):
            kept = ids[row] if not isinstance(mask, Tensor) else ids[row][mask[row].bool()]
            text = prompt_text(self.tokenizer, kept, self.vlm.adapter.image_token_id, self._template)
            query = self.query(text) if callable(self.query) and text else text
            texts.append(query or None)  # no user text (an image-only prompt): budgets from saliency alone
        return texts


@dataclass(frozen=True)
class ChatTemplate:
    """The fixed text of a chat template around the user's text, found by rendering it around stand-ins.

    Attributes:
        prefix: what precedes the (first) user text of a one-turn conversation.
        suffix: what follows the last user text, the generation prompt included.
        turn: what lies between an assistant answer and the next user text (None if the template cannot
            render a two-turn conversation).
    """

    prefix: str = ""
    suffix: str = ""
    turn: str | None = None

    @classmethod
    def of(cls, processor: Any, tokenizer: Any) -> ChatTemplate:
        """The template of ``processor`` (content as a list of parts) or else ``tokenizer`` (content a str);
        an empty one when neither has a template that renders a text-only turn."""
        one = _render(processor, tokenizer, [("user", _SENTINEL)])
        if one is None or one.count(_SENTINEL) != 1:
            return cls()
        prefix, suffix = one.split(_SENTINEL)
        turn = None
        two = _render(
            processor, tokenizer, [("user", "HEROFIRSTTURN"), ("assistant", "HEROANSWER"), ("user", _SENTINEL)]
        )
        if two is not None and two.count(_SENTINEL) == 1 and "HEROANSWER" in two:
            turn = two.split("HEROANSWER", 1)[1].split(_SENTINEL, 1)[0]
        return cls(prefix, suffix, turn)


def _render(processor: Any, tokenizer: Any, turns: Sequence[tuple[str, str]]) -> str | None:
    for owner, parts in ((processor, True), (tokenizer, False)):
        if owner is None or not getattr(owner, "chat_template", None):
            continue
        conversation = [
            {"role": role, "content": [{"type": "text", "text": text}] if parts else text} for role, text in turns
        ]
        try:
            rendered = owner.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        except Exception:  # a template that cannot render this conversation (jinja raises many kinds)
            continue
        if isinstance(rendered, str):
            return rendered
    return None


def _pattern(fragment: str, specials: Sequence[str] = ()) -> str:
    """A regex for ``fragment`` that tolerates any whitespace between its pieces (split at whitespace and around
    special tokens): decoding can add or move the spaces at token boundaries."""
    split = "|".join(re.escape(token) for token in sorted(specials, key=len, reverse=True) if token)
    pieces = re.split(rf"\s+|({split})", fragment) if split else fragment.split()
    return r"\s*".join(re.escape(piece) for piece in pieces if piece and not piece.isspace())


def prompt_text(tokenizer: Any, ids: Tensor, image_token_id: int, template: ChatTemplate | None = None) -> str:
    """The user's text of one prompt (its last user turn), newlines kept.

    ``ids`` without image tokens are decoded with the special tokens written out, so the text has the chat
    template's shape. The template's generation suffix is removed from the end; the text after the last
    assistant-to-user turn boundary is kept (or, for one turn, the template's prefix is removed from the
    start); then the special tokens left (image delimiters, ...) are removed. Without a template only special
    and image tokens are removed.
    """
    rows = ids[ids != image_token_id].tolist()
    specials = [str(token) for token in getattr(tokenizer, "all_special_tokens", [])]
    if template is None or not (template.prefix.strip() or template.suffix.strip()):
        return str(tokenizer.decode(rows, skip_special_tokens=True)).strip()
    text = str(tokenizer.decode(rows, skip_special_tokens=False))
    if template.suffix.strip():
        text = re.sub(_pattern(template.suffix, specials) + r"\s*$", "", text)
    boundary = (
        [m.end() for m in re.finditer(_pattern(template.turn, specials), text)]
        if template.turn and template.turn.split()
        else []
    )
    if boundary:
        text = text[boundary[-1] :]
    elif template.prefix.strip():
        # Leading special tokens (a BOS the template writes and the tokenizer adds again, or not) are skipped.
        lead = "|".join(re.escape(token) for token in sorted(specials, key=len, reverse=True) if token)
        skip = rf"^(?:\s*(?:{lead}))*\s*" if lead else r"^\s*"
        prefix = re.sub(skip, "", template.prefix)
        text = re.sub(skip, "", text)
        if prefix.strip():
            text = re.sub(r"^" + _pattern(prefix, specials), "", text)
    for token in sorted(specials, key=len, reverse=True):
        text = text.replace(token, "")
    return text.strip()
