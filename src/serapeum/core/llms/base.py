"""The LLM interfaces: what every engine offers callers, sync and async."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal, overload

from serapeum.core.llms.types import (
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    Message,
    Metadata,
)

__all__ = ["LLM", "BaseLLM"]


class BaseLLM(ABC):
    """Completion and chat, each sync or async, each whole or streamed."""

    @property
    @abstractmethod
    def metadata(self) -> Metadata:
        """Context window, output budget, model name and whether the model is chat-native."""

    @property
    def supports_json_schema(self) -> bool:
        """Whether ``complete(..., json_schema=...)`` constrains decoding (False unless said)."""
        return False

    @overload
    def complete(
        self, prompt: str, formatted: bool = ..., *, stream: Literal[False] = ..., **kwargs: Any
    ) -> CompletionResponse: ...

    @overload
    def complete(
        self, prompt: str, formatted: bool = ..., *, stream: Literal[True], **kwargs: Any
    ) -> CompletionResponseGen: ...

    @abstractmethod
    def complete(
        self, prompt: str, formatted: bool = False, *, stream: bool = False, **kwargs: Any
    ) -> CompletionResponse | CompletionResponseGen:
        """Complete ``prompt``; ``formatted=True`` means it is already in the model's format."""

    @overload
    def chat(
        self, messages: Sequence[Message], *, stream: Literal[False] = ..., **kwargs: Any
    ) -> ChatResponse: ...

    @overload
    def chat(
        self, messages: Sequence[Message], *, stream: Literal[True], **kwargs: Any
    ) -> ChatResponseGen: ...

    @abstractmethod
    def chat(
        self, messages: Sequence[Message], *, stream: bool = False, **kwargs: Any
    ) -> ChatResponse | ChatResponseGen:
        """Answer the conversation ``messages`` as the assistant."""

    @overload
    async def acomplete(
        self, prompt: str, formatted: bool = ..., *, stream: Literal[False] = ..., **kwargs: Any
    ) -> CompletionResponse: ...

    @overload
    async def acomplete(
        self, prompt: str, formatted: bool = ..., *, stream: Literal[True], **kwargs: Any
    ) -> CompletionResponseAsyncGen: ...

    @abstractmethod
    async def acomplete(
        self, prompt: str, formatted: bool = False, *, stream: bool = False, **kwargs: Any
    ) -> CompletionResponse | CompletionResponseAsyncGen:
        """``complete`` without blocking the event loop."""

    @overload
    async def achat(
        self, messages: Sequence[Message], *, stream: Literal[False] = ..., **kwargs: Any
    ) -> ChatResponse: ...

    @overload
    async def achat(
        self, messages: Sequence[Message], *, stream: Literal[True], **kwargs: Any
    ) -> ChatResponseAsyncGen: ...

    @abstractmethod
    async def achat(
        self, messages: Sequence[Message], *, stream: bool = False, **kwargs: Any
    ) -> ChatResponse | ChatResponseAsyncGen:
        """``chat`` without blocking the event loop."""


class LLM(BaseLLM):
    """An LLM that renders its own prompts from messages or a bare completion.

    Subclasses say how through ``format_messages`` and ``format_completion``; the
    ``CompletionToChatMixin`` then builds chat on top of completion.
    """

    @abstractmethod
    def format_messages(self, messages: Sequence[Message]) -> str:
        """Render a conversation as prompt text, ending where the assistant speaks next."""

    @abstractmethod
    def format_completion(self, prompt: str) -> str:
        """Render a bare instruction as prompt text (one user turn)."""
