"""Every error the engine raises, importable from this one module.

Configuration problems subclass ``ValueError`` as the seed's did; all derive from
``serapeum.core.errors.SerapeumError``. The errors the engine shares with plugins (model
files, checksums, the cache, constrained output) are defined in core and re-exported here.
"""

from __future__ import annotations

from serapeum.core.errors import (
    CacheDirectoryError,
    ChecksumMismatchError,
    ConfigurationError,
    IncompleteJSONError,
    MalformedGGUFError,
    ModelFileError,
    NotGGUFError,
    SchemaError,
    SerapeumError,
)

__all__ = [
    "CacheDirectoryError",
    "ChatTemplateError",
    "ChecksumMismatchError",
    "ConfigurationError",
    "ContextWindowExceededError",
    "DecodeError",
    "GenerationCancelled",
    "IncompleteJSONError",
    "InvalidRequestError",
    "MalformedGGUFError",
    "MissingFormatterError",
    "ModelBusyError",
    "ModelFileError",
    "ModelLoadError",
    "NotGGUFError",
    "QueueFullError",
    "SchemaError",
    "SerapeumError",
    "ServeAddressError",
    "ServeDependencyError",
    "UnsafeModelError",
]


class MissingFormatterError(ConfigurationError):
    """No way to write prompts for the model was given."""


class ModelLoadError(SerapeumError, RuntimeError):
    """The backend could not load a file that looked like GGUF."""


class UnsafeModelError(ModelLoadError):
    """Loading the file crashed or hung a child process (the checked load), so it is refused.

    llama.cpp aborts the whole process on some malformed files; the checked load tries the
    file in a child process first, so only the child dies.
    """


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


class DecodeError(SerapeumError, RuntimeError):
    """llama.cpp could not evaluate a batch."""


class QueueFullError(SerapeumError, RuntimeError):
    """Every slot of a batched model is busy and its queue of waiting requests is full."""

    def __init__(self, message: str, *, queued: int) -> None:
        super().__init__(message)
        self.queued = queued


class ChatTemplateError(SerapeumError, ValueError):
    """The model's chat template is unusable, unsafe, or refused the conversation."""


class ServeDependencyError(SerapeumError, ImportError):
    """Starlette or uvicorn, which ``serve`` (the OpenAI-compatible server) needs, is missing."""


class ServeAddressError(SerapeumError, OSError):
    """``serve`` cannot listen on its host and port (in use, not this machine's, privileged).

    ``host`` and ``port`` say where; ``errno`` is the socket error's, when there was one.
    """

    def __init__(self, message: str, *, host: str, port: int, errno: int | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.port = port
        self.errno = errno


class InvalidRequestError(ConfigurationError):
    """A request to ``serve`` the OpenAI protocol allows but the server cannot honour, or bad JSON.

    ``param`` names the request field (``"n"``, ``"messages[1].role"``), as OpenAI's errors do.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code
