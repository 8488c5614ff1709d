"""What an output parser offers ``TextCompletionLLM``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class BaseOutputParser(ABC, Generic[T]):
    """Adds format instructions to a prompt and turns model text into a value."""

    @abstractmethod
    def parse(self, text: str) -> T:
        """Turn the model's text into a value, or raise ``OutputParserError``."""

    def format(self, prompt: str) -> str:
        """Return ``prompt`` with instructions on the output format appended."""
        return prompt

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON Schema of the output, when the parser has one."""
        return None
