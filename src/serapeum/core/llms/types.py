"""Value types exchanged between callers, LLMs and plugins (all frozen attrs classes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Any, ClassVar, TypeAlias

from attrs import field, frozen

from serapeum.core.errors import ArgumentTypeError, ConfigurationError
from serapeum.core.shown import shown

__all__ = [
    "ChatResponse",
    "ChatResponseAsyncGen",
    "ChatResponseGen",
    "CompletionResponse",
    "CompletionResponseAsyncGen",
    "CompletionResponseGen",
    "FinishReason",
    "Message",
    "MessageLike",
    "MessageRole",
    "Metadata",
    "TextChunk",
    "Timing",
    "Usage",
    "message_from_dict",
]

DEFAULT_CONTEXT_WINDOW = 3900
DEFAULT_NUM_OUTPUTS = 256


class MessageRole(StrEnum):
    """Who said a message. The values are the role names chat templates expect."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


def _to_role(value: MessageRole | str) -> MessageRole:
    try:
        return MessageRole(value)
    except ValueError:
        allowed = ", ".join(role.value for role in MessageRole)
        raise ConfigurationError(
            f"unknown message role {shown(value)}; use one of: {allowed}"
        ) from None


def _frozen_dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


@frozen
class TextChunk:
    """A piece of a message's text (the seed's ``Message(chunks=[TextChunk(content=...)])``).

    Text is the only kind of chunk: the engine takes no image or audio input.
    """

    content: str = field(converter=lambda c: "" if c is None else c)
    type: ClassVar[str] = "text"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.content, str):
            raise ArgumentTypeError(
                f"TextChunk content must be a str, got {type(self.content).__name__} "
                f"{shown(self.content)}"
            )


# Multi-chunk text is joined as the seed joined it, one chunk per line.
CHUNK_SEPARATOR = "\n"


def _text_chunks(chunks: Any, where: str) -> tuple[TextChunk, ...]:
    """``chunks`` as TextChunks: TextChunk objects or OpenAI text parts, nothing else."""
    if isinstance(chunks, str | bytes | Mapping) or not isinstance(chunks, Iterable):
        raise ArgumentTypeError(
            f"{where} must be a list of TextChunk, e.g. [TextChunk(content='hello')]; "
            f"got {type(chunks).__name__} {shown(chunks)}"
        )
    result: list[TextChunk] = []
    for index, chunk in enumerate(chunks):
        if isinstance(chunk, TextChunk):
            result.append(chunk)
        elif isinstance(chunk, Mapping):
            result.append(_text_part(chunk, f"{where}[{index}]"))
        else:
            raise ArgumentTypeError(
                f"{where}[{index}] must be a TextChunk (only text: this engine takes no image "
                f"or audio input); got {type(chunk).__name__} {shown(chunk)}"
            )
    return tuple(result)


def _text_part(part: Mapping[Any, Any], where: str) -> TextChunk:
    """An OpenAI content part ``{"type": "text", "text": ...}`` as a TextChunk."""
    kind = part.get("type")
    if kind != "text":
        raise ConfigurationError(
            f"{where} is a part of type {shown(kind)}; only text parts "
            "({'type': 'text', 'text': '...'}) are supported (no image or audio input)"
        )
    text = part.get("text")
    if not isinstance(text, str):
        raise ArgumentTypeError(
            f"{where} is a text part whose 'text' must be a str, got {type(text).__name__} "
            f"{shown(text)}"
        )
    return TextChunk(content=text)


@frozen(init=False)
class Message:
    """One chat message. ``role`` accepts a ``MessageRole`` or its string value.

    Give the text as ``content="..."`` or, as the seed did, as
    ``chunks=[TextChunk(content="...")]`` (their texts joined, one per line, make
    ``content``). Messages with the same role, text and extras are equal, however built.
    """

    role: MessageRole = field(default=MessageRole.USER, converter=_to_role)
    content: str = field(default="", converter=lambda c: "" if c is None else str(c))
    additional_kwargs: dict[str, Any] = field(factory=dict, converter=_frozen_dict)
    _chunks: tuple[TextChunk, ...] | None = field(
        default=None, init=False, eq=False, repr=False, alias="_chunks"
    )

    def __init__(
        self,
        role: MessageRole | str = MessageRole.USER,
        content: str | Iterable[TextChunk] | None = None,
        additional_kwargs: Mapping[str, Any] | None = None,
        *,
        chunks: Iterable[TextChunk] | None = None,
    ) -> None:
        if chunks is not None and content is not None:
            raise ConfigurationError("give a message's text as content= or as chunks=, not both")
        if not isinstance(content, str | bytes | Mapping) and isinstance(content, Iterable):
            chunks, content = content, None  # the seed's Message(content=[chunks])
        text_chunks = None if chunks is None else _text_chunks(chunks, "chunks")
        if text_chunks is not None:
            content = CHUNK_SEPARATOR.join(chunk.content for chunk in text_chunks)
        self.__attrs_init__(role, content, additional_kwargs)  # type: ignore[attr-defined]
        object.__setattr__(self, "_chunks", text_chunks)

    @property
    def chunks(self) -> list[TextChunk]:
        """The text as chunks: the ones given, else one chunk of ``content`` (none if empty)."""
        if self._chunks is not None:
            return list(self._chunks)
        return [TextChunk(content=self.content)] if self.content else []

    @classmethod
    def system(cls, content: str) -> Message:
        """A system message with ``content``."""
        return cls(role=MessageRole.SYSTEM, content=content)

    @classmethod
    def user(cls, content: str) -> Message:
        """A user message with ``content``."""
        return cls(role=MessageRole.USER, content=content)

    @classmethod
    def assistant(cls, content: str) -> Message:
        """A assistant message with ``content``."""
        return cls(role=MessageRole.ASSISTANT, content=content)

    @classmethod
    def from_str(cls, content: str, role: MessageRole | str = MessageRole.USER) -> Message:
        """The seed's constructor: ``Message.from_str("hi", role="user")``."""
        return cls(role=role, content=content)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Message:
        """An OpenAI-style message dict (see ``message_from_dict``) as a Message."""
        return message_from_dict(value)

    def __str__(self) -> str:
        return f"{self.role.value}: {self.content}"


