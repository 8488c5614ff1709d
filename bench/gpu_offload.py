"""Check that ``n_gpu_layers`` offloads to the GPU, on a CUDA build of llama-cpp-python.

    python bench/gpu_offload.py [MODEL.gguf]

Loads the model twice through ``LlamaCPP`` (``n_gpu_layers=0`` and ``-1``), reports
whether llama.cpp was built with GPU offload, the GPU memory the offloaded model takes,
greedy outputs of both (they should agree), and generation tokens/s of each. Without a
model path it builds a larger variant of the tiny test model.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import llama_cpp

import serapeum.llama_cpp.backend as backend
import serapeum_formatters_llama.plugin as llama_formatters
import serapeum_source_local.plugin as local_source
from serapeum.core.plugins import PluginHost
from serapeum.llama_cpp import LlamaCPP
from serapeum.llama_cpp.testing import TinyModelSpec, build_tiny_gguf


def gpu_memory_used_mib() -> int:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[0])


def main() -> int:
    if len(sys.argv) > 1:
        model = Path(sys.argv[1])
    else:
        spec = TinyModelSpec(n_embd=512, n_layer=8, n_head=8, n_ff=1536, name="serapeum-tiny-gpu")
        model = build_tiny_gguf(Path(tempfile.mkdtemp()) / "tiny-gpu.gguf", spec)
    host = PluginHost(strict=True)  # registered by hand: this check runs from a source tree
    host.register(backend, name="llama_cpp_backend", distribution="serapeum-llama-cpp")
    host.register(local_source, name="local", distribution="serapeum-source-local")
    host.register(llama_formatters, name="llama", distribution="serapeum-formatters-llama")
    print("llama_supports_gpu_offload:", llama_cpp.llama_supports_gpu_offload())
    results = {}
    for layers in (0, -1):
        before = gpu_memory_used_mib()
        llm = LlamaCPP(
            model_path=str(model),
            formatter="llama2",
            temperature=0.0,
            n_gpu_layers=layers,
            context_window=1024,
            plugins=host,
        )
        loaded = gpu_memory_used_mib() - before
        llm.complete("warm up", max_new_tokens=4)
        start = time.perf_counter()
        response = llm.complete("Hello there", max_new_tokens=200, stop=[])
        elapsed = time.perf_counter() - start
        tokens = response.raw["usage"]["completion_tokens"]
        results[layers] = response.text
        print(
            f"n_gpu_layers={layers}: GPU memory +{loaded} MiB at load, "
            f"{tokens / elapsed:.0f} tokens/s, text starts {response.text[:60]!r}"
        )
        del llm
    same = results[0] == results[-1]
    print("greedy outputs identical on CPU and GPU:", same)
    if not same:
        common = next(
            (i for i, (a, b) in enumerate(zip(results[0], results[-1], strict=False)) if a != b),
            None,
        )
        print("first differing character:", common)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
