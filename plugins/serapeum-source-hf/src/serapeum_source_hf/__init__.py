"""Hugging Face Hub model source: ``hf_model_id`` + ``hf_filename`` (exact name or glob, split GGUF)."""

from serapeum_source_hf.errors import (
    HfAccessError,
    HfAmbiguousFilenameError,
    HfCacheDirectoryError,
    HfChecksumMismatchError,
    HfDownloadError,
    HfFileNotFoundError,
    HfMalformedModelError,
    HfNotAModelError,
    HfOfflineError,
    HfRepositoryNotFoundError,
    HfRevisionNotFoundError,
    HfSourceError,
)
from serapeum_source_hf.source import HF_SOURCE, download_gguf, select_filename, split_shards

__all__ = [
    "HF_SOURCE",
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
    "download_gguf",
    "select_filename",
    "split_shards",
]
