"""Checks on a model file before it reaches llama.cpp: nothing here can crash the process.

1. ``stat`` only: a regular, readable file (FIFOs, devices, sockets and symlink loops are
   refused without opening them, so nothing blocks).
2. The GGUF structure (``serapeum.core.gguf``): header, metadata, tensor table, data
   offsets inside the file, vocabulary and layer counts llama.cpp would assert on.
3. Optionally the checked load (``checked_load.py``): the file is loaded once in a child
   process, so a crash no reader can foresee kills the child, not this process.
"""

from __future__ import annotations

from pathlib import Path

from serapeum.core.gguf import check_gguf
from serapeum.core.model_files import require_regular_file

__all__ = ["require_gguf", "verify_model_file"]


def require_gguf(path: Path) -> None:
    """Raise ``ModelFileError``, ``NotGGUFError`` or ``MalformedGGUFError`` for a bad file."""
    require_regular_file(path)
    check_gguf(path)


def verify_model_file(path: Path, *, checked_load: bool = True) -> None:
    """Everything ``require_gguf`` checks, then (if asked) the checked load in a child."""
    require_gguf(path)
    if checked_load:
        from serapeum.llama_cpp.checked_load import checked_load as probe

        probe(path)
