"""Every error serapeum's core raises, under one root so callers can catch them all at once.

Each error also derives from the builtin it specialises (``ValueError``, ``OSError``, ...),
so ``except ValueError`` code written against the seed keeps working. Plugins import the
errors they share with the engine (checksums, model files, the cache) from here.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ArgumentTypeError",
    "BackendNotInstalledError",
    "CacheDirectoryError",
    "ChecksumMismatchError",
    "ConfigurationError",
    "IncompleteJSONError",
    "MalformedGGUFError",
    "ModelFileError",
    "NotGGUFError",
    "OutputParserError",
    "PluginConflictError",
    "PluginError",
    "PluginLoadError",
    "PluginValidationError",
    "PromptFormatError",
    "SchemaError",
    "SerapeumError",
    "SourceNotInstalledError",
    "UnknownPluginError",
]


class SerapeumError(Exception):
    """Base class for every error raised by serapeum and its plugins."""


class ConfigurationError(SerapeumError, ValueError):
    """A setting is missing, contradictory or out of range.

    Subclasses ``ValueError`` because the seed API raised ``ValueError`` for
    configuration problems; existing ``except ValueError`` code keeps working.
    """


class ArgumentTypeError(ConfigurationError, TypeError):
    """An argument has the wrong type (a prompt that is not a str, messages that are not
    ``Message`` objects...). Also a ``TypeError``, as Python's own type errors are."""


# -- model files ------------------------------------------------------------------------
class ModelFileError(ConfigurationError, OSError):
    """The model path cannot be read as a regular file.

    A FIFO, device or socket, a symlink loop, a permission problem: named as such,
    found without opening (and so without blocking on) the file.
    """


class NotGGUFError(ConfigurationError):
    """The model file is not a GGUF file (checked before llama.cpp sees it)."""


class MalformedGGUFError(NotGGUFError):
    """The file starts like a GGUF file but its structure is broken (found before llama.cpp).

    ``problem`` says what is wrong in a few words; the message also says what to do.
    """

    def __init__(self, message: str, *, path: str, problem: str) -> None:
        super().__init__(message)
        self.path = path
        self.problem = problem


class ChecksumMismatchError(SerapeumError, ValueError):
    """A model file's SHA-256 is not the one the caller gave (``model_sha256``).

    A file that was already in a cache is kept: the message says expected and actual
    digests and how to remove the file if it really is the wrong one.
    """

    def __init__(self, message: str, *, path: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.path = path
        self.expected = expected
        self.actual = actual


class CacheDirectoryError(ConfigurationError, OSError):
    """The cache directory cannot be created or written (a file in its place, read-only...)."""


# -- plugins ------------------------------------------------------------------------------
class PluginError(SerapeumError):
    """Base class for plugin problems."""


class PluginLoadError(PluginError):
    """A plugin failed to import (raised only in strict mode; otherwise recorded)."""


class PluginValidationError(PluginError, TypeError):
    """A plugin's hook returned something that is not the descriptor it promised."""


class PluginConflictError(PluginError, ConfigurationError):
    """Two plugins registered the same name; the message names both distributions."""


class UnknownPluginError(PluginError, ConfigurationError, LookupError):
    """Nothing is registered under the requested name."""

    def __init__(self, message: str, *, name: str, available: Sequence[str]) -> None:
        super().__init__(message)
        self.name = name
        self.available = tuple(available)


class SourceNotInstalledError(PluginError, ConfigurationError):
    """No installed model source handles the request; names the distribution to install."""

    def __init__(self, message: str, *, distribution: str | None) -> None:
        super().__init__(message)
        self.distribution = distribution


class BackendNotInstalledError(UnknownPluginError):
    """The backend asked for is not installed; names the distribution that provides it."""

    def __init__(
        self, message: str, *, name: str, available: Sequence[str], distribution: str
    ) -> None:
        super().__init__(message, name=name, available=available)
        self.distribution = distribution


# -- prompts and outputs ------------------------------------------------------------------
class PromptFormatError(SerapeumError, ValueError):
    """The conversation does not fit the prompt format (e.g. roles out of order)."""


class OutputParserError(SerapeumError, ValueError):
    """The model output could not be parsed or validated; ``raw_text`` is what it said."""

    def __init__(self, message: str, *, raw_text: str) -> None:
        super().__init__(f"{message}. Raw output: {raw_text[:500]!r}")
        self.raw_text = raw_text


class SchemaError(ConfigurationError):
    """The JSON Schema cannot constrain generation: invalid, unsatisfiable, or unsupported by the backend."""


class IncompleteJSONError(SerapeumError, ValueError):
    """Generation ended before the constrained JSON value was complete.

    ``text`` is what was generated; raise ``max_new_tokens`` (or shorten the prompt) and retry.
    """

    def __init__(self, message: str, *, text: str) -> None:
        super().__init__(message)
        self.text = text