# What chat() takes for one message: a Message or an OpenAI-style dict.
MessageLike: TypeAlias = Message | Mapping[str, Any]

_DICT_EXTRAS_SKIPPED = frozenset({"role", "content"})


def message_from_dict(value: Mapping[Any, Any], *, where: str = "message") -> Message:
    """An OpenAI-style ``{"role": ..., "content": ...}`` dict as a Message.

    ``content`` is a str (or None for an empty message) or a list of text parts
    ``{"type": "text", "text": ...}``; other keys (``name``, ...) go to
    ``additional_kwargs``. ``where`` names the dict in errors (``messages[2]``).
    """
    if "role" not in value:
        raise ConfigurationError(
            f"{where} has no 'role'; an OpenAI-style message looks like "
            "{'role': 'user', 'content': 'hello'}"
        )
    role = value["role"]
    if not isinstance(role, str | MessageRole):
        raise ArgumentTypeError(
            f"{where}['role'] must be a str, got {type(role).__name__} {shown(role)}"
        )
    try:
        checked_role = MessageRole(role)
    except ValueError:
        allowed = ", ".join(item.value for item in MessageRole)
        raise ConfigurationError(
            f"{where} has the unknown role {shown(role)}; use one of: {allowed}"
        ) from None
    if "content" not in value:
        raise ConfigurationError(
            f"{where} has no 'content'; give the text as 'content': 'hello' or as a list of "
            "text parts [{'type': 'text', 'text': 'hello'}]"
        )
    content = value["content"]
    extras = {str(k): v for k, v in value.items() if k not in _DICT_EXTRAS_SKIPPED}
    if content is None or isinstance(content, str):
        return Message(role=checked_role, content=content, additional_kwargs=extras)
    if isinstance(content, list | tuple):
        chunks = _text_chunks(content, f"{where}['content']")
        return Message(role=checked_role, chunks=chunks, additional_kwargs=extras)
    raise ArgumentTypeError(
        f"{where}['content'] must be a str or a list of text parts "
        f"[{{'type': 'text', 'text': ...}}], got {type(content).__name__} {shown(content)}"
    )


class FinishReason(StrEnum):
    """Why generation ended."""

    STOP = "stop"  # an end-of-turn token or a stop sequence
    LENGTH = "length"  # max_new_tokens or the context window
    CANCELLED = "cancelled"  # the caller's cancel token


@frozen
class Usage:
    """Token counts of one generation.

    ``cached_prompt_tokens`` of the ``prompt_tokens`` were already evaluated (by an earlier
    turn or request) and were not evaluated again.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def evaluated_prompt_tokens(self) -> int:
        """Prompt tokens this request evaluated: the ones that were not cached."""
        return self.prompt_tokens - self.cached_prompt_tokens


@frozen
class Timing:
    """Where the time of one generation went, in seconds.

    ``time_to_first_token`` runs from the start of the request (waiting for the model
    included) to the first generated token; ``prompt_seconds`` is the prompt evaluation
    alone; ``generation_seconds`` runs from the first generated token to the last.
    """

    time_to_first_token: float
    prompt_seconds: float
    generation_seconds: float
    tokens_per_second: float


@frozen
class CompletionResponse:
    """A completion, or one chunk of a streamed completion.

    In a stream ``delta`` is the text this chunk added and ``text`` the text so
    far; ``raw`` is the backend's own response (or chunk) dictionary. ``usage``,
    ``timing`` and ``finish_reason`` are set on a whole response and on the last chunk
    of a stream (None on the others, and for backends that do not report them).
    """

    text: str
    delta: str | None = None
    raw: Any = None
    additional_kwargs: dict[str, Any] = field(factory=dict, converter=_frozen_dict)
    usage: Usage | None = None
    timing: Timing | None = None
    finish_reason: FinishReason | None = None

    def __str__(self) -> str:
        return self.text


@frozen
class ChatResponse:
    """A chat answer, or one chunk of a streamed answer (see ``CompletionResponse``)."""

    message: Message
    delta: str | None = None
    raw: Any = None
    additional_kwargs: dict[str, Any] = field(factory=dict, converter=_frozen_dict)
    usage: Usage | None = None
    timing: Timing | None = None
    finish_reason: FinishReason | None = None

    def __str__(self) -> str:
        return str(self.message)


@frozen
class Metadata:
    """What callers need to know about an LLM to budget prompts and pick an API."""

    context_window: int = DEFAULT_CONTEXT_WINDOW
    num_output: int = DEFAULT_NUM_OUTPUTS
    model_name: str = "unknown"
    is_chat_model: bool = False


CompletionResponseGen = Iterator[CompletionResponse]
CompletionResponseAsyncGen = AsyncIterator[CompletionResponse]
ChatResponseGen = Iterator[ChatResponse]
ChatResponseAsyncGen = AsyncIterator[ChatResponse]
