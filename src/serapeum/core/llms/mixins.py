"""Chat built from completion: format the messages, complete, wrap the text as a message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, Unpack, cast, overload

from serapeum.core.errors import ArgumentTypeError, ConfigurationError
from serapeum.core.llms.options import GenerationOptions
from serapeum.core.llms.types import (
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    Message,
    MessageLike,
    MessageRole,
    message_from_dict,
)
from serapeum.core.shown import shown

__all__ = ["CompletionToChatMixin", "as_messages", "check_messages"]


class _CompletingLLM(Protocol):
    def format_messages(self, messages: Sequence[MessageLike]) -> str: ...

    def complete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
    ) -> CompletionResponse | CompletionResponseGen: ...

    async def acomplete(
        self,
        prompt: str,
        formatted: bool = False,
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
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


def as_messages(messages: Any) -> list[Message]:
    """``messages`` as a list of ``Message``: Message objects and OpenAI-style dicts, mixed.

    A dict is ``{"role": "system" | "user" | "assistant", "content": str | [text parts]}``
    (see ``message_from_dict``). Anything else is refused with an error naming the index
    and what is wrong; so is text with an unpaired surrogate (UTF-8 cannot encode it, so
    no tokenizer can take it).
    """
    if isinstance(messages, str | bytes | Message | Mapping) or not isinstance(messages, Sequence):
        raise ArgumentTypeError(
            "messages must be a list of serapeum Message objects or OpenAI-style dicts, e.g. "
            "[Message.user('hello')] or [{'role': 'user', 'content': 'hello'}]; got "
            f"{type(messages).__name__} {shown(messages)}"
        )
    checked: list[Message] = []
    for index, message in enumerate(messages):
        if isinstance(message, Mapping):
            message = message_from_dict(message, where=f"messages[{index}]")
        elif not isinstance(message, Message):
            raise ArgumentTypeError(
                f"messages[{index}] must be a serapeum Message, e.g. Message.user('hello') or "
                "Message(role='user', content='hello'), or an OpenAI-style dict "
                f"{{'role': 'user', 'content': 'hello'}}; got {type(message).__name__} "
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
        checked.append(message)
    return checked


def check_messages(messages: Any) -> None:
    """Refuse, with a message that says what to pass, anything ``as_messages`` refuses."""
    as_messages(messages)


class CompletionToChatMixin:
    """Gives a completion LLM ``chat``/``achat``: ``format_messages`` then ``complete``."""

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

    def chat(
        self,
        messages: Sequence[MessageLike],
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
    ) -> ChatResponse | ChatResponseGen:
        """Answer the conversation ``messages`` as the assistant.

        ``messages`` are ``Message`` objects or OpenAI-style dicts
        (``{"role": "user", "content": "hi"}``), mixed freely; they are written in the
        model's prompt format (``format_messages``) and completed. Keyword options
        (``GenerationOptions``: ``temperature``, ``max_new_tokens``, ``stop``, ``seed``,
        ``json_schema``, ``cancel`` ...) apply to this call only. With ``stream=True``
        returns an iterator of ``ChatResponse`` chunks (``delta`` the new text); closing it
        stops generation.
        """
        messages = as_messages(messages)
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

    async def achat(
        self,
        messages: Sequence[MessageLike],
        *,
        stream: bool = False,
        **kwargs: Unpack[GenerationOptions],
    ) -> ChatResponse | ChatResponseAsyncGen:
        """``chat`` without blocking the event loop; takes the same messages and options.

        With ``stream=True`` returns an async iterator of ``ChatResponse`` chunks;
        ``break``, ``aclose()`` or cancelling the task stops generation.
        """
        messages = as_messages(messages)
        llm = cast(_CompletingLLM, self)
        prompt = llm.format_messages(messages)
        if stream:
            completions = await llm.acomplete(prompt, formatted=True, stream=True, **kwargs)
            assert isinstance(completions, AsyncIterator)
            return _achat_stream(completions)
        response = await llm.acomplete(prompt, formatted=True, **kwargs)
        assert isinstance(response, CompletionResponse)
        return completion_to_chat_response(response)
