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
import threading
import time
from pathlib import Path

from attrs import frozen

from serapeum.core.errors import ChecksumMismatchError, ModelFileError

__all__ = [
    "FileStamp",
    "file_identity",
    "note_rename",
    "open_model_file",
    "prefix_sha256",
    "require_regular_file",
    "require_sha256",
    "sha256_of",
    "take_stamp",
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
# A file's ctime can be set by no one (utime sets mtime, and moves ctime to now), but it
# ticks coarsely (up to 10 ms on kernels without fine-grained timestamps): a rewrite in
# the same tick as the bytes a verdict was taken on keeps it. A stamp taken this long
# after the file's last change is safe from that; a fresher one is confirmed by content.
_SETTLED_NS = 100_000_000


def file_identity(info: os.stat_result) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime in ns): unchanged by a rename, changed by most rewrites.

    Not enough alone to trust a verdict: ``cp -p``, ``rsync -t``, ``tar`` or ``os.utime``
    rewrite a file and keep its size and mtime. A verdict is kept with a ``FileStamp``.
    """
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@frozen
class FileStamp:
    """What a verdict about a file was taken against: its status-change time, when, and
    the SHA-256 of the bytes the verdict depends on (the first ``length`` bytes).

    ``renewed`` answers from ``stat`` alone while the file's ctime is the same and was
    already settled when the bytes were read; otherwise (a rename, a rewrite with a
    restored mtime, a change within one timestamp tick) it hashes those bytes again.
    """

    ctime_ns: int
    taken_ns: int
    length: int
    sha256: str

    def renewed(self, path: Path, info: os.stat_result) -> FileStamp | None:
        """This stamp if it still holds for ``path`` (whose ``stat`` is ``info``), a fresh
        one if the bytes it covers are unchanged (hashed again), None if they changed."""
        if info.st_ctime_ns == self.ctime_ns and self.taken_ns - self.ctime_ns >= _SETTLED_NS:
            return self
        if self.length > info.st_size:
            return None
        taken_ns = time.time_ns()
        try:
            digest = prefix_sha256(path, self.length)
        except ModelFileError:
            return None
        if digest != self.sha256:
            return None
        return FileStamp(info.st_ctime_ns, taken_ns, self.length, digest)

    def to_json(self) -> dict[str, int | str]:
        return {
            "ctime_ns": self.ctime_ns,
            "taken_ns": self.taken_ns,
            "length": self.length,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, data: object) -> FileStamp | None:
        """The stamp a verdict file recorded, or None when it is not one (torn, hostile)."""
        if not isinstance(data, dict):
            return None
        numbers = [data.get(name) for name in ("ctime_ns", "taken_ns", "length")]
        digest = data.get("sha256")
        if not all(type(number) is int and number >= 0 for number in numbers):
            return None
        if not isinstance(digest, str) or len(digest) != 64:
            return None
        ctime_ns, taken_ns, length = (int(number) for number in numbers)  # type: ignore[arg-type]
        return cls(ctime_ns, taken_ns, length, digest)


def take_stamp(path: Path, length: int) -> tuple[os.stat_result, FileStamp]:
    """``path``'s ``stat`` and a stamp of its first ``length`` bytes (fewer if it is
    shorter), read now: the ctime is taken before the bytes are read."""
    info = require_regular_file(path)
    taken_ns = time.time_ns()
    length = min(length, info.st_size)
    return info, FileStamp(info.st_ctime_ns, taken_ns, length, prefix_sha256(path, length))


def prefix_sha256(path: Path, length: int | None = None) -> str:
    """The SHA-256 of the first ``length`` bytes of ``path`` (all of it for None)."""
    hasher = hashlib.sha256()
    fd = open_model_file(path)
    with os.fdopen(fd, "rb") as handle:
        left = -1 if length is None else length
        while left:
            block = handle.read(_HASH_BLOCK if left < 0 else min(left, _HASH_BLOCK))
            if not block:
                break
            hasher.update(block)
            left = left - len(block) if left > 0 else left
    return hasher.hexdigest()


_digests: dict[tuple[int, int, int, int], tuple[FileStamp, str]] = {}
_digests_lock = threading.Lock()


def sha256_of(path: Path) -> str:
    """The file's SHA-256 in hex, remembered per file (a 250 MB file hashes once).

    The memory is checked against the file's ctime, so a file rewritten with its size
    and mtime restored (``cp -p``) is hashed again.
    """
    info = require_regular_file(path)
    identity = file_identity(info)
    with _digests_lock:
        known = _digests.get(identity)
    if known is not None:
        stamp, digest = known
        if info.st_ctime_ns == stamp.ctime_ns and stamp.taken_ns - stamp.ctime_ns >= _SETTLED_NS:
            return digest
    taken_ns = time.time_ns()
    digest = prefix_sha256(path)
    stamp = FileStamp(info.st_ctime_ns, taken_ns, info.st_size, digest)
    with _digests_lock:
        _digests[identity] = (stamp, digest)
    return digest


def note_rename(before: os.stat_result, after: Path) -> None:
    """Carry what is known of a file across a rename by this process (the rename moves
    its ctime): a downloaded file hashed as ``.part`` is not hashed again when installed.

    Only for a rename of a file nobody else writes (a download under its lock): the
    carried stamp is trusted for the new ctime as if it had settled.
    """
    try:
        info = os.stat(after)
    except OSError:
        return
    if file_identity(info) != file_identity(before):
        return
    with _digests_lock:
        known = _digests.get(file_identity(before))
        if known is not None and known[0].ctime_ns == before.st_ctime_ns:
            stamp, digest = known
            _digests[file_identity(info)] = (
                FileStamp(info.st_ctime_ns, info.st_ctime_ns + _SETTLED_NS, stamp.length, digest),
                digest,
            )


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
