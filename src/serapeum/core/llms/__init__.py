"""LLM value types, base classes and helpers."""

from serapeum.core.llms.base import LLM, BaseLLM
from serapeum.core.llms.mixins import CompletionToChatMixin
from serapeum.core.llms.text_completion import TextCompletionLLM
from serapeum.core.llms.types import (
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    Message,
    MessageRole,
    Metadata,
)

__all__ = [
    "LLM",
    "BaseLLM",
    "ChatResponse",
    "ChatResponseAsyncGen",
    "ChatResponseGen",
    "CompletionResponse",
    "CompletionResponseAsyncGen",
    "CompletionResponseGen",
    "CompletionToChatMixin",
    "Message",
    "MessageRole",
    "Metadata",
    "TextCompletionLLM",
]
