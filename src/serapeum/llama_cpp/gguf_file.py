"""Checks on a model file before it reaches llama.cpp: nothing here can crash the process.

1. ``stat`` only: a regular, readable file (FIFOs, devices, sockets and symlink loops are
   refused without opening them, so nothing blocks).
2. The GGUF structure (``serapeum.core.gguf``): header, metadata, tensor table, data
   offsets inside the file, vocabulary and layer counts llama.cpp would assert on.
3. Optionally the checked load (``checked_load.py``): the file is loaded once in a child
   process, so a crash no reader can foresee kills the child, not this process.
"""

from __future__ import annotations

import os
from pathlib import Path

from attrs import frozen

from serapeum.core.errors import ConfigurationError
from serapeum.core.gguf import CHECK_VERSION, stamped_check_gguf
from serapeum.core.model_files import require_regular_file
from serapeum.llama_cpp.verdicts import VerdictStore

__all__ = [
    "CheckedFile",
    "physical_memory",
    "require_context_fits",
    "require_gguf",
    "verify_model_file",
]


_PASSED = VerdictStore("checked-files", f"gguf structure check {CHECK_VERSION}")


@frozen
class CheckedFile:
    """What the structure check learnt that the engine uses before loading."""

    kv_bytes_per_token: int | None = None  # f16 KV cache per token of context


def require_gguf(path: Path) -> CheckedFile:
    """Raise ``ModelFileError``, ``NotGGUFError`` or ``MalformedGGUFError`` for a bad file.

    A file that passed once (same identity, same header bytes, same version of the check)
    passes again at the cost of a ``stat`` and a small read, in any process: Gemma 3
    270M's 262,144-token vocabulary takes about 0.1 s to check, a fifth of its load time.
    """
    info = require_regular_file(path)
    found = _PASSED.get(path, info)
    known = found[1] if found is not None else {}
    if known.get("ok") is True:
        per_token = known.get("kv_bytes_per_token")
        usable = type(per_token) is int and per_token > 0
        return CheckedFile(kv_bytes_per_token=per_token if usable else None)
    summary, identity, stamp = stamped_check_gguf(path)
    _PASSED.put(identity, stamp, {"ok": True, "kv_bytes_per_token": summary.kv_bytes_per_token})
    return CheckedFile(kv_bytes_per_token=summary.kv_bytes_per_token)


def physical_memory() -> int | None:
    """Bytes of RAM in this machine, where the platform says."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def require_context_fits(checked: CheckedFile, n_ctx: int, memory: int | None = None) -> None:
    """Refuse a context window whose KV cache could not fit in this machine's memory.

    llama.cpp would try to allocate it anyway: ``n_ctx=10**9`` on a tiny model grew the
    process to 19 GB before anything failed.
    """
    memory = physical_memory() if memory is None else memory
    per_token = checked.kv_bytes_per_token
    if not per_token or not memory or n_ctx * per_token <= memory:
        return
    fits = memory // per_token
    raise ConfigurationError(
        f"context_window={n_ctx:,} needs about {n_ctx * per_token / 2**30:,.1f} GiB for its "
        f"KV cache ({per_token:,} bytes a token), more than this machine's "
        f"{memory / 2**30:,.1f} GiB of memory; use at most {fits:,} tokens (the model's "
        "trained context length is usually the sensible choice)"
    )


def verify_model_file(path: Path, *, checked_load: bool = True) -> None:
    """Everything ``require_gguf`` checks, then (if asked) the checked load in a child."""
    require_gguf(path)
    if checked_load:
        from serapeum.llama_cpp.checked_load import checked_load as probe

        probe(path)
