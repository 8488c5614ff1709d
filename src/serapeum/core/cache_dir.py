"""Where serapeum keeps files it fetches: ``SERAPEUM_CACHE_DIR``, else the user cache dir.

``cache_dir()`` only names the place; ``ensure_cache_directory(path)`` creates a
directory in it and turns "a file is in the way" or "cannot write here" into a
``CacheDirectoryError`` that names the directory and the fix, instead of a raw
``NotADirectoryError`` / ``PermissionError`` deep inside a download.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from serapeum.core.errors import CacheDirectoryError

__all__ = ["CACHE_ENV_VAR", "cache_dir", "ensure_cache_directory"]

CACHE_ENV_VAR = "SERAPEUM_CACHE_DIR"


def cache_dir() -> Path:
    """The serapeum cache directory (not created here)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "serapeum"


def ensure_cache_directory(
    path: Path, *, env_var: str = CACHE_ENV_VAR, what: str = "serapeum cache"
) -> Path:
    """Create ``path`` (and its parents) and check it can be written; return it.

    Raises ``CacheDirectoryError`` naming the directory, the problem and the fix (point
    ``env_var`` at a writable directory). Superuser processes pass the write check on
    read-only permission bits, as they can indeed write there.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        in_the_way = _first_non_directory(path) or path
        raise cache_directory_error(
            path,
            f"{in_the_way} is a file, not a directory",
            fix=f"move {in_the_way} out of the way",
            env_var=env_var,
            what=what,
        ) from error
    except OSError as error:
        blocked = _deepest_existing(path)
        raise cache_directory_error(
            path,
            f"{blocked}: {_describe(error)}",
            fix=f"fix the permissions of {blocked}",
            env_var=env_var,
            what=what,
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise cache_directory_error(
            path,
            "it is read-only for this user",
            fix=f"fix the permissions of {path}",
            env_var=env_var,
            what=what,
        )
    return path


def cache_directory_error(
    path: Path,
    problem: str,
    *,
    fix: str | None = None,
    env_var: str = CACHE_ENV_VAR,
    what: str = "serapeum cache",
) -> CacheDirectoryError:
    """The error for a cache directory that cannot be used, with the fix in its message."""
    configured = os.environ.get(env_var)
    now = f" (now {env_var}={configured})" if configured else ""
    return CacheDirectoryError(
        f"cannot use the {what} directory {path}: {problem}. Set {env_var} to a writable "
        f"directory{now}, or {fix or f'fix the permissions of {path}'}"
    )


def _first_non_directory(path: Path) -> Path | None:
    """The first existing path component that is not a directory (the one in the way)."""
    for candidate in (*reversed(path.parents), path):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def _deepest_existing(path: Path) -> Path:
    """The deepest existing directory on the way to ``path`` (where creating it failed)."""
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return path


def _describe(error: OSError) -> str:
    if isinstance(error, PermissionError) or error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno == errno.EROFS:
        return "it is on a read-only file system"
    if error.errno == errno.ENOSPC:
        return "the disk is full"
    return error.strerror or str(error)
