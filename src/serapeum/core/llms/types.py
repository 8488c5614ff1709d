"""Value types exchanged between callers, LLMs and plugins (all frozen attrs classes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from enum import StrEnum
from typing import Any

from attrs import field, frozen

__all__ = [
    "ChatResponse",
    "ChatResponseAsyncGen",
    "ChatResponseGen",
    "CompletionResponse",
    "CompletionResponseAsyncGen",
    "CompletionResponseGen",
    "FinishReason",
    "Message",
    "MessageRole",
    "Metadata",
    "Timing",
    "Usage",
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
        raise ValueError(f"unknown message role {value!r}; use one of: {allowed}") from None


def _frozen_dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


@frozen
class Message:
    """One chat message. ``role`` accepts a ``MessageRole`` or its string value."""

    role: MessageRole = field(default=MessageRole.USER, converter=_to_role)
    content: str = field(default="", converter=lambda c: "" if c is None else str(c))
    additional_kwargs: dict[str, Any] = field(factory=dict, converter=_frozen_dict)

    @classmethod
    def system(cls, content: str) -> Message:
        return cls(role=MessageRole.SYSTEM, content=content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls(role=MessageRole.USER, content=content)

    @classmethod
    def assistant(cls, content: str) -> Message:
        return cls(role=MessageRole.ASSISTANT, content=content)

    def __str__(self) -> str:
        return f"{self.role.value}: {self.content}"


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
