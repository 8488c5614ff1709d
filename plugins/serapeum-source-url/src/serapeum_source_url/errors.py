"""Download errors: each says what went wrong with which URL, and what to do.

Every error derives from ``serapeum.core.errors.SerapeumError`` and from the builtin it
specialises (``OSError`` for a download that failed, ``ValueError`` for a file that is
not the model asked for), and, where the engine has the same error, from that one too:
``except serapeum.core.errors.ChecksumMismatchError`` catches a download's mismatch.
URLs in messages and in ``.url`` are redacted (no user:password, no query values).
"""

from __future__ import annotations

from serapeum.core.errors import CacheDirectoryError as CoreCacheDirectoryError
from serapeum.core.errors import ChecksumMismatchError as CoreChecksumMismatchError
from serapeum.core.errors import (
    MalformedGGUFError,
    NotGGUFError,
    SerapeumError,
)
from serapeum.core.redact import redact_text, redact_url

__all__ = [
    "CacheDirectoryError",
    "ChecksumMismatchError",
    "DownloadError",
    "HTTPStatusError",
    "MalformedModelError",
    "NotAModelError",
    "UnsafeCachePathError",
]


class DownloadError(SerapeumError, OSError):
    """A model could not be downloaded; nothing was left at the final cache path."""

    def __init__(self, message: str, *, url: str) -> None:
        # Not super(): the core classes mixed in below take other keyword arguments.
        Exception.__init__(self, redact_text(message))
        self.url = redact_url(url)

    def __str__(self) -> str:
        # OSError would render "[Errno ...]" forms if errno/filename were ever set.
        return str(self.args[0]) if self.args else ""


class HTTPStatusError(DownloadError):
    """The server answered with an error status (404, 401, 403, ...)."""

    def __init__(self, message: str, *, url: str, status: int) -> None:
        super().__init__(message, url=url)
        self.status = status


class NotAModelError(DownloadError, NotGGUFError):
    """What arrived is not a GGUF model (an HTML page, a truncated file, ...)."""


class MalformedModelError(NotAModelError, MalformedGGUFError):
    """What arrived starts like a GGUF model but its structure is broken (e.g. truncated).

    ``problem`` is the structure check's verdict in a few words; ``path`` the file that
    was checked (it is deleted: it never reaches the final cache path).
    """

    def __init__(self, message: str, *, url: str, path: str, problem: str) -> None:
        DownloadError.__init__(self, message, url=url)
        self.path = path
        self.problem = problem


class ChecksumMismatchError(DownloadError, CoreChecksumMismatchError):
    """The file's SHA-256 is not the one the caller asked for.

    A file that was already in the cache is kept (``kept`` is True); only bytes
    downloaded by the failing call are discarded.
    """

    def __init__(
        self, message: str, *, url: str, path: str, expected: str, actual: str, kept: bool
    ) -> None:
        DownloadError.__init__(self, message, url=url)
        self.path = path
        self.expected = expected
        self.actual = actual
        self.kept = kept


class CacheDirectoryError(DownloadError, CoreCacheDirectoryError):
    """The cache directory (or a file in it) cannot be created or written."""


class UnsafeCachePathError(SerapeumError, ValueError):
    """A URL would map outside the cache directory (refused, never written)."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(redact_text(message))
        self.url = redact_url(url)
