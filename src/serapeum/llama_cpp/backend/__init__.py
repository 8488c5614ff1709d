"""The built-in ``llama-cpp`` backend: llama-cpp-python, in this process.

Everything between a ``GenerationRequest`` and llama.cpp lives in this package: the
model (``model``), loading (``loading``), the generation loop (``generation``), sampling
(``sampling``), JSON constraints (``structured``), KV reuse across turns
(``evaluated_tokens``), stop scanning (``text_stream``), the per-model lock
(``model_lock``), continuous batching (``batching``, ``scheduler``, ``slot``,
``sequences``) and the native helpers (``native_log``, ``llama_loader``,
``prompt_abort``, ``vocabulary``). The engine reaches it only through ``BackendSpec``
and the ``LoadedModel`` protocol. Registered through the ``serapeum`` entry-point
group like any other plugin.
"""

from __future__ import annotations

from serapeum.core.plugins import BackendSpec, hookimpl
from serapeum.llama_cpp.backend.batching import load
from serapeum.llama_cpp.backend.loading import load_model
from serapeum.llama_cpp.backend.model import LlamaCppModel
from serapeum.llama_cpp.load_options import check_load_options

__all__ = ["BACKEND_NAME", "LLAMA_CPP_BACKEND", "LlamaCppModel", "load_model"]

BACKEND_NAME = "llama-cpp"

LLAMA_CPP_BACKEND = BackendSpec(
    name=BACKEND_NAME,
    load=load,
    description="llama-cpp-python in this process",
    check_load_options=check_load_options,
)


@hookimpl
def serapeum_register_backends() -> list[BackendSpec]:
    return [LLAMA_CPP_BACKEND]
