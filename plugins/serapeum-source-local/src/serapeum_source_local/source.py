"""Resolve local GGUF files: plain paths, ``~`` paths and ``file://`` URIs."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from serapeum.core.errors import ConfigurationError
from serapeum.core.model_files import require_regular_file, require_sha256
from serapeum.core.plugins import ModelRequest, ModelSource

__all__ = ["LOCAL_SOURCE", "ModelFileNotFoundError", "path_from_request"]


class ModelFileNotFoundError(ConfigurationError, FileNotFoundError):
    """``model_path`` names no file (or names a directory)."""


def _from_file_uri(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ConfigurationError(
            f"file URI {uri!r} names host {parts.netloc!r}; only local files "
            "(file:///absolute/path.gguf) are supported"
        )
    return Path(url2pathname(unquote(parts.path)))


def path_from_request(request: ModelRequest) -> Path | None:
    """The local path a request names, or None when it is not a local request."""
    if request.kind == "path" and request.model_path is not None:
        text = str(request.model_path)
        if text.startswith("file:"):
            return _from_file_uri(text)
        return Path(text).expanduser()
    if request.kind == "url" and str(request.model_url).startswith("file:"):
        return _from_file_uri(str(request.model_url))
    return None


def _handles(request: ModelRequest) -> bool:
    return path_from_request(request) is not None


def _resolve(request: ModelRequest) -> Path:
    path = path_from_request(request)
    assert path is not None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            hint = ""
            if not path.is_absolute():
                hint = f" (relative to {str(Path.cwd())!r})"
            broken = " (a symbolic link to a missing file)" if path.is_symlink() else ""
            raise ModelFileNotFoundError(
                f"model_path {str(path)!r} does not exist{hint}{broken}; give the path to a "
                "local GGUF file, or use model_url= / hf_model_id= to download one"
            ) from exc
    except ValueError:
        pass  # an embedded NUL byte: require_regular_file names it
    if path.is_dir():
        raise ModelFileNotFoundError(
            f"model_path {str(path)!r} is a directory; point it at the .gguf file inside it"
        )
    # FIFOs, devices, sockets, symlink loops and unreadable files: named, never opened.
    require_regular_file(path, what="model_path")
    sha256 = request.options.get("sha256")
    if sha256 is not None:  # the user's own file: a mismatch never deletes it
        require_sha256(path, sha256)
    return path.resolve()


LOCAL_SOURCE = ModelSource(
    name="local",
    handles=_handles,
    resolve=_resolve,
    priority=0,
    description="Local GGUF files: paths, ~ paths and file:// URIs",
)
