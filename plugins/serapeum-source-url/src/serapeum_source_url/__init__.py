"""HTTP(S) model source: verified, resumable, cached downloads for ``model_url=``."""

from serapeum_source_url.cache_paths import cached_path, safe_file_name
from serapeum_source_url.download import DownloadSettings, download_model, file_sha256
from serapeum_source_url.errors import (
    CacheDirectoryError,
    ChecksumMismatchError,
    DownloadError,
    HTTPStatusError,
    MalformedModelError,
    NotAModelError,
    UnsafeCachePathError,
)
from serapeum_source_url.source import URL_SOURCE

__all__ = [
    "URL_SOURCE",
    "CacheDirectoryError",
    "ChecksumMismatchError",
    "DownloadError",
    "DownloadSettings",
    "HTTPStatusError",
    "MalformedModelError",
    "NotAModelError",
    "UnsafeCachePathError",
    "cached_path",
    "download_model",
    "file_sha256",
    "safe_file_name",
]
