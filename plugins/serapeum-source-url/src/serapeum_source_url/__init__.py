"""HTTP(S) model source: verified, resumable, cached downloads for ``model_url=``."""

from serapeum_source_url.cache_paths import cached_path, safe_file_name
from serapeum_source_url.download import DownloadSettings, download_model
from serapeum_source_url.errors import (
    ChecksumMismatchError,
    DownloadError,
    HTTPStatusError,
    NotAModelError,
)
from serapeum_source_url.source import URL_SOURCE

__all__ = [
    "URL_SOURCE",
    "ChecksumMismatchError",
    "DownloadError",
    "DownloadSettings",
    "HTTPStatusError",
    "NotAModelError",
    "cached_path",
    "download_model",
    "safe_file_name",
]
