"""Errors of the Hugging Face source: each names the repository, file and revision, and the fix.

Every error derives from ``serapeum.core.errors.SerapeumError`` (through ``HfSourceError``)
and from the builtin it specialises (``PermissionError``, ``ConnectionError``,
``FileNotFoundError``, ``ValueError`` through ``ConfigurationError``, ``OSError``), and,
where the engine has the same error, from that one too (checksums, GGUF structure, the
cache directory). Messages are redacted: no URL credentials or query values.
"""

from __future__ import annotations

from collections.abc import Iterable

from serapeum.core.errors import (
    CacheDirectoryError,
    ConfigurationError,
    MalformedGGUFError,
    NotGGUFError,
    SerapeumError,
)
from serapeum.core.errors import ChecksumMismatchError as CoreChecksumMismatchError
from serapeum.core.redact import redact_text

__all__ = [
    "HfAccessError",
    "HfAmbiguousFilenameError",
    "HfCacheDirectoryError",
    "HfChecksumMismatchError",
    "HfDownloadError",
    "HfFileNotFoundError",
    "HfMalformedModelError",
    "HfNotAModelError",
    "HfOfflineError",
    "HfRepositoryNotFoundError",
    "HfRevisionNotFoundError",
    "HfSourceError",
]


class HfSourceError(SerapeumError):
    """Fetching a model from the Hugging Face Hub failed; says which repo, file and revision."""

    def __init__(
        self,
        message: str,
        *,
        repo_id: str,
        filename: str | None = None,
        revision: str | None = None,
    ) -> None:
        # Not super(): the core classes mixed in below take other keyword arguments.
        Exception.__init__(self, redact_text(message))
        self.repo_id = repo_id
        self.filename = filename
        self.revision = revision

    def __str__(self) -> str:
        # OSError subclasses would otherwise render "[Errno None] None: <filename>".
        return str(self.args[0]) if self.args else ""


class HfRepositoryNotFoundError(HfSourceError, ConfigurationError):
    """The repository does not exist (or is private and the request was not authenticated)."""


class HfRevisionNotFoundError(HfSourceError, ConfigurationError):
    """The repository exists but has no such branch, tag or commit."""


class HfFileNotFoundError(HfSourceError, ConfigurationError, FileNotFoundError):
    """No file in the repository matches ``hf_filename``; ``available`` lists its GGUF files."""

    def __init__(
        self,
        message: str,
        *,
        available: Iterable[str] = (),
        repo_id: str,
        filename: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(message, repo_id=repo_id, filename=filename, revision=revision)
        self.available = tuple(available)


class HfAmbiguousFilenameError(HfSourceError, ConfigurationError):
    """The ``hf_filename`` glob matches several models; ``matches`` lists them."""

    def __init__(
        self,
        message: str,
        *,
        matches: Iterable[str] = (),
        repo_id: str,
        filename: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(message, repo_id=repo_id, filename=filename, revision=revision)
        self.matches = tuple(matches)


class HfAccessError(HfSourceError, PermissionError):
    """The repository is gated or private and the token is missing or not allowed."""


class HfOfflineError(HfSourceError, ConnectionError):
    """The Hub cannot be used (``HF_HUB_OFFLINE`` or no network) and the file is not cached."""


class HfDownloadError(HfSourceError, OSError):
    """Any other failure talking to the Hub (server errors, bad responses)."""


class HfCacheDirectoryError(HfSourceError, CacheDirectoryError):
    """The Hub cache (``HF_HUB_CACHE``) cannot be created or written."""


class HfNotAModelError(HfSourceError, NotGGUFError):
    """The Hub file is not a GGUF model (or the engine's check refused to load it)."""


class HfMalformedModelError(HfNotAModelError, MalformedGGUFError):
    """The Hub file starts like a GGUF model but its structure is broken (e.g. truncated)."""

    def __init__(
        self,
        message: str,
        *,
        path: str,
        problem: str,
        repo_id: str,
        filename: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(message, repo_id=repo_id, filename=filename, revision=revision)
        self.path = path
        self.problem = problem


class HfChecksumMismatchError(HfSourceError, CoreChecksumMismatchError):
    """The Hub file's SHA-256 is not ``model_sha256``; a file cached before is kept (``kept``)."""

    def __init__(
        self,
        message: str,
        *,
        path: str,
        expected: str,
        actual: str,
        kept: bool,
        repo_id: str,
        filename: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(message, repo_id=repo_id, filename=filename, revision=revision)
        self.path = path
        self.expected = expected
        self.actual = actual
        self.kept = kept
