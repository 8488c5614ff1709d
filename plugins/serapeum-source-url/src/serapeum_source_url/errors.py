"""Download errors: each says what went wrong with which URL, and what to do."""

from __future__ import annotations

from serapeum.core.errors import SerapeumError


class DownloadError(SerapeumError):
    """A model could not be downloaded; nothing was left at the final cache path."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class HTTPStatusError(DownloadError):
    """The server answered with an error status (404, 401, 403, ...)."""

    def __init__(self, message: str, *, url: str, status: int) -> None:
        super().__init__(message, url=url)
        self.status = status


class NotAModelError(DownloadError):
    """What arrived is not a GGUF model (an HTML page, a truncated file, ...)."""


class ChecksumMismatchError(DownloadError):
    """The file's SHA-256 is not the one the caller asked for."""
