"""LLM value types, base classes and helpers."""

from serapeum.core.llms.base import LLM, BaseLLM
from serapeum.core.llms.mixins import CompletionToChatMixin, as_messages
from serapeum.core.llms.options import GenerationOptions
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
    MessageLike,
    MessageRole,
    Metadata,
    TextChunk,
    Timing,
    Usage,
    message_from_dict,
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
    "GenerationOptions",
    "Message",
    "MessageLike",
    "MessageRole",
    "Metadata",
    "TextChunk",
    "TextCompletionLLM",
    "Timing",
    "Usage",
    "as_messages",
    "message_from_dict",
]
