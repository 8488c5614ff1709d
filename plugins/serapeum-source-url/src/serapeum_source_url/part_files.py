"""The download's own files in the cache (``.part``, ``.part.meta``), opened so nothing
placed there can redirect, block or hang them.

A symbolic link at ``<target>.part`` would make the download write through it (over a
file outside the cache) and then install the link; a FIFO there would block the open
forever. Anything at these two paths that is not a regular file is removed first (it is
ours to own: no download leaves one), and they are opened with ``O_NOFOLLOW`` and
``O_NONBLOCK`` so one placed in between fails instead.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import BinaryIO

from attrs import frozen

__all__ = ["Resume", "clear_strange", "open_part", "part_size", "read_resume", "write_resume"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_MAX_META_BYTES = 64 * 1024


@frozen
class Resume:
    """What ``<target>.part.meta`` remembers of the response the ``.part`` bytes came from."""

    validator: str  # a strong ETag or a Last-Modified date, sent back as If-Range
    total: int


def meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".meta")


def clear_strange(path: Path) -> None:
    """Remove ``path`` if it is a link, FIFO, socket or device (a directory raises
    ``IsADirectoryError``: never removed, the caller reports it)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(21, "Is a directory", str(path))
    if not stat.S_ISREG(info.st_mode):
        path.unlink()


def part_size(part: Path) -> int:
    """Bytes in the ``.part`` file (0 when there is none)."""
    clear_strange(part)
    try:
        return os.lstat(part).st_size
    except FileNotFoundError:
        return 0


def open_part(part: Path, *, append: bool) -> BinaryIO:
    """The ``.part`` file for writing, appended to or emptied; never through a link."""
    clear_strange(part)
    flags = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC
    flags |= os.O_APPEND if append else os.O_TRUNC
    fd = os.open(part, flags, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(21, "not a regular file", str(part))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab" if append else "wb")


def read_resume(part: Path) -> Resume | None:
    """The resume record, or None (none, unreadable, torn or strange: no resume)."""
    meta = meta_path(part)
    try:
        clear_strange(meta)
        fd = os.open(meta, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, _MAX_META_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) > _MAX_META_BYTES:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
        validator, total = data["validator"], data["total"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return None
    if not isinstance(validator, str) or type(total) is not int or total < 0:
        return None
    return Resume(validator=validator, total=total)


def write_resume(part: Path, resume: Resume | None) -> None:
    """Record (or, for None, forget) what the ``.part`` bytes came from."""
    meta = meta_path(part)
    clear_strange(meta)
    if resume is None:
        meta.unlink(missing_ok=True)
        return
    data = json.dumps({"validator": resume.validator, "total": resume.total}).encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _NONBLOCK | _CLOEXEC
    fd = os.open(meta, flags, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
