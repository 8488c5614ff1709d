"""Where serapeum keeps files it fetches: ``SERAPEUM_CACHE_DIR``, else the user cache dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
