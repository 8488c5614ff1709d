"""Verdicts about files, kept on disk per file identity so each file is judged once per machine.

A verdict is filed under the file's identity (device, inode, size, modification time: kept
by the rename that installs a download) and what judged it (a version string), as a small
JSON file under ``<cache>/<folder>/``, with the ``FileStamp`` of the bytes it was taken on.
It counts only while that stamp holds: a file rewritten in place with its size and mtime
kept (``cp -p``, ``rsync -t``, ``os.utime``, two writes in one timestamp tick) is judged
again. Writing is best effort: an unwritable cache only means the judgement runs again.

The cache is read as untrusted: a verdict file that is a symbolic link, a FIFO, huge,
torn or not the JSON written here counts as no verdict, and nothing is ever written
through a link placed in the cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from serapeum.core.cache_dir import cache_dir
from serapeum.core.model_files import FileStamp, file_identity

__all__ = ["VerdictStore"]

logger = logging.getLogger("serapeum.llama_cpp")
Identity = tuple[int, int, int, int]
_MAX_BYTES = 64 * 1024  # a verdict is a few hundred bytes
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | _NOFOLLOW
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | _NOFOLLOW


class VerdictStore:
    """JSON verdicts under ``<cache>/<folder>``, one file per (judge, file identity)."""

    def __init__(self, folder: str, judge: str) -> None:
        self._folder = folder
        self._judge = judge

    def _file(self, identity: Identity) -> Path:
        key = json.dumps([self._judge, *identity])
        return cache_dir() / self._folder / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"

    def get(self, path: Path, info: os.stat_result) -> tuple[FileStamp, dict[str, Any]] | None:
        """The verdict recorded for the file at ``path`` (``stat`` ``info``), if it holds,
        with the stamp it holds by."""
        identity = file_identity(info)
        target = self._file(identity)
        record = _load(target)
        if record is None or record.get("judge") != self._judge:
            return None
        stamp = FileStamp.from_json(record.get("stamp"))
        verdict = record.get("verdict")
        if stamp is None or not isinstance(verdict, dict):
            return None
        renewed = stamp.renewed(path, info)
        if renewed is None:
            return None
        if renewed is not stamp:  # same bytes, moved or touched: remember the new ctime
            self.put(identity, renewed, verdict)
        return renewed, verdict

    def put(self, identity: Identity, stamp: FileStamp, verdict: dict[str, Any]) -> None:
        """Record ``verdict`` for the file of ``identity`` whose judged bytes ``stamp`` covers."""
        target = self._file(identity)
        record = {"judge": self._judge, "stamp": stamp.to_json(), "verdict": verdict}
        temporary = target.with_name(f"{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, _WRITE_FLAGS, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(record))
            os.replace(temporary, target)  # replaces a link placed there, never its target
        except (OSError, ValueError) as exc:
            logger.debug("could not record a verdict in %s: %s", target, exc)
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


def _load(target: Path) -> dict[str, Any] | None:
    """The JSON object in ``target``, or None for anything else (never blocks, never follows
    a link, never reads more than a verdict can hold)."""
    try:
        fd = os.open(target, _READ_FLAGS)
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
            logger.debug("ignoring %s: a symbolic link in the verdict cache", target)
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_BYTES:
            return None
        raw = os.read(fd, _MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
