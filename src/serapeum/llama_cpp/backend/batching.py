"""Loading a model for batched generation: ``n_parallel`` slots and named sessions.

The engine's ``context_window`` stays one conversation's limit: the context is made for
``n_parallel`` sequences of ``context_window`` tokens each, every one in a KV stream of
its own (so a request's attention never sees, and its text never depends on, another's
cells). Sessions are kept in those sequences while they hold a slot, and in RAM between
turns (``sequences.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp.backend.loading import SEQUENCES_OPTION, UNIFIED_OPTION, load_model
from serapeum.llama_cpp.backend.model import LlamaCppModel
from serapeum.llama_cpp.backend.scheduler import BatchSettings

__all__ = [
    "BATCHING_OPTIONS",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_SAVED_SESSIONS_BYTES",
    "load",
]

BATCHING_OPTIONS = (
    "n_parallel",
    "max_sessions",
    "max_queue",
    "saved_sessions_bytes",
    "kv_unified",
)
DEFAULT_MAX_QUEUE = 64
DEFAULT_SAVED_SESSIONS_BYTES = 512 * 2**20


def load(path: Path | None, options: Mapping[str, Any]) -> LlamaCppModel:
    """``load_model``, batched when the options ask for slots or sessions."""
    import llama_cpp

    options = dict(options)
    n_parallel = int(options.pop("n_parallel", 1))
    max_sessions = int(options.pop("max_sessions", 0) or 0)
    max_queue = int(options.pop("max_queue", DEFAULT_MAX_QUEUE))
    saved_bytes = int(options.pop("saved_sessions_bytes", DEFAULT_SAVED_SESSIONS_BYTES))
    unified = bool(options.pop("kv_unified", False))
    if n_parallel == 1 and not max_sessions:
        return load_model(path, options)
    n_ctx_seq = int(options.get("n_ctx") or 0)
    check_batching(n_parallel, n_ctx_seq)
    options["n_ctx"] = n_ctx_seq * n_parallel
    options[SEQUENCES_OPTION] = n_parallel
    options[UNIFIED_OPTION] = unified
    model = load_model(path, options)
    # llama.cpp pads the context; a sequence never gets less than it was asked for, but
    # the guard keeps to what it really has. (Unified: all n_parallel sequences fit at
    # their longest, since the buffer is n_parallel windows.)
    actual = int(llama_cpp.llama_n_ctx_seq(model.llama.ctx))
    model.start_batching(
        BatchSettings(
            n_parallel=n_parallel,
            max_sessions=max_sessions,
            n_ctx_seq=min(n_ctx_seq, actual),
            max_queue=max_queue,
            saved_sessions_bytes=saved_bytes,
        )
    )
    return model


def check_batching(n_parallel: int, n_ctx_seq: int) -> None:
    """``ConfigurationError`` saying what to change, before anything is loaded."""
    import llama_cpp

    most = int(llama_cpp.llama_max_parallel_sequences())
    if n_parallel > most:
        raise ConfigurationError(
            f"n_parallel is {n_parallel}, but llama.cpp holds at most {most} sequences in "
            "one context; lower it"
        )
    if n_ctx_seq <= 0:
        raise ConfigurationError(
            "batching (n_parallel > 1 or max_sessions) needs a context_window; "
            "remove n_ctx=0 from model_kwargs"
        )
