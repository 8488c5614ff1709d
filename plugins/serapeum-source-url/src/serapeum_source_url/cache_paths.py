"""Where a URL's model lives in the cache: keyed by the whole URL, never outside the cache."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from serapeum.core.cache_dir import cache_dir
from serapeum.core.errors import ConfigurationError
from serapeum.core.redact import redact_url
from serapeum_source_url.errors import UnsafeCachePathError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
DEFAULT_NAME = "model.gguf"


def safe_file_name(url: str) -> str:
    """The URL's last path segment reduced to safe characters (never ``..`` or a path)."""
    try:
        path = urlsplit(url).path
    except ValueError as exc:  # e.g. "http://[::1" (an unclosed IPv6 host)
        raise ConfigurationError(f"{redact_url(url)!r} is not a valid URL: {exc}") from None
    segment = PurePosixPath(unquote(path)).name
    name = _UNSAFE.sub("_", segment).lstrip(".")
    return name[:200] or DEFAULT_NAME


def cached_path(url: str, root: Path | None = None) -> Path:
    """``<cache>/models/url/<sha256 of the URL>/<file name>``: two URLs never share a file."""
    base = (root or cache_dir()) / "models" / "url"
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]
    path = base / key / safe_file_name(url)
    # Belt and braces: whatever the URL, the result stays inside the cache directory.
    if not path.resolve().is_relative_to(base.resolve()):
        raise UnsafeCachePathError(
            f"refusing to write outside the cache: {redact_url(url)} maps to {path}", url=url
        )
    return path
