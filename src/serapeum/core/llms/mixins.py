"""Chat built from completion: format the messages, complete, wrap the text as a message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal, Protocol, cast, overload

from serapeum.core.llms.types import (
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    Message,
    MessageRole,
)

__all__ = ["CompletionToChatMixin"]


class _CompletingLLM(Protocol):
    def format_messages(self, messages: Sequence[Message]) -> str: ...

    def complete(
        self, prompt: str, formatted: bool = False, *, stream: bool = False, **kwargs: Any
    ) -> CompletionResponse | CompletionResponseGen: ...

    async def acomplete(
        self, prompt: str, formatted: bool = False, *, stream: bool = False, **kwargs: Any
    ) -> CompletionResponse | CompletionResponseAsyncGen: ...


def completion_to_chat_response(response: CompletionResponse) -> ChatResponse:
    """The assistant message for a completion (or one streamed chunk of it)."""
    return ChatResponse(
        message=Message(role=MessageRole.ASSISTANT, content=response.text),
        delta=response.delta,
        raw=response.raw,
        additional_kwargs=response.additional_kwargs,
        usage=response.usage,
        timing=response.timing,
        finish_reason=response.finish_reason,
    )


def _chat_stream(completions: CompletionResponseGen) -> ChatResponseGen:
    try:
        for chunk in completions:
            yield completion_to_chat_response(chunk)
    finally:  # stopping the chat stream stops generation, not only our loop
        close = getattr(completions, "close", None)
        if close is not None:
            close()


async def _achat_stream(completions: CompletionResponseAsyncGen) -> ChatResponseAsyncGen:
    try:
        async for chunk in completions:
            yield completion_to_chat_response(chunk)
    finally:
        aclose = getattr(completions, "aclose", None)
        if aclose is not None:
            await aclose()


class CompletionToChatMixin:
    """Gives a completion LLM ``chat``/``achat``: ``format_messages`` then ``complete``."""

    @overload
    def chat(
        self,
        messages: Sequence[Message],
        *,
        stream: Literal[False] = ...,
        **kwargs: Any,
    ) -> ChatResponse: ...

    @overload
    def chat(
        self, messages: Sequence[Message], *, stream: Literal[True], **kwargs: Any
    ) -> ChatResponseGen: ...

    def chat(
        self, messages: Sequence[Message], *, stream: bool = False, **kwargs: Any
    ) -> ChatResponse | ChatResponseGen:
        llm = cast(_CompletingLLM, self)
        prompt = llm.format_messages(messages)
        if stream:
            completions = llm.complete(prompt, formatted=True, stream=True, **kwargs)
            assert isinstance(completions, Iterator)
            return _chat_stream(completions)
        response = llm.complete(prompt, formatted=True, **kwargs)
        assert isinstance(response, CompletionResponse)
        return completion_to_chat_response(response)

    @overload
    async def achat(
        self,
        messages: Sequence[Message],
        *,
        stream: Literal[False] = ...,
        **kwargs: Any,
    ) -> ChatResponse: ...

    @overload
    async def achat(
        self, messages: Sequence[Message], *, stream: Literal[True], **kwargs: Any
    ) -> ChatResponseAsyncGen: ...

    async def achat(
        self, messages: Sequence[Message], *, stream: bool = False, **kwargs: Any
    ) -> ChatResponse | ChatResponseAsyncGen:
        llm = cast(_CompletingLLM, self)
        prompt = llm.format_messages(messages)
        if stream:
            completions = await llm.acomplete(prompt, formatted=True, stream=True, **kwargs)
            assert isinstance(completions, AsyncIterator)
            return _achat_stream(completions)
        response = await llm.acomplete(prompt, formatted=True, **kwargs)
        assert isinstance(response, CompletionResponse)
        return completion_to_chat_response(response)
