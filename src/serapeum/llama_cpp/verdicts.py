"""Verdicts about files, kept on disk per file identity so each file is judged once per machine.

A verdict is keyed by the file's identity (device, inode, size, modification time: kept
by the rename that installs a download, changed by any rewrite) and by what judged it (a
version string), and lives as a small JSON file under ``<cache>/<folder>/``. Writing is best
effort: an unwritable cache only means the judgement runs again next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from serapeum.core.cache_dir import cache_dir

__all__ = ["VerdictStore"]

logger = logging.getLogger("serapeum.llama_cpp")
Identity = tuple[int, int, int, int]


class VerdictStore:
    """JSON verdicts under ``<cache>/<folder>``, one file per (judge, file identity)."""

    def __init__(self, folder: str, judge: str) -> None:
        self._folder = folder
        self._judge = judge

    def _file(self, identity: Identity) -> Path:
        key = json.dumps([self._judge, *identity])
        return cache_dir() / self._folder / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"

    def get(self, identity: Identity) -> dict[str, Any] | None:
        try:
            data = json.loads(self._file(identity).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, identity: Identity, verdict: dict[str, Any]) -> None:
        target = self._file(identity)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(verdict))
            os.replace(temporary, target)
        except OSError as exc:
            logger.debug("could not record a verdict in %s: %s", target, exc)
