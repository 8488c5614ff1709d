"""Loading a model for batched generation: ``n_parallel`` slots and named sessions.

The engine's ``context_window`` stays one conversation's limit; the context is made for
``n_parallel + max_sessions`` sequences sharing ``kv_cache_tokens`` KV cells (by default
``context_window x n_parallel``: every slot can use its whole window at once, and idle
sessions keep their tokens in what the slots leave free).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import evolve

from serapeum.core.errors import ConfigurationError
from serapeum.llama_cpp.backend.loading import SEQUENCES_OPTION, load_model
from serapeum.llama_cpp.backend.model import LlamaCppModel
from serapeum.llama_cpp.backend.scheduler import BatchSettings

__all__ = ["BATCHING_OPTIONS", "DEFAULT_MAX_QUEUE", "load"]

BATCHING_OPTIONS = (
    "n_parallel",
    "max_sessions",
    "kv_cache_tokens",
    "max_queue",
    "saved_sessions_bytes",
)
DEFAULT_SAVED_SESSIONS_BYTES = 512 * 2**20
DEFAULT_MAX_QUEUE = 64


def load(path: Path | None, options: Mapping[str, Any]) -> LlamaCppModel:
    """``load_model``, batched when the options ask for slots or sessions."""
    options = dict(options)
    n_parallel = int(options.pop("n_parallel", 1))
    max_sessions = int(options.pop("max_sessions", 0) or 0)
    kv_cache_tokens = options.pop("kv_cache_tokens", None)
    max_queue = int(options.pop("max_queue", DEFAULT_MAX_QUEUE))
    saved_bytes = int(options.pop("saved_sessions_bytes", DEFAULT_SAVED_SESSIONS_BYTES))
    if n_parallel == 1 and not max_sessions:
        return load_model(path, options)
    settings = batch_settings(
        n_parallel, max_sessions, int(options.get("n_ctx") or 0), kv_cache_tokens, max_queue
    )
    settings = evolve(settings, saved_session_bytes=saved_bytes)
    options["n_ctx"] = kv_cache_tokens or settings.n_ctx_seq * n_parallel
    options[SEQUENCES_OPTION] = n_parallel + max_sessions
    model = load_model(path, options)
    model.start_batching(settings)
    return model


def batch_settings(
    n_parallel: int,
    max_sessions: int,
    n_ctx_seq: int,
    kv_cache_tokens: int | None,
    max_queue: int,
) -> BatchSettings:
    """Checked settings; ``ConfigurationError`` says what to change."""
    import llama_cpp

    most = int(llama_cpp.llama_max_parallel_sequences())
    if n_parallel + max_sessions > most:
        raise ConfigurationError(
            f"n_parallel + max_sessions is {n_parallel + max_sessions}, but llama.cpp holds at "
            f"most {most} sequences in one context; lower them"
        )
    if n_ctx_seq <= 0:
        raise ConfigurationError(
            "batching (n_parallel > 1 or max_sessions) needs a context_window; "
            "remove n_ctx=0 from model_kwargs"
        )
    if kv_cache_tokens is not None and kv_cache_tokens < n_ctx_seq:
        raise ConfigurationError(
            f"kv_cache_tokens={kv_cache_tokens} cannot hold one conversation of "
            f"context_window={n_ctx_seq} tokens; raise it to at least {n_ctx_seq}"
        )
    return BatchSettings(
        n_parallel=n_parallel,
        max_sessions=max_sessions,
        n_ctx_seq=n_ctx_seq,
        max_queue=max_queue,
    )
