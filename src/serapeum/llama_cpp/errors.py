"""Errors the engine raises; configuration ones subclass ``ValueError`` as the seed's did."""

from __future__ import annotations

from serapeum.core.errors import ConfigurationError, SerapeumError

__all__ = [
    "ContextWindowExceededError",
    "GenerationCancelled",
    "MissingFormatterError",
    "ModelBusyError",
    "ModelLoadError",
    "NotGGUFError",
]


class MissingFormatterError(ConfigurationError):
    """No way to write prompts for the model was given."""


class NotGGUFError(ConfigurationError):
    """The model file is not a GGUF file (checked before llama.cpp sees it)."""


class ModelLoadError(SerapeumError, RuntimeError):
    """The backend could not load a file that looked like GGUF."""


class ContextWindowExceededError(SerapeumError, ValueError):
    """The prompt does not fit in the model's context window."""

    def __init__(self, message: str, *, prompt_tokens: int, context_window: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window


class ModelBusyError(SerapeumError, RuntimeError):
    """This thread already holds the model (an unfinished stream) and would deadlock."""


class GenerationCancelled(SerapeumError):
    """Generation stopped (or never started) because its caller cancelled it."""
