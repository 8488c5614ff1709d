"""Loading a GGUF file into a ``LlamaCppModel`` (llama-cpp-python's ``Llama``)."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serapeum.core.errors import ConfigurationError
from serapeum.core.gguf import check_gguf
from serapeum.llama_cpp.backend import native_log
from serapeum.llama_cpp.backend.llama_loader import new_llama
from serapeum.llama_cpp.backend.model import LlamaCppModel
from serapeum.llama_cpp.errors import ModelLoadError

logger = logging.getLogger("serapeum.llama_cpp")

# The number of sequences the context holds, and whether they share one KV buffer
# (``batching.py`` sets them for batched models).
SEQUENCES_OPTION = "serapeum_sequences"
UNIFIED_OPTION = "serapeum_kv_unified"

# Set to 0 (or false/no/off) to skip the structured-output warm-up at load: it costs ~2 s of
# one core, taken in steps while the process is otherwise idle, and ~110 MiB for
# llguidance's view of Gemma 3's vocabulary, worth it only where json_schema=/grammar= will
# be used (the first such request then builds it, ~2 s, as before).
STRUCTURED_WARMUP_ENV = "SERAPEUM_STRUCTURED_WARMUP"


def structured_warmup_enabled() -> bool:
    """Whether ``STRUCTURED_WARMUP_ENV`` leaves the warm-up on (the default)."""
    value = os.environ.get(STRUCTURED_WARMUP_ENV, "").strip().lower()
    return value not in {"0", "false", "no", "off"}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the whole machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS and Windows
        return os.cpu_count() or 1


def _load_lora(llama: Any, lora_path: str, scale: float) -> None:
    """Apply a LoRA adapter as ``Llama(lora_path=...)`` would, without its crash.

    llama-cpp-python 0.3 tests the adapter pointer llama.cpp returns with ``is None``; a
    ctypes pointer never is, so an adapter that fails to load (a missing file, a file that
    is not an adapter for this model) reaches llama.cpp as NULL and the process dies with
    SIGSEGV. The file gets the GGUF structure check first (which also refuses FIFOs and
    devices without blocking), and a NULL adapter is a ``ModelLoadError``. llama.cpp frees
    adapters with their model.
    """
    import llama_cpp

    check_gguf(lora_path)
    adapter = llama_cpp.llama_adapter_lora_init(llama._model.model, os.fsencode(lora_path))
    if not adapter:
        raise ModelLoadError(
            f"llama.cpp could not load the LoRA adapter {lora_path!r}: it is not a LoRA "
            "adapter GGUF for this model's architecture, or its tensors do not match the "
            "model's (run with verbose=True to see llama.cpp's reason)"
        )
    llama._lora_adapter = adapter
    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(scale)
    if llama_cpp.llama_set_adapters_lora(llama._ctx.ctx, adapters, 1, scales):
        raise ModelLoadError(f"llama.cpp could not apply the LoRA adapter {lora_path!r}")


def load_model(path: Path | None, options: Mapping[str, Any]) -> LlamaCppModel:
    """Load ``path`` with ``llama_cpp.Llama(**options)``."""
    if path is None:
        raise ConfigurationError("the llama-cpp backend needs a model file; give model_path")
    options = dict(options)
    sequences = int(options.pop(SEQUENCES_OPTION, 1))
    unified = bool(options.pop(UNIFIED_OPTION, False))
    lora_path = options.pop("lora_path", None)
    lora_scale = float(options.pop("lora_scale", 1.0))
    n_ctx = options.get("n_ctx")
    if isinstance(n_ctx, int) and n_ctx > 0 and options.get("n_batch", 0) > n_ctx:
        # What llama-cpp-python does itself, except for the array of logits it sizes with
        # the n_batch given (n_batch x vocabulary floats: 2**31 - 1 is a MemoryError).
        options["n_batch"] = n_ctx
    if options.pop("logits_all", False):
        logger.warning(
            "logits_all=True is ignored: it makes every prompt 2-3x slower to evaluate and "
            "holds n_ctx x vocabulary floats; ask for logprobs per request instead "
            "(complete(..., logprobs=5))"
        )
    # llama-cpp-python generates with half the CPUs by default; on small machines that
    # leaves a core idle (Gemma 3 270M on 2 cores: 41 ms a token with 1 thread, 24 with 2).
    options.setdefault("n_threads", usable_cpus())
    options.setdefault("n_threads_batch", usable_cpus())
    native_log.install()
    try:
        llama = new_llama(path, options, sequences=sequences, unified=unified)
    except MemoryError as exc:
        raise ModelLoadError(
            f"not enough memory to load {str(path)!r} with these options (n_ctx, n_batch); "
            "lower them"
        ) from exc
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"llama.cpp could not load {str(path)!r}: {exc}. The file has the GGUF header; it "
            "may be truncated, or use an architecture or quantisation this llama-cpp-python "
            "version does not support (run with verbose=True to see llama.cpp's log)"
        ) from exc
    if lora_path is not None:
        try:
            _load_lora(llama, lora_path, lora_scale)
        except BaseException:
            llama.close()
            raise
    model = LlamaCppModel(llama, path)
    if structured_warmup_enabled():
        model.start_structured_warmup()
    return model
