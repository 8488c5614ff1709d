"""The LLM interfaces: what every engine offers callers, sync and async."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal, Unpack, overload

from serapeum.core.llms.options import GenerationOptions
from serapeum.core.llms.types import (
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    MessageLike,
    Metadata,
)

__all__ = ["LLM", "BaseLLM"]


class BaseLLM(ABC):
    """Completion and chat, each sync or async, each whole or streamed.

    Every call takes the generation options of ``GenerationOptions`` as keywords
    (``temperature=0.0``, ``max_new_tokens=64``, ``stop=[...]``, ``seed=1`` ...); they
    override the LLM's own settings for that call only.
    """

    @classmethod
    def class_name(cls) -> str:
        """The class's name, as the seed's serialisation and tests use it."""
        return cls.__name__

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
        self,
        prompt: str,
        formatted: bool = ...,
        *,
        stream: Literal[False] = ...,
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponse: ...

    @overload
    def complete(
        self,
        prompt: str,
        formatted: bool = ...,
        *,
        stream: Literal[True],
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponseGen: ...

    @abstractmethod
    def complete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponse | CompletionResponseGen:
        """Complete ``prompt``; ``formatted=True`` means it is already in the model's format.

        Returns a ``CompletionResponse``, or with ``stream=True`` an iterator of chunks whose
        ``delta`` is the new text and ``text`` the text so far.
        """

    @overload
    def chat(
        self,
        messages: Sequence[MessageLike],
        *,
        stream: Literal[False] = ...,
        **kwargs: Unpack[GenerationOptions],
    ) -> ChatResponse: ...

    @overload
    def chat(
        self,
        messages: Sequence[MessageLike],
        *,
        stream: Literal[True],
        **kwargs: Unpack[GenerationOptions],
    ) -> ChatResponseGen: ...

    @abstractmethod
    def chat(
        self,
        messages: Sequence[MessageLike],
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
    ) -> ChatResponse | ChatResponseGen:
        """Answer the conversation ``messages`` as the assistant.

        ``messages`` are ``Message`` objects or OpenAI-style dicts
        (``{"role": "user", "content": "hi"}``), mixed freely. Returns a ``ChatResponse``,
        or with ``stream=True`` an iterator of chunks.
        """

    @overload
    async def acomplete(
        self,
        prompt: str,
        formatted: bool = ...,
        *,
        stream: Literal[False] = ...,
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponse: ...

    @overload
    async def acomplete(
        self,
        prompt: str,
        formatted: bool = ...,
        *,
        stream: Literal[True],
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponseAsyncGen: ...

    @abstractmethod
    async def acomplete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponse | CompletionResponseAsyncGen:
        """``complete`` without blocking the event loop (``stream=True``: an async iterator)."""

    @overload
    async def achat(
        self,
        messages: Sequence[MessageLike],
        *,
        stream: Literal[False] = ...,
        **kwargs: Unpack[GenerationOptions],
    ) -> ChatResponse: ...

    @overload
    async def achat(
        self,
        messages: Sequence[MessageLike],
        *,
        stream: Literal[True],
        **kwargs: Unpack[GenerationOptions],
    ) -> ChatResponseAsyncGen: ...

    @abstractmethod
    async def achat(
        self,
        messages: Sequence[MessageLike],
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
    ) -> ChatResponse | ChatResponseAsyncGen:
        """``chat`` without blocking the event loop (``stream=True``: an async iterator)."""


class LLM(BaseLLM):
    """An LLM that renders its own prompts from messages or a bare completion.

    Subclasses say how through ``format_messages`` and ``format_completion``; the
    ``CompletionToChatMixin`` then builds chat on top of completion.
    """

    @abstractmethod
    def format_messages(self, messages: Sequence[MessageLike]) -> str:
        """Render a conversation as prompt text, ending where the assistant speaks next.

        Accepts what ``chat`` accepts: ``Message`` objects or OpenAI-style dicts.
        """

    @abstractmethod
    def format_completion(self, prompt: str) -> str:
        """Render a bare instruction as prompt text (one user turn)."""
