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
    FinishReason,
    Message,
    MessageRole,
    Metadata,
    Timing,
    Usage,
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
    "FinishReason",
    "Message",
    "MessageRole",
    "Metadata",
    "TextCompletionLLM",
    "Timing",
    "Usage",
]
