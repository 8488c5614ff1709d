"""Is a path a model file we can read? Answered from ``stat`` alone, so nothing blocks.

Opening a FIFO for reading blocks until a writer comes; a device may never end. These
checks look at the path without opening it, and name each problem as what it is (a
symlink loop is not "does not exist", a permission problem is not a broken file).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from serapeum.core.errors import ChecksumMismatchError, ModelFileError

__all__ = [
    "file_identity",
    "open_model_file",
    "require_regular_file",
    "require_sha256",
    "sha256_of",
]

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _error(number: int | None, message: str) -> ModelFileError:
    error = ModelFileError(message)
    error.errno = number
    return error


def _describe_stat_error(path: Path, exc: OSError, what: str) -> ModelFileError:
    shown = str(path)
    if exc.errno == errno.ELOOP:
        return _error(
            errno.ELOOP,
            f"{what} {shown!r} is a symbolic link loop (a link that points back to itself); "
            "fix the link or give the real file's path",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _error(
            exc.errno,
            f"{what} {shown!r} cannot be read: permission denied; make it readable "
            f"(chmod a+r) or run as a user who may read it",
        )
    if exc.errno == errno.ENOENT:
        return _error(
            errno.ENOENT,
            f"{what} {shown!r} does not exist"
            + (" (a symbolic link to a missing file)" if path.is_symlink() else ""),
        )
    if exc.errno == errno.ENAMETOOLONG:
        return _error(exc.errno, f"{what} is too long to be a path: {shown[:80]!r}...")
    return _error(exc.errno, f"{what} {shown!r} cannot be used: {exc.strerror or exc}")


def require_regular_file(path: Path, *, what: str = "model file") -> os.stat_result:
    """The ``stat`` of ``path`` if it is a readable regular file, else ``ModelFileError``."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise _describe_stat_error(path, exc, what) from exc
    except ValueError as exc:  # embedded NUL byte
        raise _error(errno.EINVAL, f"{what} {str(path)!r} is not a valid path: {exc}") from exc
    for test, kind in _KINDS:
        if test(info.st_mode):
            hint = (
                "point it at the .gguf file inside it"
                if kind == "a directory"
                else "models are read from regular files; copy the model to a file first"
            )
            raise _error(errno.EINVAL, f"{what} {str(path)!r} is {kind}, not a file; {hint}")
    if not stat.S_ISREG(info.st_mode):
        raise _error(errno.EINVAL, f"{what} {str(path)!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise _error(
            errno.EACCES,
            f"{what} {str(path)!r} cannot be read: permission denied; make it readable "
            "(chmod a+r) or run as a user who may read it",
        )
    return info


def open_model_file(path: Path, *, what: str = "model file") -> int:
    """A read-only descriptor of a regular file, opened so that it can never block.

    ``O_NONBLOCK`` covers the race where the path is swapped for a FIFO between the
    check and the open; the result is checked again with ``fstat``.
    """
    require_regular_file(path, what=what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _describe_stat_error(path, exc, what) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _error(errno.EINVAL, f"{what} {str(path)!r} is not a regular file")
    return fd


# -- file identity and checksums ------------------------------------------------------------
_HASH_BLOCK = 1 << 20
_digests: dict[tuple[int, int, int, int], str] = {}


def file_identity(info: os.stat_result) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime in ns): unchanged by a rename, changed by any rewrite."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def sha256_of(path: Path) -> str:
    """The file's SHA-256 in hex, remembered per file identity (a 250 MB file hashes once)."""
    identity = file_identity(require_regular_file(path))
    digest = _digests.get(identity)
    if digest is None:
        hasher = hashlib.sha256()
        fd = open_model_file(path)
        with os.fdopen(fd, "rb") as handle:
            while block := handle.read(_HASH_BLOCK):
                hasher.update(block)
        digest = _digests[identity] = hasher.hexdigest()
    return digest


def require_sha256(path: Path, expected: str) -> None:
    """Raise ``ChecksumMismatchError`` (and keep the file) when ``path`` does not match.

    The file is never deleted here: a typo in a checksum must not cost a re-download.
    """
    wanted = expected.strip().lower()
    actual = sha256_of(path)
    if actual != wanted:
        raise ChecksumMismatchError(
            f"{str(path)!r} has SHA-256 {actual}, not the expected {wanted}. The file was "
            "kept. If the expected checksum is right, the file is not the one you meant: "
            f"delete it (rm {str(path)!r}) and fetch it again; if the file is right, correct "
            "model_sha256",
            path=str(path),
            expected=wanted,
            actual=actual,
        )
