"""Chat built from completion: format the messages, complete, wrap the text as a message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal, Protocol, cast, overload

from serapeum.core.errors import ArgumentTypeError, ConfigurationError
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
from serapeum.core.shown import shown

__all__ = ["CompletionToChatMixin", "check_messages"]


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


def check_messages(messages: Any) -> None:
    """Refuse, with a message that says what to pass, anything but a list of ``Message``.

    Also refuses message text with an unpaired surrogate (UTF-8 cannot encode it, so no
    tokenizer can take it), naming the message and the index.
    """
    if isinstance(messages, str | bytes | Message) or not isinstance(messages, Sequence):
        raise ArgumentTypeError(
            "messages must be a list of serapeum Message objects, e.g. "
            f"[Message.user('hello')]; got {type(messages).__name__} {shown(messages)}"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, Message):
            raise ArgumentTypeError(
                f"messages[{index}] must be a serapeum Message, e.g. Message.user('hello') or "
                f"Message(role='user', content='hello'); got {type(message).__name__} "
                f"{shown(message)}"
            )
        try:
            message.content.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConfigurationError(
                f"messages[{index}].content has an unpaired surrogate "
                f"{message.content[exc.start]!r} at index {exc.start}, which is not text UTF-8 "
                "can encode; remove it or decode the source bytes with errors='replace'"
            ) from None


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
        check_messages(messages)
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
        check_messages(messages)
        llm = cast(_CompletingLLM, self)
        prompt = llm.format_messages(messages)
        if stream:
            completions = await llm.acomplete(prompt, formatted=True, stream=True, **kwargs)
            assert isinstance(completions, AsyncIterator)
            return _achat_stream(completions)
        response = await llm.acomplete(prompt, formatted=True, **kwargs)
        assert isinstance(response, CompletionResponse)
        return completion_to_chat_response(response)
