"""A prompt template, an LLM and an output parser: call it, get a typed value."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from attrs import define, field

from serapeum.core.llms.base import BaseLLM
from serapeum.core.llms.types import ChatResponse, CompletionResponse, Message, MessageRole
from serapeum.core.output_parsers.base import BaseOutputParser

T = TypeVar("T")


@define
class TextCompletionLLM(Generic[T]):
    """Format ``prompt`` with the call's keywords, ask ``llm``, parse with ``output_parser``."""

    output_parser: BaseOutputParser[T]
    prompt: str
    llm: BaseLLM = field(kw_only=True)

    def _prompt_text(self, kwargs: dict[str, Any]) -> str:
        return self.output_parser.format(self.prompt.format(**kwargs))

    def __call__(self, **kwargs: Any) -> T:
        text = self._prompt_text(kwargs)
        if self.llm.metadata.is_chat_model:
            chat = self.llm.chat([Message(role=MessageRole.USER, content=text)])
            assert isinstance(chat, ChatResponse)
            return self.output_parser.parse(chat.message.content)
        completion = self.llm.complete(text)
        assert isinstance(completion, CompletionResponse)
        return self.output_parser.parse(completion.text)

    async def acall(self, **kwargs: Any) -> T:
        text = self._prompt_text(kwargs)
        if self.llm.metadata.is_chat_model:
            chat = await self.llm.achat([Message(role=MessageRole.USER, content=text)])
            assert isinstance(chat, ChatResponse)
            return self.output_parser.parse(chat.message.content)
        completion = await self.llm.acomplete(text)
        assert isinstance(completion, CompletionResponse)
        return self.output_parser.parse(completion.text)
