"""Download progress: the hub's bars on a terminal only, one plain line in a log file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from huggingface_hub.utils import tqdm as hub_tqdm


class _NoBar(hub_tqdm):  # type: ignore[misc]
    """The hub's bar, switched off (``progress=False``, ``download --quiet``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def bars(progress: bool | None) -> type[hub_tqdm] | None:
    """The ``tqdm_class`` for ``hf_hub_download``: None keeps the hub's own (terminal-only)."""
    return _NoBar if progress is False or not stderr_is_terminal() else None


def final_line(what: str, blob: Path) -> None:
    """Where no bar was drawn (stderr is a file), say once what was downloaded."""
    if stderr_is_terminal():
        return
    try:
        size = blob.stat().st_size
    except OSError:
        return
    print(f"downloaded {what}: {size / 2**20:,.1f} MiB", file=sys.stderr, flush=True)
